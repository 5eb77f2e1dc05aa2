"""PEFT adapters as model refs: ADAPTER_DIR and BASE+ADAPTER_DIR, merged into plain weights, fingerprinted,
with one-line errors for what cannot be loaded."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from mechtest.errors import ModelLoadError
from mechtest.model import checkpoint_fingerprint, load_model
from mechtest.model_ref import resolve_model
from tiny_models import V, save_tiny

peft = pytest.importorskip("peft")

ZOO_BASE = Path(__file__).resolve().parents[1] / "fixtures" / "zoo" / "base"
IDS = torch.randint(4, 100, (3, 12), generator=torch.Generator().manual_seed(0))


def make_adapter(directory: Path, *, base: Path = ZOO_BASE, seed: int = 0, targets=("c_attn",), rank: int = 4,
                 base_name: str | None = None, kind: str = "lora") -> Path:
    """A LoRA (or IA3) adapter with random (non-identity) weights, saved as peft saves it."""
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    if kind == "ia3":
        config = IA3Config(target_modules=list(targets), feedforward_modules=[], init_ia3_weights=False)
    else:
        config = LoraConfig(r=rank, lora_alpha=8, target_modules=list(targets), init_lora_weights=False,
                            fan_in_fan_out=True)
    wrapped = get_peft_model(hf, config)
    wrapped.save_pretrained(directory)
    card = directory / "adapter_config.json"
    data = json.loads(card.read_text())
    data["base_model_name_or_path"] = base_name if base_name is not None else str(base)
    card.write_text(json.dumps(data))
    return directory


def peft_logits(base: Path, adapter: Path) -> torch.Tensor:
    """Logits of peft's own unmerged model: what the merged one must reproduce."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    wrapped = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    with torch.no_grad():
        return wrapped(input_ids=IDS).logits


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("lora") / "ft")


def test_adapter_dir_loads_merged_with_peft_logits(adapter):
    m = load_model(adapter, device="cpu")
    assert m.ref.kind == "adapter" and m.ref.base.path == ZOO_BASE.resolve() and m.name == "ft"
    assert not any("lora" in n for n, _ in m.hf.named_modules())  # merged: plain modules, hooks see weights
    with torch.no_grad():
        logits = m.hf(input_ids=IDS).logits
    expected = peft_logits(ZOO_BASE, adapter)
    base = load_model(ZOO_BASE, device="cpu")
    with torch.no_grad():
        assert not torch.allclose(base.hf(input_ids=IDS).logits, expected, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_base_plus_adapter_form_and_relative_base(adapter, tmp_path):
    plus = load_model(f"{ZOO_BASE}+{adapter}", device="cpu")
    assert plus.ref.kind == "adapter" and plus.ref.text.endswith("+" + str(adapter))
    # the base named relative to the adapter directory
    rel = tmp_path / "models" / "ft"
    shutil.copytree(adapter, rel)
    shutil.copytree(ZOO_BASE, tmp_path / "models" / "base")
    card = rel / "adapter_config.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "base_model_name_or_path": "../base"}))
    ref = resolve_model("models/ft", base_dir=tmp_path)
    assert ref.base.path == (tmp_path / "models" / "base").resolve()
    by_rel = load_model(ref, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(by_rel.hf(input_ids=IDS).logits, plus.hf(input_ids=IDS).logits)
    # same base and adapter contents elsewhere: the same fingerprint
    assert by_rel.fingerprint == plus.fingerprint == checkpoint_fingerprint(ref)


def test_fingerprint_covers_base_and_adapter(adapter, tmp_path):
    base_fp = checkpoint_fingerprint(resolve_model(ZOO_BASE, base_dir="."))
    fp = checkpoint_fingerprint(resolve_model(adapter, base_dir="."))
    assert fp != base_fp
    other = make_adapter(tmp_path / "ft2", seed=1)
    assert checkpoint_fingerprint(resolve_model(other, base_dir=".")) != fp
    on_other_base = resolve_model(f"{ZOO_BASE.parent / 'finetuned'}+{adapter}", base_dir=".")
    assert checkpoint_fingerprint(on_other_base) != fp


def test_ia3_adapter_merges(tmp_path):
    a = make_adapter(tmp_path / "ia3", kind="ia3")
    m = load_model(a, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(m.hf(input_ids=IDS).logits, peft_logits(ZOO_BASE, a), atol=1e-4, rtol=1e-4)


def test_adapter_errors(adapter, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"no adapter_config\.json in adapter directory"):
        resolve_model(f"{ZOO_BASE}+{empty}", base_dir=".")
    with pytest.raises(ModelLoadError, match=r"nor a GGUF or a PEFT adapter"):
        resolve_model(empty, base_dir=".")
    # a base of another shape: the adapter's tensors do not fit
    llama = save_tiny("llama", tmp_path / "llama")
    llama_adapter = make_adapter(tmp_path / "llama-ft", base=llama, targets=("q_proj",))
    other_llama = save_tiny("gemma", tmp_path / "gemma")  # q_proj of 4 heads x 16, not 4 x 8
    with pytest.raises(ModelLoadError, match=r"does not fit \(another base shape\?\): size mismatch"):
        load_model(f"{other_llama}+{llama_adapter}", device="cpu")
    # target modules the base does not have
    with pytest.raises(ModelLoadError, match=r"does not fit: Target modules .*not found"):
        load_model(f"{llama}+{adapter}", device="cpu")
    # unsupported type, no base named, pickle-only weights
    prompt = tmp_path / "prompt"
    shutil.copytree(adapter, prompt)
    card = prompt / "adapter_config.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "peft_type": "PROMPT_TUNING"}))
    with pytest.raises(ModelLoadError, match=r"unsupported adapter type 'PROMPT_TUNING'"):
        load_model(prompt, device="cpu")
    card.write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": None}))
    with pytest.raises(ModelLoadError, match=r"names no base model .*name it as BASE\+"):
        resolve_model(prompt, base_dir=".")
    pickled = tmp_path / "pickled"
    shutil.copytree(adapter, pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(ModelLoadError, match=r"only adapter_model\.bin: mechtest never unpickles"):
        load_model(pickled, device="cpu")
    # peft not installed
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ModelLoadError, match=r"install the peft extra"):
        load_model(adapter, device="cpu")


def test_adapter_on_gguf_base(tmp_path):
    """BASE+ADAPTER where the base is a GGUF file: the adapter merges into the dequantised weights."""
    pytest.importorskip("gguf")
    from test_gguf import write_gguf

    src = save_tiny("llama", tmp_path / "hf")
    source = load_model(src, device="cpu")
    g = tmp_path / "g"
    g.mkdir()
    source.tokenizer.save_pretrained(g)
    write_gguf(source.hf, g / "tiny.gguf")
    a = make_adapter(tmp_path / "ft", base=src, targets=("q_proj", "v_proj"))
    m = load_model(f"{g / 'tiny.gguf'}+{a}", device="cpu")
    ids = torch.randint(4, V, (2, 9), generator=torch.Generator().manual_seed(1))
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(src), str(a)).eval()
    with torch.no_grad():
        torch.testing.assert_close(m.hf(input_ids=ids).logits, expected(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    assert m.fingerprint == checkpoint_fingerprint(m.ref)


def test_adapter_and_its_base_from_the_hub_cache(adapter, tmp_path, monkeypatch):
    from test_model_ref import fake_hub_cache

    cache = tmp_path / "hf-cache"
    for var in ("HF_HOME", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    fake_hub_cache(cache, "org/base", ZOO_BASE)
    hub_adapter = tmp_path / "hub-ft"
    shutil.copytree(adapter, hub_adapter)
    card = hub_adapter / "adapter_config.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "base_model_name_or_path": "org/base"}))
    fake_hub_cache(cache, "org/ft", hub_adapter)
    ref = resolve_model("org/ft", base_dir=tmp_path)
    assert ref.kind == "adapter" and ref.base.hub_id == "org/base"
    with torch.no_grad():
        torch.testing.assert_close(load_model(ref, device="cpu").hf(input_ids=IDS).logits,
                                   load_model(adapter, device="cpu").hf(input_ids=IDS).logits)
