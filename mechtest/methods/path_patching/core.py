"""Path patching's core types and helpers: steps, score matrices, positions, and the chaining of steps.

Every engine (fast, naive reference, attribution, the cache's rebuild) goes through :func:`chain`, so the rule
"each step's receivers are the previous step's top-k heads" (spec 4.4) is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mechtest.errors import MechtestError
from mechtest.heads import check_heads, n_heads_at
from mechtest.spec import PAPER_RECEIVERS, STEP_PLAN
from mechtest.tasks.registry import task_of

# Spec 4.4: the paper's Llama receiver counts are the defaults.
DEFAULT_RECEIVERS = PAPER_RECEIVERS
# entity tracking's (group, sender/receiver position, group whose top-k are the receivers, receiver site);
# a task's own is ``task.plan``
PLAN = tuple((p.group, p.position, p.previous, p.receiver_site) for p in STEP_PLAN)


@dataclass(frozen=True)
class Step:
    """One path-patching step: where senders are patched and which receivers (if any) read them."""

    group: str
    position: str  # a position class of the task ("last", "query_label", ...); receivers read at the same one
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


def chain(score_step: Callable[[Step], StepResult], receivers: dict[str, int] | None = None,
          groups: Sequence[str] | None = None, plan: Sequence[tuple] = PLAN) -> PathPatchingResult:
    """Run a task's step ``plan`` (default: entity tracking's, spec 4.4) in order through ``score_step``; each
    step's receivers are the previous step's top-k heads (``receivers[group]`` of them)."""
    k = {**DEFAULT_RECEIVERS, **(receivers or {})}
    result = PathPatchingResult()
    for group, position, previous, site in plan:
        if groups is not None and group not in groups:
            continue
        recv: tuple = ()
        if previous is not None:
            if previous not in result.steps:
                raise MechtestError(f"path-patching step {group!r} needs the scores of step {previous!r}")
            recv = tuple(result.steps[previous].top(k.get(group, 1)))
        result.steps[group] = score_step(Step(group, position, recv, site))
    return result


def positions(dataset, position: str) -> torch.Tensor:
    """The token position of class ``position`` in every row (the dataset's task knows its classes)."""
    return task_of(dataset).position(dataset, position)


def corrupt_positions(corrupt, position: str, seed: int) -> torch.Tensor:
    """P_corr of spec 4.3: where senders are read in the corrupt run (the task's rule)."""
    return task_of(corrupt).corrupt_position(corrupt, position, seed)


def validate(model, base, corrupt, step: Step) -> None:
    if len(base) != len(corrupt):
        raise MechtestError(f"base and corrupt prompt sets differ in size: {len(base)} vs {len(corrupt)}")
    if base.input_ids.shape != corrupt.input_ids.shape:
        raise MechtestError("base and corrupt prompts must share one token layout (same length)")
    if not bool(base.attention_mask.bool().all()):
        raise MechtestError("path patching needs unpadded prompts of one layout")
    positions(base, step.position)
    if step.receivers:
        if step.receiver_site not in ("q", "v"):
            raise MechtestError(f"receiver site must be 'q' or 'v', not {step.receiver_site!r}")
        check_heads(model, step.receivers)
        n_heads_at(model, step.receiver_site)
