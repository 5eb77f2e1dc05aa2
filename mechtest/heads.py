"""Head-level access to a Hugging Face model through scoped PyTorch hooks.

Sites (each seen by an edit function as a ``(batch, seq, heads, head_dim)`` view):

* ``"head_out"``: a head's output, i.e. the input of the attention output projection (``o_proj`` /
  ``c_proj`` / ``dense``) split per query head. Replacing it lets the real projection run on the edit.
* ``"q"``, ``"k"``, ``"v"``: per-head slices of the q/k/v projection outputs, before rotary embedding.
  ``k`` and ``v`` have ``n_kv_heads`` heads (grouped-query attention); query head ``h`` reads kv head
  ``kv_head_of(model, h)``.

An edit function takes the view and returns a new tensor of the same shape, or ``None`` to leave the
activation as it is (a reader). It must not modify its argument in place. ``hooked`` installs edits for
the duration of a ``with`` block and always removes them, also when the block raises.

Two module-level sites take the whole module call instead of a head view, so that every intervention of
the package (head edits, attention knockout, CMAP's output-projection swap) goes through ``hooked``:

* ``"attention_inputs"``: ``fn(module, args, kwargs) -> (args, kwargs)`` before the attention module runs
  (attention knockout edits its 4D mask);
* ``"o_proj_output"``: ``fn(module, args, output) -> output`` after the output projection (CMAP swaps
  heads' contributions).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager

import torch

from mechtest.compat import accepts_logits_to_keep
from mechtest.errors import HeadIndexError, MechtestError
from mechtest.spec import SITES

MODULE_SITES = ("attention_inputs", "o_proj_output")
EditFn = Callable[[torch.Tensor], "torch.Tensor | None"]
Edits = Mapping[tuple[str, int], "EditFn | Sequence[EditFn]"]


def layer_modules(model) -> list[torch.nn.Module]:
    return list(submodule(model.hf, model.arch.layers))


def attention_module(model, layer: int) -> torch.nn.Module:
    check_layer(model, layer)
    return submodule(layer_modules(model)[layer], model.arch.attention)


def kv_head_of(model, head: int) -> int:
    """The key/value head that query head ``head`` reads (grouped-query attention)."""
    return head // (model.n_heads // model.n_kv_heads)


def n_heads_at(model, site: str) -> int:
    if site not in SITES:
        raise MechtestError(f"unknown site {site!r}; sites are {', '.join(SITES + MODULE_SITES)}")
    return model.n_kv_heads if site in ("k", "v") else model.n_heads


def check_layer(model, layer: int) -> None:
    if not 0 <= int(layer) < model.n_layers:
        raise HeadIndexError(f"layer {layer} is out of range for a model of {model.describe_shape()}")


def check_heads(model, heads: Iterable[tuple[int, int]], site: str = "head_out") -> None:
    """Raise a clear error for any (layer, head) outside the model's shape."""
    n = n_heads_at(model, site)
    for layer, head in heads:
        check_layer(model, layer)
        if not 0 <= int(head) < n:
            raise HeadIndexError(
                f"head ({layer}, {head}) is out of range for a model of {model.describe_shape()}"
                + (f" ({n} heads at site {site!r})" if site in ("k", "v") else "")
            )


@contextmanager
def hooked(model, edits: Edits):
    """Install ``{(site, layer): edit_fn or [edit_fns]}`` on the model for the ``with`` block."""
    by_module: dict[tuple[str, int], dict[str, list[EditFn]]] = defaultdict(lambda: defaultdict(list))
    module_edits = []
    for (site, layer), fns in edits.items():
        check_layer(model, layer)
        fns = [fns] if callable(fns) else list(fns)
        if site in MODULE_SITES:
            module_edits += [(site, layer, fn) for fn in fns]
            continue
        n_heads_at(model, site)
        by_module[(_module_for(model, site), layer)][site].extend(fns)

    handles = []
    try:
        for site, layer, fn in module_edits:
            if site == "attention_inputs":
                handles.append(attention_module(model, layer).register_forward_pre_hook(fn, with_kwargs=True))
            else:
                handles.append(submodule(attention_module(model, layer), model.arch.o_proj).register_forward_hook(fn))
        for (module_name, layer), site_fns in by_module.items():
            module = submodule(attention_module(model, layer), module_name)
            if "head_out" in site_fns:
                handles.append(module.register_forward_pre_hook(_head_out_hook(model, site_fns["head_out"])))
            else:
                handles.append(module.register_forward_hook(_qkv_hook(model, dict(site_fns))))
        yield
    finally:
        for handle in handles:
            handle.remove()


def record(store: dict, key) -> EditFn:
    """An edit that only reads: stores the (detached) activation under ``store[key]``."""

    def fn(x: torch.Tensor) -> None:
        store[key] = x.detach()

    return fn


def run_and_read(
    model,
    input_ids: torch.Tensor,
    *,
    sites: Sequence[str] = ("head_out",),
    layers: Sequence[int] | None = None,
    attention_mask: torch.Tensor | None = None,
    edits: Edits | None = None,
) -> dict[tuple[str, int], torch.Tensor]:
    """One forward pass; returns ``{(site, layer): (batch, seq, heads, head_dim)}`` for the sites read."""
    layers = range(model.n_layers) if layers is None else layers
    store: dict = {}
    all_edits: dict = defaultdict(list)
    for key, fns in (edits or {}).items():
        all_edits[key].extend([fns] if callable(fns) else fns)
    for site in sites:
        for layer in layers:
            all_edits[(site, layer)].append(record(store, (site, layer)))
    if "head_out" in sites and layers:  # a layer's head outputs are its last site: nothing after them is read
        all_edits[("head_out", max(layers))].append(stop_forward)
    # nothing here reads logits: one position's (the fewest allowed) instead of a vocabulary-wide row per token
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    try:
        with torch.no_grad(), hooked(model, all_edits):
            model.hf(input_ids=input_ids.to(model.device), attention_mask=_mask(attention_mask, model),
                     use_cache=False, **keep)
    except StopForward:
        pass
    return store


class StopForward(Exception):
    """Raised from a hook to end a forward pass whose remaining layers cannot matter."""


def stop_forward(x):
    raise StopForward


def read_residual(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Residual stream before each layer and after the last: ``(n_layers + 1, batch, seq, d_model)``.

    The last entry is the model's final hidden state as the architecture returns it (after the final norm).
    """
    with torch.no_grad():
        out = model.hf(input_ids=input_ids.to(model.device), attention_mask=_mask(attention_mask, model),
                       output_hidden_states=True, use_cache=False)
    first = out.hidden_states[0].device  # layers may live on different devices (device="auto")
    return torch.stack([h.to(first) for h in out.hidden_states])


# --- edit-function factories -------------------------------------------------------------------

def masked_replace(mask: torch.Tensor, values: torch.Tensor) -> EditFn:
    """Where ``mask`` (batch|1, seq, heads) is true, take ``values`` (broadcastable to the view)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.to(x.device)[..., None], values.to(device=x.device, dtype=x.dtype), x)

    return fn


def set_heads(heads: Sequence[int], positions: torch.Tensor, values: torch.Tensor) -> EditFn:
    """Replace heads ``heads`` at one position per example: ``positions`` (batch,), ``values`` (batch, len(heads), dim)."""
    heads_t = torch.as_tensor(list(heads), dtype=torch.long)

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        out[rows, positions.to(x.device)[:, None], heads_t.to(x.device)[None, :]] = values.to(x.device, x.dtype)
        return out

    return fn


def zero_heads(heads: Sequence[int]) -> EditFn:
    """Zero ablation of ``heads`` at every position."""
    heads_t = torch.as_tensor(list(heads), dtype=torch.long)

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[:, :, heads_t.to(x.device)] = 0
        return out

    return fn


def mean_heads(heads: Sequence[int], means: torch.Tensor) -> EditFn:
    """Mean ablation of ``heads`` at every position; ``means`` is (seq, heads, dim) for this layer."""
    heads_t = torch.as_tensor(list(heads), dtype=torch.long)

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        h = heads_t.to(x.device)
        out[:, :, h] = means[: x.shape[1], h].to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1)
        return out

    return fn


# --- internals -------------------------------------------------------------------------------------

def _module_for(model, site: str) -> str:
    arch = model.arch
    if site == "head_out":
        return arch.o_proj
    if arch.qkv is not None:
        return arch.qkv[("q", "k", "v").index(site)]
    return arch.fused_qkv


def _apply(fns: list[EditFn], view: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Run edit functions in order; report whether any replaced the activation."""
    changed = False
    for fn in fns:
        out = fn(view)
        if out is not None:
            # an edit may carry values from another run or device (layers spread over GPUs): the hooked
            # module computes on its own device
            view, changed = (out if out.device == view.device else out.to(view.device)), True
    return view, changed


def _head_out_hook(model, fns: list[EditFn]):
    n, d = model.n_heads, model.head_dim

    def pre_hook(module, args):
        x = args[0]
        view, changed = _apply(fns, x.view(*x.shape[:-1], n, d))
        return ((view.reshape(x.shape),) + tuple(args[1:])) if changed else None

    return pre_hook


def _qkv_hook(model, site_fns: dict[str, list[EditFn]]):
    arch, d = model.arch, model.head_dim
    if arch.qkv is not None:
        (site, fns), = site_fns.items()
        n = n_heads_at(model, site)

        def hook(module, args, output):
            view, changed = _apply(fns, output.view(*output.shape[:-1], n, d))
            return view.reshape(output.shape) if changed else None

        return hook

    def fused_hook(module, args, output):
        if arch.fused_layout == "blocks":
            parts = list(output.split([model.n_heads * d, model.n_kv_heads * d, model.n_kv_heads * d], dim=-1))
            parts = [p.view(*p.shape[:-1], -1, d) for p in parts]
        else:  # per_head: (.., heads, 3 * d) with [q k v] inside each head
            parts = list(output.view(*output.shape[:-1], model.n_heads, 3 * d).split(d, dim=-1))
        changed = False
        for i, site in enumerate(("q", "k", "v")):
            parts[i], edited = _apply(site_fns.get(site, []), parts[i])
            changed = changed or edited
        if not changed:
            return None
        if arch.fused_layout == "blocks":
            return torch.cat([p.reshape(*p.shape[:-2], -1) for p in parts], dim=-1)
        return torch.cat(parts, dim=-1).reshape(output.shape)

    return fused_hook


def submodule(root, dotted: str):
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def _mask(attention_mask, model):
    return None if attention_mask is None else attention_mask.to(model.device)
