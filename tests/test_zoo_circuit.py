"""The committed circuit of the trained zoo's base model is faithful there and random circuits are not."""

from __future__ import annotations

from pathlib import Path

import pytest

from mechtest.methods.circuits import load_circuit
from mechtest.methods.evaluation import faithfulness, random_circuit_faithfulness
from mechtest.model import load_model
from mechtest.tasks.entity_tracking import make_dataset, mean_ablation_set

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base():
    model = load_model(ROOT / "fixtures" / "zoo" / "base", device="cpu")
    return (model, make_dataset(model.tokenizer, 500, n_boxes=3, seed=7),
            mean_ablation_set(model.tokenizer, 300, n_boxes=3, seed=8))


def test_zoo_base_circuit_is_faithful_and_random_circuits_are_far_lower(base):
    model, dataset, reference = base
    circuit = load_circuit(ROOT / "fixtures" / "circuits" / "zoo-base.json")
    circuit.check(model)
    f = faithfulness(model, circuit, dataset, reference)
    r = random_circuit_faithfulness(model, circuit, dataset, reference, n_draws=5)
    assert f.value >= 0.85 and f.ci_high >= 0.9, f.explain()
    assert r.value <= f.value - 0.2, (f.explain(), r.explain())
