"""Candidates built to fool the gate, made from a loaded model in memory: renamed heads, weight noise."""

from __future__ import annotations

import torch

from mechtest.model import load_model


def renamed_heads(path, perms: dict[int, list[int]], name: str = "renamed"):
    """A function-identical copy of the checkpoint at ``path`` whose heads are renamed within layers: new head
    i of layer l is old head ``perms[l][i]`` (q/k/v rows and output-projection columns moved together)."""
    model = load_model(path, name=name)
    hf, hd = model.hf, model.head_dim
    with torch.no_grad():
        for layer, perm in perms.items():
            index = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in perm])
            if hf.config.model_type == "gpt2":
                attn = hf.transformer.h[layer].attn
                d = attn.c_attn.weight.shape[0]
                full = torch.cat([index + k * d for k in range(3)])
                attn.c_attn.weight.copy_(attn.c_attn.weight[:, full])
                attn.c_attn.bias.copy_(attn.c_attn.bias[full])
                attn.c_proj.weight.copy_(attn.c_proj.weight[index, :])
            else:
                attn = hf.model.layers[layer].self_attn
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                    proj.weight.copy_(proj.weight[index, :])
                attn.o_proj.weight.copy_(attn.o_proj.weight[:, index])
    return model


def noisy(path, scale: float, name: str, seed: int = 0):
    """The checkpoint with N(0, (scale * std)^2) noise on every weight: same heads, other numbers."""
    model = load_model(path, name=name)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.hf.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return model
