"""Load a Hugging Face causal LM (local directory or hub id) with the facts head-level methods need.

A ``LoadedModel`` carries the model, its tokenizer, its architecture row and a fingerprint that changes
when the weights, the config or the dtype change (the activation cache is keyed on it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mechtest.architectures import ArchSpec, arch_for_model_type, supported_model_types
from mechtest.errors import ModelLoadError

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
# Below this many bytes of parameters the fingerprint hashes the tensors themselves (exact); above it,
# hashing 7B weights on every run would cost tens of seconds, so weight files are identified by
# name, size and modification time instead.
_HASH_TENSORS_UP_TO = 512 * 2**20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


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
    device: torch.device
    fingerprint: str

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads): the shape of every head-level score matrix."""
        return (self.n_layers, self.n_heads)

    def describe_shape(self) -> str:
        kv = f", {self.n_kv_heads} kv heads" if self.n_kv_heads != self.n_heads else ""
        return f"{self.n_layers} layers x {self.n_heads} heads{kv} of dim {self.head_dim}"


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPES))}") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    path_or_name: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    name: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a checkpoint for analysis: eval mode, no gradients, eager attention, float32 by default.

    Local directories load strictly offline. A string that is not an existing path is treated as a hub
    id and goes through ``from_pretrained``'s own cache (which may be offline too).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = str(path_or_name)
    local = Path(source).expanduser()
    is_local = local.exists()
    if is_local:
        if not local.is_dir():
            raise ModelLoadError(f"checkpoint {source!r} is a file; give the checkpoint directory")
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"no config.json in {source!r}: not a Hugging Face checkpoint directory")
        source = str(local.resolve())
    elif _looks_like_path(source):
        raise ModelLoadError(f"checkpoint not found: {source!r} does not exist")

    options = {"local_files_only": True} if is_local else {}
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **options)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not read the config of {source!r}: {_first_line(e)}") from None
    arch = arch_for_model_type(config.model_type)  # clear error listing the supported ones
    declared = getattr(config, "architectures", None) or []
    if declared and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in declared):
        # loading it anyway would attach a randomly initialised LM head: silently wrong numbers
        raise ModelLoadError(f"{source!r} is a {', '.join(declared)} checkpoint, not a causal language model")

    torch_dtype = resolve_dtype(dtype)
    try:
        hf = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, attn_implementation="eager",
            trust_remote_code=trust_remote_code, **options,
        )
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise ModelLoadError(
                f"{source!r} is a {config.model_type!r} checkpoint, not a causal language model"
            ) from None
        raise ModelLoadError(f"could not load {source!r}: {_first_line(e)}") from None
    except OSError as e:
        raise ModelLoadError(f"could not load the weights of {source!r}: {_first_line(e)}") from None
    try:
        tokenizer = _tokenizer_class(local if is_local else None, AutoTokenizer).from_pretrained(
            source, trust_remote_code=trust_remote_code, **options)
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(f"no usable tokenizer in {source!r}: {_first_line(e)}") from None
    if tokenizer is None or isinstance(tokenizer, bool):
        raise ModelLoadError(f"no usable tokenizer in {source!r}")

    torch_device = resolve_device(device)
    hf.to(torch_device).eval()
    hf.requires_grad_(False)
    return LoadedModel(
        name=name or (local.name if is_local else source),
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
        device=torch_device,
        fingerprint=_fingerprint(hf, config, torch_dtype, Path(source) if is_local else None),
    )


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
        if declared in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast
    return default


def supported_architectures() -> list[str]:
    return supported_model_types()


def _fingerprint(hf, config, dtype: torch.dtype, directory: Path | None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    h.update(str(dtype).encode())
    n_bytes = sum(p.numel() * p.element_size() for p in hf.state_dict().values())
    if n_bytes <= _HASH_TENSORS_UP_TO or directory is None and not getattr(config, "_commit_hash", None):
        for key, tensor in sorted(hf.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    elif directory is not None:
        for f in sorted(directory.iterdir()):
            if f.suffix in _WEIGHT_SUFFIXES or f.name.endswith(".index.json"):
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        h.update(str(config._commit_hash).encode())
    return h.hexdigest()[:32]


def _looks_like_path(source: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else (./x, /x, ~/x, a/b/c, x\\y) is meant as a path."""
    return (
        source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or "\\" in source
        or os.sep in source and source.count(os.sep) > 1
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
