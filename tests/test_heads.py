"""Invariants of the head engine, on a tiny random model of every architecture row."""

from __future__ import annotations

import pytest
import torch

from mechtest.errors import HeadIndexError
from mechtest.heads import (attention_module, check_heads, hooked, kv_head_of, masked_replace, mean_heads, record, run_and_read,
                            set_heads, zero_heads)
from mechtest.model import load_model
from tiny_models import ARCH_NAMES, V, save_tiny


@pytest.fixture(scope="module", params=ARCH_NAMES)
def model(request, tmp_path_factory):
    # sliding windows (4) shorter than the prompts (12), so the rows that have them really use them
    path = save_tiny(request.param, tmp_path_factory.mktemp(request.param), window=4)
    return load_model(path, device="cpu")


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(4, V, (5, 12), generator=g)


def logits(model, ids, edits=None):
    with torch.no_grad(), hooked(model, edits or {}):
        return model.hf(input_ids=ids, use_cache=False).logits


def test_facts(model):
    assert model.n_heads == 4 and model.n_layers == 3
    assert model.n_heads % model.n_kv_heads == 0
    assert model.head_dim == (16 if model.arch.name in ("gemma", "qwen3", "gemma2", "gemma3_text") else 8)


def test_noop_hooks_leave_logits_bit_identical(model, ids):
    store = {}
    edits = {(site, l): record(store, (site, l)) for site in ("head_out", "q", "k", "v") for l in range(3)}
    assert torch.equal(logits(model, ids, edits), logits(model, ids))
    assert store[("head_out", 2)].shape == (5, 12, model.n_heads, model.head_dim)
    assert store[("k", 0)].shape == (5, 12, model.n_kv_heads, model.head_dim)


def test_patching_own_activation_is_a_noop(model, ids):
    acts = run_and_read(model, ids, sites=("head_out", "q", "v"))
    pos = torch.full((5,), 7)
    edits = {(site, l): set_heads(range(n), pos, acts[(site, l)][:, 7, :n])
             for site, n in (("head_out", model.n_heads), ("q", model.n_heads), ("v", model.n_kv_heads))
             for l in range(3)}
    assert torch.equal(logits(model, ids, edits), logits(model, ids))


def test_zero_ablation_equals_zeroed_output_projection_weight(model, ids):
    layer, head, d = 1, 2, model.head_dim
    patched = logits(model, ids, {("head_out", layer): zero_heads([head])})
    o_proj = getattr(attention_module(model, layer), model.arch.o_proj)
    w = o_proj.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            if type(o_proj).__name__ == "Conv1D":  # GPT-2: weight is (in, out)
                w[head * d:(head + 1) * d, :] = 0
            else:
                w[:, head * d:(head + 1) * d] = 0
        reference = logits(model, ids)
    finally:
        with torch.no_grad():
            w.copy_(saved)
    torch.testing.assert_close(patched, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(patched, logits(model, ids), atol=1e-4)


def test_batched_interventions_equal_looped_ones(model, ids):
    acts = run_and_read(model, ids.flip(0), sites=("head_out",))  # other prompts as the patch source
    pos = torch.tensor([3, 5, 7, 9, 11])
    batched = logits(model, ids, {("head_out", 1): set_heads([0, 3], pos, acts[("head_out", 1)][torch.arange(5), pos][:, [0, 3]])})
    for i in range(5):
        one = logits(model, ids[i:i + 1], {("head_out", 1): set_heads(
            [0, 3], pos[i:i + 1], acts[("head_out", 1)][i:i + 1, pos[i]][:, [0, 3]])})
        torch.testing.assert_close(batched[i:i + 1], one, rtol=1e-5, atol=1e-5)


def test_gqa_value_heads_map_to_their_query_heads(model, ids):
    """Zeroing kv head g's values zeroes exactly the outputs of the query heads that read g."""
    g = model.n_kv_heads - 1
    out = run_and_read(model, ids, sites=("head_out",), layers=[1],
                       edits={("v", 1): zero_heads([g])})[("head_out", 1)]
    clean = run_and_read(model, ids, sites=("head_out",), layers=[1])[("head_out", 1)]
    for h in range(model.n_heads):
        if kv_head_of(model, h) == g:
            assert torch.count_nonzero(out[:, :, h]) == 0
        else:
            torch.testing.assert_close(out[:, :, h], clean[:, :, h], rtol=0, atol=0)


def test_query_edit_changes_only_that_head(model, ids):
    q = run_and_read(model, ids.flip(0), sites=("q",), layers=[2])[("q", 2)]
    out = run_and_read(model, ids, sites=("head_out",), layers=[2],
                       edits={("q", 2): masked_replace(torch.tensor([False, True, False, False])[None, None], q)})
    clean = run_and_read(model, ids, sites=("head_out",), layers=[2])
    diff = (out[("head_out", 2)] - clean[("head_out", 2)]).abs().amax(dim=(0, 1, 3))
    assert diff[1] > 1e-4 and diff[[0, 2, 3]].max() == 0


def test_mean_ablation_uses_the_given_means(model, ids):
    means = torch.randn(12, model.n_heads, model.head_dim)
    out = run_and_read(model, ids, layers=[0], edits={("head_out", 0): mean_heads([1], means)})[("head_out", 0)]
    torch.testing.assert_close(out[:, :, 1], means[:, 1].expand(5, -1, -1))


def test_out_of_range_heads_are_clear_errors(model):
    with pytest.raises(HeadIndexError, match=r"head \(0, 4\) is out of range for a model of 3 layers x 4 heads"):
        check_heads(model, [(0, 4)])
    with pytest.raises(HeadIndexError, match="layer 3 is out of range"):
        check_heads(model, [(3, 0)])
    with pytest.raises(HeadIndexError, match="layer -1"):
        with hooked(model, {("head_out", -1): zero_heads([0])}):
            pass


def test_hooks_are_removed_when_the_block_raises(model, ids):
    before = logits(model, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with hooked(model, {("head_out", l): zero_heads([0, 1, 2, 3]) for l in range(3)}):
            raise RuntimeError("boom")
    assert torch.equal(logits(model, ids), before)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.hf.modules())


def test_every_quirk_is_in_the_vocabulary():
    from mechtest.architectures import ARCHITECTURES, QUIRKS

    for spec in ARCHITECTURES:
        assert spec.quirks <= QUIRKS.keys(), spec.name
    assert {spec.name for spec in ARCHITECTURES} == set(ARCH_NAMES)


def test_reading_head_outputs_stops_after_the_last_layer_read(model, ids):
    """run_and_read ends the pass once the highest layer asked for has its head outputs: the same values, and
    no later layer runs (the hooks are gone afterwards)."""
    full = run_and_read(model, ids)
    ran = []
    handle = attention_module(model, 1).register_forward_hook(lambda *a: ran.append(True))
    try:
        low = run_and_read(model, ids, layers=[0])
        everything = run_and_read(model, ids)
    finally:
        handle.remove()
    torch.testing.assert_close(low[("head_out", 0)], full[("head_out", 0)], rtol=0, atol=0)
    assert list(low) == [("head_out", 0)] and len(ran) == 1  # only the full read reached layer 1
    assert all(torch.equal(everything[k], full[k]) for k in full)
