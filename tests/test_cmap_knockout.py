"""CMAP (spec 7) and attention knockout (spec 8) on the planted GPT-2, whose circuit is known.

Planted heads: struct_reader (0, 2), pos_detector (1, 0), pos_transmitter (2, 3), value_fetcher (3, 1).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mechtest.errors import CircuitError, HeadIndexError, MechtestError
from mechtest.heads import hooked, run_and_read, zero_heads
from mechtest.errors import ModelMismatchError
from mechtest.methods.cmap import check_compatible, cmap, cmap_correct
from mechtest.methods.evaluation import accuracy, correct
from mechtest.methods.knockout import _mask_hook, attention_knockout, edge_positions, knocked_out
from mechtest.model import load_model
from mechtest.tasks.entity_tracking import make_dataset

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "fixtures" / "zoo"
CIRCUIT = json.loads((ROOT / "fixtures" / "circuits" / "planted.json").read_text()) \
    if (ROOT / "fixtures" / "circuits" / "planted.json").is_file() else {}

pytestmark = pytest.mark.skipif(not (ZOO / "planted").is_dir(), reason="fixtures/zoo/planted is not built")


@pytest.fixture(scope="module")
def planted():
    return load_model(ZOO / "planted")


@pytest.fixture(scope="module")
def data(planted):
    return make_dataset(planted.tokenizer, 49, n_boxes=7, seed=3)


def _zero_wo(model, heads):
    """Zero the planted heads' slices of W_O (GPT-2's c_proj is a Conv1D: weight (in, out))."""
    for layer, head in heads:
        w = model.hf.transformer.h[layer].attn.c_proj.weight
        with torch.no_grad():
            w[head * model.head_dim:(head + 1) * model.head_dim] = 0


# --- CMAP ------------------------------------------------------------------------------------------

def test_cmap_into_itself_is_its_own_accuracy(planted, data):
    own = accuracy(planted, data).value
    assert own >= 0.99
    for circuit in (None, CIRCUIT):
        for transfer in ("head_output", "head_contribution"):
            r = cmap(planted, planted, data, circuit=circuit, transfer=transfer, progress=False)
            assert r.value == own and r.metric == "cmap_accuracy", (circuit, transfer)


def test_cmap_restores_a_copy_with_disabled_heads(planted, data):
    """Zeroing the planted heads' outputs breaks the copy; the intact model's outputs at the circuit positions fix it."""
    broken = load_model(ZOO / "planted", name="planted-disabled")
    heads = [tuple(h) for g in CIRCUIT.values() for h in g]
    disable = {("head_out", l): zero_heads([h]) for l, h in heads}
    with hooked(broken, disable):
        assert accuracy(broken, data).value <= 0.05
        restored = cmap(broken, planted, data, circuit=CIRCUIT, progress=False)
        only_sr = cmap(broken, planted, data, circuit=CIRCUIT, group="struct_reader", progress=False)
    assert restored.value >= 0.99, restored.explain()
    assert only_sr.value <= 0.05  # the downstream planted heads are still disabled


def test_cmap_reports_the_donors_own_correctness_from_the_same_pass(planted, data):
    """The zoo's base answers about two thirds of 7-box prompts: its hits from CMAP's pass must be its own."""
    donor = load_model(ZOO / "base", name="base")
    expected = correct(donor, data)
    assert 0.2 < expected.mean() < 0.95
    for transfer in ("head_output", "head_contribution"):
        own: list = []
        cmap_correct(planted, donor, data, circuit=CIRCUIT, transfer=transfer, batch_size=7, donor_hits=own,
                     progress=False)
        assert np.array_equal(np.concatenate(own), expected), transfer


def test_cmap_transfers_pre_wo_outputs_unless_asked_for_contributions(data, planted):
    """With the planted heads' W_O zeroed, their pre-W_O outputs are useless; their W_O terms restore the model."""
    broken = load_model(ZOO / "planted", name="planted-no-wo")
    _zero_wo(broken, [tuple(h) for g in CIRCUIT.values() for h in g])
    assert accuracy(broken, data).value <= 0.05
    pre = cmap(broken, planted, data, circuit=CIRCUIT, progress=False)
    post = cmap(broken, planted, data, circuit=CIRCUIT, transfer="head_contribution", progress=False)
    assert pre.value <= 0.05 and post.value >= 0.99
    assert post.details["transfer"] == "head_contribution"


def test_cmap_mismatches_are_errors(planted, data, tmp_path):
    from tiny_models import save_tiny
    from tokenizers_for_tests import byte_bpe

    tiny = load_model(save_tiny("gpt2", tmp_path / "gpt2"))
    with pytest.raises(ModelMismatchError, match="4 layers x 4 heads of dim 64 but 'gpt2' has 3 layers x 4 heads"):
        cmap(planted, tiny, data, progress=False)
    other_tok = dataclasses.replace(planted, tokenizer=byte_bpe(), name="bpe")
    with pytest.raises(ModelMismatchError, match="different tokenizers"):
        check_compatible(planted, other_tok)
    with pytest.raises(CircuitError, match="give a circuit"):
        cmap(planted, planted, data, group="value_fetcher", progress=False)
    with pytest.raises(MechtestError, match="unknown CMAP transfer"):
        cmap(planted, planted, data, transfer="post", progress=False)


# --- attention knockout ----------------------------------------------------------------------------

@pytest.mark.slow
def test_knockout_curves_follow_the_planted_layers(planted, data):
    obj = attention_knockout(planted, data, "last->object", progress=False)
    control = attention_knockout(planted, data, "last->random", progress=False)
    label = attention_knockout(planted, data, "last->query_label", start_layers=[2, 3], progress=False)
    detect = attention_knockout(planted, data, "query_label->query_context", start_layers=[1, 2], progress=False)
    assert obj.baseline.value >= 0.99
    assert max(obj.values()) <= 0.05, obj.explain()          # the value fetcher (layer 3) reads the object
    assert min(control.values()) >= 0.95, control.explain()
    assert label.at(2).value <= 0.3 and label.at(3).value >= 0.95, label.explain()   # transmitter in layer 2
    assert detect.at(1).value <= 0.05 and detect.at(2).value >= 0.95, detect.explain()  # detector in layer 1


def test_knockout_matches_attention_computed_by_hand(planted, data):
    """Layer-3 head outputs under knockout equal softmax(qk/sqrt(d) + causal, edge at -inf) v from q, k, v."""
    f, to = edge_positions(data, "last->object")
    layer = 3
    clean = run_and_read(planted, data.input_ids, sites=("q", "k", "v"), layers=[layer])
    with knocked_out(planted, f, to, [layer]):
        got = run_and_read(planted, data.input_ids, sites=("head_out",), layers=[layer])[("head_out", layer)]
    q, k, v = (clean[(s, layer)] for s in ("q", "k", "v"))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / planted.head_dim ** 0.5
    seq = scores.shape[-1]
    scores = scores.masked_fill(torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1), float("-inf"))
    rows = torch.arange(len(data))
    scores[rows, :, f, to] = float("-inf")
    want = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[rows, f], run_and_read(planted, data.input_ids, layers=[layer])[("head_out", layer)][rows, f])


def test_knockout_on_llama_touches_only_the_edge_and_later_layers(tmp_path):
    from tiny_models import save_tiny

    tiny = load_model(save_tiny("llama", tmp_path / "llama"))
    d = make_dataset(tiny.tokenizer, 6, n_boxes=3, seed=0)
    f, to = edge_positions(d, "query_label->query_context")
    clean = run_and_read(tiny, d.input_ids, sites=("head_out",))
    with knocked_out(tiny, f, to, [1, 2]):
        ko = run_and_read(tiny, d.input_ids, sites=("head_out",))
    assert torch.equal(ko[("head_out", 0)], clean[("head_out", 0)])
    rows = torch.arange(len(d))
    diff = (ko[("head_out", 1)] - clean[("head_out", 1)]).abs().amax(dim=(2, 3))  # (batch, seq)
    assert (diff[rows, f] > 0).all()
    diff[rows, f] = 0
    assert diff.max() == 0  # in the first knocked-out layer only the `from` position changes


def test_mask_hook_builds_the_causal_mask_when_none_is_passed():
    hidden = torch.zeros(2, 5, 8)
    _, kwargs = _mask_hook(torch.tensor([4, 3]), torch.tensor([1, 0]))(None, (), {"hidden_states": hidden,
                                                                                  "attention_mask": None})
    m = kwargs["attention_mask"]
    assert m.shape == (2, 1, 5, 5)
    low = torch.finfo(torch.float32).min
    assert m[0, 0, 4, 1] == low and m[1, 0, 3, 0] == low and m[0, 0, 4, 0] == 0 and m[0, 0, 1, 2] == low
    bool_mask = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()
    _, kwargs = _mask_hook(torch.tensor([4, 4]), torch.tensor([2, 3]))(None, (hidden,), {"attention_mask": bool_mask})
    assert not kwargs["attention_mask"][0, 0, 4, 2] and kwargs["attention_mask"][0, 0, 4, 3]
    assert not kwargs["attention_mask"][1, 0, 4, 3] and bool_mask.all(-1).sum() == 1  # input left untouched


def test_knockout_errors(planted, data):
    with pytest.raises(MechtestError, match="unknown knockout edge"):
        attention_knockout(planted, data, "last->nowhere", progress=False)
    with pytest.raises(HeadIndexError, match="later position"):
        with knocked_out(planted, torch.tensor([1]), torch.tensor([2]), [0]):
            pass
    with pytest.raises(MechtestError, match="one per prompt"):
        attention_knockout(planted, data, (torch.tensor([1]), torch.tensor([0])), progress=False)


def test_random_control_positions_avoid_the_answer_path(data):
    f, to = edge_positions(data, "last->random", seed=1)
    rows = torch.arange(len(data))
    assert torch.equal(f, data.last_pos)
    assert not (to == data.object_pos[rows, data.queried_index]).any()
    assert not (to == data.query_context_pos).any()
    assert (to >= data.object_pos.min(1).values).all() and (to <= data.label_pos.max(1).values).all()
    assert torch.equal(to, edge_positions(data, "last->random", seed=1)[1])


# --- the zoo (fixtures/zoo: base, finetuned; the planted layout's circuit, trained) -------------------

@pytest.fixture(scope="module")
def zoo():
    if not ((ZOO / "base").is_dir() and (ZOO / "finetuned").is_dir()):
        pytest.skip("fixtures/zoo/base and finetuned are not built")
    n_boxes = json.loads((ZOO / "base" / "mechtest.json").read_text()).get("n_boxes", 7)
    base, ft = load_model(ZOO / "base"), load_model(ZOO / "finetuned")
    return base, ft, make_dataset(base.tokenizer, 150, n_boxes=n_boxes, seed=7)


@pytest.mark.slow
def test_zoo_cmap_finetuned_into_base_closes_the_gap(zoo):
    base, ft, data = zoo
    base_acc, ft_acc = accuracy(base, data).value, accuracy(ft, data).value
    assert cmap(base, base, data, progress=False).value == base_acc  # a model into itself: identity
    patched = cmap(base, ft, data, progress=False)
    assert patched.value >= base_acc + 0.5 * (ft_acc - base_acc), (base_acc, ft_acc, patched.explain())


@pytest.mark.slow
def test_zoo_knockout_last_to_query_label_in_layer_0(zoo):
    _, ft, data = zoo
    label = attention_knockout(ft, data, "last->query_label", progress=False)
    control = attention_knockout(ft, data, "last->random", progress=False)
    chance = 1 / data.n_boxes
    # the position transmitter (layer 2) reads the query label; from layer 3 on nothing does
    assert label.at(0).value <= chance + 0.1 and label.at(3).value >= label.baseline.value - 0.05, label.explain()
    assert min(control.values()) >= control.baseline.value - 0.05, control.explain()
