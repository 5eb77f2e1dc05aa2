"""CMAP's patched run continued from the clean run's keys and values equals the full patched run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechtest.forward import last_logits
from mechtest.heads import masked_replace
from mechtest.methods.circuits import node_positions
from mechtest.methods.cmap import _continued, cmap_correct
from mechtest.methods.evaluation import correct
from mechtest.model import load_model
from mechtest.tasks.entity_tracking import make_dataset
from tiny_models import ARCH_NAMES, save_tiny


def _patches(model, data, seed: int) -> dict:
    """Random head outputs at each row's node positions of a few random heads per group (a CMAP-shaped patch)."""
    g = torch.Generator().manual_seed(seed)
    b, seq = data.input_ids.shape
    patches = {}
    for group in ("struct_reader", "pos_detector", "value_fetcher"):
        l, h = int(torch.randint(model.n_layers, (1,), generator=g)), int(torch.randint(model.n_heads, (1,), generator=g))
        mask = patches.get(l, (torch.zeros(b, seq, model.n_heads, dtype=torch.bool), None))[0]
        mask[torch.arange(b), node_positions(data, group), h] = True
        values = torch.randn(b, seq, model.n_heads, model.head_dim, generator=g).to(model.dtype)
        patches[l] = (mask, values)
    return patches


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_the_continued_patched_run_equals_the_full_one_on_every_architecture(arch, tmp_path):
    model = load_model(save_tiny(arch, tmp_path), device="cpu")
    data = make_dataset(model.tokenizer, 9, n_boxes=3, seed=0)
    ids, last = data.input_ids, data.last_pos
    for seed in range(3):
        patches = _patches(model, data, seed)
        own, patched = _continued(model, ids, last, patches)
        plain = last_logits(model, ids, last)
        full = last_logits(model, ids, last, edits={("head_out", l): masked_replace(m, v) for l, (m, v) in patches.items()})
        assert (full - plain).abs().max() > 1e-3, "the patch should matter"
        torch.testing.assert_close(own, plain, rtol=0, atol=1e-4)
        torch.testing.assert_close(patched, full, rtol=0, atol=1e-4)


def test_cmap_with_the_receivers_own_hits_gives_the_same_answers(tmp_path):
    """Through the public entry: the fused run's CMAP and own answers equal the separate passes'."""
    model = load_model(save_tiny("llama", tmp_path / "a"), device="cpu")
    donor = load_model(save_tiny("llama", tmp_path / "a"), device="cpu", name="donor")
    with torch.no_grad():
        for p in donor.hf.parameters():
            p.add_(0.5 * p.std() * torch.randn_like(p))
    data = make_dataset(model.tokenizer, 12, n_boxes=3, seed=1)
    circuit = {"value_fetcher": [[1, 0]], "pos_transmitter": [[1, 1]], "pos_detector": [[0, 1]],
               "struct_reader": [[0, 0]]}
    own, donor_own = [], []
    fused = cmap_correct(model, donor, data, circuit=circuit, batch_size=5, progress=False, own_hits=own,
                         donor_hits=donor_own)
    plain = cmap_correct(model, donor, data, circuit=circuit, batch_size=5, progress=False)
    assert np.array_equal(fused, plain)
    assert np.array_equal(np.concatenate(own), correct(model, data, batch_size=5))
    assert np.array_equal(np.concatenate(donor_own), correct(donor, data, batch_size=5))
