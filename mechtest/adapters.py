"""PEFT adapters as models: a fine-tune shipped as a small adapter on a base, merged into plain weights.

``NAME=ADAPTER_DIR`` (its ``adapter_config.json`` names the base) and ``NAME=BASE+ADAPTER_DIR`` resolve in
:mod:`mechtest.model_ref`; here the adapter is loaded through ``peft`` onto the loaded base and merged
(``merge_and_unload``), so every method sees an ordinary Hugging Face module with no adapter layers in the
way of its hooks. The fingerprint covers the base's fingerprint, the adapter's settings and its weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from mechtest.errors import ModelLoadError
from mechtest.linear_kernel import use_onednn
from mechtest.fingerprint import file_digest, side_files
from mechtest.model_ref import ADAPTER_CONFIG, ModelRef

ADAPTER_WEIGHTS = "adapter_model.safetensors"
# adapter types whose weights merge into the base's own (merge_and_unload); prompt-learning adapters do not
MERGEABLE = ("LORA", "ADALORA", "LOHA", "LOKR", "IA3")
# adapter_config keys that say where the base was, not what the adapter computes
_WHERE_KEYS = ("base_model_name_or_path", "revision", "inference_mode")


def read_adapter_config(directory: Path) -> dict:
    """The adapter's ``adapter_config.json``, checked to be a mergeable type with safetensors weights."""
    card = directory / ADAPTER_CONFIG
    try:
        config = json.loads(card.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"no {ADAPTER_CONFIG} in adapter directory {str(directory)!r}: "
                             "not a PEFT adapter") from None
    except (ValueError, UnicodeDecodeError):
        raise ModelLoadError(f"{card}: not valid JSON") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{card}: must hold a JSON object")
    kind = str(config.get("peft_type", "")).upper()
    if kind not in MERGEABLE:
        raise ModelLoadError(f"{card}: unsupported adapter type {config.get('peft_type')!r}; mechtest merges "
                             f"adapters into the weights: {', '.join(MERGEABLE)}")
    if not (directory / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for p in directory.glob("adapter_model.*"))
        raise ModelLoadError(f"no {ADAPTER_WEIGHTS} in adapter {str(directory)!r}" + (
            f" (only {', '.join(pickles)}: mechtest never unpickles; save it with safe_serialization=True)"
            if pickles else ""))
    return config


def adapter_fingerprint(base_fingerprint: str, directory: Path) -> str:
    """The merged model's fingerprint: the base's, the adapter's settings (not where its base lay), the
    contents of its weights and of the other files in its folder that may change a result."""
    config = read_adapter_config(directory)
    settings = {k: v for k, v in config.items() if k not in _WHERE_KEYS}
    h = hashlib.sha256(f"adapter:{base_fingerprint}".encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(file_digest(directory / ADAPTER_WEIGHTS).encode())
    for f in side_files(directory):  # tokenizer, mechtest.json...: what else may change a result
        if f.name != ADAPTER_CONFIG:
            h.update(f"side {f.name}:{file_digest(f)}".encode())
    return h.hexdigest()[:32]


def merge_adapter(base, ref: ModelRef, *, name: str):
    """``base`` (a LoadedModel of ``ref.base``) with the adapter in ``ref.path`` merged into its weights."""
    from mechtest.checkpoint_files import check_safetensors as _check_safetensors, first_line as _first_line

    directory = Path(ref.path)
    read_adapter_config(directory)
    _check_safetensors(directory / ADAPTER_WEIGHTS, str(directory))
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError(f"{ref.text!r} is a PEFT adapter: install the peft extra "
                             "(pip install 'mechtest[peft]')") from None
    shown = f"adapter {str(directory)!r} on base {ref.base.display!r}"
    try:
        wrapped = PeftModel.from_pretrained(base.hf, str(directory), is_trainable=False)
        merged = wrapped.merge_and_unload()
    except (ValueError, KeyError) as e:  # peft: "Target modules {...} not found in the base model"
        raise ModelLoadError(f"{shown} does not fit: {_first_line(e)}") from None
    except RuntimeError as e:  # load_state_dict: size mismatch for ...
        lines = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
        raise ModelLoadError(f"{shown} does not fit (another base shape?): "
                             f"{lines[0] if lines else _first_line(e)}") from None
    merged.eval()
    merged.requires_grad_(False)
    use_onednn(merged)  # the base's layers are switched already; merging must not lose it
    return replace(base, name=name, hf=merged, tokenizer=_tokenizer(directory, base.tokenizer), ref=ref,
                   fingerprint=adapter_fingerprint(base.fingerprint, directory))


def _tokenizer(directory: Path, default):
    """The adapter's own tokenizer when one is saved beside it (e.g. added tokens), else the base's."""
    if not any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        return default
    from mechtest.checkpoint_config import load_tokenizer

    return load_tokenizer(ModelRef(text=str(directory), kind="dir", path=directory), str(directory))
