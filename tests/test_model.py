"""load_model: offline loading, architecture facts, fingerprint, and one-line errors on bad checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from mechtest.errors import ArchitectureError, ModelLoadError
from mechtest.model import load_model
from tiny_models import save_tiny


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("llama"))


def test_facts_and_offline_load(llama_dir):
    m = load_model(llama_dir, device="cpu")
    assert (m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.d_model) == (3, 4, 2, 8, 32)
    assert m.dtype == torch.float32 and not m.hf.training
    assert all(not p.requires_grad for p in m.hf.parameters())
    assert m.describe_shape() == "3 layers x 4 heads, 2 kv heads of dim 8"


def test_fingerprint_tracks_weights_config_and_dtype(llama_dir, tmp_path):
    a = load_model(llama_dir, device="cpu").fingerprint
    assert load_model(llama_dir, device="cpu").fingerprint == a
    assert load_model(llama_dir, device="cpu", dtype="bfloat16").fingerprint != a

    other_weights = save_tiny("llama", tmp_path / "w", seed=1)
    assert load_model(other_weights, device="cpu").fingerprint != a

    other_config = tmp_path / "c"
    shutil.copytree(llama_dir, other_config)
    config = json.loads((other_config / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (other_config / "config.json").write_text(json.dumps(config))
    assert load_model(other_config, device="cpu").fingerprint != a


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="checkpoint not found: .*nope.* does not exist"):
        load_model(tmp_path / "nope")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json in .*: not a Hugging Face checkpoint directory"):
        load_model(tmp_path)


def test_file_instead_of_directory(llama_dir):
    with pytest.raises(ModelLoadError, match="is a file; give the checkpoint directory"):
        load_model(llama_dir / "config.json")


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    from transformers import BloomConfig

    BloomConfig(n_layer=1, hidden_size=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ArchitectureError, match="'bloom' is not supported; supported: gemma, gemma2, gemma3_text, gpt2, gpt_neox, "
                                                "llama, mistral, olmo2, phi3, qwen2, qwen3"):
        load_model(tmp_path)


def test_not_a_causal_lm(llama_dir, tmp_path):
    d = tmp_path / "classifier"
    shutil.copytree(llama_dir, d)
    config = json.loads((d / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="is a LlamaForSequenceClassification checkpoint, not a causal language model"):
        load_model(d)


def test_missing_tokenizer(llama_dir, tmp_path):
    d = tmp_path / "no-tokenizer"
    d.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(llama_dir / f, d / f)
    with pytest.raises(ModelLoadError, match="no usable tokenizer in"):
        load_model(d)


def test_importing_mechtest_does_not_import_torch():
    code = "import sys, mechtest; assert 'torch' not in sys.modules and 'transformers' not in sys.modules; " \
           "mechtest.__version__"
    subprocess.run([sys.executable, "-c", code], check=True)
