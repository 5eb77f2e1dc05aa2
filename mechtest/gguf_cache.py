"""A GGUF file is dequantised once: its weights, config (and tokenizer) are kept as a safetensors checkpoint.

Dequantising a GGUF takes minutes on a CPU for a 0.5B model, and transformers reads the file's metadata again
for the config, the weights and the tokenizer. The first load converts it into a checkpoint directory under
``$MECHTEST_GGUF_CACHE`` (default ``$XDG_CACHE_HOME/mechtest/gguf``), named by the file's content hash, the
transformers version that dequantised it and this module's format; every later load reads that directory
like any local checkpoint. The directory appears by one rename when complete, so a reader never sees a torn
entry, and an edited GGUF has another hash (see :func:`mechtest.fingerprint.file_digest`), so it is never
served stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import tempfile
from pathlib import Path

from mechtest.errors import ModelLoadError
from mechtest.fingerprint import file_digest, side_files
from mechtest.model_ref import ModelRef

CACHE_ENV = "MECHTEST_GGUF_CACHE"
FORMAT = "1"  # bump when what an entry holds changes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "mechtest" / "gguf"


def gguf_path(ref: ModelRef) -> Path:
    return Path(ref.path) / ref.gguf_file


def gguf_fingerprint(ref: ModelRef, dtype) -> str:
    """What a GGUF model computes: the file's contents, the dtype it is loaded in and the tokenizer and task
    files beside it (:func:`mechtest.fingerprint.side_files`); no parse needed."""
    h = hashlib.sha256(f"gguf:{file_digest(gguf_path(ref))}:{dtype}".encode())
    for f in side_files(Path(ref.path), gguf=True):
        h.update(f"side {f.name}:{file_digest(f)}".encode())
    return h.hexdigest()[:32]


def entry(ref: ModelRef) -> Path:
    import transformers

    return cache_root() / f"{file_digest(gguf_path(ref))[:32]}-tf{transformers.__version__}-v{FORMAT}"


def tokenizer_beside(ref: ModelRef) -> bool:
    """Tokenizer files next to the GGUF win over the GGUF's own (and are read from there, never cached)."""
    return any((Path(ref.path) / f).is_file() for f in TOKENIZER_FILES)


def cached_config(ref: ModelRef) -> dict | None:
    """The converted config of a GGUF when its cache entry exists, else None (read without loading)."""
    import json

    card = entry(ref) / "config.json"
    try:
        return json.loads(card.read_text())
    except (OSError, ValueError):
        return None


def header_shape(ref: ModelRef) -> tuple[int, int] | None:
    """(layers, heads) from the GGUF's metadata (``<arch>.block_count``, ``<arch>.attention.head_count``),
    reading the header only as far as those keys (gguf's reader parses the whole vocabulary first)."""
    try:
        with open(gguf_path(ref), "rb") as fh:
            values, _ = _metadata(fh, stop=lambda v: _shape_keys(v) is not None)
    except (OSError, ValueError, KeyError, struct.error, UnicodeDecodeError):
        return None
    return _shape_keys(values)


def check_whole(path: Path, shown: str) -> None:
    """The gguf package is installed, the header parses and the file holds every tensor's bytes (a header
    read: no tensor is read)."""
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError:
        raise ModelLoadError(f"{shown!r} is a GGUF file: install the gguf extra (pip install 'mechtest[gguf]')") from None
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            values, n_tensors = _metadata(fh, stop=lambda v: False)
            end = 0
            for _ in range(n_tensors):
                fh.read(_read(fh, "<Q"))  # name
                dims = [_read(fh, "<Q") for _ in range(_read(fh, "<I"))]
                block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(_read(fh, "<I"))]
                count = 1
                for d in dims:
                    count *= d
                end = max(end, _read(fh, "<Q") + count // block * nbytes)
            align = values.get("general.alignment") or 32
            end += -(-fh.tell() // align) * align
    except (ValueError, KeyError, struct.error, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{shown!r} is not a readable GGUF file ({size} bytes; truncated or corrupt?): "
                             f"{type(e).__name__}: {e}") from None
    if size < end:
        raise ModelLoadError(f"{shown!r} is not a readable GGUF file ({size} bytes; truncated or corrupt?): its "
                             f"tensors end at byte {end}")


def _shape_keys(values: dict) -> tuple[int, int] | None:
    arch = values.get("general.architecture")
    layers, heads = values.get(f"{arch}.block_count"), values.get(f"{arch}.attention.head_count")
    return (int(layers), int(heads)) if isinstance(layers, int) and isinstance(heads, int) else None


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _read(fh, fmt: str):
    data = fh.read(struct.calcsize(fmt))
    return struct.unpack(fmt, data)[0]  # struct.error when the file ends early


def _metadata(fh, stop) -> tuple[dict, int]:
    """GGUF (v2/v3, little-endian) key/value metadata read until ``stop(values)`` (arrays skipped), and the
    tensor count; ``fh`` is left after the last key read."""
    def string() -> str:
        n = _read(fh, "<Q")
        data = fh.read(n)
        if len(data) != n:
            raise ValueError("the file ends inside a string")
        return data.decode("utf-8")

    def value(kind):
        if kind == 8:
            return string()
        if kind == 9:
            item, count = _read(fh, "<I"), _read(fh, "<Q")
            if item in (8, 9):
                for _ in range(count):
                    value(item)
            else:
                fh.seek(count * struct.calcsize(_SCALARS[item]), 1)
            return None
        return _read(fh, _SCALARS[kind])

    if fh.read(4) != b"GGUF" or _read(fh, "<I") < 2:
        raise ValueError("no GGUF v2+ magic")
    n_tensors, n_kv = _read(fh, "<Q"), _read(fh, "<Q")
    values: dict = {}
    for _ in range(n_kv):
        key = string()
        values[key] = value(_read(fh, "<I"))
        if stop(values):
            break
    return values, n_tensors


def checkpoint_dir(ref: ModelRef, shown: str) -> Path:
    """The cache entry of ``ref``'s GGUF, converting it first when it is not there yet."""
    target = entry(ref)
    if _whole(target):
        return target
    _discard(target)  # not written by this module's rename (copied, edited, cut short): never served
    from mechtest.progress import heartbeat

    size_mb = gguf_path(ref).stat().st_size / 2**20
    with heartbeat(f"dequantising {ref.gguf_file} ({size_mb:.0f} MB, once; later loads read {target.parent})"):
        return _convert(ref, shown, target)


def _whole(target: Path) -> bool:
    from mechtest.checkpoint_files import checked_weight_files

    if not (target / "config.json").is_file():
        return False
    try:
        checked_weight_files(target)
    except ModelLoadError:
        return False
    return True


def _discard(target: Path) -> None:
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.discarded.", dir=target.parent))
        with contextlib.suppress(OSError):
            os.rename(target, aside / "entry")
        shutil.rmtree(aside, ignore_errors=True)


def _convert(ref: ModelRef, shown: str, target: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mechtest import compat
    from mechtest.checkpoint_config import NO_REMOTE_CODE
    from mechtest.checkpoint_files import check_loading_info
    from mechtest.checkpoint_files import first_line as _first_line
    from mechtest.checkpoint_config import load_tokenizer, quiet_transformers

    check_whole(gguf_path(ref), shown)
    options = {**NO_REMOTE_CODE, "gguf_file": ref.gguf_file}
    try:
        config = AutoConfig.from_pretrained(str(ref.path), **options)
        with quiet_transformers():
            hf, info = AutoModelForCausalLM.from_pretrained(
                str(ref.path), config=config, **{compat.dtype_kwarg(): torch.float32}, attn_implementation="eager",
                output_loading_info=True, ignore_mismatched_sizes=True, **options)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"could not load {shown!r}: {_first_line(e)}") from None
    check_loading_info(info, shown)
    tokenizer = None if tokenizer_beside(ref) else load_tokenizer(ref, shown)
    # what transformers records of the GGUF quantiser: the dequantised weights are plain float32 now
    hf.hf_quantizer = None
    with contextlib.suppress(AttributeError):
        del hf.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with quiet_transformers():
            hf.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)  # atomic; fails when another process finished first
        except OSError:
            if not _whole(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
