"""Models by name for one pytest session: where each comes from, loading it once, its task settings.

The plugin builds the specs from ``--mechtest-model NAME=REF`` and the ini's ``mechtest_models``; the
façade (:mod:`mechtest.api`) asks this registry for loaded models. Loading imports torch, so it happens
only when a test or claim first needs the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechtest.errors import ModelLoadError
from mechtest.settings import Settings  # noqa: F401  (the registry reads models, device, dtype from it)

DEFAULT_N_BOXES = 7


@dataclass(frozen=True)
class ModelSpec:
    """A model as configured: its name, what the user wrote, the folder relative paths start from."""

    name: str
    ref: str  # a directory, a .gguf file, or a hub id "name" / "org/name[@revision]"
    base_dir: Path  # the rootdir for the ini, the current directory for the command line
    source: str  # "--mechtest-model" or "ini mechtest_models"

    def resolve(self):
        """Where the model's files are (:func:`mechtest.model_ref.resolve_model`; no network by default)."""
        from mechtest.model_ref import resolve_model

        return resolve_model(self.ref, base_dir=self.base_dir)


def parse_model_option(text: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (name, path); ValueError with the expected form otherwise."""
    name, sep, path = text.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise ValueError(f"expected NAME=PATH, got {text!r}")
    return name, path


def worker_device(device: str | None, worker_id: str | None, n_gpus: int | None = None) -> str | None:
    """Under ``pytest -n N`` on a machine with several GPUs, worker ``gwI`` takes ``cuda:(I mod count)`` unless
    the user pinned a device (``cuda:K``, ``cpu``, ``auto``): one model per GPU instead of N on the first."""
    if worker_id is None or device not in (None, "cuda") or not worker_id.startswith("gw"):
        return device
    if n_gpus is None:
        import torch

        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpus < 2:
        return device
    return f"cuda:{int(worker_id[2:]) % n_gpus}"


def read_task_settings(path: str | Path) -> dict:
    """The checkpoint's ``mechtest.json`` (e.g. ``{"n_boxes": 3}``), or {} when it has none.

    A file that exists but cannot be used is an error naming it: silently evaluating on another box count
    would change every number measured on the model.
    """
    card = Path(path) / "mechtest.json"
    if not card.is_file():
        return {}
    return _read_card(card)


def task_settings_file(ref) -> Path | None:
    """The ``mechtest.json`` that holds a model's task settings: in its folder (for a GGUF, the folder holding
    the .gguf, shared by every GGUF there); for an adapter, the adapter's folder, else its base's."""
    for ref_ in (ref, getattr(ref, "base", None)):
        if ref_ is not None and ref_.path is not None and (Path(ref_.path) / "mechtest.json").is_file():
            return Path(ref_.path) / "mechtest.json"
    return None


def _read_card(card: Path) -> dict:
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{card}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{card}: must hold a JSON object, got {type(data).__name__}")
    n_boxes = data.get("n_boxes")
    if n_boxes is not None and (not isinstance(n_boxes, int) or isinstance(n_boxes, bool) or n_boxes < 2):
        raise ModelLoadError(f"{card}: n_boxes must be an integer >= 2, got {n_boxes!r}")
    return data


class ModelRegistry:
    """The configured models of a session, each loaded at most once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fingerprints: dict[str, dict] = {}  # provenance of every model loaded, by name
        self._loaded: dict[str, Any] = {}
        self._refs: dict[str, Any] = {}
        self._fingerprints: dict[str, str] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self.settings.models)

    def is_configured(self, name: str) -> bool:
        return name in self.settings.models

    def skip_reason(self, name: str) -> str:
        return f"model {name!r} is not configured: pass --mechtest-model {name}=PATH"

    def load(self, name: str):
        """The loaded model called ``name``; a test asking for an unconfigured model is skipped.

        With ``max_models``, loading one more releases the least recently used (a suite over four 7B
        checkpoints then needs memory for ``max_models`` of them, not four)."""
        if name in self._loaded:
            self._loaded[name] = self._loaded.pop(name)  # most recently used last
        else:
            spec = self.settings.models.get(name)
            if spec is None:
                import pytest

                raise pytest.skip.Exception(self.skip_reason(name), _use_item_location=True)
            from mechtest.model import load_model

            ref = self.ref(name)
            self._make_room()
            from mechtest.progress import heartbeat

            with heartbeat(f"loading {name}"):
                model = load_model(ref, dtype=self.settings.dtype, device=self.settings.device, name=name)
            self._loaded[name] = model
            self.fingerprints[name] = {"model": ref.display, "source": spec.source, "fingerprint": model.fingerprint,
                                       "dtype": str(model.dtype), "shape": list(model.shape)}
        return self._loaded[name]

    def _make_room(self) -> None:
        limit = self.settings.max_models
        while limit is not None and self._loaded and len(self._loaded) >= limit:
            oldest = next(iter(self._loaded))
            self._fingerprints[oldest] = self._loaded.pop(oldest).fingerprint
            import gc

            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @property
    def resident(self) -> list[str]:
        """Names of the models in memory now, least recently used first."""
        return list(self._loaded)

    def fingerprint(self, name: str) -> str:
        """The model's fingerprint, without loading it when it is not loaded yet (for the result cache)."""
        if name in self._loaded:
            return self._loaded[name].fingerprint
        if name not in self._fingerprints:
            from mechtest.model import checkpoint_fingerprint

            self._fingerprints[name] = checkpoint_fingerprint(self.ref(name), dtype=self.settings.dtype,
                                                              device=self.settings.device)
        return self._fingerprints[name]

    def ref(self, name: str):
        """The resolved files of a configured model (resolved once; a missing one is a ModelLoadError)."""
        if name not in self._refs:
            self._refs[name] = self.settings.models[name].resolve()
        return self._refs[name]

    def tokenizer(self, name: str):
        """The model's tokenizer without loading its weights, or None where only loading tells which it is
        (a GGUF or an adapter): the loaded model's when it is loaded."""
        if name in self._loaded:
            return self._loaded[name].tokenizer
        ref = self.ref(name)
        if ref.gguf_file or ref.base is not None or ref.path is None:
            return None
        from mechtest.checkpoint_config import load_tokenizer

        return load_tokenizer(ref, ref.display)

    def n_boxes(self, name: str) -> int:
        """The box count a model is evaluated on: ``n_boxes`` of its ``mechtest.json``, else 7."""
        if name not in self.settings.models:
            return DEFAULT_N_BOXES
        card = task_settings_file(self.ref(name))
        return DEFAULT_N_BOXES if card is None else _read_card(card).get("n_boxes", DEFAULT_N_BOXES)
