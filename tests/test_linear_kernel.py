"""oneDNN's linear kernel for large CPU float32 layers (mechtest.linear_kernel): the same numbers as F.linear to
float32 rounding, gradients still flow, small models untouched, and the switch can be turned off."""

from __future__ import annotations

import pytest
import torch

from mechtest import linear_kernel
from mechtest.linear_kernel import OneDNNLinear, use_onednn
from mechtest.model import load_model
from tiny_models import V, save_tiny

pytestmark = pytest.mark.skipif(not linear_kernel.available(), reason="this torch build has no oneDNN linear")

IDS = torch.randint(4, V, (3, 10), generator=torch.Generator().manual_seed(0))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.hf(input_ids=IDS).logits


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("llama"))


def test_large_layers_switch_and_give_the_same_logits(llama_dir, monkeypatch):
    default = load_model(llama_dir)
    assert not any(isinstance(m, OneDNNLinear) for m in default.hf.modules())  # tiny weights: below the bound
    monkeypatch.setattr(linear_kernel, "MIN_WEIGHT", 1)
    switched = load_model(llama_dir)
    layers = [m for m in switched.hf.modules() if isinstance(m, torch.nn.Linear)]
    assert layers and all(isinstance(m, OneDNNLinear) for m in layers)
    torch.testing.assert_close(_logits(switched), _logits(default), atol=1e-5, rtol=1e-5)


def test_backward_through_switched_layer_matches_f_linear():
    torch.manual_seed(1)
    plain = torch.nn.Linear(16, 8)
    fast = torch.nn.Linear(16, 8)
    fast.load_state_dict(plain.state_dict())
    fast.__class__ = OneDNNLinear
    fast.requires_grad_(False)
    plain.requires_grad_(False)
    x = torch.randn(4, 16)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    fast(a).pow(3).sum().backward()  # the op has no autograd kernel: a gradient must take F.linear
    plain(b).pow(3).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-6, rtol=1e-6)


def test_switch_off_by_environment(monkeypatch):
    monkeypatch.setattr(linear_kernel, "MIN_WEIGHT", 1)
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4).to(torch.bfloat16))
    monkeypatch.setenv("MECHTEST_LINEAR", "default")
    assert use_onednn(module) == 0
    assert linear_kernel.describe() == "default (MECHTEST_LINEAR=default)"
    monkeypatch.delenv("MECHTEST_LINEAR")
    assert use_onednn(module) == 1  # the bfloat16 layer keeps F.linear
    assert linear_kernel.describe().startswith("oneDNN")
    assert type(module[1]) is torch.nn.Linear


def test_adapter_merge_keeps_the_switch(llama_dir, tmp_path, monkeypatch):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(llama_dir)
    torch.manual_seed(0)
    wrapped = peft.get_peft_model(hf, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
    wrapped.save_pretrained(tmp_path / "adapter")
    ref = f"{llama_dir}+{tmp_path / 'adapter'}"
    default = load_model(ref)
    monkeypatch.setattr(linear_kernel, "MIN_WEIGHT", 1)
    merged = load_model(ref)
    assert all(isinstance(m, OneDNNLinear) for m in merged.hf.modules() if isinstance(m, torch.nn.Linear))
    torch.testing.assert_close(_logits(merged), _logits(default), atol=1e-5, rtol=1e-5)


def test_probing_for_onednn_leaves_the_random_stream_alone():
    linear_kernel.available.cache_clear()
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    assert linear_kernel.available()
    torch.testing.assert_close(torch.rand(4), expected)
