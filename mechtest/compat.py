"""Every difference between transformers versions that mechtest papers over, in one place.

mechtest supports transformers >= 4.45 (pyproject.toml) and is developed on 5.x. Each shim says which
versions it bridges, so it can be deleted when the minimum version passes it. Nothing here imports torch or
transformers at module level.
"""

from __future__ import annotations

import functools
import inspect

# Tokenizer classes that mean "the generic fast tokenizer of tokenizer.json" (5.x renamed it TokenizersBackend).
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


@functools.lru_cache(maxsize=None)
def transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def dtype_kwarg() -> str:
    """``from_pretrained(dtype=...)`` since 4.56; ``torch_dtype=`` before."""
    return "dtype" if transformers_version() >= (4, 56) else "torch_dtype"


def config_dtype(config):
    """The checkpoint's own dtype as its config declares it (``dtype`` in 5.x, ``torch_dtype`` before), or None."""
    import torch

    value = getattr(config, dtype_kwarg(), None)  # reading torch_dtype on 5.x logs a deprecation warning
    if isinstance(value, str):
        value = getattr(torch, value.removeprefix("torch."), None)
    return value if isinstance(value, torch.dtype) else None


def accepts_logits_to_keep(model) -> bool:
    """``logits_to_keep`` (4.50+, formerly ``num_logits_to_keep``) computes logits for the last positions only."""
    return _forward_takes(type(model.hf), "logits_to_keep")


def cache_kwarg(model) -> str:
    """The forward argument carrying a KV cache: ``cache`` in 5.x, ``past_key_values`` before."""
    return "cache" if _forward_takes(type(model.hf), "cache") else "past_key_values"


def output_cache(out):
    """The KV cache of a forward output, whichever attribute the version fills."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def cache_tensors(cache) -> list:
    """Per-layer (key, value) tensors of a transformers cache: ``.layers`` (4.54+), ``.key_cache`` (older),
    or the legacy tuple of tuples."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [tuple(kv[:2]) for kv in cache]


def make_cache(kv: list):
    """A ``DynamicCache`` holding per-layer (key, value) tensors: ``ddp_cache_data=`` since 4.56,
    ``from_legacy_cache`` before."""
    from transformers import DynamicCache

    try:
        return DynamicCache(ddp_cache_data=kv)
    except TypeError:  # transformers < 4.56
        return DynamicCache.from_legacy_cache(tuple(kv))


def loading_problems(info: dict) -> dict[str, list[str]]:
    """Missing / unexpected / mismatched tensor names from ``output_loading_info=True``; older versions
    return lists of names, 5.x may return sets or (name, shapes) tuples."""
    problems = {}
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        names = []
        for item in info.get(key) or ():
            names.append(item[0] if isinstance(item, tuple) else str(item))
        problems[key] = sorted(names)
    return problems


@functools.lru_cache(maxsize=None)
def _forward_takes(cls, name: str) -> bool:
    return name in inspect.signature(cls.forward).parameters
