"""Desiderata-based component masking (spec 6.1-6.6) and functionality patching (spec 6.7).

DCM asks which heads of one circuit group carry one piece of information (a desideratum, spec 3.3-3.4):
a mask ``m`` (one scalar per head, 1 = keep the base activation, 0 = take the source's) is learned so
that mixing ``m * base + (1 - m) * source`` at the group's position makes the base run produce the
desideratum's target, with a sparsity penalty on the number of patched heads. The heads whose rounded
mask is 0 are the ones that carry the information.

Divergences from the paper's code, following its intent (spec 10): pairs are seeded (Q14) and compare
with the base's true queried segment (Q2, Q3); box-label targets are encoded normally (Q4); the source
activation is read at the source prompt's own position, in training, validation and test (Q7, Q8).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mechtest.errors import CircuitError, TaskError
from mechtest.compat import accepts_logits_to_keep
from mechtest.forward import dataset_logits, progress_bar
from mechtest.heads import check_heads, hooked, run_and_read, set_heads
from mechtest.methods.circuits import GROUPS, Circuit, load_circuit, node_positions
from mechtest.measure import Measurement, proportion

Head = tuple[int, int]


@dataclass(frozen=True)
class DCMResult:
    """The heads of ``group`` whose learned mask rounds to 0, and how well patching them meets the desideratum."""

    group: str
    desideratum: str
    heads: tuple[Head, ...]          # the group's heads, in the order of ``mask``
    mask: tuple[float, ...]          # the selected (clamped, unrounded) mask
    selected: tuple[Head, ...]       # heads with rounded mask 0: they carry the desideratum
    val_accuracy: float              # validation accuracy of the rounded mask that was kept
    test: Measurement                # held-out test accuracy of the rounded mask
    history: tuple[tuple[int, float, int], ...] = field(default=(), compare=False)  # (step, val acc, n patched)

    @property
    def accuracy(self) -> float:
        return self.test.value

    def explain(self) -> str:
        heads = ", ".join(f"{l}.{h}" for l, h in self.selected) or "none"
        return (f"DCM {self.group} / {self.desideratum}: {len(self.selected)} of {len(self.heads)} heads selected "
                f"({heads}); {self.test.explain()}")


@dataclass(frozen=True)
class FunctionalityResult:
    """Accuracy against the desideratum target after patching ``heads`` from the source run, per repeat."""

    group: str
    desideratum: str
    heads: tuple[Head, ...]
    accuracies: tuple[float, ...]    # one per repeat (fresh pairings, seed + i)
    measurement: Measurement         # pooled over repeats, bootstrap interval over prompts

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))

    def explain(self) -> str:
        return (f"functionality patching {self.group} / {self.desideratum}, {len(self.heads)} heads: "
                f"{self.mean:.3f} +- {self.std:.3f} over {len(self.accuracies)} repeats; {self.measurement.explain()}")


def dcm(model, circuit: Circuit | str, group: str, desideratum: str, *, n_boxes: int = 7, n_train: int = 1000,
        n_val: int = 500, n_test: int = 500, lam: float = 0.01, lr: float = 0.1, epochs: int = 2,
        batch_size: int = 32, select_every: int = 4, seed: int = 0, eval_batch_size: int = 100,
        progress: bool = True) -> DCMResult:
    """Learn which heads of ``circuit``'s ``group`` carry ``desideratum`` (spec 6), on fresh seeded pairs.

    The pairs (``desiderata(..., n_train + n_val + n_test, seed=seed)``) are split in order into train,
    validation and test. Training batches are taken in order (no shuffling): nothing random happens
    after the pairs are drawn, so a seed fixes the result.
    """
    from mechtest.tasks.entity_tracking import ADDITIONAL_DESIDERATA, DESIDERATA, desiderata

    if desideratum not in DESIDERATA + ADDITIONAL_DESIDERATA:
        raise TaskError(f"unknown desideratum {desideratum!r}; choose one of "
                        f"{', '.join(DESIDERATA + ADDITIONAL_DESIDERATA)}")
    heads = _group_heads(model, circuit, group)
    if min(n_train, n_val, n_test) < 1:
        raise TaskError(f"DCM needs at least one train, validation and test pair (got {n_train}/{n_val}/{n_test})")
    pairs = desiderata(model.tokenizer, desideratum, n_train + n_val + n_test, n_boxes=n_boxes, seed=seed)
    train, val, test = _split(pairs, (n_train, n_val, n_test))
    return dcm_on_pairs(model, heads, group, train, val, test, lam=lam, lr=lr, epochs=epochs,
                        batch_size=batch_size, select_every=select_every, seed=seed,
                        eval_batch_size=eval_batch_size, progress=progress)


def dcm_on_pairs(model, heads: Sequence[Head], group: str, train, val, test, *, lam: float = 0.01,
                 lr: float = 0.1, epochs: int = 2, batch_size: int = 32, select_every: int = 4, seed: int = 0,
                 eval_batch_size: int = 100, progress: bool = True) -> DCMResult:
    """DCM on given ``CounterfactualPairs`` splits (all of one desideratum)."""
    heads = tuple((int(l), int(h)) for l, h in heads)
    if not heads:
        raise CircuitError(f"DCM needs at least one head in group {group!r}")
    check_heads(model, heads)
    if group not in GROUPS:
        raise CircuitError(f"unknown group {group!r}; groups are {', '.join(GROUPS)}")
    src_train = _source_values(model, heads, group, train, eval_batch_size)
    src_val = _source_values(model, heads, group, val, eval_batch_size)

    mask = torch.ones(len(heads), dtype=torch.float32, device=model.device, requires_grad=True)
    optimizer = torch.optim.Adam([mask], lr=lr)
    val_memo: dict[tuple[bool, ...], float] = {}

    def validate(binary: tuple[bool, ...]) -> float:
        if binary not in val_memo:
            val_memo[binary] = float(_hits(model, heads, group, val, src_val, binary, eval_batch_size).mean())
        return val_memo[binary]

    n = len(train)
    starts = list(range(0, n, batch_size))
    steps = [(epoch, start) for epoch in range(epochs) for start in starts]
    best: tuple[float, int, torch.Tensor] | None = None  # (val acc, n patched, mask)
    history = []
    with _frozen(model):
        for step, (_, start) in enumerate(progress_bar(steps, f"DCM {group}/{train.name}" if progress else None,
                                                     len(steps)), 1):
            with torch.no_grad():
                mask.clamp_(0.0, 1.0)
            sl = slice(start, min(start + batch_size, n))
            logits = _mixed_logits(model, heads, group, train, sl, src_train[sl], mask)
            target = train.target_ids[sl].to(logits.device)
            loss = -logits.gather(1, target[:, None]).mean() + lam * (1 - mask).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % select_every == 0 or step == len(steps):
                with torch.no_grad():
                    current = mask.detach().clamp(0.0, 1.0)
                binary = tuple(bool(v) for v in (current < 0.5).tolist())  # True = patched
                acc, n_patched = validate(binary), sum(binary)
                history.append((step, acc, n_patched))
                if best is None or (acc, n_patched) > (best[0], best[1]):
                    best = (acc, n_patched, current.clone())

    kept = best[2]
    binary = tuple(bool(v) for v in (kept < 0.5).tolist())
    src_test = _source_values(model, heads, group, test, eval_batch_size)
    hits = _hits(model, heads, group, test, src_test, binary, eval_batch_size)
    selected = tuple(h for h, patched in zip(heads, binary) if patched)
    measurement = proportion(f"dcm_accuracy[{group}/{train.name}]", hits, seed=seed, group=group,
                             desideratum=train.name, selected=[list(h) for h in selected], group_size=len(heads),
                             **{"lambda": lam})
    return DCMResult(group, train.name, heads, tuple(float(v) for v in kept.tolist()), selected, best[0],
                     measurement, tuple(history))


def functionality_patching(model, heads: Iterable[Head], group: str, desideratum: str, *, n_prompts: int = 500,
                           n_boxes: int = 7, repeats: int = 10, seed: int = 0, batch_size: int = 100,
                           progress: bool = True) -> FunctionalityResult:
    """Overwrite ``heads`` at ``group``'s position with the source run's outputs (spec 6.7).

    ``heads`` may come from another model of the same shape (e.g. ``dcm(model_x, ...).selected``):
    they are plain (layer, head) indices. Repeat i draws fresh pairs with seed ``seed + i``. An empty
    head list measures the no-effect floor of the desideratum.
    """
    from mechtest.tasks.entity_tracking import ADDITIONAL_DESIDERATA, DESIDERATA, desiderata

    if desideratum not in DESIDERATA + ADDITIONAL_DESIDERATA:
        raise TaskError(f"unknown desideratum {desideratum!r}; choose one of "
                        f"{', '.join(DESIDERATA + ADDITIONAL_DESIDERATA)}")
    if group not in GROUPS:
        raise CircuitError(f"unknown group {group!r}; groups are {', '.join(GROUPS)}")
    if repeats < 1:
        raise TaskError(f"functionality patching needs at least one repeat (got {repeats})")
    heads = tuple(dict.fromkeys((int(l), int(h)) for l, h in heads))
    check_heads(model, heads)
    accuracies, all_hits = [], []
    for i in progress_bar(range(repeats), f"patching {group}/{desideratum}" if progress else None, repeats):
        pairs = desiderata(model.tokenizer, desideratum, n_prompts, n_boxes=n_boxes, seed=seed + i)
        if heads:
            src = _source_values(model, heads, group, pairs, batch_size)
            hits = _hits(model, heads, group, pairs, src, (True,) * len(heads), batch_size)
        else:
            logits = dataset_logits(model, pairs.base, batch_size=batch_size)
            hits = (logits.argmax(-1) == pairs.target_ids).numpy()
        accuracies.append(float(hits.mean()))
        all_hits.append(hits)
    pooled = np.concatenate(all_hits)
    measurement = proportion(f"functionality_patching[{group}/{desideratum}]", pooled, seed=seed,
                             model=model.name, heads=[list(h) for h in heads], repeats=repeats,
                             accuracies=accuracies)
    return FunctionalityResult(group, desideratum, heads, tuple(accuracies), measurement)


# --- internals -------------------------------------------------------------------------------------

def _group_heads(model, circuit, group: str) -> tuple[Head, ...]:
    if group not in GROUPS:
        raise CircuitError(f"unknown group {group!r}; groups are {', '.join(GROUPS)}")
    circuit = load_circuit(circuit)
    circuit.check(model)
    heads = tuple(dict.fromkeys(circuit.heads(group)))
    if not heads:
        raise CircuitError(f"group {group!r} of circuit {circuit.name!r} is empty: DCM has no head to mask")
    return heads


def _split(pairs, sizes: Sequence[int]):
    from mechtest.tasks.entity_tracking import CounterfactualPairs

    out, start = [], 0
    for size in sizes:
        sl = slice(start, start + size)
        out.append(CounterfactualPairs(pairs.name, pairs.base[sl], pairs.source[sl], pairs.target_ids[sl]))
        start += size
    return out


def _layers(heads: Sequence[Head]) -> list[int]:
    return sorted({l for l, _ in heads})


def _source_values(model, heads: Sequence[Head], group: str, pairs, batch_size: int) -> torch.Tensor:
    """Source head outputs at the source's own group position: (n, len(heads), head_dim), clean forward."""
    positions = node_positions(pairs.source, group)
    layers = _layers(heads)
    chunks = []
    for start in range(0, len(pairs), batch_size):
        sl = slice(start, min(start + batch_size, len(pairs)))
        acts = run_and_read(model, pairs.source.input_ids[sl], sites=("head_out",), layers=layers,
                            attention_mask=pairs.source.attention_mask[sl])
        rows = torch.arange(sl.stop - sl.start)
        pos = positions[sl].to(model.device)
        per_layer = {l: acts[("head_out", l)][rows, pos] for l in layers}  # (b, heads, dim)
        chunks.append(torch.stack([per_layer[l][:, h] for l, h in heads], dim=1))
    return torch.cat(chunks)


def _mixed_logits(model, heads, group, pairs, sl: slice, src: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last-position logits of the base prompts with ``m * base + (1 - m) * source`` at the group position.

    Differentiable in ``mask`` (the model's weights are frozen by the caller)."""
    base = pairs.base
    pos = node_positions(base, group)[sl].to(model.device)
    src = src.to(model.device)
    edits = {}
    for layer in _layers(heads):
        idx = [i for i, (l, _) in enumerate(heads) if l == layer]
        edits[("head_out", layer)] = _mix(torch.tensor([heads[i][1] for i in idx]), pos, src[:, idx], mask, idx)
    ids = base.input_ids[sl].to(model.device)
    last = base.last_pos[sl].to(model.device)
    keep = int(ids.shape[1] - last.min().item())
    kwargs = {"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}
    with torch.enable_grad(), hooked(model, edits):
        out = model.hf(input_ids=ids, attention_mask=base.attention_mask[sl].to(model.device), use_cache=False,
                       **kwargs)
    logits = out.logits
    offset = ids.shape[1] - logits.shape[1]
    return logits[torch.arange(ids.shape[0], device=logits.device), last - offset].float()


def _mix(head_idx: torch.Tensor, pos: torch.Tensor, src: torch.Tensor, mask: torch.Tensor, idx: list[int]):
    def fn(x: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        h = head_idx.to(x.device)[None, :]
        p = pos[:, None]
        m = mask[idx].to(x.dtype)[None, :, None]
        mixed = m * x[rows, p, h] + (1 - m) * src.to(x.dtype)
        out = x.clone()
        out[rows, p, h] = mixed
        return out

    return fn


def _hits(model, heads, group, pairs, src: torch.Tensor, patched: Sequence[bool], batch_size: int) -> np.ndarray:
    """Per pair: argmax over the vocabulary == target, with the ``patched`` heads fully replaced by the source's."""
    chosen = [i for i, p in enumerate(patched) if p]
    base_pos = node_positions(pairs.base, group)

    def edits_for_batch(sl: slice):
        edits = {}
        for layer in _layers([heads[i] for i in chosen]):
            idx = [i for i in chosen if heads[i][0] == layer]
            edits[("head_out", layer)] = set_heads([heads[i][1] for i in idx], base_pos[sl], src[sl][:, idx])
        return edits

    logits = dataset_logits(model, pairs.base, batch_size=batch_size,
                            edits_for_batch=edits_for_batch if chosen else None)
    return (logits.argmax(-1) == pairs.target_ids).numpy()


class _frozen:
    """Model weights do not require gradients inside the block (DCM trains only the mask)."""

    def __init__(self, model):
        self.params = list(model.hf.parameters())
        self.flags = [p.requires_grad for p in self.params]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p, flag in zip(self.params, self.flags):
            p.requires_grad_(flag)
        return False
