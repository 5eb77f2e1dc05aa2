"""discover_circuit's default: triage for many heads and a large LM head, exact path patching otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

import mechtest.methods.discovery as discovery
import mechtest.methods.path_patching.attribution as attribution
from mechtest.model import load_model

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "zoo"


@pytest.fixture(scope="module")
def base():
    return load_model(ZOO / "base", device="cpu")


def _spy(monkeypatch):
    calls = []
    real = attribution.triage

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attribution, "triage", spy)
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
