"""First vs second load of a GGUF: dequantising it once into the cache, then reading the cached checkpoint.

    python benchmarks/gguf_load.py path/model.gguf [--threads 2]

Each load runs in a fresh process on an empty cache folder (first) and on the folder the first one filled
(second), as two runs of a test suite would; it prints each load's seconds, the logits' agreement on one
prompt and the ratio second / first. ``--direct`` also times transformers' own in-memory GGUF load (no cache).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, os, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from mechtest.model import load_model
start = time.perf_counter()
if sys.argv[2] == "direct":
    from transformers import AutoModelForCausalLM
    p = os.path.abspath(sys.argv[1])
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(p), gguf_file=os.path.basename(p), dtype=torch.float32)
    seconds = time.perf_counter() - start
    logits = None
else:
    m = load_model(sys.argv[1], device="cpu")
    seconds = time.perf_counter() - start
    ids = m.tokenizer("The book is in Box A, the car is in Box B. Box B contains the", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = m.hf(input_ids=ids).logits[0, -1].tolist()
print(json.dumps({"seconds": seconds, "logits": logits}))
"""


def load(path: str, cache: Path, mode: str, threads: int) -> dict:
    env = {**__import__("os").environ, "MECHTEST_GGUF_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, path, mode, str(threads)], capture_output=True, text=True,
                         env=env, cwd=REPO)
    if out.returncode != 0:
        sys.exit(out.stderr.strip().splitlines()[-1])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--direct", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gguf-cache-") as cache:
        if args.direct:
            d = load(args.gguf, Path(cache) / "unused", "direct", args.threads)
            print(f"transformers in-memory load (before the cache): {d['seconds']:.1f} s "
                  f"(process {d['process']:.1f} s)")
        first = load(args.gguf, Path(cache), "cached", args.threads)
        second = load(args.gguf, Path(cache), "cached", args.threads)
    same = first["logits"] == second["logits"]
    print(f"first load (dequantise + write the cache): {first['seconds']:.1f} s (process {first['process']:.1f} s)")
    print(f"second load (read the cache): {second['seconds']:.1f} s (process {second['process']:.1f} s)")
    print(f"second / first: {second['seconds'] / first['seconds']:.1%} of the load, "
          f"{second['process'] / first['process']:.1%} of the process; logits identical: {same}")


if __name__ == "__main__":
    main()
