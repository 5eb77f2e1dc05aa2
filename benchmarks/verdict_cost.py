"""What a verdict costs next to one circuit discovery, and what a second candidate costs.

    python benchmarks/verdict_cost.py [--base fixtures/zoo/base] [--candidate fixtures/zoo/finetuned] [--prompts 100]

Times, in one run: one discovery of the base (fresh cache); a verdict from a cold cache (it discovers both
models and evaluates); then, in that same cache, a verdict for a second candidate, which reads the base's
discovery back. Prints seconds and ratios to one discovery.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mechtest.api import Mechtest  # noqa: E402
from mechtest.model_registry import ModelSpec, read_task_settings  # noqa: E402
from mechtest.settings import Settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="fixtures/zoo/base")
    parser.add_argument("--candidate", default="fixtures/zoo/finetuned")
    parser.add_argument("--second", default="fixtures/zoo/other")
    parser.add_argument("--prompts", type=int, default=100)
    args = parser.parse_args()
    n_boxes = read_task_settings(REPO / args.base).get("n_boxes", 7)
    models = {name: ModelSpec(name, ref, REPO, "benchmark") for name, ref in
              (("base", args.base), ("candidate", args.candidate), ("second", args.second))}
    with tempfile.TemporaryDirectory() as tmp:
        api = Mechtest(Settings(models=models, cache_dir=Path(tmp) / "a"), rootdir=REPO)
        api.model("base")
        start = time.perf_counter()
        api.discover("base", n=args.prompts, n_boxes=n_boxes)
        discovery = time.perf_counter() - start
        api = Mechtest(Settings(models=models, cache_dir=Path(tmp) / "b"), rootdir=REPO)
        for name in models:
            api.model(name)
        start = time.perf_counter()
        first = api.compare("base", "candidate", n=args.prompts, n_boxes=n_boxes)
        verdict = time.perf_counter() - start
        start = time.perf_counter()
        second = api.compare("base", "second", n=args.prompts, n_boxes=n_boxes)
        again = time.perf_counter() - start
    print(f"{args.prompts} prompts, {n_boxes} boxes")
    print(f"one discovery of the base:           {discovery:7.2f} s")
    print(f"verdict base vs candidate (cold):    {verdict:7.2f} s  ({verdict / discovery:.1f}x one discovery; "
          f"verdict {first.verdict!r})")
    print(f"verdict base vs a second candidate:  {again:7.2f} s  ({again / discovery:.1f}x; base read from the "
          f"cache; verdict {second.verdict!r})")


if __name__ == "__main__":
    main()
