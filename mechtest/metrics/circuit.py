"""Circuit metrics (spec 5): accuracy, faithfulness, completeness, random-circuit faithfulness."""

from __future__ import annotations

from mechtest.metrics import Field, Metric, Outcome, path_patching_forwards, register_metric

ABLATION = Field("string", choices=("mean",), choices_message="only 'mean' ablation is implemented, got {value!r}",
                 doc="how heads outside the circuit are removed (spec 5.1)")
N_DRAWS = Field("int", minimum=1, doc="random circuits / random halves drawn")


@register_metric
class Accuracy(Metric):
    name = "accuracy"
    description = "task accuracy of the model, or of a circuit with every other head mean-ablated"
    fields = {"circuit": Field("circuit"), "ablation": ABLATION}

    def forwards(self, claim, n, n_heads_total):
        return _circuit_forwards(claim, n, n_heads_total, 2 if claim.get("circuit") else 0) + n

    def measure(self, api, claim, model, *, n, seed, n_boxes):
        circuit = self.circuit_of(api, claim, n=n, seed=seed)
        m = api.accuracy(model, circuit=circuit, n=n, seed=seed, n_boxes=n_boxes)
        return Outcome(m.value, m, circuit=circuit)


@register_metric
class Faithfulness(Metric):
    name = "faithfulness"
    description = "circuit accuracy / model accuracy under mean ablation (spec 5.2)"
    fields = {"circuit": Field("circuit", required=True), "ablation": ABLATION}

    def forwards(self, claim, n, n_heads_total):
        return _circuit_forwards(claim, n, n_heads_total, 3)

    def measure(self, api, claim, model, *, n, seed, n_boxes):
        circuit = self.circuit_of(api, claim, n=n, seed=seed)
        m = api.faithfulness(model, circuit=circuit, n=n, seed=seed, n_boxes=n_boxes)
        return Outcome(m.value, m, circuit=circuit)


@register_metric
class RandomCircuitFaithfulness(Metric):
    name = "random_circuit_faithfulness"
    description = "mean faithfulness of random circuits with the circuit's group sizes"
    fields = {"circuit": Field("circuit", required=True), "ablation": ABLATION, "n_draws": N_DRAWS}

    def forwards(self, claim, n, n_heads_total):
        return _circuit_forwards(claim, n, n_heads_total, 2 + claim.get("n_draws", 10))

    def measure(self, api, claim, model, *, n, seed, n_boxes):
        circuit = self.circuit_of(api, claim, n=n, seed=seed)
        m = api.random_circuit_faithfulness(model, circuit=circuit, n_draws=claim.get("n_draws", 10), n=n,
                                            seed=seed, n_boxes=n_boxes)
        return Outcome(m.value, m, circuit=circuit)


@register_metric
class Completeness(Metric):
    name = "completeness"
    description = "mean |F(C \\ K) - F(M \\ K)| over random halves or groups K (spec 5.3); lower is better"
    fields = {"circuit": Field("circuit", required=True), "ablation": ABLATION,
              "mode": Field("string", choices=("random", "group")), "n_draws": N_DRAWS}

    def forwards(self, claim, n, n_heads_total):
        return _circuit_forwards(claim, n, n_heads_total, 1 + 2 * claim.get("n_draws", 10))

    def measure(self, api, claim, model, *, n, seed, n_boxes):
        circuit = self.circuit_of(api, claim, n=n, seed=seed)
        m = api.completeness(model, circuit=circuit, mode=claim.get("mode", "random"),
                             n_draws=claim.get("n_draws", 10), n=n, seed=seed, n_boxes=n_boxes)
        return Outcome(m.value, m, circuit=circuit)


def _circuit_forwards(claim, n: int, n_heads_total: int, per_prompt: int) -> int:
    """Forwards of a circuit metric: ``per_prompt`` runs of the prompts, plus discovery for discovered:."""
    discovery = path_patching_forwards(n, n_heads_total) if str(claim.get("circuit", "")).startswith(
        "discovered:") else 0
    return per_prompt * n + discovery
