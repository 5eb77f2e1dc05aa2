"""Four-step path patching (spec section 4): the exact engines' entry points (core types in ``core``).

One measurement for sender head (l_s, h_s) (spec 4.3): run A on the base prompt with every head output at
positions >= P_start frozen to its clean value, except the sender at P_start, which takes its value from
the corrupt prompt; the sender's effect then reaches later layers through the residual stream and MLPs
only. Without receivers the score reads run A's logits; with receivers, run B patches only the
receivers' q (or v) at the receiver position with what run A computed there. The score is the relative
change of the answer's probability, ``(p - p_clean) / p_clean``, averaged over prompts.

The exact fast engine (``fast``, its docstring argues exactness) is the default;
``naive=True`` runs the obviously-correct reference (``reference``, one full forward per
sender) for tests and benchmarks. ``senders=`` scores only a subset of heads (the others stay 0), which is
what attribution triage (``attribution``) verifies exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mechtest.forward import progress_bar
from mechtest.heads import check_heads
from mechtest.methods.path_patching.batch import BatchContext
from mechtest.methods.path_patching.core import (PathPatchingResult, Step, StepResult, chain, corrupt_positions,
                                                 positions, validate)
from mechtest.methods.path_patching.fast import fast_scores
from mechtest.methods.path_patching.reference import naive_scores
from mechtest.tasks.registry import task_of


def path_patching(model, base, corrupt, *, receivers: dict[str, int] | None = None, seed: int = 0,
                  batch_size: int = 100, naive: bool = False, progress: bool = True,
                  groups: Sequence[str] | None = None) -> PathPatchingResult:
    """Run the steps of the prompts' task (spec 4.4) in order; each step's top-k heads are the next step's
    receivers."""
    return chain(lambda step: patch_step(model, base, corrupt, step, seed=seed, batch_size=batch_size,
                                         naive=naive, progress=progress), receivers, groups, task_of(base).plan)


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
                  senders: Sequence[tuple[int, int]] | None = None, progress: bool = False,
                  absolute: bool = False) -> torch.Tensor:
    """Every sender's score on every prompt, (senders, prompts), for statistics over prompts (their mean over
    prompts is ``patch_step``'s score); senders default to every head in layer-major order. ``absolute``:
    ``p - p_clean`` instead of the relative change, with the clean run's own ``p_clean`` (no extra pass)."""
    senders = _senders(model, senders)
    return torch.cat(list(_batch_scores(model, base, corrupt, step, senders, seed, batch_size, False, progress,
                                        4096, 512 * 2**20, absolute)), dim=1)


def _senders(model, senders) -> list[tuple[int, int]]:
    senders = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)] if senders is None \
        else [tuple(s) for s in senders]
    check_heads(model, senders)
    return senders


def _batch_scores(model, base, corrupt, step, senders, seed, batch_size, naive, progress, max_rows, memory_budget,
                  absolute=False):
    """Yield (senders, batch) score tensors, one per batch of prompts."""
    validate(model, base, corrupt, step)
    p_start = positions(base, step.position)
    p_corr = corrupt_positions(corrupt, step.position, seed)
    n = len(base)
    starts = list(range(0, n, batch_size))
    for start in progress_bar(starts, f"path patching {step.group}" if progress else None, len(starts)):
        sl = slice(start, min(start + batch_size, n))
        ctx = BatchContext.build(model, base, corrupt, sl, p_start[sl], p_corr[sl], need_kv=not naive)
        scores = naive_scores(model, ctx, step, senders) if naive else \
            fast_scores(model, ctx, step, senders, max_rows, memory_budget)
        yield scores * ctx.p_clean.cpu()[None] if absolute else scores
