"""Intervention metrics: DCM (spec 6), CMAP (spec 7) and attention knockout (spec 8)."""

from __future__ import annotations

from mechtest.metrics.base import Field, Metric, Outcome, register_metric
from mechtest.spec import ADDITIONAL_DESIDERATA, DESIDERATA, GROUPS, KNOCKOUT_EDGES
from mechtest.tasks.base import DEFAULT_TASK
from mechtest.tasks.registry import get_task


def entity_tracking_only(metric: str, params: dict, fail) -> None:
    """DCM's desiderata and the knockout edges are entity tracking's: another task's claim is refused."""
    if params.get("task", DEFAULT_TASK) != DEFAULT_TASK:
        fail("task", f"metric {metric!r} is defined for entity tracking only (its desiderata / attention edges "
                     "name that task's positions)")


@register_metric
class DCM(Metric):
    name = "dcm"
    description = "desiderata-based masking: test accuracy of the heads of a group that carry a desideratum"
    fields = {"circuit": Field("circuit", required=True), "group": Field("string", required=True, choices=GROUPS),
              "desideratum": Field("string", required=True, choices=DESIDERATA + ADDITIONAL_DESIDERATA),
              "quantity": Field("string", choices=("accuracy", "selected_fraction"))}

    def check(self, params, models, fail):
        entity_tracking_only(self.name, params, fail)

    def forwards(self, claim, n, n_heads_total):
        return 2 * 2 * n + 3 * n  # two training epochs (forward + backward) and the evaluations

    def measure(self, service, claim, model, *, n, seed, n_boxes):
        circuit = self.circuit_of(service, claim, n=n, seed=seed)
        found = service.dcm(model, circuit=circuit, group=claim.get("group"), desideratum=claim.get("desideratum"),
                        n=n, seed=seed, n_boxes=n_boxes)
        details = {"selected": [list(h) for h in found.selected], "group_size": len(found.heads)}
        if claim.get("quantity", "accuracy") == "selected_fraction":
            return Outcome(len(found.selected) / max(1, len(found.heads)), detail=found.explain(), details=details,
                           circuit=circuit)
        return Outcome(found.test.value, found.test, detail=found.explain(), details=details, circuit=circuit)


@register_metric
class CMAPAccuracy(Metric):
    name = "cmap_accuracy"
    description = "accuracy with the source model's head outputs patched in (all heads, a circuit, or a group)"
    fields = {"source": Field("model", required=True), "circuit": Field("circuit"),
              "group": Field("string")}

    def check(self, params, models, fail):
        groups = get_task(params.get("task")).groups + ("full",)
        if "group" in params and params["group"] not in groups:
            fail("group", f"unknown group {params['group']!r}; use one of {', '.join(groups)}")
        if params["source"] in models:
            fail("source", f"the source model {params['source']!r} is also one of the claim's models")

    def forwards(self, claim, n, n_heads_total):
        return 3 * n  # the donor's run, the patched run, the model's own

    def measure(self, service, claim, model, *, n, seed, n_boxes):
        circuit = self.circuit_of(service, claim, n=n, seed=seed)
        group = claim.get("group")
        m = service.cmap(model, source=claim.get("source"), circuit=circuit, group=None if group == "full" else group,
                         n=n, seed=seed, n_boxes=n_boxes, task=claim.task)
        return Outcome(m.value, m, circuit=circuit)


@register_metric
class KnockoutAccuracy(Metric):
    name = "knockout_accuracy"
    description = "accuracy with an attention edge blocked in every layer >= layer"
    fields = {"layer": Field("int", minimum=0), "edge": Field("string", choices=tuple(KNOCKOUT_EDGES))}

    def check(self, params, models, fail):
        entity_tracking_only(self.name, params, fail)

    def forwards(self, claim, n, n_heads_total):
        return 2 * n

    def measure(self, service, claim, model, *, n, seed, n_boxes):
        layer = claim.get("layer", 0)
        curve = service.knockout(model, edge=claim.get("edge", "last->object"), layers=(layer,), n=n, seed=seed,
                             n_boxes=n_boxes)
        m = curve.at(layer)
        return Outcome(m.value, m, detail=curve.explain())
