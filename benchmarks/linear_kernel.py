"""torch's default float32 linear (MKL) against oneDNN's (mechtest.linear_kernel), on this machine's CPU.

    python benchmarks/linear_kernel.py [--model .real/qwen/model.gguf]

Prints, for weight shapes of the zoo and of Qwen2.5-0.5B at the row counts the methods use, the default
kernel's time divided by oneDNN's (> 1: oneDNN is faster); with ``--model``, one forward pass over 300 prompts
through each kernel, and how far apart the logits are.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = [(64, 64), (64, 256), (512, 512), (896, 128), (896, 896), (896, 4864), (4864, 896), (896, 151936)]
ROWS = (1, 6, 25, 250, 1250)


def seconds(fn, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def shapes() -> None:
    onednn = torch.ops.mkldnn._linear_pointwise
    print(f"threads {torch.get_num_threads()}; default time / oneDNN time, by rows:")
    for k, n in SHAPES:
        w = torch.randn(n, k) * 0.02
        ratios = []
        for rows in ROWS:
            x = torch.randn(rows, k)
            ratios.append(seconds(lambda: F.linear(x, w)) / seconds(lambda: onednn(x, w, None, "none", [], "")))
        print(f"  {k:>5} x {n:<6} ({k * n:>9,} elements) " + "  ".join(f"{r}: {q:.2f}" for r, q in zip(ROWS, ratios)))


def forward(path: str) -> None:
    from mechtest.linear_kernel import OneDNNLinear
    from mechtest.model import load_model
    from mechtest.spec import derived_seed
    from mechtest.tasks.registry import get_task

    model = load_model(path)
    data = get_task("entity_tracking").dataset(model.tokenizer, 300, n_boxes=3, seed=derived_seed(0, "evaluation"))
    switched = [m for m in model.hf.modules() if isinstance(m, OneDNNLinear)]

    def run() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model.hf(input_ids=data.input_ids[s:s + 50], logits_to_keep=1).logits[:, -1]
                              for s in range(0, len(data), 50)])

    results = {}
    for kernel in ("default", "oneDNN", "default", "oneDNN"):
        for m in switched:
            m.__class__ = OneDNNLinear if kernel == "oneDNN" else torch.nn.Linear
        start = time.perf_counter()
        results[kernel] = run()
        print(f"  {kernel:8} forward, 300 prompts: {time.perf_counter() - start:6.1f} s")
    diff = (results["oneDNN"] - results["default"]).abs().max().item()
    same = bool((results["oneDNN"].argmax(-1) == results["default"].argmax(-1)).all())
    print(f"  {len(switched)} layers switched; largest logit difference {diff:.1e}; "
          f"same argmax on every prompt: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model to time one forward pass over 300 prompts with each kernel")
    args = parser.parse_args()
    shapes()
    if args.model:
        forward(args.model)


if __name__ == "__main__":
    main()
