"""Property claims (:mod:`mechtest.properties`): a per-prompt statement over Hypothesis-generated prompts.

The value is the fraction of generated prompts on which the property holds (``expect = "== 1"``: always),
with the minimal failing prompt, both answers and the seed in the failure text and the JSON. A property is a
statement about the prompts it was checked on, not an estimate of a rate, so it carries no interval and the
runner compares the value itself with ``expect`` (the ``decide = "estimate"`` rule).
"""

from __future__ import annotations

from importlib import metadata

from mechtest.decision import MAX_PROMPTS
from mechtest.metrics.base import Field, Metric, Outcome, register_metric
from mechtest.spec import PROPERTY_EDGES as EDGES
from mechtest.spec import PROPERTY_KINDS as PROPERTIES
_KNOCKOUTS = ("knockout_breaks", "knockout_keeps")


def _hypothesis_version() -> str:
    try:
        return metadata.version("hypothesis")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


@register_metric
class PropertyMetric(Metric):
    name = "property"
    description = "fraction of Hypothesis-generated prompts on which a property holds; failures shrunk"
    fields = {
        "property": Field("string", required=True, doc=" | ".join(PROPERTIES)),
        "circuit": Field("circuit", doc="the circuit of circuit_agrees"),
        "edge": Field("string", choices=EDGES, doc="the attention edge of knockout_breaks / knockout_keeps"),
        "layer": Field("int", minimum=0, doc="knockouts block the edge in every layer >= layer (default 0)"),
        "max_examples": Field("int", minimum=1, maximum=MAX_PROMPTS,
                              doc="prompts generated (default: the claim's n_prompts)"),
        "min_boxes": Field("int", minimum=2, doc="fewest boxes of a generated prompt (default 2)"),
        "max_boxes": Field("int", minimum=2, doc="most boxes (default: the claim's n_boxes or the model's)"),
    }
    default_decide = "estimate"  # read by the runner where the claim sets no decide (see module docstring)
    # the prompts drawn for a seed depend on Hypothesis's version: a cached result is kept per version
    version = f"1+hypothesis-{_hypothesis_version()}"

    def check(self, params, models, fail):
        from mechtest.metrics.interventions import entity_tracking_only

        entity_tracking_only(self.name, params, fail)
        spec = params["property"]
        base = spec.split(":", 1)[1] if spec.startswith("agrees_with:") else None
        if base is None and spec not in PROPERTIES[1:]:
            fail("property", f"unknown property {spec!r}; use one of {', '.join(PROPERTIES)}")
        if base is not None and not base:
            fail("property", "agrees_with:<model> needs a model name, e.g. agrees_with:base")
        if base in models:
            fail("property", f"the model {base!r} of {spec!r} is also one of the claim's models")
        if spec == "circuit_agrees" and "circuit" not in params:
            fail("circuit", "missing (property 'circuit_agrees' needs a circuit)")
        if spec != "circuit_agrees" and "circuit" in params:
            fail("circuit", f"only property 'circuit_agrees' uses a circuit, not {spec!r}")
        if spec in _KNOCKOUTS and "edge" not in params:
            fail("edge", f"missing (property {spec!r} needs an edge: {', '.join(EDGES)})")
        for key in ("edge", "layer"):
            if spec not in _KNOCKOUTS and key in params:
                fail(key, f"only properties {' and '.join(_KNOCKOUTS)} use {key}, not {spec!r}")
        if params.get("min_boxes", 2) > params.get("max_boxes", params.get("min_boxes", 2)):
            fail("min_boxes", f"{params['min_boxes']} is more than max_boxes = {params['max_boxes']}")

    def models_needed(self, params):
        needed = super().models_needed(params)
        spec = params.get("property") or ""
        return needed + [spec.split(":", 1)[1]] if spec.startswith("agrees_with:") else needed

    def measure(self, service, claim, model, *, n, seed, n_boxes):
        from mechtest import properties
        from mechtest.errors import MechtestError

        min_boxes, max_boxes = claim.get("min_boxes", 2), claim.get("max_boxes", n_boxes)
        if min_boxes > max_boxes:
            raise MechtestError(f"min_boxes = {min_boxes} is more than the {max_boxes} boxes the claim runs on; "
                                "set max_boxes or n_boxes")
        circuit = self.circuit_of(service, claim, n=n, seed=seed)
        prop = properties.from_spec(service, claim.get("property"), model, circuit=circuit, edge=claim.get("edge"),
                                    layer=claim.get("layer", 0), n_reference=n, seed=seed)
        strategy = properties.prompts(service.model(model), min_boxes=min_boxes, max_boxes=max_boxes,
                                      objects=prop.objects, labels=prop.labels)
        result = properties.check_property(prop, strategy, max_examples=service.n_prompts(claim.get("max_examples", n)),
                                           seed=seed)
        return Outcome(result.fraction, detail=result.explain(), details=result.to_details(), circuit=circuit)
