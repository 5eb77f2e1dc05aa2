"""Circuit metrics (spec 5): accuracy, faithfulness, completeness, random-circuit faithfulness."""

from __future__ import annotations

from mechtest.metrics.base import Field, Metric, Outcome, register_metric
from mechtest.spec import DEFAULT_DRAWS

ABLATION = Field("string", choices=("mean",), choices_message="only 'mean' ablation is implemented, got {value!r}",
                 doc="how heads outside the circuit are removed (spec 5.1)")
N_DRAWS = Field("int", minimum=1, default=DEFAULT_DRAWS, doc="random circuits / random halves drawn")


class CircuitMetric(Metric):
    """A measurement of the claim's circuit through one façade method; subclasses say which and its cost."""

    def runs_per_prompt(self, claim) -> int:
        raise NotImplementedError

    def call(self, service, claim, model, circuit, **sample):
        raise NotImplementedError

    def forwards(self, claim, n, n_heads_total):
        return self.runs_per_prompt(claim) * n  # a discovered circuit: see Metric.discoveries

    def measure(self, service, claim, model, *, n, seed, n_boxes):
        circuit = self.circuit_of(service, claim, n=n, seed=seed)
        m = self.call(service, claim, model, circuit, n=n, seed=seed, n_boxes=n_boxes, task=claim.task)
        return Outcome(m.value, m, circuit=circuit)


@register_metric
class Accuracy(CircuitMetric):
    name = "accuracy"
    description = "task accuracy of the model, or of a circuit with every other head mean-ablated"
    fields = {"circuit": Field("circuit"), "ablation": ABLATION}

    def runs_per_prompt(self, claim):
        return 3 if claim.get("circuit") else 1

    def call(self, service, claim, model, circuit, **sample):
        return service.accuracy(model, circuit=circuit, **sample)


@register_metric
class Faithfulness(CircuitMetric):
    name = "faithfulness"
    description = "circuit accuracy / model accuracy under mean ablation (spec 5.2)"
    fields = {"circuit": Field("circuit", required=True), "ablation": ABLATION}

    def runs_per_prompt(self, claim):
        return 3  # the model, the circuit, the mean-ablation reference

    def call(self, service, claim, model, circuit, **sample):
        return service.faithfulness(model, circuit=circuit, **sample)


@register_metric
class RandomCircuitFaithfulness(CircuitMetric):
    name = "random_circuit_faithfulness"
    description = "mean faithfulness of random circuits with the circuit's group sizes"
    fields = {"circuit": Field("circuit", required=True), "ablation": ABLATION, "n_draws": N_DRAWS}

    def runs_per_prompt(self, claim):
        return 2 + claim.get("n_draws")

    def call(self, service, claim, model, circuit, **sample):
        return service.random_circuit_faithfulness(model, circuit=circuit, n_draws=claim.get("n_draws"), **sample)


@register_metric
class Completeness(CircuitMetric):
    name = "completeness"
    description = "mean |F(C \\ K) - F(M \\ K)| over random halves or groups K (spec 5.3); lower is better"
    fields = {"circuit": Field("circuit", required=True), "ablation": ABLATION,
              "mode": Field("string", choices=("random", "group"), default="random"), "n_draws": N_DRAWS}

    def runs_per_prompt(self, claim):
        return 1 + 2 * claim.get("n_draws")

    def call(self, service, claim, model, circuit, **sample):
        return service.completeness(model, circuit=circuit, mode=claim.get("mode"),
                                n_draws=claim.get("n_draws"), **sample)
