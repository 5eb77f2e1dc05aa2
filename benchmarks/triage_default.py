"""Exact path patching vs attribution triage for circuit discovery: CPU time against heads x prompt length.

    python benchmarks/triage_default.py [--gguf path/model.gguf] [--prompts 8] [--threads 1]

Times ``discover_circuit(triage=False)`` and ``discover_circuit(triage=True)`` in the same process (CPU
seconds, so other jobs on the machine matter less) on the trained zoo base (4x4 heads), random Llamas of
12x12 and 24x14 heads, and the GGUF model when given; prints heads x prompt tokens, both times, their ratio,
layer and LM-head sizes, whether both found the same circuit and what ``discover_circuit``'s default
(``triage=None``, :func:`mechtest.methods.discovery.triage_by_default`) picks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import random_llama  # noqa: E402
from mechtest.methods.discovery import discover_circuit, layer_parameters, lm_head_size, triage_by_default  # noqa: E402,E501
from mechtest.model import load_model  # noqa: E402
from mechtest.tasks.entity_tracking import make_dataset  # noqa: E402

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "zoo"


def cases(args):
    yield "zoo base 4x4", lambda: load_model(ZOO / "base", device="cpu"), 7
    yield "random llama 12x12", lambda: random_llama(layers=12, heads=12, hidden=384, intermediate=768), 7
    yield "random llama 24x14 gqa", lambda: random_llama(layers=24, heads=14, hidden=448, intermediate=896,
                                                         kv_heads=2), 7
    yield "random llama 24x14 gqa, 672 wide", lambda: random_llama(layers=24, heads=14, hidden=672,
                                                                   intermediate=2304, kv_heads=2), 3
    yield "random llama 24x14 gqa, Qwen's widths", lambda: random_llama(layers=24, heads=14, hidden=896,
                                                                        intermediate=4864, kv_heads=2), 3
    if args.gguf:
        yield f"{Path(args.gguf).name} 24x14", lambda: load_model(args.gguf, device="cpu"), args.gguf_boxes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf")
    parser.add_argument("--gguf-boxes", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="substring of the case names to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("model | heads x tokens | layer parameters | LM head | exact CPU s | triage CPU s | exact / triage | "
          "same circuit | default")
    for name, make, n_boxes in cases(args):
        if args.only not in name:
            continue
        model = make()
        tokens = int(make_dataset(model.tokenizer, 1, n_boxes=n_boxes, seed=0).input_ids.shape[1])
        cost = model.n_layers * model.n_heads * tokens
        times, found = {}, {}
        for triage in (False, True):
            start = time.process_time()
            d = discover_circuit(model, n_prompts=args.prompts, n_boxes=n_boxes, triage=triage)
            times[triage] = time.process_time() - start
            found[triage] = {g: sorted(h) for g, h in d.circuit.groups.items()}
        pick = "triage" if triage_by_default(model) else "exact"
        print(f"{name} | {model.n_layers * model.n_heads} x {tokens} = {cost} | "
              f"{layer_parameters(model) / 1e6:.0f}M | {lm_head_size(model) / 1e6:.1f}M | {times[False]:.1f} | "
              f"{times[True]:.1f} | {times[False] / times[True]:.2f} | {found[False] == found[True]} | {pick}",
              flush=True)
        del model


if __name__ == "__main__":
    main()
