"""A GGUF is dequantised once into a cached safetensors checkpoint; any loadable model exports as safetensors."""

from __future__ import annotations

import json
import os

import pytest
import torch

import mechtest.gguf_cache as gguf_cache
from mechtest.errors import ModelLoadError
from mechtest.export import export, main
from mechtest.model import checkpoint_fingerprint, load_model
from mechtest.model_ref import resolve_model
from tiny_models import V, save_tiny

pytest.importorskip("gguf")
IDS = torch.randint(4, V, (3, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "gguf-cache"))
    return tmp_path / "gguf-cache"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return load_model(save_tiny("llama", tmp_path_factory.mktemp("hf")), device="cpu")


def _gguf(source, directory, **kwargs):
    from test_gguf import gguf_dir

    return gguf_dir(source, directory, **kwargs) / "tiny.gguf"


def _logits(model):
    with torch.no_grad():
        return model.hf(input_ids=IDS).logits


def _no_conversion(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the GGUF was dequantised again")

    monkeypatch.setattr(gguf_cache, "_convert", refuse)


def test_second_load_reads_the_cache_not_the_gguf(source, tmp_path, cache, monkeypatch):
    from mechtest import progress

    path = _gguf(source, tmp_path / "g")
    monkeypatch.setenv(progress.DELAY_ENV, "0")
    lines: list[str] = []
    progress.configure("yes", sink=lines.append, tty=False)
    try:
        first = load_model(path, device="cpu")
    finally:
        progress.configure()
    assert lines[0].startswith("mechtest: dequantising tiny.gguf (0 MB, once; later loads read ")  # shown
    entries = [p for p in cache.iterdir()]
    assert len(entries) == 1 and (entries[0] / "model.safetensors").is_file()
    assert not (entries[0] / "tokenizer.json").exists()  # the tokenizer beside the GGUF is read from there
    _no_conversion(monkeypatch)
    second = load_model(path, device="cpu")
    assert torch.equal(_logits(second), _logits(first)) and torch.equal(_logits(first), _logits(source))
    assert second.fingerprint == first.fingerprint == checkpoint_fingerprint(resolve_model(path, base_dir="."))
    assert second.ref.kind == "gguf" and second.name == "tiny"


def test_fingerprint_without_parsing_and_a_changed_file_is_converted_again(source, tmp_path, cache, monkeypatch):
    path = _gguf(source, tmp_path / "g")
    fp = checkpoint_fingerprint(resolve_model(path, base_dir="."))
    assert not cache.exists()  # fingerprinting converted nothing
    load_model(path, device="cpu")
    f16 = _gguf(source, tmp_path / "g16", f16=True)
    os.replace(f16, path)  # same path, other contents
    assert checkpoint_fingerprint(resolve_model(path, base_dir=".")) != fp
    m = load_model(path, device="cpu")
    assert len(list(cache.iterdir())) == 2 and m.fingerprint != fp


def test_a_torn_entry_is_never_served(source, tmp_path, cache, monkeypatch):
    path = _gguf(source, tmp_path / "g")
    ref = resolve_model(path, base_dir=".")
    torn = gguf_cache.entry(ref)
    torn.mkdir(parents=True)
    (torn / "config.json").write_text(json.dumps(source.hf.config.to_dict()))
    (torn / "model.safetensors").write_bytes(b"half a file")  # a copy cut short: config but torn weights
    m = load_model(path, device="cpu")
    assert torch.equal(_logits(m), _logits(source))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    other = _gguf(source, tmp_path / "g16", f16=True)
    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_model(other, device="cpu")
    assert not gguf_cache.entry(resolve_model(other, base_dir=".")).exists()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_export_round_trips_gguf_and_adapter(source, tmp_path, cache, capsys):
    path = _gguf(source, tmp_path / "g")
    (path.parent / "mechtest.json").write_text(json.dumps({"n_boxes": 3}))
    assert main([str(path), str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'out'}"
    exported = load_model(tmp_path / "out", device="cpu")
    assert torch.equal(_logits(exported), _logits(load_model(path, device="cpu")))
    assert json.loads((tmp_path / "out" / "mechtest.json").read_text()) == {"n_boxes": 3}
    assert exported.tokenizer("Box A contains the apple .")["input_ids"] == \
        source.tokenizer("Box A contains the apple .")["input_ids"]

    pytest.importorskip("peft")
    from test_adapters import ZOO_BASE, make_adapter

    adapter = make_adapter(tmp_path / "ft")
    out = export(adapter, tmp_path / "ft-merged")
    merged = load_model(out, device="cpu")
    assert torch.equal(_logits(merged), _logits(load_model(adapter, device="cpu")))
    assert (out / "mechtest.json").read_text() == (ZOO_BASE / "mechtest.json").read_text()  # the base's card

    with pytest.raises(ModelLoadError, match="exists and is not an empty directory"):
        export(adapter, out)
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
