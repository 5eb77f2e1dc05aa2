"""Base-vs-candidate comparison: the verdict must follow the mechanism, not the accuracy.

`planted` and `planted-b` are both perfect and compute the same function with their heads in other
slots: "not preserved". A model against itself: "preserved". The trained zoo (when built): `finetuned`
(the base trained further) keeps the base's mechanism, `other` (independent seed) does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mechtest.errors import ModelMismatchError
from mechtest.methods.compare import Comparison, Thresholds, compare, judge
from mechtest.model import load_model

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "zoo"
FAST = dict(n_prompts=49, n_boxes=7, seed=0, progress=False)


def _load(name):
    if not (ZOO / name).is_dir():
        pytest.skip(f"fixtures/zoo/{name} is not built")
    return load_model(ZOO / name)


@pytest.fixture(scope="module")
def planted():
    return _load("planted")


@pytest.fixture(scope="module")
def planted_vs_b(planted):
    return compare(planted, _load("planted-b"), **FAST)


def test_same_function_other_heads_is_not_preserved(planted_vs_b):
    c = planted_vs_b
    assert c.verdict == "not preserved" and not c.preserved
    assert c.base_accuracy.value >= 0.99 and c.candidate_accuracy.value >= 0.99
    assert c.accuracy_difference.value == 0.0
    assert c.base_faithfulness.value >= 0.99 and c.faithfulness.value <= 0.2
    assert c.overlap["value_fetcher"].n_common == 0 and c.correlation["value_fetcher"] < 0.5
    assert c.importance_correlation < 0 and c.importance["base"][3][1] >= 0.9 and c.importance["candidate"][3][2] >= 0.9
    assert c.base_circuit.heads("value_fetcher") == ((3, 1),)
    assert c.candidate_circuit.heads("value_fetcher") == ((3, 2),)
    assert c.reason().startswith("candidate does not keep the base circuit: faithfulness 0.")
    assert "value_fetcher overlap 0.00 < 0.50" in c.reason()


def test_explain_and_json(planted_vs_b):
    text = planted_vs_b.explain()
    assert text.splitlines()[0].startswith("planted-b vs planted: NOT PRESERVED")
    assert "thresholds: faithfulness >= 0.80" in text and "CMAP" in text and len(text.splitlines()) >= 8
    d = json.loads(json.dumps(planted_vs_b.to_dict(), allow_nan=False))
    assert d["verdict"] == "not preserved" and d["overlap"]["value_fetcher"]["n_common"] == 0
    assert [c["name"] for c in d["checks"]] == ["faithfulness", "value_fetcher overlap", "head-importance correlation",
                                          "candidate accuracy"]
    assert d["thresholds"] == {"faithfulness": 0.8, "overlap": 0.5, "importance": 0.5,
                              "accuracy_over_chance": 0.1, "group": "value_fetcher"}


def test_a_model_against_itself_is_preserved(planted_vs_itself):
    c = planted_vs_itself
    assert c.verdict == "preserved", c.explain()
    assert c.faithfulness.value == 1.0 and c.cmap_gain.value == 0.0
    assert all(o.of_base == 1.0 and o.of_candidate == 1.0 for o in c.overlap.values())
    assert c.correlation["value_fetcher"] == pytest.approx(1.0)
    assert c.reason().startswith("candidate keeps the base circuit: faithfulness 1.00 >= 0.80")


def test_thresholds_decide(planted_vs_b):
    assert isinstance(planted_vs_b, Comparison) and planted_vs_b.thresholds == Thresholds()
    lenient = judge(planted_vs_b, Thresholds(faithfulness=0.0, overlap=0.0, importance=-1.0))
    assert lenient.verdict == "preserved" and judge(lenient, Thresholds()).verdict == "not preserved"


def _perturbed(scale, name):
    """planted with N(0, (scale * std)^2) noise on every weight: same heads, other numbers."""
    model = load_model(ZOO / "planted", name=name)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.hf.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return model


def test_perturbed_weights_keep_the_mechanism_and_a_broken_candidate_does_not(planted):
    tuned = compare(planted, _perturbed(0.0005, "planted-tuned"), **FAST)
    assert tuned.verdict == "preserved" and tuned.candidate_accuracy.value >= 0.9, tuned.explain()
    broken = compare(planted, _perturbed(0.01, "planted-broken"), **FAST)
    # faithfulness alone would pass (circuit and model are both near 0): the accuracy check catches it
    assert broken.verdict == "not preserved", broken.explain()
    assert broken.reason().endswith(f"candidate accuracy {broken.candidate_accuracy.value:.2f} < 0.24")


@pytest.fixture(scope="module")
def planted_vs_itself(planted):
    return compare(planted, planted, **FAST)


def test_unfaithful_base_circuit_skips_the_faithfulness_check(planted_vs_itself):
    """A base circuit that does not explain the base cannot vouch for the candidate: noted, not checked."""
    c = judge(planted_vs_itself, Thresholds(faithfulness=1.01))
    assert c.base_accuracy is planted_vs_itself.base_accuracy  # re-judged, not re-measured
    assert [name for name, *_ in c.checks] == ["head-importance correlation", "candidate accuracy"]
    assert c.notes == ("faithfulness and value_fetcher overlap not checked: the base's discovered circuit explains "
                       "only 1.00 of the base (< 1.01)",)
    assert c.verdict == "preserved" and "note: faithfulness and value_fetcher overlap not checked" in c.explain()


def test_shape_mismatch_is_an_error_not_a_verdict(planted, tmp_path):
    from tiny_models import save_tiny

    tiny = load_model(save_tiny("gpt2", tmp_path / "gpt2"))
    with pytest.raises(ModelMismatchError, match="heads cannot be matched"):
        compare(planted, tiny, **FAST)


# --- the trained zoo -------------------------------------------------------------------------------

def _zoo_boxes(name) -> int:
    card = ZOO / name / "mechtest.json"
    return int(json.loads(card.read_text()).get("n_boxes", 7)) if card.is_file() else 7


@pytest.mark.parametrize("candidate, expected", [("finetuned", "preserved"), ("other", "not preserved")])
def test_zoo_verdicts(candidate, expected):
    base, cand = _load("base"), _load(candidate)
    c = compare(base, cand, n_prompts=100, n_boxes=_zoo_boxes("base"), seed=0, progress=False)
    assert c.verdict == expected, c.explain()
