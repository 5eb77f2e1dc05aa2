"""Claims: one ``[[claim]]`` table of a TOML file, parsed and validated without loading any weights.

A claim file is a list of tables::

    [[claim]]
    id        = "llama-circuit-faithfulness"
    metric    = "faithfulness"
    circuit   = "paper:llama"
    models    = ["llama", "vicuna"]
    ablation  = "mean"
    n_prompts = 500
    seed      = 0
    expect    = ">= 0.95"

Every problem (unknown metric or key, a field of the wrong type, a missing field, an ``expect`` outside the
grammar, an unknown circuit) is a :class:`~mechtest.errors.ClaimError` naming the file, the claim and the
field, raised while pytest collects, before any model is loaded. This module imports neither torch nor
transformers.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechtest.decision import DEFAULT_MAX_PROMPTS, DEFAULT_RULE, MAX_PROMPTS, POLICIES, RULES
from mechtest.errors import CircuitError, ClaimError, TaskError
from mechtest.metrics import REGISTRY, Field
from mechtest.spec import VERDICTS
from mechtest.tasks.base import DEFAULT_TASK
from mechtest.tasks.registry import get_task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_N_PROMPTS = 500

# fields every claim may have, whatever its metric
COMMON_FIELDS: dict[str, Field] = {
    "id": Field("string", required=True), "metric": Field("string", required=True),
    "models": Field("strings", required=True), "expect": Field("string"), "description": Field("string"),
    "n_prompts": Field("count", minimum=1, maximum=MAX_PROMPTS),
    "max_prompts": Field("int", minimum=1, maximum=MAX_PROMPTS),
    "seed": Field("int", minimum=0), "n_boxes": Field("int", minimum=2),
    "decide": Field("string", choices=RULES), "inconclusive": Field("string", choices=POLICIES),
    # prompts for circuit discovery (discovered:<model> circuits, verdicts), apart from the evaluation sample
    "discover_prompts": Field("int", minimum=1, maximum=MAX_PROMPTS),
    # the task whose prompts the claim measures (mechtest.tasks.registry); absent: entity tracking
    "task": Field("string"),
}

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CMP = re.compile(rf"^\s*(>=|<=|>|<)\s*({_NUMBER})\s*$")
_EQ = re.compile(rf"^\s*==\s*({_NUMBER})\s*(?:(?:±|\+/-|\+-)\s*({_NUMBER}))?\s*$")
_IN = re.compile(rf"^\s*in\s*\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]\s*$")
EXPECT_GRAMMAR = '">= x", "<= x", "> x", "< x", "== x ± t" or "in [a, b]"'


@dataclass(frozen=True)
class Expectation:
    """A parsed ``expect`` string: a numeric condition, a verdict, or "snapshot"."""

    text: str
    op: str  # ">=", "<=", ">", "<", "==", "in", "verdict", "snapshot"
    a: float = math.nan
    b: float = math.nan
    verdict: str = ""

    @classmethod
    def parse(cls, text: str, *, metric: str = "") -> Expectation:
        """Parse ``text`` for a metric (its registry entry says whether it expects a number, a verdict or a
        snapshot)."""
        expects = REGISTRY[metric].expects if metric in REGISTRY else "number"
        if expects == "verdict":
            word = " ".join(text.split()).lower()
            if word not in VERDICTS[:2]:
                raise ValueError(f'expect must be "preserved" or "not preserved" for a verdict, got {text!r}')
            return cls(text, "verdict", verdict=word)
        if expects == "snapshot":
            if text.strip().lower() != "snapshot":
                raise ValueError(f'a {metric} claim compares with its snapshot: expect must be "snapshot" '
                                 f"(or left out), got {text!r}")
            return cls(text, "snapshot")
        if m := _CMP.match(text):
            return cls(text.strip(), m.group(1), float(m.group(2)))
        if m := _EQ.match(text):
            tolerance = float(m.group(2) or 0.0)
            if tolerance < 0:
                raise ValueError(f"negative tolerance in {text!r}: write == x ± t with t >= 0")
            return cls(text.strip(), "==", float(m.group(1)), tolerance)
        if m := _IN.match(text):
            low, high = float(m.group(1)), float(m.group(2))
            if low > high:
                raise ValueError(f"empty interval in {text!r}: {low} > {high}")
            return cls(text.strip(), "in", low, high)
        raise ValueError(f"cannot parse {text!r}; use {EXPECT_GRAMMAR}")

    def check(self, value: float | str) -> bool:
        if self.op == "verdict":
            return str(value) == self.verdict
        if self.op == "snapshot":
            return value in ("matches", "updated")
        v = float(value)
        if math.isnan(v):
            return False
        return {
            ">=": lambda: v >= self.a, "<=": lambda: v <= self.a, ">": lambda: v > self.a,
            "<": lambda: v < self.a, "==": lambda: abs(v - self.a) <= self.b + 1e-12,
            "in": lambda: self.a <= v <= self.b,
        }[self.op]()

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Claim:
    """One validated claim; ``params`` holds the metric-specific fields."""

    id: str
    metric: str
    models: tuple[str, ...]
    expect: Expectation
    n_prompts: int | str  # "auto": sequential sampling up to max_prompts
    seed: int
    n_boxes: int | None
    path: Path
    description: str = ""
    decide: str = DEFAULT_RULE  # "ci" | "estimate" (mechtest.decision)
    inconclusive: str | None = None  # "fail" | "pass" | "xfail"; None: the run's default (fail)
    max_prompts: int = DEFAULT_MAX_PROMPTS
    params: dict[str, Any] = field(default_factory=dict, compare=False)

    def get(self, key: str, default=None):
        """The field's value, else the metric's ``Field.default`` for it, else ``default``."""
        if key in self.params:
            return self.params[key]
        spec = REGISTRY[self.metric].fields.get(key) if self.metric in REGISTRY else None
        return default if spec is None or spec.default is None else spec.default

    @property
    def task(self) -> str:
        """The claim's task (``task = "..."``; entity tracking when absent)."""
        return self.params.get("task", DEFAULT_TASK)

    def where(self) -> str:
        return f"{self.path}, claim {self.id!r}"


def load_claims(path: str | Path, *, rootdir: str | Path | None = None,
                circuit_dirs: tuple[str | Path, ...] = ()) -> list[Claim]:
    """Parse and validate every claim of a TOML file (ClaimError on the first problem, naming the file).

    With a ``rootdir`` (the plugin always gives one), circuit files must lie inside it, inside the claim
    file's folder or inside one of ``circuit_dirs`` (ini ``mechtest_circuit_dirs``; ``/`` allows any): a claim
    file must not read arbitrary JSON on the machine.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ClaimError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ClaimError(f"{path}: not valid UTF-8 (byte {e.start}): claim files are UTF-8 TOML") from None
    except RecursionError:
        raise ClaimError(f"{path}: not valid TOML: nested too deeply to parse") from None
    except OSError as e:
        raise ClaimError(f"{path}: cannot be read: {e.strerror or e}") from None
    unknown_top = set(data) - {"claim", "task"}
    if unknown_top:
        raise ClaimError(f"{path}: unknown top-level key(s) {sorted(unknown_top)}; claims go in [[claim]] tables")
    register_tasks(path, "task" in data)
    tables = data.get("claim", [])
    if not isinstance(tables, list):
        raise ClaimError(f"{path}: 'claim' must be an array of tables ([[claim]])")
    claims, seen = [], set()
    for index, table in enumerate(tables):
        if not isinstance(table, dict):
            raise ClaimError(f"{path}: 'claim' must be an array of tables ([[claim]])")
        claim = parse_claim(table, path, index=index, rootdir=rootdir, circuit_dirs=circuit_dirs)
        if claim.id in seen:
            raise ClaimError(f"{path}, claim {claim.id!r}: field 'id': duplicate id in this file")
        seen.add(claim.id)
        claims.append(claim)
    return claims


def parse_claim(table: dict, path: Path, *, index: int = 0, rootdir: str | Path | None = None,
                circuit_dirs: tuple[str | Path, ...] = ()) -> Claim:
    """One ``[[claim]]`` table -> a Claim, validated against the common fields and its metric's fields."""
    name = table.get("id") if isinstance(table.get("id"), str) else f"#{index + 1}"

    def fail(fieldname: str, message: str):
        raise ClaimError(f"{path}, claim {name!r}: field {fieldname!r}: {message}")

    for required in ("id", "metric", "models"):
        if required not in table:
            fail(required, "missing (every claim needs id, metric and models)")
    for key in ("id", "metric"):
        if problem := COMMON_FIELDS[key].check(key, table[key]):
            fail(key, problem)
    metric_name = table["metric"]
    if metric_name not in REGISTRY:
        fail("metric", f"unknown metric {metric_name!r}; known metrics: {', '.join(REGISTRY)}")
    metric = REGISTRY[metric_name]
    allowed = {**COMMON_FIELDS, **metric.fields}
    for key in table:
        if key not in allowed:
            fail(key, f"unknown key for metric {metric_name!r}; allowed keys: {', '.join(sorted(allowed))}")
    required = [k for k, f in metric.fields.items() if f.required]
    for key in required:
        if key not in table:
            fail(key, f"missing (metric {metric_name!r} needs {', '.join(required)})")
    if "expect" not in table and metric.expects != "snapshot":
        fail("expect", f"missing; use {EXPECT_GRAMMAR}" if metric.expects == "number"
             else 'missing; use "preserved" or "not preserved"')
    for key, spec in allowed.items():
        if key in table and (problem := spec.check(key, table[key])):
            fail(key, problem)

    if not table["id"].strip() or re.search(r"[\[\]:\s]", table["id"]):
        fail("id", f"{table['id']!r} must be non-empty, without spaces, brackets or colons")
    models = table["models"]
    if not models or not all(isinstance(m, str) and m for m in models):
        fail("models", f"must be a non-empty list of model names, got {models!r}")
    if len(set(models)) != len(models):
        fail("models", f"duplicate model names in {models!r}")
    try:
        expect = Expectation.parse(table.get("expect", "snapshot"), metric=metric_name)
    except ValueError as e:
        fail("expect", str(e))

    params = {k: v for k, v in table.items() if k not in COMMON_FIELDS or k in ("discover_prompts", "task")}
    if "task" in table:
        try:
            get_task(table["task"])
        except TaskError as e:
            fail("task", str(e))
    for key, spec in metric.fields.items():
        if spec.kind == "circuit" and key in params:
            try:
                params[key] = check_circuit_spec(params[key], path.parent, rootdir, circuit_dirs,
                                                 task=table.get("task", DEFAULT_TASK))
            except CircuitError as e:
                fail(key, str(e))
    metric.check(params, tuple(models), fail)
    if "max_prompts" in table and table.get("n_prompts") != "auto":
        fail("max_prompts", 'only applies with n_prompts = "auto" (sequential sampling)')
    return Claim(id=table["id"], metric=metric_name, models=tuple(models), expect=expect,
                 n_prompts=table.get("n_prompts", DEFAULT_N_PROMPTS), seed=table.get("seed", 0),
                 n_boxes=table.get("n_boxes"), path=path, description=table.get("description", ""), params=params,
                 decide=table.get("decide", metric.default_decide), inconclusive=table.get("inconclusive"),
                 max_prompts=table.get("max_prompts", DEFAULT_MAX_PROMPTS))


def register_tasks(path: Path, here: bool) -> None:
    """Register the tasks a claim file may name: every ``*.task.toml`` of its folder and its own ``[[task]]``
    tables (README, "Write a task"); a malformed task is a ClaimError naming the file."""
    from mechtest.tasks.registry import register_task, register_task_file
    from mechtest.tasks.template import parse_tasks

    try:
        for task_file in sorted(path.parent.glob("*.task.toml")):
            register_task_file(task_file)
        if here:
            for task in parse_tasks(path.read_text(encoding="utf-8"), str(path), path.parent):
                register_task(task)
    except TaskError as e:
        raise ClaimError(f"{path}: {e}") from None


def check_circuit_spec(spec: str, here: Path | None = None, rootdir: str | Path | None = None,
                       circuit_dirs: tuple[str | Path, ...] = (), task: str = DEFAULT_TASK) -> str:
    """Validate a circuit reference without loading a model; returns it with file paths made absolute.

    ``paper:llama|goat|float``, ``discovered:<model>``, or a JSON file (relative to the claim file, then the
    rootdir). The file is parsed, so a malformed circuit fails at collection too. With a ``rootdir``, a file
    outside the rootdir, the claim file's folder and ``circuit_dirs`` is refused (symlinks resolved).
    """
    from mechtest.methods.circuits import PAPER_CIRCUITS, load_circuit

    if spec.startswith("paper:"):
        if spec.split(":", 1)[1] not in PAPER_CIRCUITS:
            raise CircuitError(f"unknown paper circuit {spec!r}; use one of "
                               f"{', '.join('paper:' + p for p in PAPER_CIRCUITS)}")
        load_circuit(spec).for_task(task)
        return spec
    if spec.startswith("discovered:"):
        if not spec.split(":", 1)[1]:
            raise CircuitError("discovered:<model> needs a model name")
        return spec
    candidates = [Path(spec)] if Path(spec).is_absolute() else [
        base / spec for base in (here, Path(rootdir) if rootdir else None, Path.cwd()) if base is not None]
    for candidate in candidates:
        if candidate.is_file():
            resolved = candidate.resolve()
            allowed = [Path(d).resolve() for d in (here, rootdir, *circuit_dirs) if d is not None]
            if rootdir is not None and not any(resolved.is_relative_to(d) for d in allowed):
                raise CircuitError(
                    f"circuit file {spec!r} lies outside the rootdir and the claim file's folder; to read circuits "
                    "from elsewhere, list their folder in the ini option mechtest_circuit_dirs ('/' allows any)")
            load_circuit(resolved).for_task(task)  # a malformed file or another task's circuit: CircuitError
            return str(resolved)
    raise CircuitError(f"unknown circuit {spec!r}: not paper:llama|goat|float, not discovered:<model>, and no "
                       f"such file (looked in {', '.join(str(c.parent) for c in candidates)})")
