"""Shared pieces of the real-model tools: where things live, loading with few threads, JSON output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

GGUF = Path(".real/qwen/model.gguf")
HF_DIR = Path(".real/qwen-hf")
FIXTURES = Path("fixtures/real")
N_BOXES = 3  # 3-box prompts are short (fast on CPU) and Qwen 0.5B is ~0.6 accurate on them


def threads(n: int | None = None) -> None:
    """CPU is shared: 1-2 threads (MECHTEST_THREADS overrides)."""
    torch.set_num_threads(int(os.environ.get("MECHTEST_THREADS", n or 1)))


def load(ref: str | Path = HF_DIR, name: str = "qwen"):
    from mechtest.model import load_model

    if not Path(ref).exists():
        raise SystemExit(f"error: {ref} is missing: run python -m tools.real fetch && python -m tools.real convert")
    return load_model(ref, dtype="float32", name=name)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def meas(m) -> dict:
    """A Measurement as {value, ci}."""
    return {"value": round(float(m.value), 4), "ci": [round(float(m.ci_low), 4), round(float(m.ci_high), 4)],
            "n": int(m.n_prompts)}
