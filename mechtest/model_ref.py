"""Model names as the ecosystem spells them, resolved to files on disk before anything heavy loads.

``resolve_model`` turns what a user types (``./ckpt``, ``~/models/x``, ``model.gguf``, ``gpt2``,
``org/name@revision``, a PEFT adapter directory, ``BASE+ADAPTER_DIR``) into a ``ModelRef`` naming one local
directory (and GGUF file; for an adapter, the adapter directory and its base's ``ModelRef``). It is torch-free and,
unless the user opts in with ``MECHTEST_ALLOW_DOWNLOAD=1``, makes no network call: a hub id resolves through
the local Hugging Face cache only. A name found nowhere fails at once with one line saying where it looked.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mechtest.errors import ModelLoadError

ALLOW_DOWNLOAD_ENV = "MECHTEST_ALLOW_DOWNLOAD"
ADAPTER_CONFIG = "adapter_config.json"
# what a download fetches: config, tokenizer and safetensors weights; never pickles, never every GGUF quant
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]
# hub ids: "name" or "org/name", optionally "@revision" (a branch, tag or commit; may contain "/")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")
_REVISION = re.compile(r"[\w.\-/]+")


@dataclass(frozen=True)
class ModelRef:
    """Where a model's files are: ``path`` is the checkpoint directory (for a GGUF, the folder holding it)."""

    text: str  # what the user wrote
    kind: Literal["dir", "gguf", "hub", "adapter"]
    path: Path | None  # local directory; for "hub", the cached snapshot (None only before a download)
    hub_id: str | None = None
    revision: str | None = None
    gguf_file: str | None = None  # file name inside ``path`` when the weights are a GGUF file
    base: ModelRef | None = None  # for "adapter": the model the adapter in ``path`` is applied to

    @property
    def display(self) -> str:
        """A short name for reports: the hub id, else the directory or file name (``base+adapter``)."""
        if self.base is not None:
            return f"{self.base.display}+{self.path}"
        if self.hub_id:
            return self.hub_id + (f"@{self.revision}" if self.revision else "")
        if self.gguf_file and self.path is not None:
            return str(self.path / self.gguf_file)
        return str(self.path)


def downloads_allowed() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it once at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def resolve_model(ref: str | os.PathLike, *, base_dir: str | os.PathLike) -> ModelRef:
    """Resolve a model name to local files: a directory, a GGUF file, or a hub id in the local cache.

    Order: an existing local path (relative to ``base_dir``, ``~`` expanded) wins; then a hub id found in the
    local cache; then, only with ``MECHTEST_ALLOW_DOWNLOAD=1``, a download. Anything spelt like a path
    (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x.gguf``, or ``dir/x`` where ``dir`` exists locally) never reaches
    the hub, so a typo fails at once.
    """
    text = os.fspath(ref).strip()
    if not text:
        raise ModelLoadError("empty model name: give a checkpoint directory, a .gguf file or a hub id")
    local = _local_path(text, base_dir)
    if local.exists():
        return _local_ref(text, local.resolve())
    if "+" in text:  # BASE+ADAPTER_DIR: the adapter applied to any model ref (the last '+' splits)
        base_text, _, adapter_text = text.rpartition("+")
        if base_text.strip() and adapter_text.strip():
            adapter = _local_path(adapter_text.strip(), base_dir)
            if not adapter.is_dir():
                raise ModelLoadError(f"adapter {adapter_text.strip()!r} in {text!r} is not a directory "
                                     f"({str(adapter)!r})")
            return _adapter_ref(text, adapter.resolve(), resolve_model(base_text, base_dir=base_dir))
    if _looks_like_path(text, Path(base_dir).expanduser()):
        raise ModelLoadError(f"checkpoint not found: {str(local)!r} does not exist")

    hub_id, _, revision = text.partition("@")
    if not _HUB_ID.fullmatch(hub_id) or (revision and not _REVISION.fullmatch(revision)):
        raise ModelLoadError(f"model {text!r} is neither an existing path ({str(local)!r}) nor a hub id "
                             "('name' or 'org/name', optionally '@revision')")
    revision = revision or None
    cache = hub_cache_dir()
    snapshot = _cached_snapshot(hub_id, revision, cache)
    if snapshot is None and downloads_allowed():
        snapshot = _download(text, hub_id, revision, cache)
    if snapshot is None:
        raise ModelLoadError(
            f"model {text!r} not found: no local path {str(local)!r} and no {hub_id!r}"
            f"{' at revision ' + repr(revision) if revision else ''} in the Hugging Face cache {str(cache)!r} "
            f"(set {ALLOW_DOWNLOAD_ENV}=1 to download it)")
    inner = _local_ref(text, snapshot)
    if inner.kind == "adapter":  # an adapter repo in the cache: its base was resolved from its config
        return inner
    return ModelRef(text=text, kind="hub", path=inner.path, hub_id=hub_id, revision=revision,
                    gguf_file=inner.gguf_file)


def _local_path(text: str, base_dir) -> Path:
    local = Path(text).expanduser()
    return local if local.is_absolute() else Path(base_dir).expanduser() / local


def _adapter_ref(text: str, adapter: Path, base: ModelRef | None) -> ModelRef:
    """A PEFT adapter directory on ``base``, or on the model its ``adapter_config.json`` names (resolved as a
    model ref, relative paths against the adapter directory)."""
    card = adapter / ADAPTER_CONFIG
    if not card.is_file():
        raise ModelLoadError(f"no {ADAPTER_CONFIG} in adapter directory {str(adapter)!r}: not a PEFT adapter")
    if base is None:
        try:
            named = json.loads(card.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise ModelLoadError(f"{card}: not a JSON object") from None
        if not isinstance(named, str) or not named.strip():
            raise ModelLoadError(f"{card} names no base model (base_model_name_or_path): "
                                 f"name it as BASE+{text}")
        try:
            base = resolve_model(named, base_dir=adapter)
        except ModelLoadError as e:
            raise ModelLoadError(f"base model of adapter {text!r}: {e}; or name the base: NAME=BASE+{text}") from None
    if base.kind == "adapter":
        raise ModelLoadError(f"{text!r}: the base of an adapter cannot be another adapter "
                             f"({base.text!r}); merge that one first (python -m mechtest.export)")
    return ModelRef(text=text, kind="adapter", path=adapter, base=base)


def _local_ref(text: str, path: Path) -> ModelRef:
    """A directory with config.json, a PEFT adapter directory, a .gguf file, or a directory holding exactly
    one .gguf."""
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelRef(text=text, kind="gguf", path=path.parent, gguf_file=path.name)
        raise ModelLoadError(f"checkpoint {text!r} is a file; give the checkpoint directory (or a .gguf file)")
    if (path / "config.json").is_file():
        return ModelRef(text=text, kind="dir", path=path)
    if (path / ADAPTER_CONFIG).is_file():
        return _adapter_ref(text, path, None)
    ggufs = sorted(p.name for p in path.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return ModelRef(text=text, kind="gguf", path=path, gguf_file=ggufs[0])
    if len(ggufs) > 1:
        raise ModelLoadError(f"{text!r} holds {len(ggufs)} GGUF files ({', '.join(ggufs)}); name one, "
                             f"e.g. {str(path / ggufs[0])!r}")
    raise ModelLoadError(f"no config.json in {text!r}: not a Hugging Face checkpoint directory (nor a GGUF "
                         f"or a PEFT adapter with {ADAPTER_CONFIG})")


def _looks_like_path(text: str, base_dir: Path) -> bool:
    """Hub ids are 'name' or 'org/name[@rev]'; anything else is meant as a local path."""
    if text.startswith((".", "/", "~")) or "\\" in text or text.lower().endswith(".gguf"):
        return True
    name = text.partition("@")[0]
    if name.count("/") > 1 or os.sep != "/" and os.sep in name:
        return True
    # 'checkpoints/step-200' when ./checkpoints exists: a misspelt local path, not an org on the hub
    return "/" in name and (base_dir / name.split("/")[0]).is_dir()


def _cached_snapshot(hub_id: str, revision: str | None, cache: Path) -> Path | None:
    """The snapshot folder of ``hub_id`` in the local cache, without any network call."""
    if not (cache / ("models--" + hub_id.replace("/", "--"))).is_dir():
        return None  # cheap check first: no huggingface_hub import for a name that was never cached
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(hub_id, revision=revision, cache_dir=str(cache), local_files_only=True)
    except Exception:  # LocalEntryNotFoundError and friends: not (fully) in the cache
        return None
    folder = Path(folder)
    return folder if folder.is_dir() else None


def _download(text: str, hub_id: str, revision: str | None, cache: Path) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, revision=revision, cache_dir=str(cache),
                                      allow_patterns=_DOWNLOAD_PATTERNS))
    except Exception as e:  # network, auth, missing repo: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"could not download {text!r} into {str(cache)!r}: {first}") from None
