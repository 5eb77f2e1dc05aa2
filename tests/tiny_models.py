"""Tiny random checkpoints of every architecture row, saved and reloaded like a user's checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from tools.zoo.vocab import build_tokenizer, vocabulary

V = len(vocabulary())


def _configs(window: int):
    from transformers import (Gemma2Config, Gemma3TextConfig, GemmaConfig, GPT2Config, GPTNeoXConfig, LlamaConfig,
                              MistralConfig, Olmo2Config, Phi3Config, Qwen2Config, Qwen3Config)

    common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                  pad_token_id=0)
    return {
        "llama": LlamaConfig(**common, num_key_value_heads=2),
        "mistral": MistralConfig(**common, num_key_value_heads=2, sliding_window=None),
        "qwen2": Qwen2Config(**common, num_key_value_heads=1),
        "gemma": GemmaConfig(**common, num_key_value_heads=2, head_dim=16),
        # quirks on purpose: head_dim != hidden/heads, sliding windows, soft-capping, q/k norms, fused qkv
        # with grouped-query attention
        "qwen3": Qwen3Config(**common, num_key_value_heads=2, head_dim=16, use_sliding_window=True,
                             sliding_window=window, max_window_layers=1, layer_types=None),
        "gemma2": Gemma2Config(**common, num_key_value_heads=2, head_dim=16, sliding_window=window,
                               attn_logit_softcapping=5.0, final_logit_softcapping=3.0, query_pre_attn_scalar=16),
        "gemma3_text": Gemma3TextConfig(**common, num_key_value_heads=2, head_dim=16, sliding_window=window,
                                        sliding_window_pattern=2, query_pre_attn_scalar=16),
        "olmo2": Olmo2Config(**common, num_key_value_heads=2),
        "phi3": Phi3Config(**common, num_key_value_heads=2, sliding_window=window),
        "gpt2": GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=128,
                           bos_token_id=1, eos_token_id=2),
        "gpt_neox": GPTNeoXConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                  num_attention_heads=4, rotary_pct=0.5, max_position_embeddings=128,
                                  bos_token_id=1, eos_token_id=2),
    }


ARCH_NAMES = ("llama", "mistral", "qwen2", "gemma", "qwen3", "gemma2", "gemma3_text", "olmo2", "phi3", "gpt2",
              "gpt_neox")


def save_tiny(arch: str, directory: Path, seed: int = 0, *, window: int = 64) -> Path:
    """Random weights (std 0.2 so heads matter) saved with save_pretrained, tokenizer beside them.

    ``window`` is the sliding window of the rows that have one; the default is longer than any test prompt,
    pass a short one to make the windows bind.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_configs(window)[arch])
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    model.save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory
