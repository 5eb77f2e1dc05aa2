"""Where each supported architecture keeps its heads: one typed row per architecture.

Adding an architecture is one row here plus the shared invariant tests (tests/test_heads.py), which run
on a tiny random model of every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mechtest.errors import ArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    """Module paths (dotted, from the ``*ForCausalLM`` object) of one architecture.

    ``qkv`` names the q, k and v projections when they are separate modules; ``fused_qkv`` names the
    single projection otherwise, with ``fused_layout`` saying how its output is packed:
    "blocks" = [q | k | v] each ``heads*head_dim`` wide (GPT-2), "per_head" = per head [q k v] (GPT-NeoX).
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    attention: str
    o_proj: str
    qkv: tuple[str, str, str] | None = None
    fused_qkv: str | None = None
    fused_layout: Literal["blocks", "per_head"] | None = None


_LLAMA_LIKE = dict(layers="model.layers", attention="self_attn", o_proj="o_proj",
                   qkv=("q_proj", "k_proj", "v_proj"))

ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec(name="llama", model_types=("llama",), **_LLAMA_LIKE),
    ArchSpec(name="mistral", model_types=("mistral",), **_LLAMA_LIKE),
    ArchSpec(name="qwen2", model_types=("qwen2",), **_LLAMA_LIKE),
    ArchSpec(name="gemma", model_types=("gemma",), **_LLAMA_LIKE),
    ArchSpec(name="gpt2", model_types=("gpt2",), layers="transformer.h", attention="attn",
             o_proj="c_proj", fused_qkv="c_attn", fused_layout="blocks"),
    ArchSpec(name="gpt_neox", model_types=("gpt_neox",), layers="gpt_neox.layers", attention="attention",
             o_proj="dense", fused_qkv="query_key_value", fused_layout="per_head"),
)


def supported_model_types() -> list[str]:
    return sorted(t for spec in ARCHITECTURES for t in spec.model_types)


def arch_for_model_type(model_type: str) -> ArchSpec:
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    raise ArchitectureError(
        f"architecture {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
    )
