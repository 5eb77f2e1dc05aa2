"""Batched forward passes that return float32 logits at the answer position only.

Every metric in mechtest is read from these logits (argmax over the full vocabulary, probabilities of the
answer token), so this is the one place that decides batching, devices and dtype of the read-out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mechtest.compat import accepts_logits_to_keep
from mechtest.heads import Edits, hooked

# edits for one batch, given the slice of the dataset it covers
EditsForBatch = Callable[[slice], Edits]


def last_logits(model, input_ids: torch.Tensor, last_pos: torch.Tensor,
                attention_mask: torch.Tensor | None = None, edits: Edits | None = None) -> torch.Tensor:
    """(batch, vocab) float32 logits at ``last_pos`` of each row, with ``edits`` installed."""
    input_ids = input_ids.to(model.device)
    last_pos = last_pos.to(model.device)
    keep = int(input_ids.shape[1] - last_pos.min().item())
    kwargs = {"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}
    with torch.no_grad(), hooked(model, edits or {}):
        out = model.hf(input_ids=input_ids, use_cache=False,
                       attention_mask=None if attention_mask is None else attention_mask.to(model.device), **kwargs)
    logits = out.logits
    offset = input_ids.shape[1] - logits.shape[1]
    rows = torch.arange(input_ids.shape[0], device=logits.device)
    # the LM head may sit on another device than the embeddings (device="auto")
    return logits[rows, last_pos.to(logits.device) - offset].float()


def context_length(model) -> int | None:
    """The longest input the model was built for (``max_position_embeddings`` / ``n_positions``), if it says."""
    config = model.hf.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits(model, dataset) -> None:
    """Refuse prompts longer than the model's context before any forward: past it, positions are garbage
    (learned position tables run out, RoPE extrapolates) and every number would be silently wrong."""
    from mechtest.errors import TaskError

    limit, length = context_length(model), int(dataset.input_ids.shape[1])
    if limit is not None and length > limit:
        raise TaskError(f"prompts of {length} tokens ({dataset.n_boxes} boxes) are longer than {model.name!r}'s "
                        f"context of {limit} positions; use fewer boxes")


def dataset_logits(model, dataset, *, batch_size: int = 50, edits_for_batch: EditsForBatch | None = None,
                   progress: str | None = None) -> torch.Tensor:
    """(n, vocab) float32 last-position logits over a whole dataset, batch by batch (on CPU)."""
    check_fits(model, dataset)
    n = len(dataset)
    chunks = []
    starts = range(0, n, batch_size)
    for start in progress_bar(starts, progress, len(starts)):
        sl = slice(start, min(start + batch_size, n))
        edits = edits_for_batch(sl) if edits_for_batch else None
        chunks.append(last_logits(model, dataset.input_ids[sl], dataset.last_pos[sl],
                                  dataset.attention_mask[sl], edits).cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, model.vocab_size)


def progress_bar(iterable, desc: str | None, total: int):
    """A tqdm bar when there is enough work to wait for; silent otherwise."""
    if desc is None or total < 4:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)

