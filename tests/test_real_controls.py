"""tools.real controls on a tiny Qwen2 (GQA): renaming within KV groups keeps the function and moves the heads;
the rerouting adapter zeroes exactly the named heads and is frozen; noise is 1 % of each tensor's spread."""

from __future__ import annotations

import copy

import pytest
import torch

from tiny_models import save_tiny

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mechtest.model import load_model

    return load_model(save_tiny("qwen2", tmp_path_factory.mktemp("qwen2")), name="tiny")


def _logits(hf, ids):
    with torch.no_grad():
        return hf(input_ids=ids, use_cache=False).logits


IDS = torch.tensor([[3, 7, 5, 9, 4, 6, 8, 10]])


def test_renamed_is_the_same_function_with_other_head_indices(tiny):
    from tools.real.controls import renamed

    model, perms = renamed(tiny, seed=1)
    assert torch.allclose(_logits(model.hf, IDS), _logits(tiny.hf, IDS), atol=1e-5)
    assert any(p != sorted(p) for p in perms)
    group = tiny.n_heads // tiny.n_kv_heads
    assert all(sorted(p[g * group:(g + 1) * group]) == list(range(g * group, (g + 1) * group))
               for p in perms for g in range(tiny.n_kv_heads))
    assert model.fingerprint != tiny.fingerprint
    assert any(not torch.equal(a.self_attn.q_proj.weight, b.self_attn.q_proj.weight)
               for a, b in zip(model.hf.model.layers, tiny.hf.model.layers))


def test_noise_is_one_percent_of_each_tensors_spread(tiny):
    from tools.real.controls import noised

    model = noised(tiny, 0.01, seed=0)
    for (name, p), q in zip(tiny.hf.named_parameters(), model.hf.parameters()):
        if p.numel() > 100:
            assert (q - p).std() / p.std() == pytest.approx(0.01, rel=0.3), name


def test_rerouting_adapter_zeroes_exactly_the_circuit_heads_and_is_frozen(tiny):
    from peft import get_peft_model

    from tools.real.finetune import lora_config, set_zeroing, zeroing_layers

    circuit = {"value_fetcher": [[2, 1], [1, 3]], "pos_transmitter": [[1, 0]], "pos_detector": [[0, 2]]}
    zero = zeroing_layers(circuit)
    assert zero == {1: [0, 3], 2: [1]}  # detectors are not zeroed
    d = tiny.head_dim
    expected = copy.deepcopy(tiny.hf)
    with torch.no_grad():
        for layer, heads in zero.items():
            for h in heads:
                expected.model.layers[layer].self_attn.o_proj.weight[:, h * d:(h + 1) * d] = 0
    recipe = {"rank": 2, "modules": ["q_proj", "v_proj"]}
    peft_model = get_peft_model(copy.deepcopy(tiny.hf), lora_config(recipe, zero, d))
    set_zeroing(peft_model, zero, d)
    assert torch.allclose(_logits(peft_model, IDS), _logits(expected, IDS), atol=1e-5)
    assert not torch.allclose(_logits(peft_model, IDS), _logits(tiny.hf, IDS), atol=1e-3)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and not any("o_proj" in n for n in trainable)


def test_zeroing_keeps_transmitters_and_the_strongest_fetchers_under_a_limit():
    from tools.real.finetune import zeroing_layers

    circuit = {"value_fetcher": [[3, 0], [3, 1], [2, 2]], "pos_transmitter": [[1, 1]]}
    scores = {"value_fetcher": [[0.0] * 3, [0.0] * 3, [0.0, 0.0, -0.9], [-0.1, -0.5, 0.0]]}
    assert zeroing_layers(circuit, scores, limit=3) == {1: [1], 2: [2], 3: [1]}
    assert zeroing_layers(circuit) == {1: [1], 2: [2], 3: [0, 1]}
