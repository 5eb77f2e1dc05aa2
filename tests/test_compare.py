"""Base-vs-candidate comparison: the verdict follows the paper's evidence, decided on intervals, and holds
against candidates built to fool it (renamed heads, other heads with the same function, noise, damage).

`planted` and `planted-b` are both perfect and compute the same function with their heads in other slots.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from controls import noisy, renamed_heads
from mechtest.errors import ModelMismatchError
from mechtest.methods.compare import Comparison, Thresholds, compare, judge, profile_evidence
from mechtest.model import load_model

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "zoo"
FAST = dict(n_prompts=98, n_boxes=7, seed=0, progress=False)


@pytest.fixture(scope="module")
def planted():
    return load_model(ZOO / "planted")


@pytest.fixture(scope="module")
def planted_vs_b(planted):
    return compare(planted, load_model(ZOO / "planted-b"), **FAST)


@pytest.fixture(scope="module")
def planted_vs_itself(planted):
    return compare(planted, planted, **FAST)


@pytest.mark.slow
def test_same_function_other_heads_is_not_preserved(planted_vs_b):
    c = planted_vs_b
    assert c.verdict == "not preserved" and not c.preserved
    assert c.base_accuracy.value >= 0.99 and c.candidate_accuracy.value >= 0.99
    assert c.accuracy_difference.value == 0.0
    assert c.base_faithfulness.value >= 0.99 and c.faithfulness.ci_high < 0.8
    assert c.overlap["value_fetcher"] == 0.0
    assert c.base_circuit.heads("value_fetcher") == ((3, 1),)
    assert c.candidate_circuit.heads("value_fetcher") == ((3, 2),)
    outcomes = {k.name: k.outcome for k in c.checks}
    assert outcomes == {"base circuit faithful in base": "PASS", "base circuit faithful in candidate": "FAIL",
                        "base value fetchers' share in candidate": "FAIL",
                        "accuracy vs base (non-inferiority)": "PASS", "candidate accuracy": "PASS"}
    assert c.fetcher_share.ci_high < 0.1, c.fetcher_share.explain()  # L3H1 does nothing in planted-b
    assert c.reason.startswith("base circuit faithful in candidate 0.")
    assert [name for name, _ in c.not_applied] == ["accuracy gain explained by CMAP"]


def test_explain_and_json_carry_every_check(planted_vs_b):
    text = planted_vs_b.explain()
    assert text.splitlines()[0].startswith("planted-b vs planted: NOT PRESERVED")
    assert "check: base circuit faithful in candidate" in text and "vs >= 0.80: FAIL" in text
    assert "not applied: accuracy gain explained by CMAP (no gain clearly above the 0.05 margin to explain" in text
    assert "supporting only: own discoveries' value_fetcher overlap 0.00; path-patching profile correlation" in text
    assert "relabelling p =" in text
    d = json.loads(json.dumps(planted_vs_b.to_dict(), allow_nan=False))
    assert d["verdict"] == "not preserved" and d["overlap"]["value_fetcher"] == 0.0
    assert {c["name"] for c in d["checks"]} >= {"base circuit faithful in candidate",
                                                "base value fetchers' share in candidate",
                                                "accuracy vs base (non-inferiority)"}
    check = next(c for c in d["checks"] if c["name"] == "base circuit faithful in candidate")
    assert set(check) >= {"value", "ci_low", "ci_high", "bound", "outcome"} and check["bound"] == 0.8


@pytest.mark.slow
def test_a_model_against_itself_is_preserved(planted_vs_itself):
    c = planted_vs_itself
    assert c.verdict == "preserved", c.explain()
    assert c.faithfulness.value == 1.0 and c.cmap_gain.value == 0.0
    assert all(v == 1.0 for v in c.overlap.values())
    assert c.fetcher_share.ci_low > 0.9, c.fetcher_share.explain()
    assert c.profile_correlation == pytest.approx(1.0) and c.profile_p_value < 0.01
    assert c.reason == "every check holds on its whole interval"


def test_thresholds_decide_without_running_a_model(planted_vs_b):
    assert isinstance(planted_vs_b, Comparison) and planted_vs_b.thresholds == Thresholds()
    lenient = judge(planted_vs_b, Thresholds(faithfulness=0.0, fetcher_share=0.0))
    assert lenient.verdict == "preserved" and judge(lenient, Thresholds()).verdict == "not preserved"


def test_an_unfaithful_base_circuit_makes_the_verdict_inconclusive(planted_vs_itself):
    """A base circuit that does not explain the base cannot vouch for any candidate: inconclusive, and says so."""
    c = judge(planted_vs_itself, Thresholds(faithfulness=1.01))
    assert c.base_accuracy is planted_vs_itself.base_accuracy  # re-judged, not re-measured
    assert c.verdict == "inconclusive" and "is not faithful in the base" in c.reason
    assert c.not_applied[0][0] == "the candidate checks"


def test_a_straddling_interval_is_inconclusive_with_the_prompts_that_would_decide(planted):
    small = compare(planted, noisy(ZOO / "planted", 0.0005, "tuned"), n_prompts=14, n_boxes=7, seed=0,
                    progress=False)
    # 14 prompts: the Wilson interval of a perfect score is [0.78, 1], which straddles 0.8
    assert small.verdict == "inconclusive", small.explain()
    undecided = [k for k in small.checks if k.outcome == "INCONCLUSIVE"]
    assert undecided and all(k.prompts_to_decide and k.prompts_to_decide > 14 for k in undecided)


# --- controls built to fool the gate ---------------------------------------------------------------

@pytest.mark.slow
def test_small_weight_noise_is_preserved(planted):
    tuned = compare(planted, noisy(ZOO / "planted", 0.0005, "planted-tuned"), **FAST)
    assert tuned.verdict == "preserved", tuned.explain()


@pytest.mark.slow
def test_damaged_weights_are_not_preserved(planted):
    broken = compare(planted, noisy(ZOO / "planted", 0.01, "planted-broken"), **FAST)
    assert broken.verdict == "not preserved", broken.explain()
    assert any(k.name == "candidate accuracy" and k.outcome == "FAIL" for k in broken.checks)


@pytest.mark.parametrize("source", ["planted", "planted-b"])
def test_head_renamed_copies_are_compared_by_index(planted, source):
    """Renaming heads within layers keeps the function exactly, and the gate says "not preserved": it compares
    heads by index (a fine-tune keeps its heads' indices). The profile p-value shows no index coincidence."""
    perms = {layer: [1, 2, 3, 0] for layer in range(4)}
    copy = renamed_heads(ZOO / source, perms, name=f"{source}-renamed")
    original = load_model(ZOO / source)
    ids = torch.tensor([[1, 5, 9, 12, 20]])
    assert torch.allclose(copy.hf(ids).logits, original.hf(ids).logits, atol=1e-4)
    c = compare(planted, copy, **FAST)
    assert c.verdict == "not preserved", c.explain()


def test_profile_p_value_is_a_within_layer_relabelling_null(planted_vs_itself, planted_vs_b):
    assert planted_vs_itself.profile_p_value < 0.01 < planted_vs_b.profile_p_value
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(2, 8, 8, generator=gen)
    near = base + 0.1 * torch.randn(2, 8, 8, generator=gen)
    renamed = base[:, :, torch.randperm(8, generator=gen)]
    r_near, p_near = profile_evidence(_scores(base), _scores(near), 500, 0)
    r_renamed, p_renamed = profile_evidence(_scores(base), _scores(renamed), 500, 0)
    assert r_near > 0.9 and p_near < 0.01
    assert r_renamed < 0.5 and p_renamed > 0.01


def _scores(matrices: torch.Tensor):
    from mechtest.methods.path_patching import PathPatchingResult, Step, StepResult

    result = PathPatchingResult()
    for g, scores in zip(("value_fetcher", "pos_transmitter"), matrices):
        result.steps[g] = StepResult(Step(g, "last"), scores, 1, 0)
    return result


def test_shape_mismatch_is_an_error_not_a_verdict(planted, tmp_path):
    from tiny_models import save_tiny

    tiny = load_model(save_tiny("gpt2", tmp_path / "gpt2"))
    with pytest.raises(ModelMismatchError, match="heads cannot be matched"):
        compare(planted, tiny, **FAST)
