"""Forward pass with the head engine attached but doing nothing vs. a plain forward pass.

    python benchmarks/hook_overhead.py [--repeats 30]

Prints the median times and their ratio (goal: <= 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _models import random_llama
from mechtest.heads import SITES, hooked
from mechtest.tasks.entity_tracking import make_dataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    model = random_llama(layers=8, heads=8, hidden=512, intermediate=1376)
    ids = make_dataset(model.tokenizer, 32, n_boxes=7, seed=0).input_ids.to(model.device)
    noop = {(site, l): (lambda x: None) for site in SITES for l in range(model.n_layers)}

    def plain():
        with torch.no_grad():
            model.hf(input_ids=ids, use_cache=False)

    def hooked_noop():
        with torch.no_grad(), hooked(model, noop):
            model.hf(input_ids=ids, use_cache=False)

    times = {"plain": [], "hooked": []}
    for _ in range(3):
        plain(), hooked_noop()  # warm-up
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        for name, fn in (("plain", plain), ("hooked", hooked_noop)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    p, h = statistics.median(times["plain"]), statistics.median(times["hooked"])
    print(f"model: {model.describe_shape()}, batch 32 x {ids.shape[1]} tokens, {torch.get_num_threads()} threads")
    print(f"plain forward   {p * 1e3:8.2f} ms (median of {args.repeats})")
    print(f"engine attached {h * 1e3:8.2f} ms ({len(noop)} no-op edits on head_out, q, k, v of every layer)")
    print(f"ratio           {h / p:8.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
