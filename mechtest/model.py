"""Load a Hugging Face causal LM (local directory, GGUF file or cached hub id) with the facts head-level methods need.

A ``LoadedModel`` carries the model, its tokenizer, its architecture row and a fingerprint that changes
when the weights, the config or the dtype change (the activation cache is keyed on it), and not when the same
weights sit at another path.

Loading refuses what would give silently wrong numbers: weights that do not match the config (transformers
would initialise the difference randomly), truncated safetensors files, and pickle weight files (never
unpickled).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mechtest import compat
from mechtest.architectures import ArchSpec, arch_for_model_type, supported_model_types
from mechtest.checkpoint_config import NO_REMOTE_CODE, load_tokenizer, quiet_transformers, read_config
from mechtest.checkpoint_files import check_loading_info, checked_weight_files
from mechtest.checkpoint_files import first_line as _first_line
from mechtest.errors import DeviceError, ModelLoadError
from mechtest.fingerprint import fingerprint, side_files
from mechtest.linear_kernel import use_onednn
from mechtest.model_ref import ModelRef, resolve_model

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
_DEVICE_RE = re.compile(r"(cpu|mps|auto|cuda(:\d+)?)")


@dataclass(eq=False)
class LoadedModel:
    """A causal LM ready for head-level interventions."""

    name: str
    hf: torch.nn.Module = field(repr=False)
    tokenizer: object = field(repr=False)
    arch: ArchSpec
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    vocab_size: int
    dtype: torch.dtype
    device: torch.device  # where inputs go (the embeddings' device); layers may live elsewhere with device="auto"
    fingerprint: str
    ref: ModelRef | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads): the shape of every head-level score matrix."""
        return (self.n_layers, self.n_heads)

    def describe_shape(self) -> str:
        kv = f", {self.n_kv_heads} kv heads" if self.n_kv_heads != self.n_heads else ""
        return f"{self.n_layers} layers x {self.n_heads} heads{kv} of dim {self.head_dim}"


# --- devices and dtypes ---------------------------------------------------------------------------

def check_device(text: str | torch.device | None) -> str:
    """Validate a device once, up front: 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'; None picks cuda if present.

    Returns the canonical string; raises a one-line ``DeviceError`` for a bogus name, CUDA without CUDA, or a
    GPU index that does not exist. The plugin calls it before any model loads.
    """
    if text is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    value = str(text).strip().lower()
    if not _DEVICE_RE.fullmatch(value):
        raise DeviceError(f"unknown device {str(text)!r}; use cpu, cuda, cuda:N, mps or auto")
    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {value!r} requested but CUDA is not available to this torch "
                              f"({torch.__version__}); use cpu")
        index = int(value.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device {value!r} does not exist: {count} CUDA device"
                              f"{'s' if count != 1 else ''} visible (cuda:0..cuda:{count - 1})")
    if value == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("device 'mps' requested but MPS is not available; use cpu")
    return value


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The single device a model is moved to ('auto' means: spread over GPUs when there are any)."""
    value = check_device(device)
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(value)


def resolve_dtype(dtype: str | torch.dtype | None, *, device: str = "cpu", config=None) -> torch.dtype:
    """An explicit dtype wins; otherwise the checkpoint's own dtype on CUDA and float32 elsewhere.

    float32 on CPU because half-precision matmuls there are slow and inexact; on a GPU the checkpoint's dtype
    is what it was trained and evaluated in (and a 7B model in float32 may not fit).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None and str(dtype).lower() != "auto":
        try:
            return _DTYPES[str(dtype).lower()]
        except KeyError:
            raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPES))} or auto") from None
    on_cuda = device.startswith("cuda") or device == "auto" and torch.cuda.is_available()
    own = compat.config_dtype(config) if config is not None else None
    return own if on_cuda and own is not None and own.is_floating_point else torch.float32


def placement(device: str | torch.device | dict | None) -> tuple[dict, str]:
    """``from_pretrained`` keyword arguments that place the weights, and the device string they amount to.

    'auto' with GPUs present -> ``device_map="auto"`` (accelerate spreads a model too large for one GPU over
    all visible ones, then CPU); 'auto' without GPUs is plain CPU. An explicit ``device_map`` dict (module ->
    device, "cpu" or "disk") passes through. A single device loads on CPU and is moved afterwards.
    """
    if isinstance(device, dict):
        return {"device_map": dict(device)}, "map"
    value = check_device(device)
    if value == "auto":
        return ({"device_map": "auto"}, "auto") if torch.cuda.is_available() else ({}, "cpu")
    return {}, value


# --- loading ----------------------------------------------------------------------------------------

def load_model(
    path_or_name: str | os.PathLike | ModelRef,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | dict | None = None,
    name: str | None = None,
    trust_remote_code: bool = False,
    offload_folder: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load a checkpoint for analysis: eval mode, no gradients, eager attention, strictly from local files.

    ``path_or_name`` is a ``ModelRef`` or anything ``resolve_model`` accepts (relative paths: the current
    directory). ``device`` is 'cpu', 'cuda[:N]', 'mps', 'auto' or a ``device_map`` dict; ``dtype`` defaults
    to the checkpoint's own on CUDA and float32 elsewhere. Code shipped in the checkpoint is never run
    (``trust_remote_code=True`` is refused).
    """
    if trust_remote_code:
        raise ModelLoadError("mechtest never runs code a checkpoint ships: trust_remote_code=True is not supported")
    place, target = placement(device)  # a bogus device fails before anything is read
    ref = path_or_name if isinstance(path_or_name, ModelRef) else resolve_model(path_or_name, base_dir=Path.cwd())
    if ref.path is None:
        raise ModelLoadError(f"model {ref.text!r} has no local files")
    if ref.kind == "adapter":
        from mechtest.adapters import merge_adapter

        base = load_model(ref.base, dtype=dtype, device=device, name=name, offload_folder=offload_folder)
        return merge_adapter(base, ref, name=name or _default_name(ref))
    from transformers import AutoModelForCausalLM

    shown = ref.display
    files_ref, tokenizer_ref = ref, ref
    if ref.gguf_file:  # dequantised once into a cached checkpoint directory (mechtest.gguf_cache)
        from mechtest import gguf_cache

        files_ref = ModelRef(text=ref.text, kind="dir",
                             path=gguf_cache.checkpoint_dir(ref, shown, ))
        if not gguf_cache.tokenizer_beside(ref) and (files_ref.path / "tokenizer_config.json").is_file():
            tokenizer_ref = files_ref
    source = files_ref.path
    options = dict(NO_REMOTE_CODE)
    config = read_config(files_ref, shown)
    arch = arch_for_model_type(config.model_type)  # clear error listing the supported ones
    declared = getattr(config, "architectures", None) or []
    if declared and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in declared):
        # loading it anyway would attach a randomly initialised LM head: silently wrong numbers
        raise ModelLoadError(f"{shown!r} is a {', '.join(declared)} checkpoint, not a causal language model")
    weight_files = checked_weight_files(source, shown)

    torch_dtype = resolve_dtype(dtype, device=target, config=None if ref.gguf_file else config)
    if place:
        _require_accelerate(device)
        if offload_folder is not None:
            place["offload_folder"] = str(offload_folder)
    try:
        with quiet_transformers():
            hf, info = AutoModelForCausalLM.from_pretrained(
                str(source), **{compat.dtype_kwarg(): torch_dtype}, attn_implementation="eager",
                output_loading_info=True, ignore_mismatched_sizes=True, use_safetensors=True, **options, **place,
            )
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise ModelLoadError(f"{shown!r} is a {config.model_type!r} checkpoint, not a causal language model") from None
        raise ModelLoadError(f"could not load {shown!r}: {_first_line(e)}") from None
    except (OSError, RuntimeError, KeyError) as e:
        raise ModelLoadError(f"could not load the weights of {shown!r}: {_first_line(e)}") from None
    check_loading_info(info, shown)
    tokenizer = load_tokenizer(tokenizer_ref, shown)

    if not place and target != "cpu":
        hf.to(torch.device(target))
    hf.eval()
    hf.requires_grad_(False)
    use_onednn(hf)  # large CPU float32 layers: the faster kernel (mechtest.linear_kernel)
    return LoadedModel(
        name=name or _default_name(ref),
        hf=hf,
        tokenizer=tokenizer,
        arch=arch,
        n_layers=int(config.num_hidden_layers),
        n_heads=int(config.num_attention_heads),
        n_kv_heads=int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
        head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads),
        d_model=int(config.hidden_size),
        vocab_size=int(hf.get_output_embeddings().weight.shape[0]),
        dtype=torch_dtype,
        device=_input_device(hf),
        fingerprint=_gguf_fingerprint(ref, torch_dtype) if ref.gguf_file else fingerprint(
            config, torch_dtype, weight_files, side_files(ref.path)),
        ref=ref,
    )


def checkpoint_fingerprint(ref: ModelRef, *, dtype=None, device=None) -> str:
    """The fingerprint ``load_model(ref, dtype=, device=)`` would give, without loading any weight.

    Reads the config and hashes the weight files (memoised per file identity for large ones), so a warm
    rerun can look its claim results up before deciding to load a 7B model at all. A GGUF is not parsed
    (its fingerprint is its contents' hash); an adapter's combines its base's with its own files.
    """
    _, target = placement(device)
    if ref.path is None:
        raise ModelLoadError(f"model {ref.text!r} has no local files")
    if ref.kind == "adapter":
        from mechtest.adapters import adapter_fingerprint

        return adapter_fingerprint(checkpoint_fingerprint(ref.base, dtype=dtype, device=device), ref.path)
    if ref.gguf_file:
        return _gguf_fingerprint(ref, resolve_dtype(dtype, device=target, config=None))
    config = read_config(ref, ref.display)
    files = checked_weight_files(ref.path, ref.display)
    return fingerprint(config, resolve_dtype(dtype, device=target, config=config), files, side_files(ref.path))


def _gguf_fingerprint(ref: ModelRef, dtype) -> str:
    from mechtest.gguf_cache import gguf_fingerprint

    return gguf_fingerprint(ref, dtype)


def supported_architectures() -> list[str]:
    return supported_model_types()


def _require_accelerate(device) -> None:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise DeviceError(f"device {device!r} places layers with accelerate: "
                          "pip install 'mechtest[multi-gpu]'") from None


def _input_device(hf) -> torch.device:
    """Where input ids must go: the embeddings' device (CPU when accelerate offloaded them)."""
    weight = hf.get_input_embeddings().weight
    return torch.device("cpu") if weight.device.type == "meta" else weight.device


def _default_name(ref: ModelRef) -> str:
    if ref.hub_id:
        return ref.hub_id
    if ref.gguf_file:
        return Path(ref.gguf_file).stem
    return ref.path.name

