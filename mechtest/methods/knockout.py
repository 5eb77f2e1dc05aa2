"""Attention knockout (spec 8): block one attention edge in every head of every layer >= L, for each L.

For each prompt the edge goes from a query position ``from`` to a key position ``to`` (per prompt, e.g.
last token -> correct object token). Blocking sets that pre-softmax score to the dtype's minimum, so the
softmax renormalises over the other keys, exactly as the paper's manual recomputation of attention did.
Here the model's own attention runs: a forward pre-hook on each attention module edits the additive 4D
``attention_mask`` it receives (eager attention; the causal mask is built when the model passes none).
Accuracy as a function of the starting layer L shows where the information crosses that edge.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from mechtest.errors import HeadIndexError, MechtestError
from mechtest.forward import dataset_logits, progress_bar
from mechtest.heads import check_layer, hooked
from mechtest.measure import Measurement, proportion

from mechtest.spec import KNOCKOUT_EDGES as EDGES


@dataclass(frozen=True)
class KnockoutCurve:
    """Accuracy with the edge blocked in every layer >= L, for each starting layer L."""

    edge: str
    start_layers: tuple[int, ...]
    accuracy: tuple[Measurement, ...]
    baseline: Measurement            # no edge blocked

    def values(self) -> list[float]:
        return [m.value for m in self.accuracy]

    def at(self, layer: int) -> Measurement:
        return self.accuracy[self.start_layers.index(layer)]

    def explain(self) -> str:
        curve = ", ".join(f"L{l}: {m.value:.2f}" for l, m in zip(self.start_layers, self.accuracy))
        return f"knockout {self.edge} (unablated {self.baseline.value:.2f}): {curve}"


def edge_positions(dataset, edge: str, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(from, to) positions per prompt for a named edge; ``random`` draws a context position per prompt.

    The random key is uniform over the context (first object token to the last context label),
    excluding the correct object token and the query label's context occurrence.
    """
    if edge not in EDGES:
        raise MechtestError(f"unknown knockout edge {edge!r}; edges are {', '.join(EDGES)}")
    src, dst = EDGES[edge]
    n = len(dataset)
    rows = torch.arange(n)
    named = {
        "last": dataset.last_pos,
        "query_label": dataset.query_label_pos,
        "query_context": dataset.query_context_pos,
        "object": dataset.object_pos[rows, dataset.queried_index],
    }
    if dst != "random":
        return named[src].clone(), named[dst].clone()
    gen = torch.Generator().manual_seed(seed)
    first, last_ctx = dataset.object_pos.min(1).values, dataset.label_pos.max(1).values
    to = torch.empty(n, dtype=torch.long)
    avoid = torch.stack([named["object"], named["query_context"]], 1)
    for i in range(n):
        choices = [p for p in range(int(first[i]), int(last_ctx[i]) + 1) if p not in avoid[i].tolist()]
        to[i] = choices[int(torch.randint(len(choices), (1,), generator=gen))]
    return named[src].clone(), to


@contextmanager
def knocked_out(model, from_pos: torch.Tensor, to_pos: torch.Tensor, layers: Sequence[int]) -> Iterator[None]:
    """Block attention ``from_pos[i] -> to_pos[i]`` of row i in every head of ``layers`` for the block.

    ``from_pos``/``to_pos`` must match the batch the model then runs on.
    """
    for layer in layers:
        check_layer(model, layer)
    if bool((to_pos > from_pos).any()):
        raise HeadIndexError("a knocked-out edge points to a later position, which causal attention never reads")
    with hooked(model, {("attention_inputs", layer): _mask_hook(from_pos, to_pos) for layer in layers}):
        yield


def knockout_correct(model, dataset, from_pos: torch.Tensor, to_pos: torch.Tensor, start_layer: int, *,
                     batch_size: int = 50) -> np.ndarray:
    """Per prompt: correct with the edge blocked in every layer >= ``start_layer``?"""
    layers = list(range(start_layer, model.n_layers))
    chunks = []
    for start in range(0, len(dataset), batch_size):
        sl = slice(start, min(start + batch_size, len(dataset)))
        with knocked_out(model, from_pos[sl], to_pos[sl], layers):
            chunks.append(dataset_logits(model, dataset[sl], batch_size=batch_size))
    logits = torch.cat(chunks)
    return (logits.argmax(-1) == dataset.answer_ids).numpy()


def attention_knockout(model, dataset, edge: str | tuple[torch.Tensor, torch.Tensor], *,
                       start_layers: Sequence[int] | None = None, batch_size: int = 50, seed: int = 0,
                       progress: bool = True) -> KnockoutCurve:
    """Accuracy curve over starting layers (default: every layer) for a named edge or (from, to) positions."""
    if isinstance(edge, str):
        from_pos, to_pos = edge_positions(dataset, edge, seed=seed)
        name = edge
    else:
        from_pos, to_pos = (torch.as_tensor(p, dtype=torch.long) for p in edge)
        if from_pos.shape != (len(dataset),) or to_pos.shape != (len(dataset),):
            raise MechtestError(f"knockout positions must be one per prompt ({len(dataset)},)")
        name = "custom"
    start_layers = tuple(range(model.n_layers)) if start_layers is None else tuple(int(l) for l in start_layers)
    base = dataset_logits(model, dataset, batch_size=batch_size)
    base_hits = (base.argmax(-1) == dataset.answer_ids).numpy()
    measurements = []
    for layer in progress_bar(start_layers, f"knockout {name}" if progress else None, len(start_layers)):
        check_layer(model, layer)
        hits = knockout_correct(model, dataset, from_pos, to_pos, layer, batch_size=batch_size)
        measurements.append(proportion(f"knockout_accuracy[{name}, L>={layer}]", hits, seed=seed))
    return KnockoutCurve(name, start_layers, tuple(measurements), proportion("accuracy", base_hits, seed=seed))


# --- internals -------------------------------------------------------------------------------------

def _mask_hook(from_pos: torch.Tensor, to_pos: torch.Tensor):
    def hook(module, args, kwargs):
        if "attention_mask" not in kwargs:
            raise MechtestError(f"{type(module).__name__} receives no attention_mask argument: "
                                "attention knockout needs a model that passes one (eager attention)")
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        mask = kwargs["attention_mask"]
        batch, seq = hidden.shape[0], hidden.shape[1]
        if mask is None:
            mask = torch.triu(torch.full((seq, seq), torch.finfo(hidden.dtype).min, dtype=hidden.dtype,
                                         device=hidden.device), diagonal=1)[None, None]
        if mask.dim() != 4:
            raise MechtestError(f"{type(module).__name__} receives a {mask.dim()}D attention mask; "
                                "attention knockout needs the 4D mask of eager attention")
        if from_pos.shape[0] != batch:
            raise MechtestError(f"knockout positions cover {from_pos.shape[0]} rows, the batch has {batch}")
        new = mask.expand(batch, mask.shape[1], mask.shape[2], mask.shape[3]).clone()
        rows = torch.arange(batch, device=new.device)
        q, k = from_pos.to(new.device), to_pos.to(new.device)
        blocked = False if new.dtype == torch.bool else torch.finfo(new.dtype).min
        new[rows, :, q, k] = blocked
        return args, {**kwargs, "attention_mask": new}

    return hook
