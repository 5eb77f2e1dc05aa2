"""The naive path-patching reference: one full forward pass per sender (two with receivers), spec 4.3 verbatim.

Kept obviously correct rather than fast: the exact engine and the attribution estimate are tested and
benchmarked against it.
"""

from __future__ import annotations

import torch

from mechtest.heads import hooked, masked_replace, record
from mechtest.methods.path_patching.batch import BatchContext, receiver_layers, receivers_by_layer, set_at


def naive_scores(model, ctx: BatchContext, step, senders) -> torch.Tensor:
    """Scores (len(senders), batch) of one batch, each sender run separately over the whole prompt."""
    b, seq = ctx.ids.shape
    rows = torch.arange(b, device=ctx.ids.device)
    freeze = torch.arange(seq, device=ctx.ids.device)[None, :] >= ctx.p_start[:, None]  # (b, seq)
    out = torch.empty(len(senders), b)
    for i, (ls, hs) in enumerate(senders):
        edits = {}
        for l in range(model.n_layers):
            values = ctx.clean[l]
            if l == ls:
                values = values.clone()
                values[rows, ctx.p_start, hs] = ctx.corrupt_at[l, :, hs]
            edits[("head_out", l)] = masked_replace(freeze[:, :, None], values)
        recorded: dict = {}
        for l in receiver_layers(model, step):
            edits[(step.receiver_site, l)] = record(recorded, l)
        with torch.no_grad(), hooked(model, edits):
            logits = model.hf(input_ids=ctx.ids, use_cache=False).logits
        if step.receivers:
            b_edits = {}
            for l, heads in receivers_by_layer(model, step).items():
                values = recorded[l][rows, ctx.p_start][:, heads]
                b_edits[(step.receiver_site, l)] = set_at(heads, ctx.p_start, values)
            with torch.no_grad(), hooked(model, b_edits):
                logits = model.hf(input_ids=ctx.ids, use_cache=False).logits
        p = logits[rows, ctx.last].float().softmax(-1)[rows, ctx.answers]
        out[i] = ((p - ctx.p_clean) / ctx.p_clean).cpu()
    return out
