"""On-disk activation cache, safe to share between pytest-xdist workers.

Activations are expensive to recompute and identical across test runs, so each result is stored once as a
safetensors file under ``root/<key[:2]>/<key>.safetensors``. The key is a content hash of everything the
activations depend on; the file carries its key and a checksum of its tensor bytes, so a stale, truncated or
corrupt file is detected and recomputed instead of served.

Concurrency: a reader needs no lock (files only ever appear whole, through ``os.replace``). A writer takes a
``FileLock`` on ``<path>.lock``, checks again, computes, writes a temporary file in the same directory, fsyncs
it and renames it into place. Workers racing on one key therefore compute it once and share the file; a writer
killed mid-write leaves only a stray temporary file, which the next writer of that key removes.

Permissions: cache and lock files get the mode the process umask gives any new file (mkstemp alone would make
them 0600), so a cache directory shared by a group works for all its members.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import filelock
import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from mechtest.errors import CacheError
from mechtest.version import __version__

FORMAT = "mechtest-activation-cache-1"
SUFFIX = ".safetensors"
_KEY_RE = re.compile(r"[0-9a-f]{8,128}")
_CHUNK = 1 << 20


@dataclasses.dataclass
class CacheStats:
    """Per-instance counters, so tests and reports can tell hits from recomputations."""

    hits: int = 0  # served from a valid file on disk
    misses: int = 0  # not served from disk (absent, invalid, or cache disabled)
    computed: int = 0  # compute() calls that returned
    invalid: int = 0  # files found but rejected (truncated, corrupt, wrong key)


class ActivationCache:
    """Content-addressed store of ``{name: tensor}`` results; see the module docstring for the protocol."""

    def __init__(
        self,
        root: str | os.PathLike = ".mechtest_cache",
        *,
        enabled: bool = True,
        lock_timeout: float = -1,
    ) -> None:
        self.root = Path(root)
        self.enabled = enabled
        self.lock_timeout = lock_timeout  # seconds; -1 waits for as long as the holder computes
        self.stats = CacheStats()

    def __repr__(self) -> str:
        return f"ActivationCache(root={str(self.root)!r}, enabled={self.enabled})"

    # ------------------------------------------------------------------ keys

    @staticmethod
    def key(
        *,
        fingerprint: str,
        inputs: torch.Tensor,
        site: str,
        positions=None,
        dtype: str | torch.dtype,
        extra: Mapping[str, object] | None = None,
    ) -> str:
        """Hex sha256 of everything the activations depend on; stable across processes and runs."""
        payload = {
            "format": FORMAT,
            "version": __version__,
            "fingerprint": str(fingerprint),
            "inputs": _tensor_summary(inputs),
            "site": str(site),
            "positions": _plain(positions),
            "dtype": _dtype_name(dtype),
            "extra": {} if extra is None else dict(extra),
        }
        try:
            text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        except (TypeError, ValueError) as exc:
            raise CacheError(f"cache key parameters must be JSON-serialisable: {exc}") from exc
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    def path_for(self, key: str) -> Path:
        """Where the file for ``key`` lives (it need not exist)."""
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise CacheError(f"invalid cache key {key!r}: expected a lowercase hex digest")
        return self.root / key[:2] / f"{key}{SUFFIX}"

    # ---------------------------------------------------------- get / compute

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The cached tensors for ``key`` if a valid file holds them, else None (nothing is computed)."""
        if not self.enabled:
            return None
        cached = self._read(self.path_for(key), key)
        if cached is not None:
            self.stats.hits += 1
        return cached

    def get_or_compute(
        self, key: str, compute: Callable[[], Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Return the cached tensors for ``key``, computing and storing them once if no valid file exists."""
        if not self.enabled:
            self.stats.misses += 1
            result = _check_result(compute())
            self.stats.computed += 1
            return dict(result)

        path = self.path_for(key)
        cached = self._read(path, key)
        if cached is not None:
            self.stats.hits += 1
            return cached

        self._ensure_dir(path.parent)
        lock = filelock.FileLock(f"{path}.lock", timeout=self.lock_timeout, mode=0o666 & ~_umask())
        try:
            lock.acquire()
        except filelock.Timeout as exc:
            raise CacheError(f"timed out after {self.lock_timeout}s waiting for cache lock {lock.lock_file}") from exc
        except OSError as exc:
            raise CacheError(f"cannot lock cache file {path}.lock: {exc}") from exc
        try:
            cached = self._read(path, key)  # another worker may have written it while we waited
            if cached is not None:
                self.stats.hits += 1
                return cached
            self.stats.misses += 1
            tensors = _prepare(_check_result(compute()))
            self.stats.computed += 1
            self._write(path, key, tensors)
            return tensors
        finally:
            lock.release()

    def clear(self) -> None:
        """Delete every cache file under root. Only call it while no other process is using the cache."""
        if not self.root.is_dir():
            return
        for sub in self.root.iterdir():
            if not (sub.is_dir() and re.fullmatch(r"[0-9a-f]{2}", sub.name)):
                continue  # never delete what the cache did not create
            for f in sub.iterdir():
                if f.name.endswith((SUFFIX, f"{SUFFIX}.lock", ".tmp")):
                    try:
                        f.unlink()
                    except FileNotFoundError:
                        pass
            try:
                sub.rmdir()
            except OSError:
                pass  # not empty: holds files that are not ours
        try:
            self.root.rmdir()
        except OSError:
            pass

    # ------------------------------------------------------------- internals

    def _read(self, path: Path, key: str) -> dict[str, torch.Tensor] | None:
        """The file's tensors if it exists and is whole and ours; None otherwise (counted when invalid)."""
        try:
            data = path.read_bytes()  # one read: a consistent snapshot even if the file is replaced meanwhile
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"cannot read cache file {path}: {exc}") from exc
        tensors = _decode(data, key)
        if tensors is None:
            self.stats.invalid += 1
        return tensors

    def _ensure_dir(self, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cache directory {directory} cannot be created: {exc}") from exc
        if not os.access(directory, os.W_OK | os.X_OK):
            raise CacheError(f"cache directory {directory} is not writable")

    def _write(self, path: Path, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Atomically publish ``tensors`` at ``path``. Caller holds the key's lock."""
        metadata = {
            "format": FORMAT,
            "key": key,
            "mechtest_version": __version__,
            "sha256": _checksum(tensors),
        }
        try:
            data = _st_save(tensors, metadata=metadata)
        except Exception as exc:  # safetensors raises several types for unsupported tensors
            raise CacheError(f"cannot serialise activations for {path}: {exc}") from exc

        _remove_strays(path)  # left by writers killed mid-write; safe, since we hold the lock
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise CacheError(f"cannot create a file in cache directory {path.parent}: {exc}") from exc
        try:
            # mkstemp makes 0600 files; a cache shared between users (a group-writable directory) needs the
            # mode every other file of this process gets
            os.chmod(tmp, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as fh:
                _write_all(fh, data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise CacheError(f"cannot write cache file {path}: {exc}") from exc
            raise
        _fsync_dir(path.parent)


def _umask() -> int:
    """The process umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_all(fh, data: bytes) -> None:
    """Write ``data`` in chunks (a seam for tests that interrupt a write halfway)."""
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        fh.write(view[start : start + _CHUNK])


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; best effort, since not every platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_strays(path: Path) -> None:
    for stray in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            stray.unlink()
        except OSError:
            pass


def _decode(data: bytes, key: str) -> dict[str, torch.Tensor] | None:
    """Tensors from a file's bytes, or None unless it loads, names ``key`` and its checksum verifies."""
    metadata = _header_metadata(data)
    if metadata is None or metadata.get("format") != FORMAT or metadata.get("key") != key:
        return None
    try:
        tensors = _st_load(data)
    except Exception:  # truncated or garbled: safetensors raises several types
        return None
    if _checksum(tensors) != metadata.get("sha256"):
        return None
    return tensors


def _header_metadata(data: bytes) -> dict | None:
    """The ``__metadata__`` of a safetensors header (8-byte little-endian length, then JSON)."""
    if len(data) < 8:
        return None
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        return None
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, ValueError):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


def _checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, so any flipped or missing byte changes it."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        head = json.dumps([name, str(t.dtype), list(t.shape)], separators=(",", ":"))
        digest.update(f"{len(head)}:{head}".encode())
        digest.update(_raw_bytes(t))
    return digest.hexdigest()


def _raw_bytes(t: torch.Tensor):
    """The tensor's bytes as a buffer, for any dtype (bfloat16 and float8 included)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _tensor_summary(t) -> dict:
    """Shape, dtype and content hash of the input ids; integer ids hash alike whatever their width."""
    t = torch.as_tensor(t).detach().cpu()
    if not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool:
        t = t.to(torch.int64)
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype),
        "sha256": hashlib.sha256(_raw_bytes(t)).hexdigest(),
    }


def _plain(value):
    """Positions (None, ints, nested lists or tensors) as plain JSON values."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if hasattr(value, "tolist"):  # torch / numpy tensors and scalars
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, range):
        return list(value)
    return value


def _dtype_name(dtype) -> str:
    """Canonical name, so ``torch.float16``, ``"float16"``, ``"torch.float16"`` and ``"half"`` agree."""
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(resolved, torch.dtype):
            dtype = resolved
        else:
            return dtype
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    raise CacheError(f"dtype must be a torch.dtype or a string, got {dtype!r}")


def _check_result(result) -> Mapping[str, torch.Tensor]:
    if not isinstance(result, Mapping):
        raise CacheError(f"compute() must return a mapping of name -> tensor, got {type(result).__name__}")
    for name, value in result.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CacheError(f"compute() returned a non-tensor entry {name!r}: {type(value).__name__}")
    return result


def _prepare(result: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Own, contiguous CPU copies: safetensors refuses views and tensors that share storage."""
    return {name: t.detach().to("cpu").clone(memory_format=torch.contiguous_format) for name, t in result.items()}
