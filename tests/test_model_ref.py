"""resolve_model: local paths, GGUF files and hub ids, offline-first, with one-line errors naming where it looked."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mechtest.model_ref as model_ref
from mechtest.errors import ModelLoadError
from mechtest.model_ref import ModelRef, resolve_model
from tiny_models import save_tiny

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("llama"))


def fake_hub_cache(cache: Path, repo_id: str, checkpoint: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """Lay ``checkpoint`` out as huggingface_hub caches a repo: blobs, snapshots/<commit> of symlinks, refs/<ref>."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in checkpoint.iterdir():
        blob = repo / "blobs" / f"{commit[:8]}-{f.name}"
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache the environment points at, and no network: any connection attempt fails the test."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    for var in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", model_ref.ALLOW_DOWNLOAD_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError("resolve_model tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return cache


# --- local paths -------------------------------------------------------------------------------------


def test_relative_absolute_and_home_paths(llama_dir, tmp_path, monkeypatch):
    ref = resolve_model(llama_dir.name, base_dir=llama_dir.parent)
    assert ref == ModelRef(text=llama_dir.name, kind="dir", path=llama_dir.resolve())
    assert resolve_model(str(llama_dir), base_dir=tmp_path).path == llama_dir.resolve()
    monkeypatch.setenv("HOME", str(llama_dir.parent))
    assert resolve_model(f"~/{llama_dir.name}", base_dir=tmp_path).path == llama_dir.resolve()


def test_misspelt_local_paths_fail_at_once_without_the_hub(hub, tmp_path, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.setenv(model_ref.ALLOW_DOWNLOAD_ENV, "1")  # even then: these are paths, not hub ids
    monkeypatch.setattr(model_ref, "_download", lambda *a: pytest.fail("looked on the hub"))
    for text in ("./ckpt", "/no/such/dir", "~/no-such-dir", "a/b/c", "model.gguf", "checkpoints/step-200"):
        with pytest.raises(ModelLoadError, match="^checkpoint not found: .* does not exist$"):
            resolve_model(text, base_dir=tmp_path)


def test_a_file_that_is_not_gguf(llama_dir):
    with pytest.raises(ModelLoadError, match="is a file; give the checkpoint directory"):
        resolve_model("config.json", base_dir=llama_dir)


# --- GGUF --------------------------------------------------------------------------------------------


def test_gguf_file_and_directory_holding_one(tmp_path):
    d = tmp_path / "q"
    d.mkdir()
    (d / "tiny-Q8_0.gguf").write_bytes(b"GGUF")
    by_file = resolve_model("q/tiny-Q8_0.gguf", base_dir=tmp_path)
    assert (by_file.kind, by_file.path, by_file.gguf_file) == ("gguf", d.resolve(), "tiny-Q8_0.gguf")
    assert resolve_model("q", base_dir=tmp_path) == ModelRef(text="q", kind="gguf", path=d.resolve(),
                                                             gguf_file="tiny-Q8_0.gguf")
    (d / "tiny-F16.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"holds 2 GGUF files \(tiny-F16.gguf, tiny-Q8_0.gguf\); name one"):
        resolve_model("q", base_dir=tmp_path)


# --- hub ids -----------------------------------------------------------------------------------------


def test_hub_id_resolves_through_the_local_cache_offline(hub, llama_dir, tmp_path):
    snapshot = fake_hub_cache(hub, "org/tiny-llama", llama_dir)
    ref = resolve_model("org/tiny-llama", base_dir=tmp_path)
    assert ref == ModelRef(text="org/tiny-llama", kind="hub", path=snapshot, hub_id="org/tiny-llama")
    assert ref.display == "org/tiny-llama"


def test_hub_id_without_org(hub, llama_dir, tmp_path):
    snapshot = fake_hub_cache(hub, "tiny", llama_dir)
    assert resolve_model("tiny", base_dir=tmp_path).path == snapshot


def test_revisions_branch_and_commit(hub, llama_dir, tmp_path):
    fake_hub_cache(hub, "org/m", llama_dir)
    dev = fake_hub_cache(hub, "org/m", llama_dir, commit=OTHER_COMMIT, ref="dev")
    ref = resolve_model("org/m@dev", base_dir=tmp_path)
    assert (ref.path, ref.hub_id, ref.revision) == (dev, "org/m", "dev")
    assert resolve_model(f"org/m@{COMMIT}", base_dir=tmp_path).path.name == COMMIT
    with pytest.raises(ModelLoadError, match="no 'org/m' at revision 'v2' in the Hugging Face cache"):
        resolve_model("org/m@v2", base_dir=tmp_path)


def test_hf_home_is_respected(hub, llama_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    snapshot = fake_hub_cache(tmp_path / "home" / "hub", "org/tiny", llama_dir)
    assert resolve_model("org/tiny", base_dir=tmp_path).path == snapshot


def test_local_directory_wins_over_the_hub(hub, llama_dir, tmp_path):
    fake_hub_cache(hub, "org/tiny", llama_dir)
    local = tmp_path / "org" / "tiny"
    shutil.copytree(llama_dir, local)
    assert resolve_model("org/tiny", base_dir=tmp_path).kind == "dir"


def test_not_found_is_one_line_naming_both_places_and_fast(hub, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("hub lookup"))
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        resolve_model("org/tiny-lama", base_dir=tmp_path)
    assert time.perf_counter() - start < 0.5
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "org" / "tiny-lama") in message  # where it looked locally
    assert "'org/tiny-lama'" in message and str(hub) in message  # and in the hub cache
    assert "MECHTEST_ALLOW_DOWNLOAD=1" in message


def test_not_a_hub_id(hub, tmp_path):
    with pytest.raises(ModelLoadError, match="is neither an existing path .* nor a hub id"):
        resolve_model("my model", base_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="^empty model name"):
        resolve_model(" ", base_dir=tmp_path)


def test_download_only_when_the_user_opts_in(hub, llama_dir, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, revision=None, cache_dir=None, **kwargs):
        calls.append((repo_id, revision, cache_dir, kwargs))
        return str(fake_hub_cache(Path(cache_dir), repo_id, llama_dir))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model("org/new", base_dir=tmp_path)
    assert calls == []
    monkeypatch.setenv(model_ref.ALLOW_DOWNLOAD_ENV, "1")
    ref = resolve_model("org/new", base_dir=tmp_path)
    assert ref.kind == "hub" and (ref.path / "config.json").is_file()
    (repo_id, revision, cache_dir, kwargs) = calls[0]
    assert (repo_id, revision, cache_dir) == ("org/new", None, str(hub))
    assert not kwargs.get("local_files_only") and not any(p.endswith((".bin", ".gguf")) for p in kwargs["allow_patterns"])


def test_load_model_from_the_hub_cache_matches_the_local_copy(hub, llama_dir, tmp_path):
    from mechtest.model import load_model

    fake_hub_cache(hub, "org/tiny-llama", llama_dir)
    from_hub = load_model(resolve_model("org/tiny-llama", base_dir=tmp_path), device="cpu")
    assert from_hub.name == "org/tiny-llama"
    assert from_hub.fingerprint == load_model(llama_dir, device="cpu").fingerprint


def test_importing_model_ref_does_not_import_torch():
    code = ("import sys, mechtest.model_ref; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
