"""The paper's story on real weights: Qwen base and every control, at several seeds.

Base: accuracy, the recorded circuit's faithfulness (fixtures/real/qwen-base.json), random circuits of the
same sizes. Each control: ``mechtest.methods.compare`` against the base with the recorded base circuit, as the real tier's
verdict claims run it - accuracy, faithfulness in the candidate, the value fetchers' share, CMAP of the circuit
heads, verdict - next to its expected verdict.
Results go to fixtures/real/measurements.json (written after each comparison) and MEASUREMENTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from tools.real.common import FIXTURES, N_BOXES, load, meas, threads, write_json

EXPECTED = {"benign": "preserved", "rerouted": "not preserved", "forgetting": "not preserved",
            "noise": "preserved", "renamed": "not preserved"}


def base_circuit():
    """The recorded circuit (fixtures/real/qwen-base.json), as the verdict claims name it."""
    from mechtest.methods.circuits import Circuit

    return Circuit.from_dict(json.loads((FIXTURES / "qwen-base.json").read_text()), "qwen-base")


def controls(names: list[str]) -> list[tuple[str, str]]:
    """(name, kind) of the shipped adapters, then the run-time controls."""
    found = []
    for card in sorted(FIXTURES.glob("*/card.json")):
        found.append((card.parent.name, json.loads(card.read_text())["recipe"]["kind"]))
    found += [("noise-1pct", "noise"), ("renamed-kv", "renamed")]
    return [c for c in found if not names or c[0] in names]


def build(base, name: str, kind: str, seed: int):
    from tools.real import controls as ctl

    if kind == "noise":
        return ctl.noised(base, 0.01, seed=seed)
    if kind == "renamed":
        return ctl.renamed(base, seed=seed)[0]
    return ctl.adapter(base, FIXTURES / name)


def measure_base(base, circuit, seed: int, n: int, cache) -> dict:
    from mechtest.methods.evaluation import accuracy, faithfulness, random_circuit_faithfulness
    from mechtest.tasks.entity_tracking import make_dataset, mean_ablation_set

    data = make_dataset(base.tokenizer, n, n_boxes=N_BOXES, seed=seed + 3)
    ref = mean_ablation_set(base.tokenizer, n, n_boxes=N_BOXES, seed=seed + 4)
    return {"accuracy": meas(accuracy(base, data, seed=seed)),
            "faithfulness": meas(faithfulness(base, circuit, data, ref, seed=seed, cache=cache)),
            "random_circuits": meas(random_circuit_faithfulness(base, circuit, data, ref, n_draws=5,
                                                                seed=seed, cache=cache))}


def measure_control(base, cand, circuit, seed: int, n: int, cache, bound: float, share: int | None) -> dict:
    """The verdict as the real tier's claims give it: ``compare`` with the recorded base circuit."""
    from mechtest.methods.compare import Thresholds, compare

    t0 = time.time()
    c = compare(base, cand, n_prompts=n, n_boxes=N_BOXES, seed=seed, base_circuit=circuit, cache=cache,
                thresholds=Thresholds(faithfulness=bound), progress=False, share_prompts=share)
    return {"verdict": c.verdict, "reason": c.reason, "accuracy": meas(c.candidate_accuracy),
            "base_accuracy": meas(c.base_accuracy), "gain": meas(c.accuracy_difference),
            "faithfulness": meas(c.faithfulness) if c.faithfulness else None,
            "base_faithfulness": meas(c.base_faithfulness) if c.base_faithfulness else None,
            "fetcher_share": meas(c.fetcher_share),
            "cmap_accuracy": meas(c.cmap_accuracy), "cmap_gain": meas(c.cmap_gain),
            "cmap_explained": meas(c.cmap_explained) if c.cmap_explained else None,
            "checks": [f"{k.name}: {k.outcome}" for k in c.checks], "seconds": round(time.time() - t0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.real measure")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--prompts", type=int, default=150)
    parser.add_argument("--controls", nargs="*", default=[])
    parser.add_argument("--faithfulness-bound", type=float, default=0.6,
                        help="as suites/real/verdicts.claims.toml states it")
    parser.add_argument("--share-prompts", type=int, default=50,
                        help="the value fetchers' share on the first this many prompts, as the claims state it")
    parser.add_argument("--skip-base", action="store_true", help="controls only (the base row is measured elsewhere)")
    parser.add_argument("--out", type=Path, default=FIXTURES / "measurements.json")
    args = parser.parse_args(argv)
    threads()
    from mechtest.cache import ActivationCache

    base = load()
    circuit = base_circuit()
    cache = ActivationCache(".real/cache")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"base": {}, "controls": {}}
    results.update(n_prompts=args.prompts, n_boxes=N_BOXES, circuit_sizes=circuit.sizes)

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    for seed in args.seeds:
        if str(seed) not in results["base"] and not args.skip_base:
            results["base"][str(seed)] = measure_base(base, circuit, seed, args.prompts, cache)
            write_json(args.out, results)
        log(f"base seed {seed}: {results['base'].get(str(seed))}")
        for name, kind in controls(args.controls):
            row = results["controls"].setdefault(name, {"kind": kind, "expected": EXPECTED[kind], "seeds": {}})
            if str(seed) in row["seeds"]:
                continue
            cand = build(base, name, kind, seed)
            row["seeds"][str(seed)] = measure_control(base, cand, circuit, seed, args.prompts, cache,
                                                         args.faithfulness_bound, args.share_prompts)
            del cand
            write_json(args.out, results)
            r = row["seeds"][str(seed)]
            log(f"{name} seed {seed}: {r['verdict']} (expected {row['expected']}); {r['checks']}")
    from tools.real import report

    return report.main([])
