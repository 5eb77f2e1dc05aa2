"""Write any model mechtest can load (GGUF, PEFT adapter, hub id, directory) as a plain safetensors checkpoint.

``python -m mechtest.export REF OUT_DIR`` (or ``mechtest-export``): the weights as loaded (a GGUF dequantised,
an adapter merged), the config, the tokenizer and the model's ``mechtest.json``, so a fine-tune can be shipped,
diffed or loaded by any tool that reads Hugging Face checkpoints. The folder appears whole or not at all.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from mechtest.errors import MechtestError, ModelLoadError


def export(ref, out_dir: str | os.PathLike, *, dtype: str | None = None) -> Path:
    """Load ``ref`` on CPU and save it to ``out_dir`` (which must not exist, or be empty)."""
    from mechtest.model import load_model
    from mechtest.model_registry import task_settings_file

    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelLoadError(f"{str(out)!r} exists and is not an empty directory; choose a new folder")
    model = load_model(ref, device="cpu", dtype=dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.hf.save_pretrained(tmp, safe_serialization=True)
        model.tokenizer.save_pretrained(tmp)
        card = task_settings_file(model.ref)
        if card is not None:
            shutil.copy(card, tmp / "mechtest.json")
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mechtest-export", description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="a model name as --mechtest-model takes it: dir, .gguf, hub id, ADAPTER_DIR, "
                                    "BASE+ADAPTER_DIR")
    parser.add_argument("out_dir", help="new folder for the safetensors checkpoint")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    args = parser.parse_args(argv)
    try:
        out = export(args.ref, args.out_dir, dtype=args.dtype)
    except MechtestError as e:
        print(f"mechtest-export: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
