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
        from mechtest.metrics.path_patching import path_patching_forwards  # (here: the registry keeps its order)

        # two discoveries (the base's is shared by every candidate), two model runs, two circuit runs, CMAP
        return 2 * path_patching_forwards(n, n_heads_total) + 8 * n

    def measure(self, service, claim, model, *, n, seed, n_boxes):
        comparison = service.compare(claim.get("base"), model, n=n, seed=seed, n_boxes=n_boxes,
                                 n_discover=claim.get("discover_prompts"))
        data = comparison.to_dict()
        details = {k: data[k] for k in ("verdict", "reason", "checks", "not_applied", "overlap",
                                        "profile_correlation", "profile_p_value", "base_circuit")}
        return Outcome(comparison.verdict, detail=comparison.explain(), details=details,
                       circuit=comparison.base_circuit)
