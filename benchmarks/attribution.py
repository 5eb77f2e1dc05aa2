"""Attribution patching and triage vs exact path patching on three model families.

    python benchmarks/attribution.py [--families planted,zoo,gqa] [--prompts 32]

Families: the planted-circuit models (fixtures/zoo/planted, planted-b), the trained zoo (fixtures/zoo/base,
finetuned, other) and a random-init Llama of a real shape (24 layers x 14 heads, 2 kv heads, narrow).
Receiver counts and circuit sizes are discovery's defaults (the paper's, scaled to the head count).

Per step, with the exact step's receivers: Spearman rank correlation of each estimate with the exact
scores over all heads and over the exact top-2k heads (k = what the step must deliver: circuit size or
next step's receivers), and whether the exact top-k lies inside the estimate's top-(3k, at least 8), i.e.
what triage verifies. Per model: the whole exact pipeline vs triage (hybrid estimate, margin 3, minimum 8)
timed in the same run (CPU seconds, one thread by default: robust to other jobs on the machine), and
whether triage's top-k equals the exact top-k at every step.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from _models import random_llama
from mechtest.methods.path_patching.attribution import attribution_step, candidates, spearman, triage
from mechtest.methods.discovery import PAPER_CANDIDATES, PAPER_RECEIVERS, scaled
from mechtest.methods.path_patching import PLAN, path_patching
from mechtest.model import load_model
from mechtest.tasks.entity_tracking import make_dataset, path_patching_corruption

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "zoo"
NEXT = {previous: group for group, _, previous, _ in PLAN if previous}


def models(families):
    if "planted" in families:
        for name in ("planted", "planted-b"):
            yield name, load_model(ZOO / name, device="cpu"), 7
    if "zoo" in families:
        for name in ("base", "finetuned", "other"):
            if (ZOO / name / "config.json").exists():
                yield name, load_model(ZOO / name, device="cpu"), json.loads((ZOO / name / "mechtest.json").read_text())["n_boxes"]
    if "gqa" in families:
        yield "llama-24x14-gqa2", random_llama(layers=24, heads=14, kv_heads=2, hidden=224, intermediate=448,
                                               init_std=0.05), 7


def measure(name, model, n_boxes, n_prompts, margin, minimum):
    total = model.n_layers * model.n_heads
    receivers, sizes = scaled(PAPER_RECEIVERS, total), scaled(PAPER_CANDIDATES, total)
    base = make_dataset(model.tokenizer, n_prompts, n_boxes=n_boxes, seed=0)
    corrupt = path_patching_corruption(base, model.tokenizer, seed=1)
    kw = dict(receivers=receivers, batch_size=n_prompts, progress=False)

    t = time.process_time()
    exact = path_patching(model, base, corrupt, **kw)
    t_exact = time.process_time() - t
    t = time.process_time()
    tri = triage(model, base, corrupt, sizes=sizes, margin=margin, minimum=minimum, **kw)
    t_triage = time.process_time() - t

    print(f"\n{name}: {model.describe_shape()}, {n_prompts} prompts x {n_boxes} boxes; "
          f"exact {t_exact:.1f}s, triage {t_triage:.1f}s, speed-up {t_exact / t_triage:.1f}x")
    print(f"  {'step':16} {'k':>3} {'method':9} {'rho all':>8} {'rho top2k':>9} {'top-k in cand.':>14} "
          f"{'est. time':>9} {'triage top-k = exact':>21}")
    for group, result in exact.steps.items():
        k = max(sizes.get(group, 0), receivers.get(NEXT.get(group), 0), 1)
        truth = result.top(k)
        important = result.top(2 * k)
        idx = tuple(zip(*important))
        same = tri.result[group].top(k) == truth
        for method in ("gradient", "hybrid"):
            t = time.process_time()
            est = attribution_step(model, base, corrupt, result.step, method=method, batch_size=n_prompts,
                                   progress=False)
            t_est = time.process_time() - t
            cand = set(candidates(est, max(minimum, math.ceil(margin * k))))
            inside = sum(h in cand for h in truth)
            rho_all = spearman(est.scores, result.scores) if result.scores.any() else float("nan")
            rho_top = spearman(est.scores[idx], result.scores[idx]) if k > 1 else float("nan")
            print(f"  {group:16} {k:3d} {method:9} {rho_all:8.3f} "
                  f"{rho_top:9.3f} {inside:>9d}/{k:<4d} {t_est:8.1f}s "
                  f"{str(same) if method == 'hybrid' else '':>21}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default="planted,zoo,gqa")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--margin", type=float, default=3.0)
    parser.add_argument("--minimum", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{torch.get_num_threads()} threads; CPU seconds of this process, measured within one run; "
          "rho = Spearman vs exact (nan: k = 1, or every exact score is 0)")
    for name, model, n_boxes in models(args.families.split(",")):
        measure(name, model, n_boxes, args.prompts, args.margin, args.minimum)


if __name__ == "__main__":
    main()
