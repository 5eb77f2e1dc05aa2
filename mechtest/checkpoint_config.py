"""A checkpoint's config and tokenizer, read without ever running code the checkpoint ships.

transformers imports a checkpoint's own Python (its ``auto_map``) when told to trust it and, on a terminal,
*asks* when ``trust_remote_code`` is left unset, so one "y" runs whatever the folder holds. mechtest reads
``config.json`` as JSON first, refuses a model type it does not support before transformers sees it, and
passes ``trust_remote_code=False`` at every transformers call (``NO_REMOTE_CODE``).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from mechtest import compat
from mechtest.architectures import arch_for_model_type, supported_model_types
from mechtest.errors import ModelLoadError

# keyword arguments of every from_pretrained call mechtest makes: local files only, never checkpoint code
NO_REMOTE_CODE = {"trust_remote_code": False, "local_files_only": True}


def read_config(ref, shown: str):
    """The checkpoint's transformers config; a model type mechtest does not support fails before transformers
    reads it (one line naming the type, and the checkpoint code it would need if its config has an auto_map)."""
    from transformers import AutoConfig

    if not ref.gguf_file:
        declared = _json_object(Path(ref.path) / "config.json", shown)
        model_type = declared.get("model_type")
        if "auto_map" in declared and model_type not in supported_model_types():
            raise ModelLoadError(
                f"{shown!r} declares model type {model_type!r}, which only its own code (auto_map in config.json) "
                f"implements; mechtest never runs checkpoint code. Supported: {', '.join(supported_model_types())}")
        if isinstance(model_type, str):
            arch_for_model_type(model_type)  # ArchitectureError listing the supported types
    gguf = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    try:
        return AutoConfig.from_pretrained(str(ref.path), **NO_REMOTE_CODE, **gguf)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"could not read the config of {shown!r}: {_first_line(e)}") from None


def remote_code_note(directory: Path) -> str:
    """'; it needs the checkpoint's own code ...' when ``tokenizer_config.json`` has an auto_map, else ''."""
    try:
        declared = json.loads((Path(directory) / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if isinstance(declared, dict) and "auto_map" in declared:
        return ("; its tokenizer is the checkpoint's own code (auto_map in tokenizer_config.json) and mechtest "
                "never runs checkpoint code")
    return ""


def _json_object(path: Path, shown: str) -> dict:
    """``path`` parsed as a JSON object; {} when absent (transformers then says what is missing)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"could not read the config of {shown!r}: {path.name} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"could not read the config of {shown!r}: {path.name} holds {type(data).__name__}, "
                             "not an object")
    return data


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def load_tokenizer(ref, shown: str):
    """The checkpoint's tokenizer; a GGUF's own only when no tokenizer files sit beside it."""
    from transformers import AutoTokenizer

    beside = any((ref.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    extra = {"gguf_file": ref.gguf_file} if ref.gguf_file and not beside else {}
    try:
        with quiet_transformers():
            tokenizer = _tokenizer_class(ref.path, AutoTokenizer).from_pretrained(
                str(ref.path), **NO_REMOTE_CODE, **extra)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ModelLoadError(f"no usable tokenizer in {shown!r}{remote_code_note(ref.path) or ': ' + _first_line(e)}"
                             ) from None
    if tokenizer is None or isinstance(tokenizer, bool):
        raise ModelLoadError(f"no usable tokenizer in {shown!r}")
    return tokenizer


def _tokenizer_class(directory: Path | None, default):
    """The checkpoint's own generic fast tokenizer wins over the model type's tokenizer class.

    transformers 5 maps some model types (e.g. qwen2) to their own tokenizer class, which would
    re-process a plain ``tokenizer.json`` saved by ``PreTrainedTokenizerFast`` differently.
    """
    config = directory / "tokenizer_config.json" if directory is not None else None
    if config is not None and config.is_file():
        try:
            declared = json.loads(config.read_text()).get("tokenizer_class")
        except (json.JSONDecodeError, AttributeError):
            declared = None
        if declared in compat.GENERIC_TOKENIZER_CLASSES:
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast
    return default


@contextlib.contextmanager
def quiet_transformers():
    """transformers' load report repeats what ``check_loading_info`` raises as one line; silence it and its bars."""
    from transformers.utils import logging as hf_logging

    before, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # captured under pytest anyway; mechtest.progress shows long loads
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()
