"""Path patching: the fast exact engine vs. the naive reference (one full forward per sender).

    python benchmarks/path_patching.py [--naive-senders 8] [--prompts 32] [--threads 1]

A random-init Llama with 32 layers x 32 heads (narrow width), 54-token 7-box prompts, batch 32. The fast
engine scores all 1,024 senders of each step; the naive reference is timed on a spread-out subset of
senders (a full naive step would take hours on a CPU) and its per-sender time scaled to 1,024. The
scores of that subset are checked equal (atol 1e-5) in the same run. Prints per-step and total ratios
and the peak resident memory.

Times are CPU seconds of this process (``time.process_time``) on ``--threads`` threads (default 1): on
a shared machine, wall time swings with other jobs, CPU time on one thread barely does, so the ratios
measured in one run are comparable across runs.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from _models import random_llama
from mechtest.methods.path_patching import Step, patch_step
from mechtest.tasks.entity_tracking import make_dataset, path_patching_corruption

PAPER_RECEIVERS = {"pos_transmitter": 20, "pos_detector": 5, "struct_reader": 10}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--naive-senders", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = random_llama(layers=32, heads=32, hidden=args.hidden, intermediate=2 * args.hidden)
    base = make_dataset(model.tokenizer, args.prompts, n_boxes=7, seed=0)
    corrupt = path_patching_corruption(base, model.tokenizer, seed=1)
    n_senders = model.n_layers * model.n_heads
    stride = n_senders // args.naive_senders
    subset = [divmod(i * stride + (i % model.n_heads), model.n_heads) for i in range(args.naive_senders)]
    print(f"model: {model.describe_shape()}, width {model.d_model}; {len(base)} prompts of "
          f"{base.input_ids.shape[1]} tokens; {torch.get_num_threads()} threads; device {model.device}")
    print(f"{'step':16} {'fast (1024 senders)':>20} {'naive (scaled)':>16} {'ratio':>8} {'max |diff|':>11}"
          "   (CPU seconds)")

    plan = [("value_fetcher", "last", None, None), ("pos_transmitter", "last", "value_fetcher", "q"),
            ("pos_detector", "query_label", "pos_transmitter", "v"),
            ("struct_reader", "query_context", "pos_detector", "v")]
    results, total_fast, total_naive = {}, 0.0, 0.0
    for group, position, previous, site in plan:
        receivers = tuple(results[previous].top(PAPER_RECEIVERS[group])) if previous else ()
        step = Step(group, position, receivers, site)
        t = time.process_time()
        fast = patch_step(model, base, corrupt, step, batch_size=len(base), progress=True)
        t_fast = time.process_time() - t
        t = time.process_time()
        naive = patch_step(model, base, corrupt, step, batch_size=len(base), naive=True, senders=subset,
                           progress=False)
        t_naive = (time.process_time() - t) * n_senders / len(subset)
        rows, cols = zip(*subset)
        diff = float((fast.scores[rows, cols] - naive.scores[rows, cols]).abs().max())
        assert diff < 1e-5, f"fast and naive scores differ by {diff} in step {group}"
        results[group] = fast
        total_fast += t_fast
        total_naive += t_naive
        print(f"{group:16} {t_fast:19.2f}s {t_naive:15.1f}s {t_naive / t_fast:7.1f}x {diff:11.1e}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'total':16} {total_fast:19.2f}s {total_naive:15.1f}s {total_naive / total_fast:7.1f}x")
    print(f"peak resident memory: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
