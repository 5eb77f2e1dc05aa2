"""IOI on a real checkpoint: accuracy, the circuit path patching discovers, its faithfulness and random circuits'.

``python -m tools.tasks.ioi_real MODEL [--discover 40] [--n 200] [--draws 10] [--scales 1,2,4] [--out x.json]``
(CPU, one thread; the README's IOI rows were measured so on Qwen2.5-Coder-0.5B, float32). Path patching runs once
(triage, sized for the largest scale); each scale's circuit is the top heads of those scores at the task's
default sizes times the scale. Every number is printed with its 95% interval and written to ``--out``.
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
    parser.add_argument("--scales", default="1", help="circuit sizes to evaluate, as multiples of the defaults "
                        "(e.g. 1,2,4): one discovery, sized for the largest, then each size's faithfulness")
    parser.add_argument("--margin", type=float, default=3.0, help="triage: heads verified exactly per step, as a "
                        "multiple of the size needed")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from mechtest.methods.circuits import candidate_circuit
    from mechtest.methods.discovery import default_sizes, discover_circuit
    from mechtest.methods.path_patching import triage
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
    scales = [float(x) for x in args.scales.split(",")]
    base_sizes = default_sizes(model, task="ioi")
    largest = {g: max(1, round(k * max(scales))) for g, k in base_sizes.items()}

    def scores(model, base, receivers, *, seed):
        corrupt = task.corruption(base, model.tokenizer, seed=derived_seed(seed, "corruption"))
        return triage(model, base, corrupt, receivers=receivers, sizes=largest, margin=args.margin, seed=seed,
                      progress=False).result

    found = discover_circuit(model, n_prompts=args.discover, seed=0, task="ioi", sizes=largest, scores=scores,
                             progress=False)
    log(f"path-patched on {args.discover} prompts")
    sized = []
    for scale in scales:
        sizes = {g: max(1, round(k * scale)) for g, k in base_sizes.items()}
        circuit = candidate_circuit(found.scores.steps, sizes, "ioi").found_in(model)
        faith = faithfulness(model, circuit, data, ref)
        rand = random_circuit_faithfulness(model, circuit, data, ref, n_draws=args.draws)
        log(f"x{scale:g} {circuit.sizes}: faithfulness {faith.value:.3f} [{faith.ci_low:.3f}, {faith.ci_high:.3f}], "
            f"random circuits ({args.draws}) {rand.value:.3f} [{rand.ci_low:.3f}, {rand.ci_high:.3f}]")
        sized.append({"scale": scale, "sizes": circuit.sizes, "circuit": circuit.to_dict(),
                      "faithfulness": faith.to_dict(), "random_circuit_faithfulness": rand.to_dict()})
    top = {g: [[*h, round(float(s.scores[h]), 4)] for h in s.top(5)] for g, s in found.scores.steps.items()}
    result = {"model": str(args.model), "n": args.n, "discover_prompts": args.discover, "draws": args.draws,
              "margin": args.margin, "accuracy": acc.to_dict(), "receivers": found.receivers, "top_scores": top,
              "circuits": sized, "seconds": round(time.time() - start)}
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
