"""load_model: offline loading, architecture facts, fingerprint, and one-line errors on bad checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import mechtest.fingerprint as fp
import mechtest.model as mm
from mechtest.errors import ArchitectureError, DeviceError, ModelLoadError
from mechtest.heads import hooked, zero_heads
from mechtest.model import check_device, load_model, placement, resolve_dtype
from mechtest.model_ref import resolve_model
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


def test_fingerprint_does_not_depend_on_the_path(llama_dir, tmp_path):
    copy = tmp_path / "elsewhere" / "same-weights"
    shutil.copytree(llama_dir, copy)
    assert load_model(copy, device="cpu").fingerprint == load_model(llama_dir, device="cpu").fingerprint


@pytest.fixture
def memo(tmp_path, monkeypatch):
    """Memoise every weight file's hash (as for a multi-GB checkpoint) in a memo of this test's own."""
    monkeypatch.setattr(fp, "_MEMO_FROM", 0)
    monkeypatch.setenv("MECHTEST_HASH_MEMO", str(tmp_path / "memo"))
    return tmp_path / "memo"


def test_in_place_edit_keeping_size_and_mtime_changes_the_fingerprint(llama_dir, tmp_path, memo):
    d = tmp_path / "edited"
    shutil.copytree(llama_dir, d)
    before = load_model(d, device="cpu").fingerprint
    assert len(list(memo.glob("*.json"))) == 1 + len(fp.side_files(d))  # weights, tokenizer and config files
    weights = d / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # one byte of the last tensor
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same name, size and mtime as before
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert load_model(d, device="cpu").fingerprint != before


def test_file_hash_is_memoised_per_file_identity(llama_dir, memo, monkeypatch):
    first = load_model(llama_dir, device="cpu").fingerprint
    monkeypatch.setattr(fp, "_sha256_file", lambda path: pytest.fail(f"re-hashed {path}"))
    assert load_model(llama_dir, device="cpu").fingerprint == first  # a stat, no read


def test_memo_never_serves_another_files_hash(tmp_path, memo):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 100)
    a = fp.file_digest(f)
    f.write_bytes(b"b" * 100)
    assert fp.file_digest(f) != a


# --- checkpoint integrity -------------------------------------------------------------------------


def _copy_with_config(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_config_with_more_layers_than_the_weights_is_refused(llama_dir, tmp_path):
    d = _copy_with_config(llama_dir, tmp_path / "more", num_hidden_layers=4)
    with pytest.raises(ModelLoadError, match=r"do not match its config: tensors 9 missing "
                                             r"\(model\.layers\.3\.input_layernorm\.weight, .* and 5 more\)$"):
        load_model(d, device="cpu")


def test_weights_the_config_does_not_use_are_refused(llama_dir, tmp_path):
    d = _copy_with_config(llama_dir, tmp_path / "fewer", num_hidden_layers=2)
    with pytest.raises(ModelLoadError, match=r"tensors 9 unexpected \(model\.layers\.2\."):
        load_model(d, device="cpu")


def test_weights_of_another_shape_are_refused(llama_dir, tmp_path):
    d = _copy_with_config(llama_dir, tmp_path / "shape", intermediate_size=48)
    with pytest.raises(ModelLoadError, match=r"tensors 9 of another shape \(model\.layers\.0\.mlp\.down_proj"):
        load_model(d, device="cpu")


def test_truncated_safetensors_is_a_one_line_error(llama_dir, tmp_path):
    d = tmp_path / "truncated"
    shutil.copytree(llama_dir, d)
    weights = d / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(ModelLoadError, match=rf"^model.safetensors in .* is truncated: {size - 100} of {size} bytes"):
        load_model(d, device="cpu")
    with open(weights, "r+b") as fh:
        fh.truncate(5)
    with pytest.raises(ModelLoadError, match=r"is not a readable safetensors file \(5 bytes"):
        load_model(d, device="cpu")


def test_missing_shard_is_named(llama_dir, tmp_path):
    d = tmp_path / "sharded"
    shutil.copytree(llama_dir, d)
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    weight_map = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                  "lm_head.weight": "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(ModelLoadError, match="is incomplete: model.safetensors.index.json names shard that is "
                                             "missing: model-00002-of-00002.safetensors"):
        load_model(d, device="cpu")


def test_pickle_weights_are_refused_without_unpickling(llama_dir, tmp_path, monkeypatch):
    d = tmp_path / "pickled"
    d.mkdir()
    for f in llama_dir.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, d / f.name)
    torch.save({"x": torch.ones(1)}, d / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    with pytest.raises(ModelLoadError, match=r"holds only pickle weights \(pytorch_model.bin\); mechtest never "
                                             "unpickles"):
        load_model(d, device="cpu")


def test_directory_without_weights(llama_dir, tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    shutil.copy(llama_dir / "config.json", d)
    with pytest.raises(ModelLoadError, match="no weights in .*: expected model.safetensors"):
        load_model(d, device="cpu")


def test_every_tiny_architecture_loads_cleanly(tmp_path):
    """No row's checkpoint reports missing or unexpected tensors (tied embeddings, buffers) when sound."""
    from tiny_models import ARCH_NAMES

    for arch in ARCH_NAMES:
        load_model(save_tiny(arch, tmp_path / arch), device="cpu")


# --- devices and dtypes ---------------------------------------------------------------------------


def _fake_gpus(monkeypatch, n):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


@pytest.mark.parametrize("text, message", [
    ("gpu", "unknown device 'gpu'; use cpu, cuda, cuda:N, mps or auto"),
    ("cuda:x", "unknown device 'cuda:x'"),
    ("", "unknown device ''"),
])
def test_bogus_device_names(text, message):
    with pytest.raises(DeviceError, match=f"^{message}"):
        check_device(text)


def test_cuda_without_cuda(monkeypatch):
    _fake_gpus(monkeypatch, 0)
    with pytest.raises(DeviceError, match=r"^device 'cuda:0' requested but CUDA is not available"):
        check_device("cuda:0")
    assert check_device(None) == "cpu" and check_device("auto") == "auto" and check_device(" CPU ") == "cpu"


def test_gpu_index_past_the_last(monkeypatch):
    _fake_gpus(monkeypatch, 1)
    with pytest.raises(DeviceError, match=r"^device 'cuda:3' does not exist: 1 CUDA device visible \(cuda:0..cuda:0\)$"):
        check_device("cuda:3")
    assert check_device("cuda:0") == "cuda:0" and check_device(None) == "cuda"


def test_placement_decisions(monkeypatch):
    _fake_gpus(monkeypatch, 0)
    assert placement("auto") == ({}, "cpu")  # nothing to spread over
    assert placement(None) == ({}, "cpu")
    _fake_gpus(monkeypatch, 2)
    assert placement("auto") == ({"device_map": "auto"}, "auto")
    assert placement("cuda:1") == ({}, "cuda:1")  # one device: load, then move
    assert placement({"": "cpu"}) == ({"device_map": {"": "cpu"}}, "map")


def test_default_dtype_is_the_checkpoints_on_cuda_and_float32_elsewhere(monkeypatch):
    from transformers import LlamaConfig

    bf16 = LlamaConfig(dtype="bfloat16")
    assert resolve_dtype(None, device="cpu", config=bf16) == torch.float32
    assert resolve_dtype(None, device="cuda:0", config=bf16) == torch.bfloat16
    assert resolve_dtype(None, device="cuda", config=LlamaConfig()) == torch.float32  # none declared
    assert resolve_dtype("fp16", device="cpu", config=bf16) == torch.float16
    _fake_gpus(monkeypatch, 2)
    assert resolve_dtype(None, device="auto", config=bf16) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")


def test_layers_offloaded_to_disk_still_hook(llama_dir, tmp_path):
    """A device map spreading layers over devices (here CPU and disk): same logits, same interventions."""
    pytest.importorskip("accelerate")
    plain = load_model(llama_dir, device="cpu")
    spread_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    spread = load_model(llama_dir, device=spread_map, offload_folder=tmp_path / "offload")
    assert spread.hf.model.layers[1].self_attn.o_proj.weight.device.type == "meta"  # really offloaded
    assert spread.device == torch.device("cpu")
    assert spread.fingerprint == plain.fingerprint  # placement is not part of what the model computes
    ids = torch.randint(4, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    edits = {("head_out", 1): zero_heads([2]), ("v", 2): zero_heads([0])}
    with torch.no_grad():
        assert torch.equal(spread.hf(input_ids=ids).logits, plain.hf(input_ids=ids).logits)
        with hooked(plain, edits):
            expected = plain.hf(input_ids=ids).logits
        with hooked(spread, edits):
            got = spread.hf(input_ids=ids).logits
    assert torch.equal(got, expected)
    assert not torch.equal(got, plain.hf(input_ids=ids).logits)


def test_load_model_takes_a_model_ref(llama_dir):
    ref = resolve_model(llama_dir.name, base_dir=llama_dir.parent)
    m = load_model(ref, device="cpu", name="mine")
    assert m.name == "mine" and m.ref == ref and ref.kind == "dir"
    assert load_model(llama_dir, device="cpu").name == llama_dir.name


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


def test_compat_shims(llama_dir):
    from mechtest import compat

    assert compat.loading_problems({"missing_keys": {"b", "a"}, "mismatched_keys": [("w", (1,), (2,))]}) == \
        {"missing_keys": ["a", "b"], "unexpected_keys": [], "mismatched_keys": ["w"]}
    m = load_model(llama_dir, device="cpu")
    assert compat.accepts_logits_to_keep(m) in (True, False)
    kv = [(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)) for _ in range(m.n_layers)]
    back = compat.cache_tensors(compat.make_cache(kv))
    assert all(torch.equal(k, k2) and torch.equal(v, v2) for (k, v), (k2, v2) in zip(kv, back))
    with torch.no_grad():
        out = m.hf(input_ids=torch.tensor([[1, 5, 6]]), use_cache=True)
    assert len(compat.cache_tensors(compat.output_cache(out))) == m.n_layers
    assert compat.cache_kwarg(m) in ("cache", "past_key_values")
