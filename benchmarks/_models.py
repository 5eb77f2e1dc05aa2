"""Random-init Llama checkpoints for the benchmarks, saved and loaded like a user's checkpoint."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

# `python benchmarks/X.py` puts benchmarks/ on the path, not the repository root that holds tools/ (and mechtest/)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mechtest.model import load_model  # noqa: E402
from tools.zoo.vocab import build_tokenizer, vocabulary  # noqa: E402


def random_llama(*, layers: int, heads: int, hidden: int, intermediate: int, kv_heads: int | None = None,
                 init_std: float = 0.02, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocabulary()), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads or heads, initializer_range=init_std,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    directory = Path(tempfile.mkdtemp(prefix="mechtest-bench-"))
    LlamaForCausalLM(config).save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return load_model(directory, device="cuda" if torch.cuda.is_available() else "cpu")
