"""What every metric is made of: typed claim fields, the Metric base class, its Outcome, and the registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from mechtest.errors import ClaimError

_KINDS = {
    "int": ((int,), "an integer"),
    "number": ((int, float), "a number"),
    "string": ((str,), "a string"),
    "strings": ((list,), "a list of strings"),
    "table": ((dict,), "a table"),
    "bool": ((bool,), "true or false"),
    "circuit": ((str,), "a string"),  # a circuit reference, resolved by mechtest.claims
    "model": ((str,), "a string"),    # the name of another configured model the claim needs
    "count": ((int, str), 'a positive integer or "auto"'),  # a sample size; "auto": sequential sampling
}


@dataclass(frozen=True)
class Field:
    """A typed claim field: its kind, whether it is required, allowed values and bounds."""

    kind: str
    required: bool = False
    choices: tuple = ()
    minimum: float | None = None
    doc: str = ""
    choices_message: str = ""  # replaces "unknown <field> ...; use one of ..." ({value!r} is the value)
    default: Any = None  # what ``claim.get(name)`` gives when the claim leaves the field out
    maximum: float | None = None

    def check(self, name: str, value: Any) -> str | None:
        """The problem with ``value`` (a message without the field's name), or None."""
        types, what = _KINDS[self.kind]
        ok = isinstance(value, types) and (self.kind == "bool" or not isinstance(value, bool))
        if ok and self.kind == "strings":
            ok = all(isinstance(v, str) for v in value)
        if ok and self.kind == "count" and isinstance(value, str) and value != "auto":
            ok = False
        if not ok:
            return f"must be {what}, got {type(value).__name__} {value!r}"
        if self.choices and value not in self.choices:
            if self.choices_message:
                return self.choices_message.format(value=value)
            return f"unknown {name} {value!r}; use one of {', '.join(map(str, self.choices))}"
        if self.minimum is not None and not isinstance(value, str) and value < self.minimum:
            return f"must be >= {self.minimum:g}, got {value}"
        if self.maximum is not None and not isinstance(value, str) and value > self.maximum:
            return f"must be <= {self.maximum:g}, got {value}"
        if self.kind == "model" and not value:
            return "must name a model"
        return None


@dataclass(frozen=True)
class Outcome:
    """What a metric measured for one claim on one model (the runner decides pass/fail from it).

    ``value`` is compared with the claim's expectation; ``measurement`` (if any) supplies its interval;
    ``details`` go into the JSON and ``-v`` output; ``circuit`` is outlined on the claim's heat map.
    """

    value: float | str | None
    measurement: Any = None
    detail: str = ""
    details: dict = field(default_factory=dict)
    circuit: Any = None


class Metric:
    """Base class of every metric. Subclasses set ``name`` and ``fields`` and implement ``measure``."""

    name: ClassVar[str] = ""
    fields: ClassVar[dict[str, Field]] = {}
    # "number": a comparison such as ">= 0.9"; "verdict": "preserved" / "not preserved"; "snapshot"
    expects: ClassVar[str] = "number"
    description: ClassVar[str] = ""
    # results are cached under the claim, the models' fingerprints and ``version``: bump it when ``measure``
    # changes what it returns; set ``cacheable = False`` when a result depends on more than those
    version: ClassVar[str] = "1"
    cacheable: ClassVar[bool] = True
    default_decide: ClassVar[str] = "ci"  # the rule (mechtest.decision) when a claim sets no decide
    # --mechtest-report draws a heat map of every claim of this metric, not only of failing ones
    always_draws_heatmap: ClassVar[bool] = False
    # how the outcome is decided, in the failure text (None: the claim's decide rule)
    decision_rule: ClassVar[str | None] = None

    def check(self, params: dict, models: tuple[str, ...], fail) -> None:
        """Cross-field validation; call ``fail(field, message)`` on a problem."""

    def models_needed(self, params: dict) -> list[str]:
        """Other configured models the claim needs besides the one it runs on (a missing one skips it)."""
        needed = [params[k] for k, f in self.fields.items() if f.kind == "model" and params.get(k)]
        circuit = params.get("circuit") or ""
        if circuit.startswith("discovered:"):
            needed.append(circuit.split(":", 1)[1])
        return needed

    def measure(self, service, claim, model: str, *, n: int, seed: int, n_boxes: int) -> Outcome:
        """Measure ``claim`` on ``model`` through ``service`` (:class:`mechtest.service.Service`: models, data,
        circuits and the paper's methods, memoised; ``service.memoised`` for a method of your own)."""
        raise NotImplementedError

    def forwards(self, claim, n: int, n_heads_total: int) -> int:
        """Full forward passes (one prompt each) the claim costs, for ``--mechtest-plan``; default: n.
        Circuit discoveries (:meth:`discoveries`) are costed apart, once per run however many claims share them."""
        return n

    def discoveries(self, claim, model: str) -> list[str]:
        """Models whose circuit the claim discovers by path patching (on ``discover_prompts``), for the plan."""
        circuit = str(claim.get("circuit") or "")
        return [circuit.split(":", 1)[1]] if circuit.startswith("discovered:") else []

    def cache_inputs(self, claim, model: str, settings) -> dict | None:
        """What else the result depends on, for the result-cache key ({}: nothing; None: do not cache now)."""
        return {} if self.cacheable else None

    def circuit_of(self, service, claim, *, n: int, seed: int):
        """The claim's circuit (a discovered one on the claim's own sample), or None; ``any_shape = true``
        drops the shape the circuit records, to apply it to a model of another shape by index."""
        spec = claim.get("circuit")
        if spec is None:
            return None
        circuit = service.circuit(spec, n=claim.get("discover_prompts") or n, seed=seed, task=claim.task)
        return circuit.any_shape() if claim.get("any_shape") else circuit


# every metric with a ``circuit`` field also takes this one
ANY_SHAPE = Field("bool", doc="apply a circuit found on another shape anyway (heads matched by index)")

REGISTRY: dict[str, Metric] = {}


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: make ``cls`` available to claim files as ``metric = cls.name``."""
    if not cls.name or not isinstance(cls.name, str):
        raise ClaimError(f"{cls.__name__}: a metric needs a non-empty string name")
    if cls.expects not in ("number", "verdict", "snapshot"):
        raise ClaimError(f"metric {cls.name!r}: expects must be 'number', 'verdict' or 'snapshot'")
    if any(f.kind == "circuit" for f in cls.fields.values()) and "any_shape" not in cls.fields:
        cls.fields = {**cls.fields, "any_shape": ANY_SHAPE}
    for key, spec in cls.fields.items():
        if spec.kind not in _KINDS:
            raise ClaimError(f"metric {cls.name!r}: field {key!r} has unknown kind {spec.kind!r}; "
                             f"use one of {', '.join(_KINDS)}")
    REGISTRY[cls.name] = cls()
    return cls


def get_metric(name: str) -> Metric:
    return REGISTRY[name]


