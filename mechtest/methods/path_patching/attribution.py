"""Attribution patching for path patching: every head's score estimated in a constant number of passes.

Why: exact path patching costs one run B per sender; the estimate costs one clean and one corrupt forward
(the batch context), one run A and one run B with gradients, and one backward, whatever the number of
heads (AtP, Nanda 2023; Kramar et al. 2024). It is a first-order Taylor expansion of the frozen-path
objective of spec 4.3 around the clean run: with every head output at P frozen, the objective is one
function G of all those outputs (the sender's effect reaches the receivers through the residual stream
and MLPs only), so one backward of G at the clean point gives the derivative for every sender at once.

Two known failure modes, two options:

* ``metric="logodds"`` (default) linearises the answer's log-odds and maps the estimate back through the
  sigmoid, instead of the probability itself: a confident answer (p near 1) has a vanishing probability
  gradient (saturation), while the log-odds gradient stays informative.
* ``method="hybrid"`` computes run A exactly for every sender (cheap: one token per sender row) and
  linearises only run B in the receivers' q/v. For v receivers the receiver's output is linear in v, so
  only what follows the receivers is approximated; it also removes the sign cancellations inside run A's
  MLPs. Step 1 (no receivers) is then exact. ``"gradient"`` linearises everything (cheapest).

The estimate only ranks heads. ``triage`` turns it into exact results: score all heads by attribution,
run the exact engine on the top candidates (``margin`` times what the next step and the circuit need, at
least ``minimum``) and rank the verified heads first; ``verified`` says which heads carry exact scores.
Triage is exact whenever the exact top-k lies inside the candidates; that is measured, not guaranteed
(benchmarks/attribution.py), and it only saves time where run B dominates (many heads, long suffixes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mechtest.errors import MechtestError
from mechtest.forward import progress_bar
from mechtest.heads import hooked
from mechtest.methods.path_patching.batch import BatchContext, constant, receivers_by_layer, set_at
from mechtest.methods.path_patching.core import (DEFAULT_RECEIVERS, PathPatchingResult, Step, StepResult,
                                                 chain, corrupt_positions, positions, validate)
from mechtest.methods.path_patching.fast import fast_scores, run_a
from mechtest.methods.path_patching.patching import patch_step
from mechtest.tasks.registry import task_of

METHODS = ("gradient", "hybrid")
METRICS = ("logodds", "prob")


@dataclass
class AttributionStep(StepResult):
    """Estimated scores; with ``method="hybrid"`` also each sender's ``reach``: how much it changes what the
    receivers read (summed relative change of their q/v at P, from the exact run A). Gradients vanish
    where attention saturates (digital, planted circuits), the reach does not, so triage uses both."""

    reach: torch.Tensor | None = None


@dataclass
class Triage:
    """Exact scores on the verified heads (ranked first by ``top``), attribution estimates elsewhere."""

    result: PathPatchingResult
    attribution: PathPatchingResult
    verified: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)


def attribution_scores(model, base, corrupt, *, receivers: dict[str, int] | None = None, seed: int = 0,
                       batch_size: int = 100, method: str = "gradient", metric: str = "logodds",
                       groups: Sequence[str] | None = None, progress: bool = True,
                       ) -> PathPatchingResult:
    """The four steps of spec 4.4 on attribution estimates; each step's top-k estimates are the receivers."""
    return chain(lambda step: attribution_step(model, base, corrupt, step, seed=seed, batch_size=batch_size,
                                               method=method, metric=metric, progress=progress), receivers, groups,
                 task_of(base).plan)


def triage(model, base, corrupt, *, receivers: dict[str, int] | None = None, sizes: dict[str, int] | None = None,
           margin: float = 3.0, minimum: int = 8, seed: int = 0, batch_size: int = 100, method: str = "hybrid",
           metric: str = "logodds", groups: Sequence[str] | None = None,
           progress: bool = True) -> Triage:
    """Path patching where only the heads attribution ranks highest are scored exactly.

    Per step, ``needed`` = the larger of the circuit size (``sizes``) and the next step's receiver count;
    the exact engine scores the ``max(minimum, ceil(margin * needed))`` heads with the most negative
    estimates. The exact top-k is recovered whenever it lies inside that candidate set.
    """
    k = {**DEFAULT_RECEIVERS, **(receivers or {})}
    sizes = sizes or {}
    estimates, verified = PathPatchingResult(), {}
    plan = task_of(base).plan
    following = {previous: group for group, _, previous, _ in plan if previous}

    def score(step: Step) -> StepResult:
        est = attribution_step(model, base, corrupt, step, seed=seed, batch_size=batch_size, method=method,
                               metric=metric, progress=progress)
        needed = max(sizes.get(step.group, 0), k.get(following.get(step.group), 0), 1)
        chosen = candidates(est, max(minimum, math.ceil(margin * needed)))
        exact = patch_step(model, base, corrupt, step, seed=seed, batch_size=batch_size, senders=chosen,
                           progress=progress)
        mask = torch.zeros_like(est.scores, dtype=torch.bool)
        mask[tuple(zip(*chosen))] = True
        estimates.steps[step.group] = est
        verified[step.group] = tuple(sorted(chosen))
        return StepResult(step, torch.where(mask, exact.scores, est.scores), exact.n_prompts, seed, verified=mask)

    return Triage(chain(score, receivers, groups, plan), estimates, verified)


def attribution_step(model, base, corrupt, step: Step, *, seed: int = 0, batch_size: int = 100,
                     method: str = "gradient", metric: str = "logodds", progress: bool = True,
                     max_rows: int = 4096) -> AttributionStep:
    """Estimated scores of every head as a sender for one step; a (layers, heads) matrix like ``patch_step``."""
    if method not in METHODS:
        raise MechtestError(f"unknown attribution method {method!r}; use one of {', '.join(METHODS)}")
    if metric not in METRICS:
        raise MechtestError(f"unknown attribution metric {metric!r}; use one of {', '.join(METRICS)}")
    validate(model, base, corrupt, step)
    p_start = positions(base, step.position)
    p_corr = corrupt_positions(corrupt, step.position, seed)
    totals = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
    reach = torch.zeros_like(totals) if method == "hybrid" and step.receivers else None
    n = len(base)
    starts = list(range(0, n, batch_size))
    for start in progress_bar(starts, f"attribution {step.group}" if progress else None, len(starts)):
        sl = slice(start, min(start + batch_size, n))
        ctx = BatchContext.build(model, base, corrupt, sl, p_start[sl], p_corr[sl], need_kv=True)
        scores, batch_reach = _batch_scores(model, ctx, step, method, metric, max_rows)
        totals += scores.sum(-1).double()
        if reach is not None:
            reach += batch_reach.sum(-1).double()
    return AttributionStep(step=step, scores=(totals / n).float(), n_prompts=n, seed=seed,
                           reach=None if reach is None else (reach / n).float())


def candidates(est: AttributionStep, n: int) -> list[tuple[int, int]]:
    """The n heads to verify: most negative estimates, interleaved with the largest reach when known."""
    by_score = est.top(est.scores.numel())
    if est.reach is None:
        return by_score[:n]
    order = torch.argsort(-est.reach.flatten(), stable=True)
    by_reach = [divmod(int(i), est.scores.shape[1]) for i in order]
    chosen: list = []
    for pair in zip(by_score, by_reach):
        for head in pair:
            if head not in chosen and len(chosen) < n:
                chosen.append(head)
    return chosen


# --- one batch -------------------------------------------------------------------------------------------

def _batch_scores(model, ctx: BatchContext, step: Step, method: str, metric: str, max_rows: int):
    """(layers, heads, batch) estimated scores of one batch, and the reach (hybrid with receivers) or None."""
    if method == "hybrid" and not step.receivers:  # run A alone is exact and cheap
        senders = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
        scores = fast_scores(model, ctx, step, senders, max_rows, 512 * 2**20)
        return scores.view(model.n_layers, model.n_heads, -1), None
    grads = _gradients(model, ctx, step, metric, wrt_sites=method == "hybrid")
    if method == "gradient":
        rows = torch.arange(ctx.ids.shape[0], device=ctx.ids.device)
        delta = torch.stack([(grads["z"][l] * (ctx.corrupt_at[l] - ctx.clean[l][rows, ctx.p_start])).sum(-1)
                             for l in range(model.n_layers)])       # (layers, b, heads)
        change, reach = delta.permute(0, 2, 1), None
    else:
        change, reach = _hybrid_change(model, ctx, step, grads, max_rows)
        reach = reach.cpu()
    return _to_score(change, grads["m0"], ctx.p_clean, metric).cpu(), reach


def _gradients(model, ctx: BatchContext, step: Step, metric: str, wrt_sites: bool) -> dict:
    """Derivatives of the metric at the clean point: w.r.t. every head output at P ("z", per layer
    (b, heads, dim)) or, with ``wrt_sites``, w.r.t. the receivers' q/v at P ("site", per layer
    (b, receivers, dim)); "m0" is the clean metric and "site0" the clean q/v at P."""
    b = ctx.ids.shape[0]
    rows = torch.arange(b, device=ctx.ids.device)
    p = ctx.p_start
    z = [ctx.clean[l][rows, p].clone().requires_grad_(not wrt_sites) for l in range(model.n_layers)]
    edits = {("head_out", l): constant(z[l][:, None]) for l in range(model.n_layers)}
    by_layer = receivers_by_layer(model, step)
    site_a: dict = {}
    for l in by_layer:
        edits[(step.receiver_site, l)] = _keep(site_a, l)
    with torch.enable_grad():
        with hooked(model, edits):  # run A at the clean point: the token at P alone, head outputs frozen
            out = model.hf(input_ids=ctx.ids[rows, p][:, None], position_ids=p[:, None], use_cache=False)
        if not step.receivers:
            m = _metric(out.logits[:, -1], ctx.answers, metric)
            return {"z": _grad(m, z), "m0": m.detach()}
        inject = {l: site_a[l][:, 0, heads] for l, heads in by_layer.items()}
        if wrt_sites:
            inject = {l: v.detach().requires_grad_(True) for l, v in inject.items()}
        b_edits = {(step.receiver_site, l): set_at(heads, p, inject[l]) for l, heads in by_layer.items()}
        with hooked(model, b_edits):  # run B: the receivers read run A's q/v at P
            logits = model.hf(input_ids=ctx.ids, use_cache=False).logits[rows, ctx.last]
        m = _metric(logits, ctx.answers, metric)
        layers = sorted(inject)
        if wrt_sites:
            grads = _grad(m, [inject[l] for l in layers])
            return {"site": dict(zip(layers, grads)), "m0": m.detach(),
                    "site0": {l: inject[l].detach() for l in layers}}
        return {"z": _grad(m, z), "m0": m.detach()}


def _grad(m: torch.Tensor, inputs: list) -> list:
    """d sum(m) / d input for each input; zeros for those that cannot reach m (layers above the receivers)."""
    if not m.requires_grad:  # e.g. every receiver in layer 0: no head output reaches them
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(m.sum(), inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _hybrid_change(model, ctx: BatchContext, step: Step, grads: dict, max_rows: int) -> torch.Tensor:
    """(layers, heads, b) metric change: run A exact for every sender, run B linear in the receivers' q/v;
    and the reach, the summed relative change of the receivers' q/v."""
    n_layers, n_heads, b = model.n_layers, model.n_heads, ctx.ids.shape[0]
    change = torch.zeros(n_layers * n_heads, b, device=ctx.ids.device)
    reach = torch.zeros_like(change)
    top = max(l for l, _ in step.receivers)
    senders = [(l, h) for l in range(top) for h in range(n_heads)]  # higher senders reach no receiver
    by_layer = receivers_by_layer(model, step)
    for p in torch.unique(ctx.p_start).tolist():
        ex = torch.nonzero(ctx.p_start == p).flatten()
        chunk = max(1, max_rows // len(ex))
        for s0 in range(0, len(senders), chunk):
            part = senders[s0:s0 + chunk]
            _, recorded = run_a(model, ctx, step, part, ex, p)
            total = torch.zeros(len(part), len(ex), device=ex.device)
            moved = torch.zeros_like(total)
            for l, heads in by_layer.items():
                if l not in recorded:  # below every sender of the part: clean
                    continue
                new = recorded[l][:, 0][:, heads].reshape(len(part), len(ex), len(heads), -1)
                clean = grads["site0"][l][ex][None]
                total += ((new - clean) * grads["site"][l][ex][None]).sum((-1, -2))
                moved += ((new - clean).norm(dim=-1) / clean.norm(dim=-1).clamp_min(1e-12)).sum(-1)
            idx = torch.tensor([l * n_heads + h for l, h in part], device=ex.device)
            change[idx[:, None], ex[None, :]] = total
            reach[idx[:, None], ex[None, :]] = moved
    return change.view(n_layers, n_heads, b), reach.view(n_layers, n_heads, b)


def _metric(logits: torch.Tensor, answers: torch.Tensor, metric: str) -> torch.Tensor:
    logits = logits.float()
    rows = torch.arange(len(answers), device=logits.device)
    if metric == "prob":
        return logits.softmax(-1)[rows, answers]
    others = logits.scatter(-1, answers[:, None], float("-inf"))
    return logits[rows, answers] - others.logsumexp(-1)


def _to_score(change: torch.Tensor, m0: torch.Tensor, p_clean: torch.Tensor, metric: str) -> torch.Tensor:
    """Estimated ``(p - p_clean) / p_clean`` from the linear change of the metric."""
    if metric == "prob":
        return change / p_clean
    return (torch.sigmoid(m0 + change) - p_clean) / p_clean


def _keep(store: dict, key):
    """Record an activation without detaching it (its gradient is wanted)."""

    def fn(x):
        store[key] = x

    return fn


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two score matrices (ties get their average rank), to judge estimates."""
    ra, rb = _ranks(a.flatten().double()), _ranks(b.flatten().double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else float("nan")


def _ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    for value in torch.unique(x):  # average rank within ties
        tie = x == value
        if int(tie.sum()) > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks
