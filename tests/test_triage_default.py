"""discover_circuit's default: triage from TRIAGE_FROM heads x prompt tokens on, exact path patching below."""

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
    assert not discovery.triage_by_default(base, n_boxes=3)  # 16 heads x 26 tokens
    exact = discovery.discover_circuit(base, n_prompts=8, n_boxes=3)
    assert calls == []
    monkeypatch.setattr(discovery, "TRIAGE_FROM", 16 * 26)
    assert discovery.triage_by_default(base, n_boxes=3) and not discovery.triage_by_default(base, n_boxes=2)
    triaged = discovery.discover_circuit(base, n_prompts=8, n_boxes=3)
    assert calls == [1]
    assert discovery.discover_circuit(base, n_prompts=8, n_boxes=3, triage=False).circuit == exact.circuit
    assert calls == [1]  # an explicit choice wins
    assert triaged.circuit.groups.keys() == exact.circuit.groups.keys()
