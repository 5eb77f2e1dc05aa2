"""DCM (spec 6.1-6.6) and functionality patching (spec 6.7) on the planted GPT-2, whose heads are known.

In `planted` the value fetcher (3, 1) writes the fetched object's code where the unembedding reads it,
so it alone carries the object value: patching it from a source prompt makes the base answer the
source's object. Every other head of layers 2-3 except the position transmitter (2, 3) is a decoy
with small random weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mechtest.errors import CircuitError, HeadIndexError, TaskError
from mechtest.methods.dcm import _hits, _mixed_logits, _source_values, _split, dcm, functionality_patching
from mechtest.model import load_model
from mechtest.tasks.entity_tracking import desiderata

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "zoo"
VF, PT = (3, 1), (2, 3)
DECOYS = [(3, 0), (3, 2), (3, 3), (2, 0), (2, 1)]
SMALL = dict(n_boxes=7, n_train=64, n_val=32, n_test=32, batch_size=16, progress=False)

pytestmark = pytest.mark.skipif(not (ZOO / "planted").is_dir(), reason="fixtures/zoo/planted is not built")


@pytest.fixture(scope="module")
def planted():
    return load_model(ZOO / "planted")


@pytest.fixture(scope="module")
def planted_b():
    return load_model(ZOO / "planted-b")


@pytest.fixture(scope="module")
def vf_object_run(planted):
    circuit = {"value_fetcher": [list(h) for h in [DECOYS[0], VF, *DECOYS[1:]]]}
    return dcm(planted, circuit, "value_fetcher", "object_value", seed=0, **SMALL)


def test_dcm_selects_exactly_the_planted_value_fetcher(vf_object_run):
    r = vf_object_run
    assert r.selected == (VF,), r.explain()
    assert r.test.value >= 0.95 and r.val_accuracy >= 0.95, r.explain()
    assert r.mask[r.heads.index(VF)] < 0.5
    assert all(r.mask[r.heads.index(h)] >= 0.5 for h in DECOYS)
    assert r.test.n_prompts == 32 and r.test.ci_low <= r.test.value <= r.test.ci_high
    assert r.history and all(step % 4 == 0 or step == r.history[-1][0] for step, _, _ in r.history)


def test_dcm_is_deterministic_per_seed(planted, vf_object_run):
    circuit = {"value_fetcher": [list(h) for h in [DECOYS[0], VF, *DECOYS[1:]]]}
    again = dcm(planted, circuit, "value_fetcher", "object_value", seed=0, **SMALL)
    assert again.mask == vf_object_run.mask and again.history == vf_object_run.history


def test_dcm_finds_no_positional_value_fetcher(planted):
    """The planted circuit binds by object code, not by position: no head meets the positional target."""
    r = dcm(planted, {"value_fetcher": [list(VF), [3, 0]]}, "value_fetcher", "positional", seed=1, **SMALL)
    assert r.test.value <= 0.1, r.explain()


def test_mixing_interpolates_between_base_and_full_patch(planted):
    """mask 1 = the clean base run; mask 0 = full replacement by the source, as the read-out patches it."""
    pairs = desiderata(planted.tokenizer, "object_value", 8, n_boxes=5, seed=3)
    heads = (VF, (3, 0))
    src = _source_values(planted, heads, "value_fetcher", pairs, 8)
    sl = slice(0, 8)
    with torch.no_grad():
        keep = _mixed_logits(planted, heads, "value_fetcher", pairs, sl, src, torch.ones(2))
        swap = _mixed_logits(planted, heads, "value_fetcher", pairs, sl, src, torch.zeros(2))
        clean = planted.hf(input_ids=pairs.base.input_ids).logits[:, -1]
    torch.testing.assert_close(keep, clean)
    assert torch.equal(torch.from_numpy(_hits(planted, heads, "value_fetcher", pairs, src, (True, True), 8)),
                       swap.argmax(-1) == pairs.target_ids)
    assert (swap.argmax(-1) == pairs.target_ids).all()
    mask = torch.tensor([0.5, 1.0], requires_grad=True)
    _mixed_logits(planted, heads, "value_fetcher", pairs, sl, src, mask).gather(1, pairs.target_ids[:, None]).sum().backward()
    assert mask.grad[0] < 0  # lowering the mask raises the target logit


def test_dcm_errors(planted):
    with pytest.raises(CircuitError, match="group 'pos_detector' .* is empty"):
        dcm(planted, {"value_fetcher": [[3, 1]]}, "pos_detector", "positional", **SMALL)
    with pytest.raises(TaskError, match="unknown desideratum 'colour'"):
        dcm(planted, {"value_fetcher": [[3, 1]]}, "value_fetcher", "colour", **SMALL)
    with pytest.raises(CircuitError, match="unknown group 'movers'"):
        dcm(planted, {"value_fetcher": [[3, 1]]}, "movers", "positional", **SMALL)
    with pytest.raises(CircuitError, match="outside its 4 layers x 4 heads"):
        dcm(planted, {"value_fetcher": [[7, 1]]}, "value_fetcher", "positional", **SMALL)


def test_split_keeps_order(planted):
    pairs = desiderata(planted.tokenizer, "positional", 10, n_boxes=3, seed=0)
    a, b, c = _split(pairs, (5, 3, 2))
    assert a.base.prompts + b.base.prompts + c.base.prompts == pairs.base.prompts
    assert torch.equal(torch.cat([a.target_ids, b.target_ids, c.target_ids]), pairs.target_ids)


def test_functionality_patching_value_fetcher_and_decoy(planted):
    good = functionality_patching(planted, [VF], "value_fetcher", "object_value", n_prompts=49, repeats=2,
                                  seed=0, progress=False)
    decoy = functionality_patching(planted, [DECOYS[0]], "value_fetcher", "object_value", n_prompts=49,
                                   repeats=2, seed=0, progress=False)
    assert good.mean >= 0.95 and len(good.accuracies) == 2, good.explain()
    assert decoy.mean <= 0.15, decoy.explain()
    assert good.measurement.n_prompts == 98


def test_functionality_patching_repeats_use_fresh_pairs(planted):
    r = functionality_patching(planted, [], "value_fetcher", "object_value", n_prompts=30, repeats=2, seed=4,
                               progress=False)
    # no head patched: the base answers its own question, right only where the source's object happens to be it
    p0, p1 = (desiderata(planted.tokenizer, "object_value", 30, n_boxes=7, seed=s) for s in (4, 5))
    assert p0.source.prompts != p1.source.prompts
    floors = tuple(float((p.target_ids == p.base.answer_ids).float().mean()) for p in (p0, p1))
    assert r.accuracies == pytest.approx(floors)


@pytest.mark.slow
def test_functionality_patching_across_models(planted, planted_b):
    """Heads found on planted, applied to planted-b (same shape, other slots): they do nothing there."""
    ours = functionality_patching(planted_b, [VF], "value_fetcher", "object_value", n_prompts=35, repeats=1,
                                  progress=False)
    theirs = functionality_patching(planted_b, [(3, 2)], "value_fetcher", "object_value", n_prompts=35,
                                    repeats=1, progress=False)
    assert ours.mean <= 0.15 and theirs.mean >= 0.95
    with pytest.raises(HeadIndexError):
        functionality_patching(planted, [(4, 0)], "value_fetcher", "object_value", n_prompts=7, repeats=1)
    with pytest.raises(TaskError, match="at least one repeat"):
        functionality_patching(planted, [VF], "value_fetcher", "object_value", n_prompts=7, repeats=0)


def test_dcm_runs_on_grouped_query_llama(tmp_path):
    """Llama path (RoPE, 2 kv heads for 4 query heads): runs, returns a valid mask, stays in [0, 1]."""
    from tiny_models import save_tiny

    tiny = load_model(save_tiny("llama", tmp_path / "llama"))
    r = dcm(tiny, {"pos_detector": [[0, 1], [1, 3]]}, "pos_detector", "positional", n_boxes=3, n_train=16,
            n_val=8, n_test=8, batch_size=8, select_every=1, progress=False)
    assert r.heads == ((0, 1), (1, 3)) and all(0.0 <= m <= 1.0 for m in r.mask)
    assert len(r.history) == 4 and np.isfinite(r.test.value)
