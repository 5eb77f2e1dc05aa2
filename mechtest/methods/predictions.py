"""Predictions of a model, of a circuit alone, or of a knockout on any prompts, batched by layout.

Each helper takes a dataset or a list of one-prompt examples (e.g. drawn by Hypothesis), stacks the prompts
that share a layout (box count, length) into one forward each, and returns per prompt the argmax token at
the answer position with its probability and the answer's probability, in the input order. Property
claims (:mod:`mechtest.properties`) compare these; mean ablation and knockout are the methods' own
(:mod:`~mechtest.methods.evaluation`, :mod:`~mechtest.methods.knockout`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mechtest.errors import MechtestError
from mechtest.forward import dataset_logits
from mechtest.methods.evaluation import ablation_edits, ablation_means
from mechtest.methods.knockout import edge_positions, knocked_out
from mechtest.spec import PROPERTY_EDGES as EDGES

# edges fixed by the prompt alone (a random key would differ between a batch and a replayed single prompt)


@dataclass(frozen=True)
class Prediction:
    """The argmax token at the answer position, its probability, and the prompt's answer's probability."""

    token_id: int
    token: str
    prob: float
    answer_prob: float
    correct: bool


def run(model, examples, *, edits_for_batch=None, batch_size: int = 256) -> list[Prediction]:
    """Predictions of ``model`` on ``examples`` (a dataset or a list of one-prompt examples), batched by shape."""
    return per_layout(examples, batch_size, lambda batch: _predictions(model, batch, dataset_logits(
        model, batch, batch_size=len(batch),
        edits_for_batch=None if edits_for_batch is None else edits_for_batch(batch))))


def run_circuit(model, circuit, examples, means, *, batch_size: int = 256) -> list[Prediction]:
    """Predictions with every head outside ``circuit`` mean-ablated (spec 5.1); ``means`` is a tensor for the
    examples' layout or a callable n_boxes -> tensor (:func:`reference_means`)."""
    def edits(batch):
        m = means(batch.n_boxes) if callable(means) else means
        return ablation_edits(model, batch, m, keep=circuit)

    return run(model, examples, edits_for_batch=edits, batch_size=batch_size)


def run_knockout(model, examples, edge: str, layer: int = 0, *, batch_size: int = 256) -> list[Prediction]:
    """Predictions with attention ``edge`` blocked in every head of every layer >= ``layer`` (spec 8)."""
    if edge not in EDGES:
        raise MechtestError(f"unknown property edge {edge!r}; use one of {', '.join(EDGES)}")

    def one(batch):
        src, dst = edge_positions(batch, edge)
        with knocked_out(model, src, dst, range(layer, model.n_layers)):
            return _predictions(model, batch, dataset_logits(model, batch, batch_size=len(batch)))

    return per_layout(examples, batch_size, one)


def reference_means(model, *, n: int = 100, seed: int = 0, cache=None) -> Callable[[int], object]:
    """Mean-ablation means per box count (``mean_ablation_set`` of ``n`` prompts), computed once each."""
    from mechtest.tasks.entity_tracking import mean_ablation_set

    memo: dict[int, object] = {}

    def for_boxes(n_boxes: int):
        if n_boxes not in memo:
            ref = mean_ablation_set(model.tokenizer, n, n_boxes=n_boxes, seed=seed)
            memo[n_boxes] = ablation_means(model, ref, cache=cache)
        return memo[n_boxes]

    return for_boxes


# --- batching by layout ----------------------------------------------------------------------------

def layout_groups(examples: Sequence, batch_size: int) -> list[list]:
    """One-prompt examples grouped by layout (box count, length), in chunks of ``batch_size``."""
    groups: dict[tuple, list] = {}
    for ex in examples:
        groups.setdefault((ex.n_boxes, tuple(ex.input_ids.shape)), []).append(ex)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def per_layout(examples, batch_size: int, fn) -> list:
    """Apply ``fn`` (batch -> one result per row) to a dataset or list of examples, in the input order."""
    rows = [ex[i] for ex in (examples if isinstance(examples, (list, tuple)) else [examples]) for i in range(len(ex))]
    out: list = [None] * len(rows)
    order = {id(r): k for k, r in enumerate(rows)}
    for group in layout_groups(rows, batch_size):
        for r, res in zip(group, fn(stack(group))):
            out[order[id(r)]] = res
    return out


def stack(rows: list):
    """One dataset from one-prompt examples of the same layout."""
    if len(rows) == 1:
        return rows[0]
    first = rows[0]
    tensors = {f.name: torch.cat([getattr(r, f.name) for r in rows]) for f in dataclasses.fields(first)
               if isinstance(getattr(first, f.name), torch.Tensor)}
    tuples = {name: sum((getattr(r, name) for r in rows), ()) for name in ("prompts", "objects", "labels",
                                                                           "query_labels")}
    return dataclasses.replace(first, **tensors, **tuples)


# --- internals -------------------------------------------------------------------------------------

def _predictions(model, batch, logits) -> list[Prediction]:
    probs = torch.softmax(logits, -1)
    top, ids = probs.max(-1)
    rows = torch.arange(len(batch))
    answer = probs[rows, batch.answer_ids]
    return [Prediction(int(ids[i]), model.tokenizer.decode([int(ids[i])]).strip(), float(top[i]), float(answer[i]),
                       int(ids[i]) == int(batch.answer_ids[i])) for i in range(len(batch))]
