"""Candidate models built at run time from the loaded base: a PEFT adapter merged in, 1 % relative weight
noise, heads renamed within their KV groups. Each gets its own fingerprint (the cache is keyed on it).

Adapters load through mechtest's own ``BASE+ADAPTER_DIR`` path (peft merge), as a user's would.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from pathlib import Path

import torch

from tools.real.common import HF_DIR


def _derived(base, hf, name: str, recipe: str):
    digest = hashlib.sha256(f"{base.fingerprint}|{recipe}".encode()).hexdigest()[:16]
    return dataclasses.replace(base, hf=hf.eval().requires_grad_(False), name=name, fingerprint=digest)


def adapter(base, adapter_dir: Path, name: str | None = None):
    """The base with the LoRA adapter in ``adapter_dir`` merged in, loaded as a user names it:
    ``BASE+ADAPTER_DIR`` (mechtest.adapters)."""
    from mechtest.model import load_model

    return load_model(f"{HF_DIR}+{adapter_dir}", dtype="float32", name=name or adapter_dir.name)


def noised(base, relative: float = 0.01, seed: int = 0, name: str = "noise-1pct"):
    """Every tensor plus N(0, (relative * its std)^2): a perturbation that should keep the mechanism."""
    hf = copy.deepcopy(base.hf)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * (relative * p.std()))
    return _derived(base, hf, name, f"noise:{relative}:{seed}")


def renamed(base, seed: int = 0, name: str = "renamed-kv"):
    """Query heads permuted within each KV group in every layer (q rows + bias, o_proj columns): the same
    function with other head indices. The gate compares heads by index, so it must say "not preserved"."""
    hf = copy.deepcopy(base.hf)
    d, group = base.head_dim, base.n_heads // base.n_kv_heads
    gen = torch.Generator().manual_seed(seed)
    perms = []
    with torch.no_grad():
        for layer in hf.model.layers:
            order = torch.cat([g * group + torch.randperm(group, generator=gen) for g in range(base.n_kv_heads)])
            perms.append(order.tolist())
            rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in order.tolist()])
            attn = layer.self_attn
            attn.q_proj.weight.copy_(attn.q_proj.weight[rows])
            if attn.q_proj.bias is not None:
                attn.q_proj.bias.copy_(attn.q_proj.bias[rows])
            attn.o_proj.weight.copy_(attn.o_proj.weight[:, rows])
    model = _derived(base, hf, name, f"renamed:{seed}")
    return model, perms
