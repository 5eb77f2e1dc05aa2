"""The fine-tuning gate: does a candidate keep the base model's mechanism? (``mechtest.methods.compare``)"""

from __future__ import annotations

from mechtest.metrics.base import Field, Metric, Outcome, register_metric


@register_metric
class Verdict(Metric):
    name = "verdict"
    expects = "verdict"
    decision_rule = "the verdict's checks (below)"
    description = "base-vs-candidate comparison of the mechanism: preserved / not preserved / inconclusive"
    version = "2"  # the value fetchers' share, non-inferiority and the CMAP interval floor decide now
    fields = {
        "base": Field("model", required=True),
        "base_circuit": Field("circuit", doc="a recorded base circuit: skips discovering the base"),
        "accuracy_margin": Field("number", minimum=0,
                                 doc="candidate accuracy must be >= base accuracy - this (default 0.05)"),
        "faithfulness_bound": Field("number", minimum=0, maximum=1,
                                    doc="the base circuit's faithfulness required in the base and in the candidate "
                                        "(default 0.8, the paper's; where a model's best circuit explains less, "
                                        "state the bound its circuit was measured to meet)"),
        "share_prompts": Field("int", minimum=10,
                               doc="run the value fetchers' share (every head path-patched on every prompt: most of "
                                   "a verdict's time on a large model) on the first this many prompts only; the "
                                   "check names them (default: all n_prompts)"),
    }

    def check(self, params, models, fail):
        if params["base"] in models:
            fail("base", f"the base model {params['base']!r} is also one of the candidate models")

    def models_needed(self, params):
        recorded = params.get("base_circuit") or ""
        return super().models_needed(params) + ([recorded.split(":", 1)[1]] if recorded.startswith("discovered:")
                                                else [])

    def forwards(self, claim, n, n_heads_total):
        # the base's run (its accuracy), the candidate's (its accuracy, CMAP's donor), the base's patched run
        # (about half of one: it continues the base's run from the first patched position), two ablation-means
        # runs, two circuit runs, and the candidate's value-fetcher share (~ a tenth of a forward per head and
        # prompt); the discoveries: see discoveries
        share = min(n, int(claim.get("share_prompts") or n))
        return int(6.5 * n) + share * max(1, n_heads_total // 10)

    def discoveries(self, claim, model):
        recorded = str(claim.get("base_circuit") or "")
        if recorded:  # a recorded base circuit: nothing is discovered, unless it names a discovered circuit
            return [recorded.split(":", 1)[1]] if recorded.startswith("discovered:") else []
        return [claim.get("base"), model]  # the base's is shared by every candidate

    def measure(self, service, claim, model, *, n, seed, n_boxes):
        from mechtest.methods.compare import Thresholds

        given = {"accuracy_margin": claim.get("accuracy_margin"), "faithfulness": claim.get("faithfulness_bound")}
        thresholds = Thresholds(**{k: float(v) for k, v in given.items() if v is not None})
        recorded = claim.get("base_circuit")
        if recorded is not None:
            recorded = service.circuit(recorded, n=claim.get("discover_prompts") or n, seed=seed, task=claim.task)
            recorded = recorded.any_shape() if claim.get("any_shape") else recorded
        comparison = service.compare(claim.get("base"), model, n=n, seed=seed, n_boxes=n_boxes,
                                     n_discover=claim.get("discover_prompts"), thresholds=thresholds,
                                     base_circuit=recorded, task=claim.task,
                                     share_prompts=claim.get("share_prompts"))
        data = comparison.to_dict()
        details = {k: data[k] for k in ("verdict", "reason", "checks", "not_applied", "overlap",
                                        "profile_correlation", "profile_p_value", "base_circuit",
                                        "recorded_circuit")}
        return Outcome(comparison.verdict, detail=comparison.explain(), details=details,
                       circuit=comparison.base_circuit)
