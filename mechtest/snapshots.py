"""Head-level snapshots: score matrices and circuits stored as readable JSON, compared with rtol/atol.

syrupy compares snapshots for equality only; head scores are floats that move in the last digits across
machines and library versions. :class:`HeadSnapshotExtension` subclasses syrupy's single-file JSON extension
and overrides ``serialize`` (shape + rounded values, one matrix row per line) and ``matches`` (numbers within
``atol + rtol * |expected|``, everything else exact). A mismatch names how many entries differ, the largest
absolute and relative errors and the (layer, head) entries that moved most.

In a hand-written test::

    def test_scores(mechtest, head_snapshot):
        assert mechtest.path_patching("zoo-planted") == head_snapshot

``head_snapshot`` is ``snapshot.use_extension(HeadSnapshotExtension)``; for other tolerances use
``snapshot.use_extension(HeadSnapshotExtension.with_tolerance(rtol=0.05, atol=1e-3))``. Path-patching claims of
claim files use the same format and comparison (:func:`compare_text`). ``--snapshot-update`` rewrites both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from syrupy.extensions.json import JSONSnapshotExtension

from mechtest.errors import SnapshotError

DECIMALS = 4
RTOL = 1e-2
ATOL = 1e-3


# ------------------------------------------------------------------------------------------ serialising


def to_payload(data, decimals: int = DECIMALS):
    """Plain JSON data for head-level objects: tensors/arrays, path-patching results, circuits, dicts."""
    kind = type(data).__name__
    if kind == "PathPatchingResult":
        first = next(iter(data.steps.values()), None)
        return {"kind": "path-patching",
                "n_prompts": getattr(first, "n_prompts", None), "seed": getattr(first, "seed", None),
                "steps": {g: to_payload(s.scores, decimals) for g, s in data.steps.items()}}
    if kind == "StepResult":
        return to_payload(data.scores, decimals)
    if kind == "Circuit":
        return {"kind": "circuit", "name": data.name, "groups": data.to_dict()}
    if hasattr(data, "detach") or hasattr(data, "__array__") and not isinstance(data, (list, tuple)):
        values = data.detach().cpu().double().tolist() if hasattr(data, "detach") else data.tolist()
        shape = _shape(values)
        return {"shape": shape, "values": _round(values, decimals)}
    if isinstance(data, Mapping):
        return {str(k): to_payload(v, decimals) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [to_payload(v, decimals) for v in data]
    if isinstance(data, float):
        return _round(data, decimals)
    return data


def dumps(payload) -> str:
    """JSON text with every innermost list of numbers on one line (a matrix row reads as a row)."""
    return _dump(payload, 0) + "\n"


def _dump(obj, level: int) -> str:
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(obj, Mapping):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(str(k))}: {_dump(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(v, (list, Mapping)) for v in obj):
            return "[" + ", ".join(json.dumps(v) for v in obj) + "]"
        return "[\n" + ",\n".join(inner + _dump(v, level + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj)


def _shape(values) -> list[int]:
    shape = []
    while isinstance(values, list):
        shape.append(len(values))
        values = values[0] if values else None
    return shape


def _round(values, decimals: int):
    if isinstance(values, list):
        return [_round(v, decimals) for v in values]
    if isinstance(values, float):
        if not math.isfinite(values):
            return str(values)
        rounded = round(values, decimals)
        return 0.0 if rounded == 0 else rounded
    return values


# ------------------------------------------------------------------------------------------ comparing


@dataclass
class Mismatch:
    """Why two payloads differ: structural problems and/or numbers outside tolerance."""

    problems: list[str]
    n_differ: int = 0
    n_total: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: list[tuple[float, str, float, float]] | None = None  # (abs error, where, expected, actual)
    rtol: float = RTOL
    atol: float = ATOL

    def lines(self, n_worst: int = 5) -> list[str]:
        out = list(self.problems)
        if self.n_differ:
            out.append(f"{self.n_differ} of {self.n_total} entries differ beyond rtol={self.rtol:g}, "
                       f"atol={self.atol:g}: max abs error {self.max_abs:.4g}, max rel error {self.max_rel:.4g}")
            out.append("heads that moved most (expected -> obtained):")
            for err, where, exp, act in sorted(self.worst or [], key=lambda t: -t[0])[:n_worst]:
                out.append(f"  {where}: {exp:.4g} -> {act:.4g} (abs error {err:.4g})")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def compare_payloads(actual, expected, *, rtol: float = RTOL, atol: float = ATOL) -> Mismatch | None:
    """None when ``actual`` matches ``expected`` within tolerance, else a :class:`Mismatch`."""
    m = Mismatch([], rtol=rtol, atol=atol, worst=[])
    _walk(actual, expected, "", m)
    return m if m.problems or m.n_differ else None


def _is_matrix(obj) -> bool:
    return isinstance(obj, Mapping) and set(obj) == {"shape", "values"}


def matrix_problem(obj) -> str | None:
    """Why a ``{"shape", "values"}`` matrix is malformed (values not exactly of its shape), or None."""
    shape, values = obj.get("shape"), obj.get("values")
    if not (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                            for n in shape)):
        return f"shape {shape!r} is not a list of sizes"
    return _shape_problem(values, shape, ())


def _shape_problem(values, shape: list[int], index: tuple) -> str | None:
    where = "values" + "".join(f"[{i}]" for i in index)
    if not shape:
        if isinstance(values, bool) or not isinstance(values, (int, float, str)):
            return f"{where} is not a number"
        return None
    if not isinstance(values, list):
        return f"{where} is not a list (shape {shape})"
    if len(values) != shape[0]:
        return f"{where} has {len(values)} entries, its shape says {shape[0]}"
    for i, v in enumerate(values):
        if problem := _shape_problem(v, shape[1:], (*index, i)):
            return problem
    return None


def _walk(act, exp, where: str, m: Mismatch) -> None:
    if _is_matrix(exp) and _is_matrix(act):
        if problem := matrix_problem(exp):
            m.problems.append(f"{where or 'matrix'}: the snapshot is malformed: {problem}")
            return
        if list(act["shape"]) != list(exp["shape"]):
            m.problems.append(f"{where or 'matrix'}: shape {act['shape']} obtained, {exp['shape']} expected")
            return
        _numbers(act["values"], exp["values"], where, (), m)
        return
    if isinstance(exp, Mapping) and isinstance(act, Mapping):
        for key in exp:
            if key not in act:
                m.problems.append(f"{_join(where, key)}: missing from the obtained result")
        for key in act:
            if key not in exp:
                m.problems.append(f"{_join(where, key)}: not in the snapshot")
            else:
                _walk(act[key], exp[key], _join(where, key), m)
        return
    if isinstance(exp, list) and isinstance(act, list):
        if len(exp) != len(act):
            m.problems.append(f"{where or 'list'}: {len(act)} items obtained, {len(exp)} expected")
            return
        for i, (a, e) in enumerate(zip(act, exp)):
            _walk(a, e, f"{where}[{i}]", m)
        return
    if isinstance(exp, (int, float)) and isinstance(act, (int, float)) \
            and not isinstance(exp, bool) and not isinstance(act, bool) \
            and not (isinstance(exp, int) and isinstance(act, int)):  # counts and seeds compare exactly
        _numbers(act, exp, where, (), m)
        return
    if act != exp:
        m.problems.append(f"{where or 'value'}: {act!r} obtained, {exp!r} expected")


def _numbers(act, exp, where: str, index: tuple, m: Mismatch) -> None:
    if isinstance(exp, list):
        for i, (a, e) in enumerate(zip(act, exp)):
            _numbers(a, e, where, (*index, i), m)
        return
    m.n_total += 1
    a, e = float(act), float(exp)
    err = abs(a - e)
    if math.isnan(a) and math.isnan(e):
        return
    rel = err / abs(e) if e != 0 else (math.inf if err else 0.0)
    m.max_abs = max(m.max_abs, err)
    m.max_rel = max(m.max_rel, rel)
    if not err <= m.atol + m.rtol * abs(e):
        m.n_differ += 1
        label = f"(L{index[0]}, H{index[1]})" if len(index) == 2 else str(list(index)) if index else ""
        m.worst.append((err, f"{where} {label}".strip(), e, a))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def compare_text(actual_text: str, expected_text: str, *, rtol: float = RTOL,
                 atol: float = ATOL) -> Mismatch | None:
    try:
        expected = json.loads(expected_text)
    except json.JSONDecodeError as e:
        return Mismatch([f"the snapshot is not valid JSON ({e}); rewrite it with --snapshot-update"])
    return compare_payloads(json.loads(actual_text), expected, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------ syrupy


class HeadSnapshotExtension(JSONSnapshotExtension):
    """syrupy single-file JSON snapshots of head-level results, compared with a numeric tolerance."""

    rtol: float = RTOL
    atol: float = ATOL
    decimals: int = DECIMALS

    @classmethod
    def with_tolerance(cls, *, rtol: float = RTOL, atol: float = ATOL,
                       decimals: int = DECIMALS) -> type[HeadSnapshotExtension]:
        return type(f"HeadSnapshotExtension_rtol{rtol:g}_atol{atol:g}", (cls,),
                    {"rtol": rtol, "atol": atol, "decimals": decimals})

    def serialize(self, data, *, exclude=None, include=None, matcher=None) -> str:
        return dumps(to_payload(data, self.decimals))

    def matches(self, *, serialized_data, snapshot_data) -> bool:
        try:
            return compare_text(str(serialized_data), str(snapshot_data), rtol=self.rtol, atol=self.atol) is None
        except (json.JSONDecodeError, TypeError, ValueError):
            return False

    def diff_lines(self, serialized_data, snapshot_data) -> Iterator[str]:
        if snapshot_data:
            mismatch = compare_text(str(serialized_data), str(snapshot_data), rtol=self.rtol, atol=self.atol)
            if mismatch is not None:
                yield from mismatch.lines()
        yield from super().diff_lines(serialized_data, snapshot_data)


# ------------------------------------------------------------------------------------------ claim snapshots


@dataclass(frozen=True)
class SnapshotCheck:
    """The outcome of comparing a claim's scores with its snapshot file (``ok``: the claim holds)."""

    status: str  # "matches" | "updated" | "differs" | "missing" | "incomparable" | "refused"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("matches", "updated")


def check_claim_snapshot(path: Path, payload: dict, *, settings: dict, update: bool, rtol: float = RTOL,
                         atol: float = ATOL) -> SnapshotCheck:
    """Compare ``payload`` with the snapshot at ``path`` (syrupy's lifecycle, for claim files).

    ``settings`` (prompts, seed, boxes) are stored in the snapshot; a snapshot recorded under other settings
    fails instead of comparing numbers that cannot agree, and ``update`` never replaces a snapshot with one
    measured on fewer prompts (delete the file to record a smaller one deliberately). A missing or differing
    snapshot leaves the obtained scores next to it; accepting a snapshot removes that file.
    """
    text = dumps({**payload, **settings})
    obtained = path.with_name(path.name.removesuffix(".json") + ".obtained.json")
    try:
        return _check(path, obtained, text, settings, update=update, rtol=rtol, atol=atol)
    except OSError as e:  # e.g. a read-only snapshot folder: one line, not a traceback
        raise SnapshotError(f"cannot read or write the snapshot {path}: {e.strerror or e}") from None


def _check(path: Path, obtained: Path, text: str, settings: dict, *, update: bool, rtol: float,
           atol: float) -> SnapshotCheck:
    recorded = _read_recorded(path) if path.is_file() else None
    if update:
        if recorded is not None and recorded.get("n_prompts", 0) > settings.get("n_prompts", 0):
            return SnapshotCheck("refused", (
                f"--snapshot-update refused: {path} was recorded with n_prompts={recorded['n_prompts']}, this run "
                f"measured n_prompts={settings.get('n_prompts')}; run with at least as many prompts, or delete the "
                "file to record a smaller snapshot"))
        if recorded is None or compare_payloads(json.loads(text), recorded, rtol=rtol, atol=atol) is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            obtained.unlink(missing_ok=True)
            return SnapshotCheck("updated", f"snapshot written: {path}")
        obtained.unlink(missing_ok=True)
        return SnapshotCheck("updated", f"snapshot unchanged: {path}")
    if recorded is None:
        obtained.parent.mkdir(parents=True, exist_ok=True)
        obtained.write_text(text)
        return SnapshotCheck("missing", f"no snapshot at {path}; the obtained scores were written to {obtained}. "
                                        "Run with --snapshot-update to accept them.")
    differing = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
    if differing:
        said = ", ".join(f"{k}={was!r} (this run: {now!r})" for k, (was, now) in differing.items())
        return SnapshotCheck("incomparable", (
            f"snapshot {path.name} was recorded with {said}: the scores cannot be compared. Run with the recorded "
            "settings (e.g. without --mechtest-prompts), or --snapshot-update with at least as many prompts"))
    mismatch = compare_payloads(json.loads(text), recorded, rtol=rtol, atol=atol)
    if mismatch is None:
        obtained.unlink(missing_ok=True)
        return SnapshotCheck("matches")
    obtained.write_text(text)
    return SnapshotCheck("differs", f"snapshot {path}:\n" + "\n".join(mismatch.lines())
                         + f"\nobtained scores: {obtained} (--snapshot-update accepts them)")


def _read_recorded(path: Path) -> dict:
    """The snapshot's content; a file that is not a path-patching snapshot is a one-line SnapshotError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SnapshotError(f"snapshot {path} is not valid JSON ({e}); fix it or delete it and re-record") from None
    problem = None
    if not isinstance(data, dict):
        problem = f"holds {type(data).__name__}, not an object"
    elif not isinstance(data.get("steps"), dict) or not data["steps"]:
        problem = "has no 'steps' object"
    elif not all(isinstance(data.get(k), int) and not isinstance(data.get(k), bool) for k in ("n_prompts", "seed")):
        problem = "needs integer 'n_prompts' and 'seed'"
    else:
        for group, step in data["steps"].items():
            values = step.get("values") if isinstance(step, dict) else None
            if not (isinstance(values, list) and values and all(
                    isinstance(row, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in row) for row in values)):
                problem = f"step {group!r} is not a matrix of numbers"
                break
            shape = step.get("shape")
            if not (isinstance(shape, list) and len(shape) == 2) or (shape_problem := matrix_problem(step)):
                problem = f"step {group!r} does not match its shape {shape!r}: " + (
                    shape_problem if isinstance(shape, list) and len(shape) == 2 else "[layers, heads] expected")
                break
    if problem:
        raise SnapshotError(f"snapshot {path} is malformed: it {problem}; fix it or delete it and re-record")
    return data
