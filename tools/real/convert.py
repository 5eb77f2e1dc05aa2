"""Write the GGUF as a float32 safetensors checkpoint (``.real/qwen-hf``): peft trains on that, and it loads faster.

transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the weights go into a model built from the
same config, which then saves like any other.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HF_DIR = Path(".real/qwen-hf")


def convert(gguf: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM

    from mechtest.model import load_model

    loaded = load_model(gguf, dtype="float32")
    config = loaded.hf.config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    missing, unexpected = fresh.load_state_dict(loaded.hf.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise SystemExit(f"error: the converted weights do not match the config: {missing[:3]} {unexpected[:3]}")
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(out, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.real convert")
    parser.add_argument("--gguf", type=Path, default=Path(".real/qwen/model.gguf"))
    parser.add_argument("--out", type=Path, default=HF_DIR)
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        print(f"error: {args.gguf} is missing: run python -m tools.real fetch", file=sys.stderr)
        return 1
    torch.set_num_threads(2)
    print(convert(args.gguf, args.out))
    return 0
