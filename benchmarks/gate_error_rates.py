"""The gate's error rates on candidates built to fool it.

    python benchmarks/gate_error_rates.py [--renamings 20] [--prompts 140] [--seeds 0 1 2]

False passes: function-identical copies of every independent model (``fixtures/zoo/other`` and
``fixtures/controls/*independent-*``) with heads renamed within layers by random permutations, and every
control that must not pass (``*rerouted-*``, ``*forgetting*``), each compared with ``fixtures/zoo/base``; a
"preserved" verdict is a false pass (goal <= 5 %). False fails: every benign fine-tune
(``fixtures/controls/*benign-*``) compared with base at each seed; anything but "preserved" is a false fail
(goal 0). Prints each verdict and the two rates with their Wilson intervals.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from controls import renamed_heads  # noqa: E402
from mechtest.measure import wilson_ci  # noqa: E402
from mechtest.methods.compare import compare  # noqa: E402
from mechtest.model import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--renamings", type=int, default=20, help="random renamings per independent model")
    parser.add_argument("--prompts", type=int, default=140)
    parser.add_argument("--seed", type=int, default=0, help="seed of the renamings")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="verdict seeds of the controls")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    zoo, controls = REPO / "fixtures" / "zoo", REPO / "fixtures" / "controls"
    base = load_model(zoo / "base", name="base")
    n_boxes = json.loads((zoo / "base" / "mechtest.json").read_text()).get("n_boxes", 7)
    independent = [zoo / "other", *sorted(controls.glob("*independent-*"))]
    benign = sorted(controls.glob("*benign-*"))
    must_fail = [p for p in sorted(controls.iterdir()) if "rerouted-" in p.name or "forgetting" in p.name]
    rng = random.Random(args.seed)
    passes = total = 0
    for path in independent:
        for i in range(args.renamings):
            perms = {layer: rng.sample(range(base.n_heads), base.n_heads) for layer in range(base.n_layers)}
            candidate = renamed_heads(path, perms, name=f"{path.name}-renamed-{i}")
            verdict = compare(base, candidate, n_prompts=args.prompts, n_boxes=n_boxes, seed=i, progress=False).verdict
            passes += verdict == "preserved"
            total += 1
            print(f"{path.name} renamed #{i}: {verdict}", flush=True)
    for path in must_fail:
        candidate = load_model(path, name=path.name)
        for seed in args.seeds:
            verdict = compare(base, candidate, n_prompts=args.prompts, n_boxes=n_boxes, seed=seed,
                              progress=False).verdict
            passes += verdict == "preserved"
            total += 1
            print(f"{path.name} seed {seed}: {verdict}", flush=True)
    fails = runs = 0
    for path in benign:
        candidate = load_model(path, name=path.name)
        for seed in args.seeds:
            verdict = compare(base, candidate, n_prompts=args.prompts, n_boxes=n_boxes, seed=seed,
                              progress=False).verdict
            fails += verdict != "preserved"
            runs += 1
            print(f"{path.name} seed {seed}: {verdict}", flush=True)
    for label, k, n in (("false-pass rate (renamed independent models, rerouted, forgetting)", passes, total),
                        ("false-fail rate (benign fine-tunes x seeds)", fails, runs)):
        low, high = wilson_ci(k, n) if n else (float("nan"), float("nan"))
        print(f"{label}: {k}/{n} = {k / max(n, 1):.3f} (95% CI {low:.3f}..{high:.3f})")


if __name__ == "__main__":
    main()
