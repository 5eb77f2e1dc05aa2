"""Attribution patching and triage: estimates track exact path patching, triage keeps discovery exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mechtest.errors import MechtestError
from mechtest.methods.path_patching.attribution import attribution_step, spearman, triage
from mechtest.methods.circuits import load_circuit
from mechtest.methods.discovery import discover_circuit
from mechtest.methods.path_patching import Step, StepResult, patch_step
from mechtest.model import load_model
from mechtest.tasks.entity_tracking import make_dataset, path_patching_corruption
from tiny_models import save_tiny

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("value_fetcher", "pos_transmitter", "pos_detector", "struct_reader")
ONE = {g: 1 for g in GROUPS}
STEPS = [
    Step("value_fetcher", "last"),
    Step("pos_transmitter", "last", ((2, 1), (2, 3)), "q"),
    Step("pos_detector", "query_label", ((1, 0), (2, 2)), "v"),
    Step("struct_reader", "query_context", ((1, 1), (2, 0)), "v"),
]


def _data(model, n, n_boxes=3, seed=0):
    base = make_dataset(model.tokenizer, n, n_boxes=n_boxes, seed=seed)
    return base, path_patching_corruption(base, model.tokenizer, seed=seed + 1)


@pytest.fixture(scope="module")
def near_linear(tmp_path_factory):
    """A tiny Llama with small weights: every path is close to linear, so first order should be accurate."""
    directory = save_tiny("llama", tmp_path_factory.mktemp("near-linear"))
    model = load_model(directory, device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.hf.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.02)
    return model


@pytest.mark.parametrize("method", ["gradient", "hybrid"])
@pytest.mark.slow
def test_attribution_agrees_with_exact_patching_on_a_near_linear_model(near_linear, method):
    base, corrupt = _data(near_linear, 8)
    for step in STEPS:
        exact = patch_step(near_linear, base, corrupt, step, progress=False)
        est = attribution_step(near_linear, base, corrupt, step, method=method, progress=False)
        assert exact.scores.abs().max() > 1e-6, "the model should react to patching"
        assert spearman(est.scores, exact.scores) > 0.95, step.group
        torch.testing.assert_close(est.scores, exact.scores, rtol=0, atol=0.1 * float(exact.scores.abs().max()))


def test_hybrid_attribution_of_the_direct_path_is_exact(near_linear):
    base, corrupt = _data(near_linear, 6)
    exact = patch_step(near_linear, base, corrupt, STEPS[0], progress=False)
    est = attribution_step(near_linear, base, corrupt, STEPS[0], method="hybrid", progress=False)
    torch.testing.assert_close(est.scores, exact.scores, rtol=0, atol=1e-6)


def test_exact_engine_scores_a_subset_of_senders_exactly(tmp_path):
    model = load_model(save_tiny("qwen2", tmp_path), device="cpu")
    base, corrupt = _data(model, 6)
    subset = [(2, 3), (0, 1), (1, 2)]
    for step in STEPS:
        full = patch_step(model, base, corrupt, step, progress=False)
        part = patch_step(model, base, corrupt, step, senders=subset, progress=False, max_rows=5)
        mask = torch.zeros_like(full.scores, dtype=torch.bool)
        mask[tuple(zip(*subset))] = True
        torch.testing.assert_close(part.scores[mask], full.scores[mask], rtol=0, atol=1e-6)
        assert not part.scores[~mask].any()


@pytest.mark.parametrize("variant", ["planted", "planted-b"])
def test_triage_recovers_the_planted_circuit(variant):
    model = load_model(ROOT / "fixtures" / "zoo" / variant, device="cpu")
    truth = load_circuit(ROOT / "fixtures" / "circuits" / f"{variant}.json")
    base, corrupt = _data(model, 24, n_boxes=7)
    result = triage(model, base, corrupt, receivers=ONE, sizes=ONE, minimum=4, progress=False)
    for group in GROUPS:
        assert tuple(result.result[group].top(1)) == truth.heads(group), group
        assert set(truth.heads(group)) <= set(result.verified[group])
        assert len(result.verified[group]) == 4


@pytest.mark.parametrize("variant", ["planted", "planted-b"])
@pytest.mark.slow
def test_triage_discovery_equals_exact_discovery(variant):
    model = load_model(ROOT / "fixtures" / "zoo" / variant, device="cpu")
    kw = dict(n_prompts=24, n_boxes=7, sizes=ONE, receivers=ONE, progress=False)
    exact = discover_circuit(model, **kw)
    fast = discover_circuit(model, triage=True, **kw)
    assert fast.circuit == exact.circuit
    assert dict(fast.circuit.groups) == dict(load_circuit(ROOT / "fixtures" / "circuits" / f"{variant}.json").groups)
    for group in GROUPS:
        verified = fast.scores[group].verified
        assert verified is not None and exact.scores[group].verified is None
        torch.testing.assert_close(fast.scores[group].scores[verified], exact.scores[group].scores[verified],
                                   rtol=0, atol=1e-5)


def test_verified_heads_rank_before_estimates():
    scores = torch.tensor([[-0.9, -0.1], [-0.5, 0.2]])
    verified = torch.tensor([[False, True], [True, True]])
    result = StepResult(Step("value_fetcher", "last"), scores, n_prompts=1, seed=0, verified=verified)
    assert result.top(3) == [(1, 0), (0, 1), (1, 1)]
    assert StepResult(Step("value_fetcher", "last"), scores, 1, 0).top(2) == [(0, 0), (1, 0)]


def test_spearman():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0.0, 0.0, 5.0])) == pytest.approx(1.0)


def test_bad_options_are_clear_errors(near_linear):
    base, corrupt = _data(near_linear, 2)
    with pytest.raises(MechtestError, match="unknown attribution method"):
        attribution_step(near_linear, base, corrupt, STEPS[0], method="atp++", progress=False)
    with pytest.raises(MechtestError, match="unknown attribution metric"):
        attribution_step(near_linear, base, corrupt, STEPS[0], metric="logit", progress=False)
