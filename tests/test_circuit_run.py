"""The circuit run computed only at the node positions equals the plain masked run (spec 5.1)."""

from __future__ import annotations

import pytest
import torch

from mechtest.forward import dataset_logits
from mechtest.methods.circuit_run import circuit_logits
from mechtest.methods.circuits import Circuit, random_circuit
from mechtest.methods.evaluation import ablation_edits, ablation_means
from mechtest.model import load_model
from mechtest.tasks.entity_tracking import make_dataset, mean_ablation_set
from tiny_models import ARCH_NAMES, save_tiny

GROUPS = ("value_fetcher", "pos_transmitter", "pos_detector", "struct_reader")


def _circuits(model) -> list[Circuit]:
    """Random circuits of two heads per group, and one with the same head in every group (a node per position)."""
    seedling = Circuit({g: [(0, 0), (0, 1 % model.n_heads)] for g in GROUPS}, name="seed")
    shared = (model.n_layers - 1, model.n_heads - 1)
    return [random_circuit(seedling, model.n_layers, model.n_heads, seed) for seed in range(3)] + \
        [Circuit({g: [shared] for g in GROUPS}, name="shared")]


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_the_circuit_run_equals_the_plain_masked_run_on_every_architecture(arch, tmp_path):
    model = load_model(save_tiny(arch, tmp_path), device="cpu")
    data = make_dataset(model.tokenizer, 9, n_boxes=3, seed=0)
    means = ablation_means(model, mean_ablation_set(model.tokenizer, 9, n_boxes=3, seed=1), progress=False)
    for circuit in _circuits(model):
        plain = dataset_logits(model, data, batch_size=4, edits_for_batch=ablation_edits(model, data, means,
                                                                                          keep=circuit))
        fast = circuit_logits(model, circuit, data, means, batch_size=4)
        assert (plain - dataset_logits(model, data)).abs().max() > 1e-3, "the ablation should matter"
        torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4)
