"""The planted-circuit checkpoints (fixtures/zoo/planted, planted-b): accuracy, ground truth, rebuild.

They are test fixtures for circuit discovery, so what is checked here is what discovery relies on: the
models solve the task, the circuit files name exactly the heads that matter (each planted head alone is
necessary, every other head alone is not), and ``python -m tools.zoo planted`` reproduces the committed
weights bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tools.zoo import planted  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "fixtures" / "zoo"
CIRCUITS = ROOT / "fixtures" / "circuits"
GROUPS = {"value_fetcher", "pos_transmitter", "pos_detector", "struct_reader"}
N_PER_BOX_COUNT = 42   # 6 contexts x 7 queries at 7 boxes
N_ABLATE = 28          # 4 contexts, every box queried


@pytest.fixture(scope="module", params=planted.VARIANTS)
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def model(variant):
    from mechtest.model import load_model

    return load_model(ZOO / variant)


@pytest.fixture(scope="module")
def ablation_data(model):
    from mechtest.tasks.entity_tracking import make_dataset, mean_ablation_set

    data = make_dataset(model.tokenizer, N_ABLATE, n_boxes=7, seed=11)
    means = planted.head_means(model, mean_ablation_set(model.tokenizer, N_ABLATE, n_boxes=7, seed=12))
    return data, means


def _circuit_file(variant):
    return json.loads((CIRCUITS / f"{variant}.json").read_text())


def test_shape_and_config(model, variant):
    config = model.hf.config
    assert type(model.hf).__name__ == "GPT2LMHeadModel"
    assert (model.n_layers, model.n_heads, model.head_dim) == (4, 4, 64)
    assert model.dtype == torch.float32
    assert config.vocab_size == len(model.tokenizer)


@pytest.mark.parametrize("n_boxes", range(2, 8))
def test_accuracy_every_box_count(model, n_boxes):
    from mechtest.tasks.entity_tracking import make_dataset

    data = make_dataset(model.tokenizer, N_PER_BOX_COUNT, n_boxes=n_boxes, seed=1000 + n_boxes)
    assert planted.accuracy(model, data) >= 0.99


def test_loads_with_auto_model(model, variant):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechtest.tasks.entity_tracking import make_dataset

    hf = AutoModelForCausalLM.from_pretrained(ZOO / variant).eval()
    tok = AutoTokenizer.from_pretrained(ZOO / variant)
    data = make_dataset(tok, 14, n_boxes=7, seed=5)
    with torch.no_grad():
        logits = hf(input_ids=data.input_ids).logits[:, -1]
    assert torch.equal(logits.argmax(-1), data.answer_ids)
    # the answer is confidently the argmax over the full vocabulary, not a near tie
    assert float(logits.softmax(-1)[torch.arange(14), data.answer_ids].min()) > 0.9


def test_circuit_file_is_the_ground_truth(model, variant):
    circuit = _circuit_file(variant)
    assert set(circuit) == GROUPS
    assert circuit == planted.circuit(variant)
    heads = [tuple(h) for group in circuit.values() for h in group]
    assert len(heads) == len(set(heads)) == 4
    for layer, head in heads:
        assert 0 <= layer < model.n_layers and 0 <= head < model.n_heads


def test_variants_put_the_circuit_on_other_heads():
    a, b = (planted.planted_heads(v) for v in planted.VARIANTS)
    assert a.keys() == b.keys()
    assert all(a[role] != b[role] for role in a)
    assert {layer for layer, _ in a.values()} == {layer for layer, _ in b.values()}


def test_model_card_names_the_planted_heads(variant):
    card = (ZOO / variant / "README.md").read_text()
    for group, heads in _circuit_file(variant).items():
        for layer, head in heads:
            assert f"`{group}` | [{layer}, {head}]" in card
    assert "## Measured" in card


def test_single_head_mean_ablation(model, variant, ablation_data):
    """Each planted head alone is necessary (about chance or below); every other head alone is not."""
    data, means = ablation_data
    chance = 1 / 7
    planted_set = {tuple(h) for group in _circuit_file(variant).values() for h in group}
    results = {}
    for layer in range(model.n_layers):
        for head in range(model.n_heads):
            edits = planted.ablation_edits(layer, head, means)
            results[(layer, head)] = planted.accuracy(model, data, lambda sl, e=edits: e)
    for key, acc in results.items():
        if key in planted_set:
            assert acc <= chance + 0.2, (key, results)
        else:
            assert acc >= 0.95, (key, results)


def test_circuit_alone_keeps_the_accuracy(model, variant, ablation_data):
    """Spec 5.1: all heads mean-ablated everywhere except the planted heads at their positions."""
    data, means = ablation_data
    assert planted.circuit_accuracy(model, data, _circuit_file(variant), means) >= 0.95


def test_rebuild_is_bit_identical(tmp_path, variant):
    from safetensors.numpy import load_file

    fresh = planted.save_checkpoint(variant, tmp_path / variant)
    committed = load_file(ZOO / variant / "model.safetensors")
    rebuilt = load_file(fresh / "model.safetensors")
    assert committed.keys() == rebuilt.keys()
    for name, array in committed.items():
        assert array.dtype == np.float32, name
        # bit-exact, not just close: compare the raw bits
        assert np.array_equal(array.view(np.uint32), rebuilt[name].view(np.uint32)), name
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (fresh / name).read_text() == (ZOO / variant / name).read_text(), name
    config = json.loads((fresh / "config.json").read_text())
    expected = json.loads((ZOO / variant / "config.json").read_text())
    config.pop("transformers_version", None), expected.pop("transformers_version", None)
    assert config == expected
