"""What a task is: the one interface every method reaches a task through (torch-free).

A task says which prompts it asks (a seeded dataset for a tokenizer, with answer ids and named token
positions), how they are corrupted (path patching's counterfactual, mean ablation's reference set), which
circuit groups act at which position, and the path-patching step plan that finds them. The paper's methods
(path patching, discovery, faithfulness, the gate) are the same for every task; only this object differs.
Entity tracking (:mod:`mechtest.tasks.entity_task`) and IOI are tasks; a user registers more with
:func:`mechtest.tasks.registry.register_task`.
"""

from __future__ import annotations

from typing import ClassVar

from mechtest.errors import TaskError
from mechtest.spec import PlannedStep

DEFAULT_TASK = "entity_tracking"


class Task:
    """Base class of a task. Subclasses set the class attributes and implement the three dataset builders.

    A dataset is any object with ``input_ids``, ``attention_mask``, ``answer_ids``, ``last_pos``, a
    ``<position>_pos`` tensor per position class, ``prompts``, ``n_boxes``, ``seed``, ``task`` (the task's
    name), ``len()`` and row indexing.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    groups: ClassVar[tuple[str, ...]] = ()        # the circuit's groups, in discovery order
    positions: ClassVar[tuple[str, ...]] = ()     # the position classes groups act at
    step_plan: ClassVar[tuple[PlannedStep, ...]] = ()
    # discovery sizes at ``reference_heads`` heads, scaled to a model's head count (at least one per group)
    candidates: ClassVar[dict[str, int]] = {}
    receivers: ClassVar[dict[str, int]] = {}
    reference_heads: ClassVar[int] = 1024
    uses_boxes: ClassVar[bool] = False            # whether ``n_boxes`` shapes the prompts
    version: ClassVar[str] = "1"                  # bump when the prompts change: cached results are keyed on it

    @property
    def group_position(self) -> dict[str, str]:
        return {s.group: s.position for s in self.step_plan}

    @property
    def plan(self) -> tuple[tuple, ...]:
        return tuple((s.group, s.position, s.previous, s.receiver_site) for s in self.step_plan)

    def identity(self) -> str:
        """What a cached result of this task depends on besides the prompts' tokens (name and version)."""
        return f"{self.name}@{self.version}"

    # ----------------------------------------------------------------------------------- datasets

    def dataset(self, tokenizer, n: int, *, n_boxes: int = 7, seed: int = 0):
        """``n`` evaluation prompts for ``tokenizer``, reproducible from ``seed``."""
        raise NotImplementedError

    def reference(self, tokenizer, n: int, *, n_boxes: int = 7, seed: int = 0):
        """The mean-ablation reference prompts (their head outputs are the ablation values)."""
        raise NotImplementedError

    def corruption(self, base, tokenizer, *, seed: int = 0):
        """Path patching's counterfactual: one corrupt row per row of ``base``, same token layout, scored on
        ``base``'s answers."""
        raise NotImplementedError

    def position(self, dataset, position: str):
        """The token position of class ``position`` in every row of ``dataset``."""
        tensor = getattr(dataset, f"{position}_pos", None) if position in (*self.positions, "last") else None
        if tensor is None:
            raise TaskError(f"unknown position class {position!r} for task {self.name!r}; use one of "
                            f"{', '.join(self.positions)}")
        return tensor.clone()

    def corrupt_position(self, corrupt, position: str, seed: int):
        """Where a sender is read in the corrupt run (the same named position by default)."""
        return self.position(corrupt, position)

    def chance(self, n_boxes: int) -> float:
        """The accuracy of guessing among the prompt's candidate answers (the gate's floor)."""
        raise NotImplementedError

    def check_vocabulary(self, tokenizer) -> None:
        """Raise a one-line error naming the task, slot and word if a word is not one known token."""

    def strategy(self, tokenizer, **kwargs):
        """Hypothesis strategy of one-prompt datasets (optional)."""
        raise TaskError(f"task {self.name!r} has no Hypothesis strategies")

    def desiderata(self, *args, **kwargs):
        """DCM's counterfactual pairs (optional)."""
        raise TaskError(f"task {self.name!r} defines no DCM desiderata")

    def check(self) -> None:
        """Raise a TaskError if the task's declaration is inconsistent (checked at registration)."""
        if not self.name or not isinstance(self.name, str):
            raise TaskError(f"{type(self).__name__}: a task needs a non-empty string name")
        if not self.step_plan:
            raise TaskError(f"task {self.name!r}: no path-patching step plan")
        seen: set[str] = set()
        for step in self.step_plan:
            where = f"task {self.name!r}, step {step.group!r}"
            if step.group not in self.groups:
                raise TaskError(f"{where}: group not among the task's groups {list(self.groups)}")
            if step.position not in self.positions:
                raise TaskError(f"{where}: position {step.position!r} not among {list(self.positions)}")
            if (step.previous is None) != (step.receiver_site is None):
                raise TaskError(f"{where}: a receiving group and a receiver site go together")
            if step.previous is not None and step.previous not in seen:
                raise TaskError(f"{where}: its receivers {step.previous!r} come from no earlier step")
            if step.receiver_site not in (None, "q", "v"):
                raise TaskError(f"{where}: receiver site must be 'q' or 'v', not {step.receiver_site!r}")
            seen.add(step.group)
        if set(self.groups) != seen:
            raise TaskError(f"task {self.name!r}: groups {sorted(set(self.groups) - seen)} have no step")


def scaled(counts: dict[str, int], n_heads_total: int, reference_heads: int) -> dict[str, int]:
    """Counts given for a model of ``reference_heads`` heads, scaled to ``n_heads_total``, at least 1 each."""
    return {g: max(1, round(k * n_heads_total / reference_heads)) for g, k in counts.items()}
