"""Circuits (format, paper circuits, random circuits) and the mean-ablation evaluation engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mechtest.errors import CircuitError, MechtestError
from mechtest.heads import run_and_read
from mechtest.methods.circuits import GROUPS, Circuit, candidate_circuit, load_circuit, random_circuit
from mechtest.methods.evaluation import (ablation_edits, ablation_means, accuracy, completeness, faithfulness, minimality,
                                         random_circuit_faithfulness)
from mechtest.model import load_model
from mechtest.tasks.entity_tracking import make_dataset, mean_ablation_set
from tiny_models import save_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(save_tiny("llama", tmp_path_factory.mktemp("llama")), device="cpu")


@pytest.fixture(scope="module")
def data(tiny):
    return make_dataset(tiny.tokenizer, 12, n_boxes=3, seed=1), mean_ablation_set(tiny.tokenizer, 20, n_boxes=3, seed=2)


def test_paper_circuits_have_the_papers_sizes():
    llama = load_circuit("paper:llama")
    assert llama.sizes == {"value_fetcher": 40, "pos_transmitter": 7, "pos_detector": 20, "struct_reader": 5}
    assert len({(l, h) for _, l, h in llama.nodes}) == 67
    assert len(load_circuit("paper:goat")) == 175 and len(load_circuit("paper:float")) == 175


def test_circuit_round_trip_and_errors(tmp_path, tiny):
    c = Circuit.from_dict({"value_fetcher": [[2, 1]], "pos_detector": [[0, 3], [1, 0]]}, "x")
    c.save(tmp_path / "c.json")
    assert load_circuit(tmp_path / "c.json").to_dict() == c.to_dict()
    with pytest.raises(CircuitError, match="unknown group"):
        Circuit.from_dict({"mover": [[0, 0]]})
    with pytest.raises(CircuitError, match="is not \\[layer, head\\]"):
        Circuit.from_dict({"value_fetcher": [[0, "a"]]})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CircuitError, match="not valid JSON"):
        load_circuit(tmp_path / "bad.json")
    with pytest.raises(CircuitError, match="not found"):
        load_circuit(tmp_path / "missing.json")
    with pytest.raises(CircuitError, match="unknown paper circuit"):
        load_circuit("paper:gpt")
    with pytest.raises(CircuitError, match=r"found on a llama model with 32 layers x 32 heads; .* 3 layers x 4 heads"):
        load_circuit("paper:llama").check(tiny)
    with pytest.raises(CircuitError, match=r"node \(15, 13\) .* outside its 3 layers x 4 heads"):
        load_circuit("paper:llama").any_shape().check(tiny)  # by index: still checked against the shape
    with pytest.raises(CircuitError, match="'found_on' must be"):
        Circuit.from_dict({"value_fetcher": [[0, 0]], "found_on": {"layers": 2}})
    round_trip = Circuit.from_dict(load_circuit("paper:llama").to_dict())
    assert round_trip.found_on == (32, 32, "llama") and round_trip.groups == load_circuit("paper:llama").groups


def test_random_circuits_match_sizes_and_are_distinct():
    like = load_circuit("paper:llama")
    r = random_circuit(like, 32, 32, seed=3)
    assert r.sizes == like.sizes
    for g in GROUPS:
        heads = r.heads(g)
        assert len(set(heads)) == len(heads) and all(0 <= l < 32 and 0 <= h < 32 for l, h in heads)
    assert random_circuit(like, 32, 32, seed=3) == r and random_circuit(like, 32, 32, seed=4) != r
    # a non-square shape: divmod by the head count, never index past the layers (spec Q10)
    assert all(l < 2 for _, l, _h in random_circuit(like, 2, 40, seed=0).nodes)


def test_candidate_circuit_keeps_a_shared_head_as_transmitter_only():
    import torch

    class Scores:
        def __init__(self, heads):
            self.heads = heads
            self.scores = torch.full((3, 4), -1.0)  # every head matters

        def top(self, k):
            return self.heads[:k]

    c = candidate_circuit({"value_fetcher": Scores([(1, 1), (2, 2), (0, 3)]),
                           "pos_transmitter": Scores([(2, 2)])}, {"value_fetcher": 3, "pos_transmitter": 1})
    assert c.heads("value_fetcher") == ((1, 1), (0, 3)) and c.heads("pos_transmitter") == ((2, 2),)


def test_mean_ablation_keeps_exactly_the_circuit_nodes(tiny, data):
    dataset, reference = data
    means = ablation_means(tiny, reference)
    clean_means = torch.stack([run_and_read(tiny, reference.input_ids)[("head_out", l)].mean(0) for l in range(3)])
    torch.testing.assert_close(means, clean_means, rtol=1e-5, atol=1e-6)

    circuit = Circuit.from_dict({"value_fetcher": [[2, 1]], "pos_detector": [[1, 3]], "struct_reader": [[0, 0]]})
    clean = run_and_read(tiny, dataset.input_ids)
    edits = ablation_edits(tiny, dataset, means, keep=circuit)(slice(0, len(dataset)))
    patched = run_and_read(tiny, dataset.input_ids, edits=edits)
    rows = torch.arange(len(dataset))
    kept = {(2, 1): dataset.last_pos, (1, 3): dataset.query_label_pos, (0, 0): dataset.query_context_pos}
    for l in range(3):
        out = patched[("head_out", l)]
        expected = means[l].expand_as(out).clone()
        for (kl, kh), pos in kept.items():
            if kl == l:
                # a kept head computes on the ablated residual stream: in layer 0 that is the clean one
                expected[rows, pos, kh] = (clean if l == 0 else patched)[("head_out", l)][rows, pos, kh]
                assert not torch.allclose(out[rows, pos, kh], means[l][pos, kh])
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)

    # "model minus K" changes only K's nodes
    edits = ablation_edits(tiny, dataset, means, ablate=[("value_fetcher", 0, 2)])(slice(0, len(dataset)))
    out = run_and_read(tiny, dataset.input_ids, edits=edits)[("head_out", 0)]
    expected = clean[("head_out", 0)].clone()
    expected[rows, dataset.last_pos, 2] = means[0][dataset.last_pos, 2]
    torch.testing.assert_close(out, expected)


def test_measurements_carry_intervals_and_sample(tiny, data):
    dataset, reference = data
    acc = accuracy(tiny, dataset, seed=5)
    assert acc.ci_low <= acc.value <= acc.ci_high and acc.n_prompts == 12 and acc.seed == 5
    whole = Circuit.from_dict({g: [[l, h] for l in range(3) for h in range(4)] for g in GROUPS})
    if acc.value > 0:
        f = faithfulness(tiny, whole, dataset, reference)
        assert f.details["model_accuracy"] == pytest.approx(acc.value)
    c = completeness(tiny, whole, dataset, reference, mode="group")
    assert len(c.details["pairs"]) == 4 and c.ci_low <= c.value <= c.ci_high + 1e-12


def test_faithfulness_of_a_model_that_is_never_right_is_an_error(tiny):
    dataset = make_dataset(tiny.tokenizer, 6, n_boxes=3, seed=1)
    wrong = type(dataset)(**{**dataset.__dict__, "answer_ids": torch.zeros_like(dataset.answer_ids)})
    with pytest.raises(MechtestError, match="faithfulness is undefined"):
        faithfulness(tiny, load_circuit({"value_fetcher": [[0, 0]]}), wrong, mean_ablation_set(tiny.tokenizer, 6, n_boxes=3))


# --- ground truth: the planted-circuit checkpoint -------------------------------------------------------

PLANTED = Path(__file__).resolve().parents[1] / "fixtures" / "zoo" / "planted"


@pytest.fixture(scope="module")
def planted():
    model = load_model(PLANTED, device="cpu")
    truth = load_circuit(PLANTED.parent.parent / "circuits" / "planted.json")
    data = make_dataset(model.tokenizer, 100, n_boxes=7, seed=11), mean_ablation_set(model.tokenizer, 100, n_boxes=7, seed=12)
    return model, truth, data


@pytest.mark.slow
def test_planted_circuit_is_faithful_and_every_node_is_needed(planted):
    model, truth, (dataset, reference) = planted
    f = faithfulness(model, truth, dataset, reference)
    assert f.value >= 0.98 and f.details["model_accuracy"] >= 0.99
    for node in truth.nodes:
        broken = faithfulness(model, truth.without([node]), dataset, reference)
        assert broken.value <= 0.35, f"circuit without {node} keeps faithfulness {broken.value:.2f}"
    assert random_circuit_faithfulness(model, truth, dataset, reference, n_draws=5).value <= 0.35


@pytest.mark.slow
def test_minimality_prunes_decoys_and_keeps_the_planted_heads(planted):
    model, truth, (dataset, reference) = planted
    decoys = {"value_fetcher": [[3, 0]], "pos_transmitter": [[2, 0]], "pos_detector": [[1, 3]], "struct_reader": [[0, 1]]}
    candidate = Circuit.from_dict({g: [list(h) for h in truth.heads(g)] + decoys[g] for g in GROUPS}, "candidate")
    pruned, report = minimality(model, candidate, dataset, reference, threshold=0.25)
    assert pruned.to_dict() == truth.to_dict()
    assert all(report[n]["score"] > 5 for n in truth.nodes)
    # At chance-level accuracy one prompt is a large *relative* drop (0.13 -> 0.12 is 8%), so the paper's
    # 1% rule can keep a decoy whose partner is a planted head; hence the higher threshold (a parameter,
    # spec Q9), which still leaves a wide margin to the planted heads' scores.
    assert max(report[n]["score"] for n in candidate.nodes if n not in truth.nodes) < 0.25


def test_completeness_of_the_planted_circuit_is_near_zero(planted):
    model, truth, (dataset, reference) = planted
    c = completeness(model, truth, dataset[:60], reference, mode="group")
    assert c.value <= 0.1


def test_candidate_circuit_leaves_a_group_empty_when_no_head_has_an_effect():
    import torch

    from mechtest.methods.path_patching import Step, StepResult

    scores = torch.zeros(2, 3)
    scores[1, 2] = -0.5
    steps = {"value_fetcher": StepResult(Step("value_fetcher", "last"), scores, 10, 0),
             "pos_transmitter": StepResult(Step("pos_transmitter", "last"), torch.zeros(2, 3), 10, 0)}
    found = candidate_circuit(steps, {"value_fetcher": 2, "pos_transmitter": 1})
    assert found.heads("value_fetcher") == ((1, 2),) and found.heads("pos_transmitter") == ()
