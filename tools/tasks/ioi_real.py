"""IOI on a real checkpoint: accuracy, the circuit path patching discovers, its faithfulness and random circuits'.

``python -m tools.tasks.ioi_real MODEL [--discover 40] [--n 200] [--draws 10] [--out results.json]`` (CPU: one
thread; the README's IOI table was measured so on Qwen2.5-Coder-0.5B, float32). Every number is printed with
its 95% interval and written to ``--out`` with the discovered circuit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.tasks.ioi_real", description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--discover", type=int, default=40, help="prompts path patching discovers on (seed 0)")
    parser.add_argument("--n", type=int, default=200, help="evaluation prompts (seed 3), ABC reference (seed 4)")
    parser.add_argument("--draws", type=int, default=10, help="random circuits of the same sizes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from mechtest.methods.discovery import discover_circuit
    from mechtest.methods.evaluation import accuracy, faithfulness, random_circuit_faithfulness
    from mechtest.model import load_model
    from mechtest.spec import derived_seed
    from mechtest.tasks.registry import get_task

    task = get_task("ioi")
    start = time.time()

    def log(text: str) -> None:
        print(f"[{time.time() - start:7.0f} s] {text}", file=sys.stderr, flush=True)

    model = load_model(args.model, dtype="float32", device="cpu")
    task.check_vocabulary(model.tokenizer)
    data = task.dataset(model.tokenizer, args.n, seed=derived_seed(0, "evaluation"))
    ref = task.reference(model.tokenizer, args.n, seed=derived_seed(0, "evaluation_reference"))
    acc = accuracy(model, data)
    log(f"accuracy {acc.value:.3f} [{acc.ci_low:.3f}, {acc.ci_high:.3f}] on {args.n} prompts")
    found = discover_circuit(model, n_prompts=args.discover, seed=0, task="ioi", progress=False)
    circuit = found.circuit
    log(f"discovered on {args.discover} prompts: {circuit.to_dict()}")
    faith = faithfulness(model, circuit, data, ref)
    log(f"faithfulness {faith.value:.3f} [{faith.ci_low:.3f}, {faith.ci_high:.3f}]")
    rand = random_circuit_faithfulness(model, circuit, data, ref, n_draws=args.draws)
    log(f"random circuits ({args.draws}) {rand.value:.3f} [{rand.ci_low:.3f}, {rand.ci_high:.3f}]")
    top = {g: [[*h, round(float(s.scores[h]), 4)] for h in s.top(5)] for g, s in found.scores.steps.items()}
    result = {"model": str(args.model), "n": args.n, "discover_prompts": args.discover, "draws": args.draws,
              "accuracy": acc.to_dict(), "circuit": circuit.to_dict(), "sizes": found.sizes,
              "receivers": found.receivers, "top_scores": top, "faithfulness": faith.to_dict(),
              "random_circuit_faithfulness": rand.to_dict(), "seconds": round(time.time() - start)}
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
