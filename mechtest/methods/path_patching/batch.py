"""Per-batch state and model plumbing shared by the path-patching engines (exact, reference, attribution).

Everything here is computed once per batch of prompts (clean caches, corrupt sender values, clean
probabilities) or is a thin adapter over transformers internals (key/value caches, running a suffix of the
layer stack), so that the engines themselves only describe what they patch.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mechtest.compat import accepts_logits_to_keep, cache_tensors, make_cache, output_cache
from mechtest.heads import hooked, kv_head_of, record, run_and_read, submodule


@dataclass
class BatchContext:
    ids: torch.Tensor          # (b, seq) base tokens
    answers: torch.Tensor      # (b,)
    last: torch.Tensor         # (b,)
    p_start: torch.Tensor      # (b,)
    clean: torch.Tensor        # (layers, b, seq, heads, dim) head outputs of the base run
    corrupt_at: torch.Tensor   # (layers, b, heads, dim) corrupt head outputs at P_corr
    p_clean: torch.Tensor      # (b,) probability of the answer in the clean run
    kv: list | None            # clean run's per-layer (key, value), each (b, kv_heads, seq, dim)
    resid: torch.Tensor | None = None  # (layers, b, seq, d_model) clean input of each layer

    @classmethod
    def build(cls, model, base, corrupt, sl, p_start, p_corr, need_kv: bool) -> BatchContext:
        ids = base.input_ids[sl].to(model.device)
        b = ids.shape[0]
        store: dict = {}
        edits = {("head_out", l): record(store, l) for l in range(model.n_layers)}
        last = base.last_pos[sl].to(model.device)
        # logits from the earliest answer position on only: the vocabulary row per token dominates short prompts
        offset = int(last.min()) if accepts_logits_to_keep(model) else 0
        keep = {"logits_to_keep": ids.shape[1] - offset} if offset else {}
        with torch.no_grad(), hooked(model, edits):
            out = model.hf(input_ids=ids, use_cache=need_kv, output_hidden_states=need_kv, **keep)
        clean = torch.stack([store[l] for l in range(model.n_layers)])
        resid = torch.stack(out.hidden_states[:model.n_layers]) if need_kv else None
        rows = torch.arange(b, device=model.device)
        answers = base.answer_ids[sl].to(model.device)
        probs = out.logits[rows, last - offset].float().softmax(-1)[rows, answers]
        corrupt_acts = run_and_read(model, corrupt.input_ids[sl], sites=("head_out",))
        p_corr = p_corr.to(model.device)
        corrupt_at = torch.stack([corrupt_acts[("head_out", l)][rows, p_corr] for l in range(model.n_layers)])
        kv = cache_tensors(output_cache(out)) if need_kv else None
        return cls(ids, answers, last, p_start.to(model.device), clean, corrupt_at, probs, kv, resid)


def receivers_by_layer(model, step) -> dict[int, list[int]]:
    """Receiver heads per layer at the receiver site; a v receiver under GQA is its shared kv head."""
    by_layer: dict[int, list[int]] = {}
    for l, h in step.receivers:
        head = kv_head_of(model, int(h)) if step.receiver_site in ("k", "v") else int(h)
        if head not in by_layer.setdefault(int(l), []):
            by_layer[int(l)].append(head)
    return by_layer


def receiver_layers(model, step) -> list[int]:
    return sorted(receivers_by_layer(model, step))


@contextmanager
def start_at_layer(model, layer: int, hidden: torch.Tensor):
    """Run only layers >= ``layer``, feeding ``hidden`` (the clean input of that layer) to the first.

    Exact when nothing below ``layer`` differs from the clean run at the positions computed: a sender
    changes nothing below its own layer, and run B nothing below its lowest receiver.
    """
    if layer == 0:
        yield
        return
    parent_path, _, name = model.arch.layers.rpartition(".")
    parent = submodule(model.hf, parent_path)
    layers = getattr(parent, name)

    def feed(module, args, kwargs):
        if args:
            return (hidden.to(args[0].dtype),) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden.to(kwargs["hidden_states"].dtype)}

    # some models (Gemma 3) look a layer's type (sliding or full attention, its rotary table) up by its
    # index in the list: slice that list with the layers
    typed = {id(m.config): m.config for m in model.hf.modules()
             if isinstance(getattr(getattr(m, "config", None), "layer_types", None), list)}
    types = {key: config.layer_types for key, config in typed.items()}
    handle = layers[layer].register_forward_pre_hook(feed, with_kwargs=True)
    setattr(parent, name, torch.nn.ModuleList(list(layers)[layer:]))
    try:
        for key, config in typed.items():
            config.layer_types = types[key][layer:]
        yield
    finally:
        setattr(parent, name, layers)
        handle.remove()
        for key, config in typed.items():
            config.layer_types = types[key]


def constant(values: torch.Tensor):
    """An edit that replaces the view by ``values`` (broadcast)."""

    def fn(x):
        return values.to(x.dtype)

    return fn


def set_at(heads, positions, values):
    """Replace ``heads`` at one position per row: ``positions`` (batch,), ``values`` (batch, len(heads), dim)."""

    def fn(x):
        out = x.clone()
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        out[rows, positions[:, None], torch.as_tensor(heads, device=x.device)[None, :]] = values.to(x.dtype)
        return out

    return fn


def prefix_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], repeats: int):
    """A cache over each layer's clean prefix, shared by ``repeats`` sender-major copies of its rows.

    Each layer holds the prefix once, (rows, kv_heads, p, dim); appending a suffix writes prefix and suffix
    into one new tensor, the only copy (a DynamicCache would gather the repeats, copy them in, then
    concatenate). Layers that never run keep the prefix as is. Falls back to a plain DynamicCache where
    transformers has no per-layer cache objects.
    """
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:  # transformers < 4.56
        return make_cache([(k.repeat(repeats, 1, 1, 1), v.repeat(repeats, 1, 1, 1)) for k, v in kv])

    class PrefixLayer(DynamicLayer):
        def __init__(self, keys, values):
            super().__init__()
            self.keys, self.values, self.is_initialized, self.device = keys, values, True, keys.device

        def update(self, key_states, value_states, *args, **kwargs):
            self.keys, self.values = _join(self.keys, key_states, repeats), _join(self.values, value_states, repeats)
            return self.keys, self.values

    cache = DynamicCache()
    cache.layers = [PrefixLayer(k, v) for k, v in kv]
    return cache


def _join(prefix: torch.Tensor, suffix: torch.Tensor, repeats: int) -> torch.Tensor:
    rows, heads, p, dim = prefix.shape
    out = suffix.new_empty(repeats * rows, heads, p + suffix.shape[2], dim)
    out.view(repeats, rows, heads, -1, dim)[:, :, :, :p] = prefix
    out[:, :, p:] = suffix
    return out


@contextmanager
def fused_attention(model):
    """Let the model use PyTorch's fused attention (SDPA) for the ``with`` block.

    mechtest loads models with eager attention (attention knockout edits its mask); the engines here
    only edit q/k/v and head outputs, which both implementations compute the same way, while eager
    attention materialises, masks and normalises every score in separate passes. Models whose attention
    SDPA cannot express (logit soft-capping, Gemma 2) stay eager.
    """
    configs = {id(m.config): m.config for m in model.hf.modules()
               if getattr(getattr(m, "config", None), "_attn_implementation", None) == "eager"}
    if any(getattr(c, "attn_logit_softcapping", None) for c in configs.values()):
        configs = {}
    try:
        for config in configs.values():
            config._attn_implementation = "sdpa"
        yield
    finally:
        for config in configs.values():
            config._attn_implementation = "eager"
