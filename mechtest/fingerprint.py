"""Model fingerprints: what a checkpoint computes (config, dtype, weight contents, tokenizer and task files),
never where it lies.

The fingerprint keys every cache entry, so it must change whenever anything that changes a result changes
(weights, config, tokenizer files, the ``mechtest.json`` card, generation and chat configs) and must not
change when identical files move. Large files are hashed once per file identity (see ``file_digest``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
from pathlib import Path

# Weight files from this size on have their content hash memoised per file identity (see ``file_digest``);
# smaller ones are simply hashed again (milliseconds), leaving no memo behind.
_MEMO_FROM = 64 * 2**20
# config keys that say where or by what a checkpoint was saved, not what it computes
_VOLATILE_CONFIG_KEYS = ("transformers_version",)
# files of a checkpoint folder that cannot change a result: never read by mechtest (pickles, other weights are
# hashed apart) or documentation
_NOT_READ_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".md", ".png", ".jpg")
_NOT_READ_PREFIXES = ("readme", "license", "notice")
# beside a GGUF file (a folder that may hold anything): only what the loader and the task read
_GGUF_SIDE_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*", "merges*", "*.model",
                    "*.tiktoken", "chat_template*", "generation_config.json", "mechtest.json", "config.json")


def fingerprint(config, dtype, weight_files: list[Path], side_files: list[Path] = ()) -> str:
    """sha256 of what the model computes: its config (minus where and by what it was saved), dtype, the
    contents of its weight files and of its side files (tokenizer, model card, generation/chat config; see
    ``side_files``); never a path, so identical files anywhere agree, and placement-independent (offloaded
    tensors need not be read back)."""
    h = hashlib.sha256()
    settings = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(str(dtype).encode())
    for f in weight_files:
        h.update(f"{f.name}:{file_digest(f)}".encode())
    for f in side_files:
        h.update(f"side {f.name}:{file_digest(f)}".encode())
    return h.hexdigest()[:32]


def side_files(directory: Path, *, gguf: bool = False) -> list[Path]:
    """The files beside the weights that may change a result, sorted by name.

    A checkpoint folder: every visible top-level file except weights, pickles and documentation (a tokenizer
    file of a kind not foreseen here still counts: a needless re-measure is cheap, a stale result is not).
    Beside a GGUF file, whose folder may hold anything: tokenizer, chat, generation and task files only.
    """
    files = []
    for f in sorted(Path(directory).iterdir()):
        name = f.name.lower()
        if name.startswith(".") or not f.is_file():
            continue
        if gguf:
            if any(fnmatch.fnmatch(name, pattern) for pattern in _GGUF_SIDE_FILES):
                files.append(f)
        elif not name.endswith(_NOT_READ_SUFFIXES) and not name.startswith(_NOT_READ_PREFIXES):
            files.append(f)
    return files


def file_digest(path: Path, memo_dir: Path | None = None) -> str:
    """sha256 of a file's bytes; for files of ``_MEMO_FROM`` bytes or more, memoised under the file's identity
    (device, inode, size, mtime_ns, ctime_ns).

    Any write changes ctime and no tool can set it back, so an in-place edit that keeps size and mtime still
    misses the memo; an unchanged 7B checkpoint costs one read ever and a stat per run. The memo is a tiny
    file per identity in ``memo_dir`` (default: ``$MECHTEST_HASH_MEMO``, else
    ``$XDG_CACHE_HOME/mechtest/file-hashes``); an unwritable memo only means hashing again.
    """
    path = Path(path).resolve()  # hub snapshots are symlinks into blobs/
    before = _identity(path)
    if os.stat(path).st_size < _MEMO_FROM:
        return _sha256_file(path)
    memo = Path(memo_dir) if memo_dir is not None else _memo_dir()
    entry = memo / f"{before}.json"
    try:
        digest = json.loads(entry.read_text())["sha256"]
        if isinstance(digest, str) and len(digest) == 64:
            return digest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = _sha256_file(path)
    if _identity(path) == before:  # not written to while we read it
        with contextlib.suppress(OSError):
            memo.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"sha256": digest, "path": str(path)}))
            os.replace(tmp, entry)
    return digest


def _identity(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}-{st.st_ctime_ns}"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def _memo_dir() -> Path:
    if os.environ.get("MECHTEST_HASH_MEMO"):
        return Path(os.environ["MECHTEST_HASH_MEMO"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "mechtest" / "file-hashes"
