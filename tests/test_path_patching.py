"""Path patching: the fast engine equals the naive reference, and discovery finds planted heads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mechtest.errors import HeadIndexError, MechtestError
from mechtest.methods.circuits import load_circuit
from mechtest.methods.discovery import discover_circuit
from mechtest.methods.path_patching import Step, patch_step, path_patching
from mechtest.model import load_model
from mechtest.tasks.entity_tracking import make_dataset, path_patching_corruption
from tiny_models import ARCH_NAMES, save_tiny

ROOT = Path(__file__).resolve().parents[1]
PLANTED = ROOT / "fixtures" / "zoo" / "planted"
ZOO_BASE = ROOT / "fixtures" / "zoo" / "base"
STEPS = [
    Step("value_fetcher", "last"),
    Step("pos_transmitter", "last", ((2, 1), (2, 3)), "q"),
    Step("pos_detector", "query_label", ((1, 0), (2, 2)), "v"),
    Step("struct_reader", "query_context", ((1, 1), (2, 0)), "v"),
    # a receiver below some senders: those senders' run A starts above it
    Step("pos_transmitter", "last", ((0, 1), (2, 3)), "q"),
]


def _data(model, n, n_boxes=3, seed=0):
    base = make_dataset(model.tokenizer, n, n_boxes=n_boxes, seed=seed)
    return base, path_patching_corruption(base, model.tokenizer, seed=seed + 1)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_fast_engine_equals_naive_reference_on_every_architecture(arch, tmp_path):
    model = load_model(save_tiny(arch, tmp_path), device="cpu")
    base, corrupt = _data(model, 6)
    for step in STEPS:
        naive = patch_step(model, base, corrupt, step, naive=True, batch_size=4, progress=False)
        fast = patch_step(model, base, corrupt, step, batch_size=4, progress=False, max_rows=7)
        assert fast.scores.abs().max() > 1e-3, "the random model should react to patching"
        torch.testing.assert_close(fast.scores, naive.scores, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fast_engine_equals_naive_reference_on_planted():
    model = load_model(PLANTED, device="cpu")
    base, corrupt = _data(model, 16, n_boxes=5)
    kw = dict(receivers={"pos_transmitter": 1, "pos_detector": 1, "struct_reader": 2}, progress=False)
    naive = path_patching(model, base, corrupt, naive=True, **kw)
    fast = path_patching(model, base, corrupt, batch_size=10, **kw)
    for group in naive.steps:
        assert fast[group].step == naive[group].step
        torch.testing.assert_close(fast[group].scores, naive[group].scores, rtol=0, atol=1e-5)


def test_patching_a_prompt_into_itself_scores_zero(tmp_path):
    model = load_model(save_tiny("llama", tmp_path), device="cpu")
    base, _ = _data(model, 5)
    for step in STEPS[:3]:
        result = patch_step(model, base, base, step, progress=False)
        assert result.scores.abs().max() < 1e-5


def test_discovery_recovers_the_planted_circuit():
    model = load_model(PLANTED, device="cpu")
    truth = load_circuit(ROOT / "fixtures" / "circuits" / "planted.json")
    one = {g: 1 for g in ("value_fetcher", "pos_transmitter", "pos_detector", "struct_reader")}
    found = discover_circuit(model, n_prompts=40, n_boxes=7, sizes=one, receivers=one, progress=False)
    assert found.circuit.groups == truth.groups and found.circuit.found_on == (4, 4, "gpt2")
    for group, heads in truth.groups.items():
        scores = found.scores[group].scores
        (l, h), = heads
        others = torch.cat([scores.flatten()[:l * model.n_heads + h], scores.flatten()[l * model.n_heads + h + 1:]])
        assert scores[l, h] < -0.5 and others.abs().max() < 0.05, group


def test_bad_inputs_are_clear_errors(tmp_path):
    model = load_model(save_tiny("llama", tmp_path), device="cpu")
    base, corrupt = _data(model, 4)
    with pytest.raises(MechtestError, match="differ in size"):
        patch_step(model, base, corrupt[:3], STEPS[0], progress=False)
    with pytest.raises(HeadIndexError, match=r"head \(2, 9\) is out of range"):
        patch_step(model, base, corrupt, Step("pos_transmitter", "last", ((2, 9),), "q"), progress=False)
    with pytest.raises(MechtestError, match="receiver site must be"):
        patch_step(model, base, corrupt, Step("pos_transmitter", "last", ((2, 1),), "k_proj"), progress=False)
    with pytest.raises(MechtestError, match="unknown position class"):
        patch_step(model, base, corrupt, Step("x", "first"), progress=False)
    with pytest.raises(MechtestError, match="needs the scores of step 'value_fetcher'"):
        path_patching(model, base, corrupt, groups=("pos_transmitter",), progress=False)


@pytest.mark.skipif(not ZOO_BASE.joinpath("config.json").exists(), reason="zoo base checkpoint not built")
@pytest.mark.slow
def test_fast_engine_equals_naive_reference_on_the_zoo():
    model = load_model(ZOO_BASE, device="cpu")
    n_boxes = json.loads((ZOO_BASE / "mechtest.json").read_text())["n_boxes"]
    base, corrupt = _data(model, 8, n_boxes=n_boxes)
    kw = dict(receivers={"pos_transmitter": 2, "pos_detector": 2, "struct_reader": 2}, progress=False)
    naive = path_patching(model, base, corrupt, naive=True, **kw)
    fast = path_patching(model, base, corrupt, **kw)
    for group in naive.steps:
        torch.testing.assert_close(fast[group].scores, naive[group].scores, rtol=0, atol=1e-5)
