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

from mechtest import spec
from mechtest.errors import CircuitError, ClaimError
from mechtest.spec import GROUPS, KNOCKOUT_EDGES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DESIDERATA = spec.DESIDERATA + spec.ADDITIONAL_DESIDERATA
DCM_QUANTITIES = ("accuracy", "selected_fraction")
VERDICTS = ("preserved", "not preserved")

# field -> (python types, description used in errors)
_INT = ((int,), "an integer")
_NUM = ((int, float), "a number")
_STR = ((str,), "a string")
_STRLIST = ((list,), "a list of strings")
_TABLE = ((dict,), "a table")

COMMON_FIELDS = {
    "id": _STR, "metric": _STR, "models": _STRLIST, "expect": _STR, "description": _STR,
    "n_prompts": _INT, "seed": _INT, "n_boxes": _INT,
}
# metric -> (required metric-specific fields, optional metric-specific fields)
METRICS: dict[str, tuple[dict, dict]] = {
    "accuracy": ({}, {"circuit": _STR, "ablation": _STR}),
    "faithfulness": ({"circuit": _STR}, {"ablation": _STR}),
    "completeness": ({"circuit": _STR}, {"ablation": _STR, "mode": _STR, "n_draws": _INT}),
    "random_circuit_faithfulness": ({"circuit": _STR}, {"ablation": _STR, "n_draws": _INT}),
    "path_patching": ({}, {"group": _STR, "receivers": _TABLE, "circuit": _STR, "rtol": _NUM, "atol": _NUM,
                           "tolerance": _NUM}),
    "dcm": ({"circuit": _STR, "group": _STR, "desideratum": _STR}, {"quantity": _STR}),
    "cmap_accuracy": ({"source": _STR}, {"circuit": _STR, "group": _STR}),
    "knockout_accuracy": ({}, {"layer": _INT, "edge": _STR}),
    "verdict": ({"base": _STR}, {}),
}
DEFAULT_N_PROMPTS = 500

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
        if metric == "verdict":
            word = " ".join(text.split()).lower()
            if word not in VERDICTS:
                raise ValueError(f'expect must be "preserved" or "not preserved" for a verdict, got {text!r}')
            return cls(text, "verdict", verdict=word)
        if metric == "path_patching":
            if text.strip().lower() != "snapshot":
                raise ValueError(f'a path_patching claim compares with its snapshot: expect must be "snapshot" '
                                 f"(or left out), got {text!r}")
            return cls(text, "snapshot")
        if m := _CMP.match(text):
            return cls(text.strip(), m.group(1), float(m.group(2)))
        if m := _EQ.match(text):
            return cls(text.strip(), "==", float(m.group(1)), float(m.group(2) or 0.0))
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
            return bool(value)
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
    n_prompts: int
    seed: int
    n_boxes: int | None
    path: Path
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict, compare=False)

    def get(self, key: str, default=None):
        return self.params.get(key, default)

    def where(self) -> str:
        return f"{self.path}, claim {self.id!r}"


def load_claims(path: str | Path, *, rootdir: str | Path | None = None) -> list[Claim]:
    """Parse and validate every claim of a TOML file (ClaimError on the first problem)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ClaimError(f"{path}: not valid TOML: {e}") from None
    unknown_top = set(data) - {"claim"}
    if unknown_top:
        raise ClaimError(f"{path}: unknown top-level key(s) {sorted(unknown_top)}; claims go in [[claim]] tables")
    tables = data.get("claim", [])
    if not isinstance(tables, list):
        raise ClaimError(f"{path}: 'claim' must be an array of tables ([[claim]])")
    claims, seen = [], set()
    for index, table in enumerate(tables):
        claim = parse_claim(table, path, index=index, rootdir=rootdir)
        if claim.id in seen:
            raise ClaimError(f"{path}, claim {claim.id!r}: field 'id': duplicate id in this file")
        seen.add(claim.id)
        claims.append(claim)
    return claims


def parse_claim(table: dict, path: Path, *, index: int = 0, rootdir: str | Path | None = None) -> Claim:
    name = table.get("id") if isinstance(table.get("id"), str) else f"#{index + 1}"

    def fail(fieldname: str, message: str):
        raise ClaimError(f"{path}, claim {name!r}: field {fieldname!r}: {message}")

    for required in ("id", "metric", "models"):
        if required not in table:
            fail(required, "missing (every claim needs id, metric and models)")
    _check_type(table, "id", _STR, fail)
    _check_type(table, "metric", _STR, fail)
    metric = table["metric"]
    if metric not in METRICS:
        fail("metric", f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
    required, optional = METRICS[metric]
    allowed = {**COMMON_FIELDS, **required, **optional}
    for key in table:
        if key not in allowed:
            fail(key, f"unknown key for metric {metric!r}; allowed keys: {', '.join(sorted(allowed))}")
    for key in required:
        if key not in table:
            fail(key, f"missing (metric {metric!r} needs {', '.join(required)})")
    if "expect" not in table and metric != "path_patching":
        fail("expect", f"missing; use {EXPECT_GRAMMAR}" if metric != "verdict"
             else 'missing; use "preserved" or "not preserved"')
    for key, spec in allowed.items():
        if key in table:
            _check_type(table, key, spec, fail)

    if not table["id"].strip() or re.search(r"[\[\]:\s]", table["id"]):
        fail("id", f"{table['id']!r} must be non-empty, without spaces, brackets or colons")
    models = table["models"]
    if not models or not all(isinstance(m, str) and m for m in models):
        fail("models", f"must be a non-empty list of model names, got {models!r}")
    if len(set(models)) != len(models):
        fail("models", f"duplicate model names in {models!r}")
    try:
        expect = Expectation.parse(table.get("expect", "snapshot"), metric=metric)
    except ValueError as e:
        fail("expect", str(e))
    n_prompts = table.get("n_prompts", DEFAULT_N_PROMPTS)
    if n_prompts < 1:
        fail("n_prompts", f"must be >= 1, got {n_prompts}")
    if table.get("n_boxes") is not None and table["n_boxes"] < 2:
        fail("n_boxes", f"must be >= 2, got {table['n_boxes']}")

    params = {k: v for k, v in table.items() if k not in COMMON_FIELDS}
    if params.get("ablation", "mean") != "mean":
        fail("ablation", f"only 'mean' ablation is implemented, got {params['ablation']!r}")
    if "circuit" in params:
        try:
            params["circuit"] = check_circuit_spec(params["circuit"], path.parent, rootdir)
        except CircuitError as e:
            fail("circuit", str(e))
    if "group" in params:
        allowed_groups = GROUPS + (("full",) if metric == "cmap_accuracy" else ())
        if params["group"] not in allowed_groups:
            fail("group", f"unknown group {params['group']!r}; use one of {', '.join(allowed_groups)}")
    if metric == "dcm" and params["desideratum"] not in DESIDERATA:
        fail("desideratum", f"unknown desideratum {params['desideratum']!r}; use one of {', '.join(DESIDERATA)}")
    if metric == "dcm" and params.get("quantity", "accuracy") not in DCM_QUANTITIES:
        fail("quantity", f"must be one of {', '.join(DCM_QUANTITIES)}, got {params['quantity']!r}")
    if metric == "knockout_accuracy" and params.get("edge", "last->object") not in KNOCKOUT_EDGES:
        fail("edge", f"unknown edge {params['edge']!r}; use one of {', '.join(KNOCKOUT_EDGES)}")
    if metric == "knockout_accuracy" and params.get("layer", 0) < 0:
        fail("layer", f"must be >= 0, got {params['layer']}")
    if metric == "completeness" and params.get("mode", "random") not in ("random", "group"):
        fail("mode", f"must be 'random' or 'group', got {params['mode']!r}")
    if "n_draws" in params and params["n_draws"] < 1:
        fail("n_draws", f"must be >= 1, got {params['n_draws']}")
    for key in ("rtol", "atol", "tolerance"):
        if key in params and params[key] < 0:
            fail(key, f"must be >= 0, got {params[key]}")
    if "receivers" in params:
        for group, k in params["receivers"].items():
            if group not in GROUPS[1:] or not isinstance(k, int) or isinstance(k, bool) or k < 1:
                fail("receivers", f"entries are {', '.join(GROUPS[1:])} = positive integer, got {group} = {k!r}")
    for key in ("base", "source"):
        if key in params and not params[key]:
            fail(key, "must name a model")
    if metric == "cmap_accuracy" and params["source"] in models:
        fail("source", f"the source model {params['source']!r} is also one of the claim's models")
    if metric == "verdict" and params["base"] in models:
        fail("base", f"the base model {params['base']!r} is also one of the candidate models")
    return Claim(id=table["id"], metric=metric, models=tuple(models), expect=expect, n_prompts=n_prompts,
                 seed=table.get("seed", 0), n_boxes=table.get("n_boxes"), path=path,
                 description=table.get("description", ""), params=params)


def check_circuit_spec(spec: str, here: Path | None = None, rootdir: str | Path | None = None) -> str:
    """Validate a circuit reference without loading a model; returns it with file paths made absolute.

    ``paper:llama|goat|float``, ``discovered:<model>``, or a JSON file (relative to the claim file, then the
    rootdir). The file is parsed, so a malformed circuit fails at collection too.
    """
    from mechtest.methods.circuits import PAPER_CIRCUITS, load_circuit

    if spec.startswith("paper:"):
        if spec.split(":", 1)[1] not in PAPER_CIRCUITS:
            raise CircuitError(f"unknown paper circuit {spec!r}; use one of "
                               f"{', '.join('paper:' + p for p in PAPER_CIRCUITS)}")
        return spec
    if spec.startswith("discovered:"):
        if not spec.split(":", 1)[1]:
            raise CircuitError("discovered:<model> needs a model name")
        return spec
    candidates = [Path(spec)] if Path(spec).is_absolute() else [
        base / spec for base in (here, Path(rootdir) if rootdir else None, Path.cwd()) if base is not None]
    for candidate in candidates:
        if candidate.is_file():
            load_circuit(candidate)  # raises CircuitError on a malformed file
            return str(candidate.resolve())
    raise CircuitError(f"unknown circuit {spec!r}: not paper:llama|goat|float, not discovered:<model>, and no "
                       f"such file (looked in {', '.join(str(c.parent) for c in candidates)})")


def _check_type(table: dict, key: str, spec, fail) -> None:
    types, what = spec
    value = table[key]
    ok = isinstance(value, types) and not isinstance(value, bool)
    if ok and types == (list,):
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        fail(key, f"must be {what}, got {type(value).__name__} {value!r}")
