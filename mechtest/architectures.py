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
    "blocks" = [q | k | v], q ``heads*head_dim`` wide and k, v ``kv_heads*head_dim`` each (GPT-2, Phi-3),
    "per_head" = per head [q k v] (GPT-NeoX).

    The q/k/v sites read the outputs of the modules ``qkv`` names. Where an architecture normalises q and k
    across all heads at once (OLMo-2), those are the norm modules, so a per-head edit stays per head; a
    per-head norm (Qwen3, Gemma 3) needs no such care and the sites stay on the projections.

    ``quirks`` records what else the architecture does around attention (q/k norms, sliding windows,
    soft-capping, head_dim independent of hidden/heads); the engine is neutral to them (its hooks sit on
    projections), the shared invariant tests prove it on a tiny model of each row, and reports can show them.
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    attention: str
    o_proj: str
    qkv: tuple[str, str, str] | None = None
    fused_qkv: str | None = None
    fused_layout: Literal["blocks", "per_head"] | None = None
    quirks: frozenset[str] = frozenset()


_LLAMA_LIKE = dict(layers="model.layers", attention="self_attn", o_proj="o_proj",
                   qkv=("q_proj", "k_proj", "v_proj"))

# the vocabulary of ``quirks``
QUIRKS = {
    "qk_norm_per_head": "RMSNorm on each head's q and k (after the q/k sites)",
    "qk_norm_all_heads": "RMSNorm over all heads' q and k together; the q/k sites read its output",
    "sliding_window": "some or all layers attend to a sliding window only",
    "attn_softcap": "attention logits soft-capped with tanh",
    "final_softcap": "output logits soft-capped with tanh",
    "own_head_dim": "head_dim comes from the config, not hidden_size / num_attention_heads",
}

ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec(name="llama", model_types=("llama",), **_LLAMA_LIKE),
    ArchSpec(name="mistral", model_types=("mistral",), **_LLAMA_LIKE, quirks=frozenset({"sliding_window"})),
    ArchSpec(name="qwen2", model_types=("qwen2",), **_LLAMA_LIKE, quirks=frozenset({"sliding_window"})),
    ArchSpec(name="gemma", model_types=("gemma",), **_LLAMA_LIKE, quirks=frozenset({"own_head_dim"})),
    ArchSpec(name="qwen3", model_types=("qwen3",), **_LLAMA_LIKE,
             quirks=frozenset({"qk_norm_per_head", "own_head_dim", "sliding_window"})),
    ArchSpec(name="gemma2", model_types=("gemma2",), **_LLAMA_LIKE,
             quirks=frozenset({"own_head_dim", "sliding_window", "attn_softcap", "final_softcap"})),
    ArchSpec(name="gemma3_text", model_types=("gemma3_text",), **_LLAMA_LIKE,
             quirks=frozenset({"own_head_dim", "qk_norm_per_head", "sliding_window"})),
    ArchSpec(name="olmo2", model_types=("olmo2",), layers="model.layers", attention="self_attn", o_proj="o_proj",
             qkv=("q_norm", "k_norm", "v_proj"), quirks=frozenset({"qk_norm_all_heads"})),
    ArchSpec(name="phi3", model_types=("phi3",), layers="model.layers", attention="self_attn", o_proj="o_proj",
             fused_qkv="qkv_proj", fused_layout="blocks", quirks=frozenset({"sliding_window"})),
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
