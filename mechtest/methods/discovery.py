"""Circuit discovery, the one recipe: path patching (spec 4), candidate selection (4.5), optional minimality
pruning (5.4). The façade, claims (``discovered:<model>``) and the gate (:mod:`mechtest.methods.compare`) all
discover through :func:`discover_circuit`.

Default sizes follow the paper's Llama run scaled to the model's head count (the paper: 1,024 heads,
receivers 20 / 5 / 10, candidates 58 / 10 / 25 / 5), with at least one head per group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mechtest.methods.circuits import Circuit, candidate_circuit
from mechtest.methods.path_patching import PathPatchingResult
from mechtest.spec import PAPER_CANDIDATES, PAPER_RECEIVERS, derived_seed, scaled

# scores(model, base prompts, receivers, *, seed) -> the four steps' scores of every head
Scores = Callable[..., PathPatchingResult]


@dataclass
class Discovery:
    circuit: Circuit
    scores: PathPatchingResult
    sizes: dict[str, int]
    receivers: dict[str, int]
    n_prompts: int
    seed: int
    minimality: dict | None = None


def default_sizes(model, sizes: dict[str, int] | None = None) -> dict[str, int]:
    """The paper's candidate counts scaled to ``model``'s head count, overridden by ``sizes``."""
    return {**scaled(PAPER_CANDIDATES, model.n_layers * model.n_heads), **(sizes or {})}


def default_receivers(model, receivers: dict[str, int] | None = None) -> dict[str, int]:
    """The paper's receiver counts scaled to ``model``'s head count, overridden by ``receivers``."""
    return {**scaled(PAPER_RECEIVERS, model.n_layers * model.n_heads), **(receivers or {})}


def discover_circuit(model, *, n_prompts: int = 300, n_boxes: int = 7, seed: int = 0,
                     sizes: dict[str, int] | None = None, receivers: dict[str, int] | None = None,
                     minimal: bool = False, threshold: float = 0.01, batch_size: int = 100,
                     progress: bool = True, cache=None, triage: bool = False, scores: Scores | None = None,
                     ) -> Discovery:
    """Find the entity-tracking circuit of ``model`` from scratch, with the paper's procedure.

    ``scores`` computes the path-patching scores; by default :func:`mechtest.methods.cached.cached_path_patching`
    (through ``cache`` when one is given): exact for every head, or with ``triage=True`` by attribution first and
    exactly only for the top candidates (:func:`mechtest.methods.path_patching.triage`).
    """
    from mechtest.forward import check_fits
    from mechtest.methods.cached import cached_path_patching
    from mechtest.methods.evaluation import minimality
    from mechtest.tasks.entity_tracking import make_dataset, mean_ablation_set

    sizes, receivers = default_sizes(model, sizes), default_receivers(model, receivers)
    base = make_dataset(model.tokenizer, n_prompts, n_boxes=n_boxes, seed=seed)
    check_fits(model, base)
    if scores is None:
        def scores(model, base, receivers, *, seed):
            return cached_path_patching(model, base, receivers, seed=seed, cache=cache, triage=triage, sizes=sizes,
                                        batch_size=batch_size, progress=progress)
    found = scores(model, base, receivers, seed=seed)
    circuit = Circuit(candidate_circuit(found.steps, sizes).groups, f"discovered:{model.name}").found_in(model)
    report = None
    if minimal:
        reference = mean_ablation_set(model.tokenizer, n_prompts, n_boxes=n_boxes,
                                      seed=derived_seed(seed, "minimality_reference"))
        circuit, report = minimality(model, circuit, base, reference, threshold=threshold, cache=cache)
        circuit = Circuit(circuit.groups, f"discovered:{model.name}").found_in(model)
    return Discovery(circuit, found, sizes, receivers, n_prompts, seed, report)
