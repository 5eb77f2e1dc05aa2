"""A checkpoint's config and tokenizer, read without ever running code the checkpoint ships.

transformers imports a checkpoint's own Python (its ``auto_map``) when told to trust it and, on a terminal,
*asks* when ``trust_remote_code`` is left unset, so one "y" runs whatever the folder holds. mechtest reads
``config.json`` as JSON first, refuses a model type it does not support before transformers sees it, and
passes ``trust_remote_code=False`` at every transformers call (``NO_REMOTE_CODE``).
"""

from __future__ import annotations

import json
from pathlib import Path

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
