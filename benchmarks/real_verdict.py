"""What one verdict of the real tier costs, as a user runs it: ``pytest`` on a claim, in a fresh process.

    python benchmarks/real_verdict.py [--claim verdict-benign-qv-r8-lr2e-4] [--then verdict-rerouted-vf-pt-b]
                                      [--discover]

Needs the fetched model (``python -m tools.real fetch``). Times (with the cold run's steps, from its progress
lines), each a fresh pytest process on a fresh result cache: the claim as shipped (recorded base circuit); the same claim again on that cache (a warm rerun: it must
load no model); another adapter's claim on that cache (``--then``: the base's runs are cached, as for every
verdict after a base's first); with ``--discover``, the claim without its recorded circuit (the base and the candidate are
discovered on ``discover_prompts``). The GGUF's dequantised copy is cached outside the result cache
(``$MECHTEST_GGUF_CACHE``): the first run ever also pays the conversion, which the output names.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "suites" / "real"


def run(target: str, claim: str, cache: Path) -> tuple[float, str, bool, list[str]]:
    """Wall seconds, pytest's last line, whether a model was loaded and the steps' "done in" lines."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", target, "-k", claim,
                          f"--mechtest-cache-dir={cache}", "--mechtest-progress=yes"], cwd=REPO, capture_output=True,
                         text=True)
    wall = time.perf_counter() - start
    lines = (out.stdout + out.stderr).strip().splitlines()
    loaded = any(re.search(r"mechtest: load(ing|ed) ", line) for line in lines)
    verdict = next((line.strip() for line in lines if line.startswith(claim.split("[")[0])), lines[-1])
    steps = [line.split("\r")[-1].removeprefix("mechtest: ") for line in lines if " done in " in line]
    return wall, f"{verdict} | {lines[-1]}", loaded, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claim", default="verdict-benign-qv-r8-lr2e-4")
    parser.add_argument("--then", default="verdict-rerouted-vf-pt-b",
                        help="another claim run next on the same cache (the base's runs cached); '' to skip")
    parser.add_argument("--discover", action="store_true", help="also time the claim with base discovery")
    args = parser.parse_args()
    if not (REPO / ".real" / "qwen" / "model.gguf").is_file():
        sys.exit("the real model is not fetched: run `python -m tools.real fetch`")
    shipped = str(SUITE / "verdicts.claims.toml")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        cold = run(shipped, args.claim, cache)
        warm = run(shipped, args.claim, cache)
        print(f"recorded base circuit, cold: {cold[0]:7.1f} s  ({cold[1]})")
        print("".join(f"    {step}\n" for step in cold[3]), end="")
        print(f"same claim, warm rerun:      {warm[0]:7.1f} s  (a model loaded: {warm[2]})")
        if args.then:
            then = run(shipped, args.then, cache)
            print(f"next adapter, base cached:   {then[0]:7.1f} s  ({then[1]})")
        if args.discover:
            text = (SUITE / "verdicts.claims.toml").read_text()
            block = next(b for b in text.split("[[claim]]") if f'"{args.claim}"' in b)
            block = "\n".join(line for line in block.splitlines() if not line.startswith("base_circuit"))
            probe = SUITE / "bench-discovery.claims.toml"
            probe.write_text("[[claim]]" + block.replace(f'"{args.claim}"', f'"{args.claim}-discovered"'))
            try:
                found = run(str(probe), f"{args.claim}-discovered", Path(tmp) / "discover")
            finally:
                probe.unlink()
            print(f"with base discovery, cold:   {found[0]:7.1f} s  ({found[1]})")


if __name__ == "__main__":
    main()
