"""Cold vs warm run of the shipped suites: how much the claim-result and activation caches save.

    python benchmarks/warm_rerun.py

Runs ``pytest suites`` twice on a fresh cache directory and prints the wall time of each process and the
session time pytest reports (which excludes interpreter start-up and imports), with their ratios.
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


def run(cache: Path) -> tuple[float, float, str]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "suites",
                          f"--mechtest-cache-dir={cache}"], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    tail = out.stdout.strip().splitlines()[-1]
    session = float(re.search(r"in ([\d.]+)s", tail).group(1))
    return wall, session, tail


def main() -> None:
    argparse.ArgumentParser(description="Cold vs warm run of pytest suites on a fresh cache directory.").parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        cold = run(cache)
        warm = run(cache)
    print(f"cold: {cold[0]:6.2f} s wall, {cold[1]:6.2f} s in session  ({cold[2]})")
    print(f"warm: {warm[0]:6.2f} s wall, {warm[1]:6.2f} s in session  ({warm[2]})")
    print(f"ratio: {cold[0] / warm[0]:.1f}x wall, {cold[1] / warm[1]:.1f}x in session")


if __name__ == "__main__":
    main()
