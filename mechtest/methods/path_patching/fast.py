"""The exact fast path-patching engine: many senders per forward pass, only what can differ is recomputed.

Why it is exact: in all four steps the receiver position equals the sender position P, and nothing before
P can change. In run A every head output at P is frozen, so attention is irrelevant there and the run
reduces to the single token at P (embedding + residual + MLPs, position id P), with no prefix at all.
Run B changes nothing before P either, so it recomputes only positions >= P on top of the clean run's
key/value cache, and only layers from the lowest patched receiver up. Equality with the naive reference
(``reference``) is tested on every architecture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mechtest.compat import accepts_logits_to_keep, cache_kwarg
from mechtest.heads import StopForward, hooked, record, stop_forward
from mechtest.methods.path_patching.batch import (BatchContext, constant, fused_attention, prefix_cache,
                                                  receiver_layers, receivers_by_layer, start_at_layer)

if TYPE_CHECKING:
    from mechtest.methods.path_patching.core import Step


def fast_scores(model, ctx: BatchContext, step: Step, senders, max_rows, budget) -> torch.Tensor:
    out = torch.zeros(len(senders), ctx.ids.shape[0])
    # A sender changes nothing in its own or earlier layers, so with every receiver at or below the
    # sender's layer run B is the clean run: the score is exactly 0 and needs no forward pass.
    top = max((l for l, _ in step.receivers), default=None)
    active = [i for i, (l, _) in enumerate(senders) if top is None or l < top]
    # Run B of a sender starts at the lowest receiver layer above it; chunks never mix start layers, so
    # none recomputes layers that cannot differ for any of its senders.
    layers = receiver_layers(model, step)
    by_start: dict[int, list[int]] = {}
    for i in active:
        by_start.setdefault(min((r for r in layers if r > senders[i][0]), default=0), []).append(i)
    groups = torch.stack([ctx.p_start, ctx.last], dim=1)
    for p, last in torch.unique(groups, dim=0).tolist():
        ex = torch.nonzero((ctx.p_start == p) & (ctx.last == last)).flatten()
        chunk = _senders_per_chunk(model, step, len(ex), p, last - p + 1, max_rows, budget)
        for part in by_start.values():
            for s0 in range(0, len(part), chunk):
                idx = part[s0:s0 + chunk]
                scores = _fast_chunk(model, ctx, step, [senders[i] for i in idx], ex, p, last).cpu()
                out[torch.tensor(idx)[:, None], ex.cpu()[None, :]] = scores
    return out


def _fast_chunk(model, ctx: BatchContext, step: Step, senders, ex: torch.Tensor, p: int, last: int) -> torch.Tensor:
    """Scores (len(senders), len(ex)) for examples ``ex`` that share P_start = p and the last position."""
    n_s, n_e = len(senders), len(ex)
    logits, recorded = run_a(model, ctx, step, senders, ex, p)
    if not step.receivers:
        rows = torch.arange(n_s * n_e, device=ex.device)
        prob = logits[:, -1].float().softmax(-1)[rows, ctx.answers[ex.repeat(n_s)]].view(n_s, n_e)
    else:
        prob = _run_b(model, ctx, step, recorded, ex, p, last, n_s, min(l for l, _ in senders))
    return (prob - ctx.p_clean[ex][None]) / ctx.p_clean[ex][None]


def run_a(model, ctx: BatchContext, step: Step, senders, ex: torch.Tensor, p: int):
    """Run A for every (sender, example) row at once: the token at p alone, every head output frozen, the
    sender's taking the corrupt value. Rows are sender-major (row i * len(ex) + e). Returns the logits (no
    receivers) or None, and the receivers' recorded q/v per layer, (rows, 1, heads, dim)."""
    n_s, n_e = len(senders), len(ex)
    rows = n_s * n_e
    ex_rows = ex.repeat(n_s)
    token = ctx.ids[ex_rows, p][:, None]
    position = torch.full((rows, 1), p, device=ex.device)
    edits = {}
    for l in range(model.n_layers):
        values = ctx.clean[l][ex_rows, p].clone()             # (rows, heads, dim)
        for i, (ls, hs) in enumerate(senders):
            if ls == l:
                values[i * n_e:(i + 1) * n_e, hs] = ctx.corrupt_at[l, ex, hs]
        edits[("head_out", l)] = constant(values[:, None])
    recorded: dict = {}
    layers = receiver_layers(model, step)
    for l in layers:
        edits[(step.receiver_site, l)] = record(recorded, l)
    if layers:  # nothing above the last receiver matters in run A: stop the forward pass there
        edits[(step.receiver_site, layers[-1])] = [record(recorded, layers[-1]), stop_forward]
    first = min(l for l, _ in senders)
    out = None
    try:
        with torch.no_grad(), hooked(model, edits), start_at_layer(model, first, ctx.resid[first, ex_rows, p][:, None]):
            out = model.hf(input_ids=token, position_ids=position, use_cache=False)
    except StopForward:
        pass
    return (out.logits if out is not None and not layers else None), recorded


def _run_b(model, ctx: BatchContext, step: Step, recorded: dict, ex, p: int, last: int, n_s: int,
           low: int) -> torch.Tensor:
    """Run B for n_s senders at once: positions p..last on top of each example's clean key/value prefix.

    Short suffixes are packed on the sequence axis: each example's positions are repeated n_s times
    (block i = sender i) over ONE copy of its prefix, and a 4D mask lets every block see the prefix and,
    causally, only itself. Longer suffixes would make that mask's wasted attention dominate, so there
    each (sender, example) is its own row over the shared prefix (``prefix_cache``). Either way each block
    or row computes exactly the suffix of a separate run B whose receivers read sender i's q/v at p.
    """
    n_e, s = len(ex), last - p + 1
    device = ctx.ids.device
    # receivers at or below every sender (layer ``low`` and under) read the clean q/v, which is what run
    # B computes for them anyway
    patched = {l: heads for l, heads in receivers_by_layer(model, step).items() if l > low}
    first = min(patched)
    if _packed(p, s):
        starts = torch.arange(n_s, device=device) * s
        ids = ctx.ids[ex, p:last + 1].repeat(1, n_s)
        positions = torch.arange(p, last + 1, device=device).repeat(n_s)[None].expand(n_e, -1)
        qi = torch.arange(n_s * s, device=device)
        own_block = (qi[:, None] // s == qi[None, :] // s) & (qi[None, :] <= qi[:, None])
        allowed = torch.cat([torch.ones(n_s * s, p, dtype=torch.bool, device=device), own_block], dim=1)
        mask = torch.zeros(allowed.shape, dtype=model.dtype, device=device)
        mask = mask.masked_fill(~allowed, torch.finfo(model.dtype).min)[None, None].expand(n_e, 1, -1, -1)
        rows, keep = ex, starts + (last - p)
        hidden = ctx.resid[first][ex, p:last + 1].repeat(1, n_s, 1)

        def values(l, heads):  # recorded rows are sender-major: (n_s * n_e) -> (n_e, n_s)
            return recorded[l][:, 0][:, heads].reshape(n_s, n_e, len(heads), -1).transpose(0, 1)
    else:
        starts = torch.zeros(1, dtype=torch.long, device=device)
        rows = ex.repeat(n_s)
        ids = ctx.ids[rows, p:last + 1]
        positions = torch.arange(p, last + 1, device=device)[None].expand(len(rows), -1)
        mask, keep = None, starts + (last - p)
        hidden = ctx.resid[first][rows, p:last + 1]

        def values(l, heads):
            return recorded[l][:, 0][:, heads][:, None]

    b_edits = {(step.receiver_site, l): _set_blocks(heads, starts, values(l, heads)) for l, heads in patched.items()}
    repeats = 1 if _packed(p, s) else n_s
    cache = prefix_cache([(k[ex, :, :p], v[ex, :, :p]) for k, v in ctx.kv], repeats)
    kwargs = {"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}
    with torch.no_grad(), hooked(model, b_edits), start_at_layer(model, first, hidden), fused_attention(model):
        out = model.hf(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                       **{cache_kwarg(model): cache}, **kwargs)
    logits = (out.logits if kwargs else out.logits[:, keep]).float()
    prob = logits.softmax(-1).gather(-1, ctx.answers[rows][:, None, None].expand(-1, logits.shape[1], 1))[..., 0]
    return prob.transpose(0, 1) if _packed(p, s) else prob.view(n_s, n_e)


def _packed(p: int, s: int) -> bool:
    """Pack only short suffixes: with a long one the packed mask's wasted attention costs more than the
    per-row prefix (measured on the benchmark's 32x32 Llama: steps 2 and 3 gain from packing, step 4's
    long suffixes lose)."""
    return 8 * s <= p


def _senders_per_chunk(model, step: Step, n_e: int, p: int, s: int, max_rows: int, budget: int) -> int:
    """Senders per forward pass: at most ``max_rows`` rows, and attention scores, copies and logits within ``budget``.

    Packed, n_s senders make each block attend to p + n_s * s keys instead of p + s. About as many packed
    keys as prefix keys bounds that waste, but each pass should also carry enough tokens (~2,048) to
    amortise its fixed cost; the larger of the two wins.
    """
    n_s = max(1, max_rows // n_e)
    packed = step.receivers and _packed(p, s)
    if packed:
        n_s = min(n_s, max(-(-p // s), -(-2048 // (n_e * s))))
    element = torch.finfo(model.dtype).bits // 8
    while n_s > 1:
        logits = n_e * n_s * model.vocab_size * 4 * 2
        if packed:
            work = n_e * model.n_heads * (n_s * s) * (p + n_s * s) * 4 * 3  # attention scores
        elif step.receivers:  # each layer's keys and values, prefix and suffix, one copy (prefix_cache)
            work = n_e * n_s * 2 * model.n_layers * model.n_kv_heads * (p + s) * model.head_dim * element
        else:
            work = 0
        if logits + work <= budget:
            break
        n_s //= 2
    return n_s


def _set_blocks(heads, starts, values):
    """Replace ``heads`` at the block starts: ``values`` (batch, blocks, len(heads), dim)."""

    def fn(x):
        out = x.clone()
        index = (slice(None), starts[:, None], torch.as_tensor(heads, device=x.device)[None, :])
        out[index] = values.to(x.dtype)
        return out

    return fn
