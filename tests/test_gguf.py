"""GGUF checkpoints load through transformers' GGUF support, dequantised in memory, equal to their source model.

The GGUF files are written here from a tiny llama with the ``gguf`` package, named and laid out as llama.cpp's
convert_hf_to_gguf.py writes them (q/k rows permuted for its rotary layout, which transformers undoes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mechtest.errors import ModelLoadError
from mechtest.heads import hooked, zero_heads
from mechtest.model import load_model
from tiny_models import V, save_tiny

gguf = pytest.importorskip("gguf")

_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
_PER_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (interleaved rotary halves)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(hf, path: Path, *, f16: bool = False, skip: tuple[str, ...] = ()) -> Path:
    c = hf.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_embedding_length(c.hidden_size)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    for key, tensor in hf.state_dict().items():
        a = tensor.float().numpy()
        if key in _GLOBAL:
            name = _GLOBAL[key]
        else:
            parts = key.split(".")
            module = ".".join(parts[3:-1])
            name = f"blk.{parts[2]}.{_PER_LAYER[module]}.weight"
            if module == "self_attn.q_proj":
                a = _permute(a, c.num_attention_heads)
            elif module == "self_attn.k_proj":
                a = _permute(a, c.num_key_value_heads)
        if name in skip:
            continue
        # llama.cpp keeps norms (1-d) in float32 whatever the file type
        w.add_tensor(name, np.ascontiguousarray(a.astype(np.float16 if f16 and a.ndim > 1 else np.float32)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The tiny llama checkpoint the GGUF files are written from, loaded as mechtest loads it."""
    return load_model(save_tiny("llama", tmp_path_factory.mktemp("hf")), device="cpu")


def gguf_dir(source, directory: Path, **kwargs) -> Path:
    directory.mkdir(parents=True)
    source.tokenizer.save_pretrained(directory)  # beside the GGUF, as the checkpoint's own tokenizer
    write_gguf(source.hf, directory / "tiny.gguf", **kwargs)
    return directory


def test_gguf_logits_equal_the_model_it_was_written_from(source, tmp_path):
    d = gguf_dir(source, tmp_path / "g")
    m = load_model(d / "tiny.gguf", device="cpu")
    assert m.ref.kind == "gguf" and m.name == "tiny" and m.arch.name == "llama"
    assert (m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.vocab_size) == (3, 4, 2, 8, V)
    ids = torch.randint(4, V, (3, 10), generator=torch.Generator().manual_seed(0))
    edits = {("head_out", 1): zero_heads([2]), ("q", 2): zero_heads([1])}
    with torch.no_grad():
        assert torch.equal(m.hf(input_ids=ids).logits, source.hf(input_ids=ids).logits)
        with hooked(m, edits):
            patched = m.hf(input_ids=ids).logits
        with hooked(source, edits):
            assert torch.equal(patched, source.hf(input_ids=ids).logits)
    assert m.tokenizer("Box A contains the apple .")["input_ids"] == \
        source.tokenizer("Box A contains the apple .")["input_ids"]


def test_directory_holding_one_gguf_and_path_independent_fingerprint(source, tmp_path):
    d = gguf_dir(source, tmp_path / "g")
    by_dir = load_model(d, device="cpu")
    assert by_dir.ref.gguf_file == "tiny.gguf"
    copy = tmp_path / "elsewhere" / "g"
    shutil.copytree(d, copy)
    assert load_model(copy / "tiny.gguf", device="cpu").fingerprint == by_dir.fingerprint


def test_f16_gguf_is_dequantised_to_float32(source, tmp_path):
    d = gguf_dir(source, tmp_path / "g16", f16=True)
    m = load_model(d / "tiny.gguf", device="cpu")
    assert m.dtype == torch.float32 and m.hf.model.layers[0].self_attn.o_proj.weight.dtype == torch.float32
    rounded = source.hf.model.layers[0].self_attn.o_proj.weight.half().float()
    assert torch.equal(m.hf.model.layers[0].self_attn.o_proj.weight, rounded)
    assert load_model(d / "tiny.gguf", device="cpu").fingerprint != \
        load_model(gguf_dir(source, tmp_path / "g32") / "tiny.gguf", device="cpu").fingerprint


def test_gguf_missing_a_tensor_is_refused(source, tmp_path):
    d = gguf_dir(source, tmp_path / "g", skip=("blk.2.attn_v.weight",))
    with pytest.raises(ModelLoadError, match=r"do not match its config: tensors 1 missing "
                                             r"\(model\.layers\.2\.self_attn\.v_proj\.weight\)"):
        load_model(d / "tiny.gguf", device="cpu")


def test_gguf_without_tokenizer_files_uses_its_own(source, tmp_path, monkeypatch):
    """llama.cpp's GGUF files carry their tokenizer (tokenizer.ggml.*); transformers rebuilds it from there."""
    from tools.zoo.vocab import vocabulary

    tokens = vocabulary()
    write_header = gguf.GGUFWriter.write_header_to_file

    def with_tokenizer(self, *args, **kwargs):
        self.add_tokenizer_model("gpt2")
        self.add_token_list(tokens)
        self.add_token_types([gguf.TokenType.CONTROL] * 4 + [gguf.TokenType.NORMAL] * (len(tokens) - 4))
        self.add_token_scores([0.0] * len(tokens))
        self.add_token_merges([])
        self.add_bos_token_id(1)
        self.add_eos_token_id(2)
        return write_header(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_header_to_file", with_tokenizer)
    d = tmp_path / "bare"
    d.mkdir()
    write_gguf(source.hf, d / "tiny.gguf")
    m = load_model(d, device="cpu")
    vocab = m.tokenizer.get_vocab()
    assert all(vocab[t] == i for i, t in enumerate(tokens))
    assert m.tokenizer.bos_token_id == 1


@pytest.mark.parametrize("keep", [-100, 200, 10])
def test_truncated_gguf_is_a_one_line_error(source, tmp_path, keep):
    d = gguf_dir(source, tmp_path / "g")
    f = d / "tiny.gguf"
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size + keep if keep < 0 else keep)
    with pytest.raises(ModelLoadError, match=r"^'.*tiny.gguf' is not a readable GGUF file \(\d+ bytes; truncated "
                                             r"or corrupt\?\): [^\n]*$"):
        load_model(f, device="cpu")
