"""The fine-tuning gate: does a candidate keep the base model's mechanism? (``mechtest.methods.compare``)"""

from __future__ import annotations

from mechtest.metrics.base import Field, Metric, Outcome, register_metric


@register_metric
class Verdict(Metric):
    name = "verdict"
    expects = "verdict"
    decision_rule = "the verdict's checks (below)"
    description = "base-vs-candidate comparison of the mechanism: preserved / not preserved / inconclusive"
    fields = {"base": Field("model", required=True)}

    def check(self, params, models, fail):
        if params["base"] in models:
            fail("base", f"the base model {params['base']!r} is also one of the candidate models")

    def forwards(self, claim, n, n_heads_total):
        return 8 * n  # two model runs, two circuit runs, CMAP; the two discoveries: see discoveries

    def discoveries(self, claim, model):
        return [claim.get("base"), model]  # the base's is shared by every candidate

    def measure(self, service, claim, model, *, n, seed, n_boxes):
        comparison = service.compare(claim.get("base"), model, n=n, seed=seed, n_boxes=n_boxes,
                                 n_discover=claim.get("discover_prompts"))
        data = comparison.to_dict()
        details = {k: data[k] for k in ("verdict", "reason", "checks", "not_applied", "overlap",
                                        "profile_correlation", "profile_p_value", "base_circuit")}
        return Outcome(comparison.verdict, detail=comparison.explain(), details=details,
                       circuit=comparison.base_circuit)
