"""Circuits: groups of (layer, head) nodes, in the paper's JSON format (``{group: [[layer, head], ...]}``).

A node is a head acting at its group's position class (spec 0.2): for entity tracking, value fetcher and
position transmitter at the last token, position detector at the query label, structure reader at the
context occurrence of the query label; another task names its own groups and positions, and a circuit file
records its task under ``"task"`` (absent: entity tracking). The same head may sit in several groups. A circuit read from a file, a dict, the API or a
discovery must hold at least one head: an empty one measures 0 and passes every ``<=`` claim, testing nothing.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mechtest.errors import CircuitError, TaskError
from mechtest.spec import GROUP_POSITION, GROUPS  # noqa: F401  (entity tracking's, re-exported)
from mechtest.tasks.base import DEFAULT_TASK
from mechtest.tasks.registry import get_task, task_of

PAPER_CIRCUITS = ("llama", "goat", "float")
SHAPE_KEY = "found_on"  # {"n_layers": L, "n_heads": H, "model_type": "llama"}: where the circuit was found
TASK_KEY = "task"  # the task the circuit was found on; absent: entity tracking

Head = tuple[int, int]


@dataclass(frozen=True)
class Circuit:
    """Heads per group; immutable, ordered as the groups of the paper."""

    groups: Mapping[str, tuple[Head, ...]]
    name: str = ""
    # the (layers, heads, model type) of the model it was found on; None: unknown, checked by index only
    found_on: tuple[int, int, str] | None = None
    task: str = DEFAULT_TASK

    @property
    def group_names(self) -> tuple[str, ...]:
        """The circuit's task's groups, in discovery order."""
        return get_task(self.task).groups

    @classmethod
    def from_dict(cls, data: Mapping, name: str = "") -> Circuit:
        """A circuit from its JSON form; a malformed one is a CircuitError that names the problem by shape
        only, never echoing the data (a circuit path may name any file)."""
        if not isinstance(data, Mapping):
            raise CircuitError(f"circuit {name!r} must be a JSON object of group -> [[layer, head], ...], "
                               f"not {_kind(data)}")
        found_on = None
        if SHAPE_KEY in data:
            shape = data[SHAPE_KEY]
            try:
                found_on = (int(shape["n_layers"]), int(shape["n_heads"]), str(shape.get("model_type", "")))
            except (TypeError, KeyError, ValueError):
                raise CircuitError(f"circuit {name!r}: {SHAPE_KEY!r} must be {{\"n_layers\": L, \"n_heads\": H, "
                                   f"\"model_type\": T}}, not {_kind(shape)}") from None
            data = {k: v for k, v in data.items() if k != SHAPE_KEY}
        task = data.get(TASK_KEY, DEFAULT_TASK)
        try:
            names = get_task(task if isinstance(task, str) else "").groups
        except TaskError:
            raise CircuitError(f"circuit {name!r}: {TASK_KEY!r} names no registered task") from None
        data = {k: v for k, v in data.items() if k != TASK_KEY}
        unknown = set(data) - set(names)
        if unknown:
            raise CircuitError(f"circuit {name!r}: {len(unknown)} unknown group(s) (names not shown); groups of "
                               f"task {task!r} are {', '.join(names)}")
        groups = {}
        for group in names:
            nodes = data.get(group, [])
            if not isinstance(nodes, (list, tuple)):
                raise CircuitError(f"circuit {name!r}, group {group!r}: {_kind(nodes)}, not a list of [layer, head]")
            heads = []
            for i, node in enumerate(nodes):
                if (not isinstance(node, (list, tuple)) or len(node) != 2
                        or not all(isinstance(x, int) and not isinstance(x, bool) for x in node)):
                    raise CircuitError(f"circuit {name!r}, group {group!r}: node #{i + 1} ({_kind(node)}) is not "
                                       "[layer, head]")
                heads.append((int(node[0]), int(node[1])))
            groups[group] = tuple(heads)
        return cls(groups, name, found_on, task).require_heads()

    def require_heads(self, why: str = "") -> Circuit:
        """The circuit itself, or a CircuitError when no group holds a head (``why`` says how it came to be)."""
        if not len(self):
            raise CircuitError(f"circuit {self.name!r} has no heads (every group is empty){why}: a circuit of "
                               "nothing measures nothing; name at least one head")
        return self

    def to_dict(self) -> dict:
        data: dict = {g: [list(h) for h in self.groups.get(g, ())] for g in self.group_names}
        if self.task != DEFAULT_TASK:
            data[TASK_KEY] = self.task
        if self.found_on is not None:
            data[SHAPE_KEY] = {"n_layers": self.found_on[0], "n_heads": self.found_on[1],
                               "model_type": self.found_on[2]}
        return data

    def found_in(self, model) -> Circuit:
        """The same circuit, recording ``model``'s shape as where it was found."""
        return Circuit(self.groups, self.name, (model.n_layers, model.n_heads, model.arch.name), self.task)

    def any_shape(self) -> Circuit:
        """The same circuit without its recorded shape: applied to any model by index (a deliberate choice)."""
        return Circuit(self.groups, self.name, task=self.task)

    def for_task(self, task: str) -> Circuit:
        """The circuit itself, or a CircuitError when it was found on another task than ``task``."""
        if self.task != task:
            raise CircuitError(f"circuit {self.name!r} was found on task {self.task!r}; it cannot be applied to a "
                               f"claim of task {task!r} (its groups act at that task's positions)")
        return self

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()) + "\n")

    def heads(self, group: str) -> tuple[Head, ...]:
        return self.groups.get(group, ())

    @property
    def nodes(self) -> list[tuple[str, int, int]]:
        return [(g, l, h) for g in self.group_names for l, h in self.heads(g)]

    @property
    def sizes(self) -> dict[str, int]:
        return {g: len(self.heads(g)) for g in self.group_names}

    def __len__(self) -> int:
        return len(self.nodes)

    def at_position(self, position: str) -> set[Head]:
        """Heads kept at a position class of the circuit's task ("last", "query_label", ...)."""
        where = get_task(self.task).group_position
        return {h for g in self.group_names if where[g] == position for h in self.heads(g)}

    def without(self, nodes: Iterable[tuple[str, int, int]]) -> Circuit:
        drop = set(nodes)
        return Circuit({g: tuple(h for h in self.heads(g) if (g, *h) not in drop) for g in self.group_names},
                       self.name, self.found_on, self.task)

    def check(self, model) -> None:
        """Raise a clear error if the circuit was found on another shape, or a node is outside the model."""
        if self.found_on is not None:
            layers, heads, model_type = self.found_on
            here = (model.n_layers, model.n_heads, model.arch.name)
            if (layers, heads) != here[:2] or (model_type and model_type != here[2]):
                raise CircuitError(
                    f"circuit {self.name!r} was found on a {model_type or '?'} model with {layers} layers x {heads} "
                    f"heads; {model.name!r} is a {here[2]} model with {here[0]} layers x {here[1]} heads. Heads "
                    "are matched by index, so this is almost surely a mistake; set any_shape = true in the claim "
                    "(or use circuit.any_shape()) to apply it anyway")
        for g, l, h in self.nodes:
            if not (0 <= l < model.n_layers and 0 <= h < model.n_heads):
                raise CircuitError(
                    f"circuit {self.name!r} does not fit {model.name!r}: node ({l}, {h}) of group {g!r} is "
                    f"outside its {model.n_layers} layers x {model.n_heads} heads"
                )

    def __repr__(self) -> str:
        sizes = "/".join(str(n) for n in self.sizes.values())
        return f"Circuit({self.name!r}, {len(self)} nodes: {sizes})"


def load_circuit(spec: str | Path | Circuit | Mapping) -> Circuit:
    """``paper:llama|goat|float``, a path to a JSON file, a dict or a Circuit."""
    if isinstance(spec, Circuit):
        return spec.require_heads()
    if isinstance(spec, Mapping):
        return Circuit.from_dict(spec)
    text = str(spec)
    if text.startswith("paper:"):
        which = text.split(":", 1)[1]
        if which not in PAPER_CIRCUITS:
            raise CircuitError(f"unknown paper circuit {text!r}; use one of "
                               f"{', '.join('paper:' + p for p in PAPER_CIRCUITS)}")
        data = resources.files("mechtest.data").joinpath(f"circuits/{which}.json").read_text()
        return Circuit.from_dict(json.loads(data), text)
    path = Path(text)
    if not path.is_file():
        raise CircuitError(f"circuit file not found: {text}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError, JSONDecodeError: positions, never content
        where = f" at line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else \
            ": not UTF-8 text" if isinstance(e, UnicodeDecodeError) else ": nested too deeply"
        raise CircuitError(f"circuit file {text} is not valid JSON{where}") from None
    return Circuit.from_dict(data, path.stem)


def _kind(value) -> str:
    """What a value is, by shape only (a circuit file may be any file: its content is never echoed)."""
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, Mapping):
        return f"an object of {len(value)} key{'s' if len(value) != 1 else ''}"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(type(value), "null")


def random_circuit(like: Circuit, n_layers: int, n_heads: int, seed: int = 0) -> Circuit:
    """Same number of heads per group, drawn uniformly without replacement within each group.

    The paper drew with replacement and mapped flat indices with the layer count (spec Q10); this
    follows its intent: distinct heads, ``divmod`` by the head count.
    """
    rng = random.Random(seed)
    total = n_layers * n_heads
    groups = {}
    for g in like.group_names:
        k = len(like.heads(g))
        if k > total:
            raise CircuitError(f"group {g!r} has {k} heads, more than the model's {total}")
        groups[g] = tuple(divmod(i, n_heads) for i in sorted(rng.sample(range(total), k)))
    return Circuit(groups, f"random({like.name}, seed={seed})", like.found_on, like.task)


def candidate_circuit(scores: Mapping[str, object], sizes: Mapping[str, int], task: str = DEFAULT_TASK) -> Circuit:
    """Spec 4.5: top-k heads of each step's score matrix; a head in the top-k of two chained steps at one
    position (entity tracking: value fetcher and position transmitter) stays in the later step's group only.

    ``scores`` maps group -> a path-patching ``StepResult``; ``sizes`` group -> k. Only heads with a negative
    score (patching them lowers the answer's probability) are candidates: when no head has any effect (e.g.
    every receiver sits in layer 0, so no sender is below it) the group stays empty instead of being filled
    by head order with heads that mean nothing.
    """
    spec = get_task(task)
    groups = {g: tuple(h for h in scores[g].top(sizes[g]) if float(scores[g].scores[h]) < 0)
              for g in spec.groups if g in scores and sizes.get(g)}
    where = spec.group_position
    for step in spec.step_plan:
        if step.previous in groups and step.group in groups and where[step.previous] == step.position:
            later = set(groups[step.group])
            groups[step.previous] = tuple(h for h in groups[step.previous] if h not in later)
    return Circuit({g: groups.get(g, ()) for g in spec.groups}, "candidate", task=task)


def node_positions(dataset, group: str):
    """Where a node of ``group`` acts in every row: its group's position class in the prompts' task."""
    task = task_of(dataset)
    if group not in task.group_position:
        raise CircuitError(f"group {group!r} is not a group of task {task.name!r} ({', '.join(task.groups)})")
    return task.position(dataset, task.group_position[group])
