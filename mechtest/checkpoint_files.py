"""Checkpoint files checked before they are trusted: whole safetensors, weights matching the config.

Loading refuses what would give silently wrong numbers; every check costs a header read, never the tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

from mechtest import compat
from mechtest.errors import ModelLoadError

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def checked_weight_files(directory: Path, shown: str | None = None) -> list[Path]:
    """The safetensors files ``from_pretrained`` will read, each checked to be whole; pickles are refused.

    Checks cost a header read per file, never the tensors.
    """
    shown = shown or str(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ModelLoadError(f"{index.name} in {shown!r} is not a valid safetensors index") from None
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise ModelLoadError(f"{shown!r} is incomplete: {index.name} names shard{'s' if len(missing) > 1 else ''} "
                                 f"that {'are' if len(missing) > 1 else 'is'} missing: {some(missing)}")
        files = [directory / s for s in shards]
    elif (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    else:
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES and p.is_file())
        if pickles:
            raise ModelLoadError(
                f"{shown!r} holds only pickle weights ({some(pickles)}); mechtest never unpickles: convert "
                "them to safetensors where you trust them (save_pretrained(..., safe_serialization=True))")
        raise ModelLoadError(f"no weights in {shown!r}: expected model.safetensors or model.safetensors.index.json")
    for f in files:
        check_safetensors(f, shown)
    return files


def check_safetensors(path: Path, shown: str) -> None:
    """One-line error unless the file's header parses and its tensors end exactly where the file does."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = json.loads(fh.read(n)) if 0 <= n <= size - 8 and n <= 100 * 2**20 else None
    except (OSError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path.name} in {shown!r} is not a readable safetensors file "
                             f"({size} bytes; truncated or corrupt?)")
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise ModelLoadError(f"{path.name} in {shown!r} is truncated: {size} of {expected} bytes "
                             "(an interrupted download or copy?)")


def check_loading_info(info: dict, shown: str) -> None:
    problems = compat.loading_problems(info)
    parts = [f"{len(names)} {label} ({some(names)})" for key, label in
             (("missing_keys", "missing"), ("unexpected_keys", "unexpected"), ("mismatched_keys", "of another shape"))
             if (names := problems[key])]
    if parts:
        raise ModelLoadError(f"weights of {shown!r} do not match its config: tensors " + "; ".join(parts))


def some(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
