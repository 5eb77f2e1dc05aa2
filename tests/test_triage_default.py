"""discover_circuit's default: triage for many heads and a large LM head, exact path patching otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

import mechtest.methods.cached as cached
import mechtest.methods.discovery as discovery
from mechtest.model import load_model

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "zoo"
pytestmark = pytest.mark.slow  # three discoveries


@pytest.fixture(scope="module")
def base():
    return load_model(ZOO / "base", device="cpu")


def _spy(monkeypatch):
    """Records each discovery's triage choice: 1 for triage."""
    calls = []
    real = cached.cached_path_patching

    def spy(*args, **kwargs):
        calls.extend([1] if kwargs["triage"] else [])
        return real(*args, **kwargs)

    monkeypatch.setattr(cached, "cached_path_patching", spy)
    return calls


def test_default_is_exact_below_the_rule_and_triage_above(base, monkeypatch):
    calls = _spy(monkeypatch)
    assert not discovery.triage_by_default(base)  # 16 heads, a tiny vocabulary
    exact = discovery.discover_circuit(base, n_prompts=8, n_boxes=3)
    assert calls == []
    size = discovery.lm_head_size(base)
    monkeypatch.setattr(discovery, "TRIAGE_MIN_HEADS", 16)
    monkeypatch.setattr(discovery, "TRIAGE_MIN_LM_HEAD", size + 1)
    assert not discovery.triage_by_default(base)  # both bounds must hold
    monkeypatch.setattr(discovery, "TRIAGE_MIN_LM_HEAD", size)
    assert discovery.triage_by_default(base)
    triaged = discovery.discover_circuit(base, n_prompts=8, n_boxes=3)
    assert calls == [1]
    assert discovery.discover_circuit(base, n_prompts=8, n_boxes=3, triage=False).circuit == exact.circuit
    assert calls == [1]  # an explicit choice wins
    assert triaged.circuit.groups.keys() == exact.circuit.groups.keys()
