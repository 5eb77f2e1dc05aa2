"""Four-step path patching (spec section 4): the public API; the engines live in sibling modules.

One measurement for sender head (l_s, h_s) (spec 4.3): run A on the base prompt with every head output at
positions >= P_start frozen to its clean value, except the sender at P_start, which takes its value from
the corrupt prompt; the sender's effect then reaches later layers through the residual stream and MLPs
only. Without receivers the score reads run A's logits; with receivers, run B patches only the
receivers' q (or v) at the receiver position with what run A computed there. The score is the relative
change of the answer's probability, ``(p - p_clean) / p_clean``, averaged over prompts.

The exact fast engine (``path_patching_fast``, its docstring argues exactness) is the default;
``naive=True`` runs the obviously-correct reference (``path_patching_reference``, one full forward per
sender) for tests and benchmarks. ``senders=`` scores only a subset of heads (the others stay 0), which is
what attribution triage (``attribution``) verifies exactly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mechtest.errors import MechtestError
from mechtest.forward import _progress
from mechtest.heads import check_heads, n_heads_at
from mechtest.methods.path_patching_batch import BatchContext
from mechtest.methods.path_patching_fast import fast_scores
from mechtest.methods.path_patching_reference import naive_scores

from mechtest.spec import GROUPS, PAPER_RECEIVERS, POSITIONS, STEP_PLAN  # noqa: F401  (POSITIONS: re-exported)


@dataclass(frozen=True)
class Step:
    """One path-patching step: where senders are patched and which receivers (if any) read them."""

    group: str
    position: str  # "last" | "query_label" | "query_context"; the receivers read at the same position
    receivers: tuple[tuple[int, int], ...] = ()
    receiver_site: str | None = None  # "q" | "v"; None: direct path to the logits


@dataclass
class StepResult:
    """Scores of every head as a sender: a (layers, heads) matrix, most negative = most important."""

    step: Step
    scores: torch.Tensor
    n_prompts: int
    seed: int
    verified: torch.Tensor | None = None  # (layers, heads) bool: scored exactly; None = all of them

    def top(self, k: int, exclude: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
        """The k heads with the most negative scores (spec 4.3), ties broken by head order.

        When only some heads were scored exactly (``verified``, attribution triage), those rank first.
        """
        flat = self.scores.flatten()
        order = torch.argsort(flat, stable=True)
        if self.verified is not None:
            exact = self.verified.flatten()[order]
            order = torch.cat([order[exact], order[~exact]])
        n_heads = self.scores.shape[1]
        skip = set(map(tuple, exclude))
        heads = [divmod(int(i), n_heads) for i in order]
        return [h for h in heads if h not in skip][:k]


@dataclass
class PathPatchingResult:
    steps: dict[str, StepResult] = field(default_factory=dict)

    def __getitem__(self, group: str) -> StepResult:
        return self.steps[group]


# Spec 4.4: the four steps (mechtest.spec.STEP_PLAN), with the paper's Llama receiver counts as defaults.
DEFAULT_RECEIVERS = PAPER_RECEIVERS
# (group, sender/receiver position, group whose top-k are the receivers, receiver site)
PLAN = tuple((p.group, p.position, p.previous, p.receiver_site) for p in STEP_PLAN)


def path_patching(model, base, corrupt, *, receivers: dict[str, int] | None = None, seed: int = 0,
                  batch_size: int = 100, naive: bool = False, progress: bool = True,
                  groups: Sequence[str] = GROUPS) -> PathPatchingResult:
    """Run the steps of spec 4.4 in order; each step's top-k heads are the next step's receivers."""
    k = {**DEFAULT_RECEIVERS, **(receivers or {})}
    result = PathPatchingResult()
    for group, position, previous, site in PLAN:
        if group not in groups:
            continue
        recv: tuple = ()
        if previous is not None:
            if previous not in result.steps:
                raise MechtestError(f"path-patching step {group!r} needs the scores of step {previous!r}")
            recv = tuple(result.steps[previous].top(k[group]))
        step = Step(group, position, recv, site)
        result.steps[group] = patch_step(model, base, corrupt, step, seed=seed, batch_size=batch_size,
                                         naive=naive, progress=progress)
    return result


def patch_step(model, base, corrupt, step: Step, *, seed: int = 0, batch_size: int = 100,
               naive: bool = False, senders: Sequence[tuple[int, int]] | None = None,
               progress: bool = True, max_rows: int = 4096, memory_budget: int = 512 * 2**20) -> StepResult:
    """Score every head (or ``senders``) as a sender for one step; returns a (layers, heads) matrix.

    The fast engine puts up to ``max_rows`` (sender, prompt) rows in one forward pass, fewer when their
    key/value prefix and logits would exceed ``memory_budget`` bytes.
    """
    senders = _senders(model, senders)
    totals = torch.zeros(len(senders), dtype=torch.float64)
    for batch in _batch_scores(model, base, corrupt, step, senders, seed, batch_size, naive, progress, max_rows,
                               memory_budget):
        totals += batch.sum(dim=1).double()
    n = len(base)
    scores = torch.zeros(model.n_layers, model.n_heads)
    for (l, h), total in zip(senders, totals):
        scores[l, h] = float(total / n)
    return StepResult(step=step, scores=scores, n_prompts=n, seed=seed)


def prompt_scores(model, base, corrupt, step: Step, *, seed: int = 0, batch_size: int = 100,
                  senders: Sequence[tuple[int, int]] | None = None, progress: bool = False) -> torch.Tensor:
    """Every sender's score on every prompt, (senders, prompts), for statistics over prompts (their mean over
    prompts is ``patch_step``'s score); senders default to every head in layer-major order."""
    senders = _senders(model, senders)
    return torch.cat(list(_batch_scores(model, base, corrupt, step, senders, seed, batch_size, False, progress,
                                        4096, 512 * 2**20)), dim=1)


def _senders(model, senders) -> list[tuple[int, int]]:
    senders = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)] if senders is None \
        else [tuple(s) for s in senders]
    check_heads(model, senders)
    return senders


def _batch_scores(model, base, corrupt, step, senders, seed, batch_size, naive, progress, max_rows, memory_budget):
    """Yield (senders, batch) score tensors, one per batch of prompts."""
    _validate(model, base, corrupt, step)
    p_start = _positions(base, step.position)
    p_corr = _corrupt_positions(corrupt, step.position, seed)
    n = len(base)
    starts = list(range(0, n, batch_size))
    for start in _progress(starts, f"path patching {step.group}" if progress else None, len(starts)):
        sl = slice(start, min(start + batch_size, n))
        ctx = BatchContext.build(model, base, corrupt, sl, p_start[sl], p_corr[sl], need_kv=not naive)
        if naive:
            yield naive_scores(model, ctx, step, senders)
        else:
            yield fast_scores(model, ctx, step, senders, max_rows, memory_budget)


def _positions(dataset, position: str) -> torch.Tensor:
    if position == "last":
        return dataset.last_pos.clone()
    if position == "query_label":
        return dataset.query_label_pos.clone()
    if position == "query_context":
        return dataset.query_context_pos.clone()
    raise MechtestError(f"unknown position class {position!r}; use one of {', '.join(POSITIONS)}")


def _corrupt_positions(corrupt, position: str, seed: int) -> torch.Tensor:
    """P_corr of spec 4.3: for the context label, a uniformly random box-label position per example."""
    if position != "query_context":
        return _positions(corrupt, position)
    rng = random.Random(seed)
    idx = torch.tensor([rng.randrange(corrupt.n_boxes) for _ in range(len(corrupt))])
    return corrupt.label_pos[torch.arange(len(corrupt)), idx]


def _validate(model, base, corrupt, step: Step) -> None:
    if len(base) != len(corrupt):
        raise MechtestError(f"base and corrupt prompt sets differ in size: {len(base)} vs {len(corrupt)}")
    if base.input_ids.shape != corrupt.input_ids.shape:
        raise MechtestError("base and corrupt prompts must share one token layout (same length)")
    if not bool(base.attention_mask.bool().all()):
        raise MechtestError("path patching needs unpadded prompts of one layout")
    _positions(base, step.position)
    if step.receivers:
        if step.receiver_site not in ("q", "v"):
            raise MechtestError(f"receiver site must be 'q' or 'v', not {step.receiver_site!r}")
        check_heads(model, step.receivers)
        n_heads_at(model, step.receiver_site)
