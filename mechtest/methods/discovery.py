"""Circuit discovery: path patching (spec 4), candidate selection (4.5), optional minimality pruning (5.4).

Default sizes follow the paper's Llama run scaled to the model's head count (the paper: 1,024 heads,
receivers 20 / 5 / 10, candidates 58 / 10 / 25 / 5), with at least one head per group.
"""

from __future__ import annotations

from dataclasses import dataclass

from mechtest.methods.circuits import Circuit, candidate_circuit
from mechtest.methods.evaluation import minimality
from mechtest.methods.path_patching import PathPatchingResult, path_patching

from mechtest.spec import PAPER_CANDIDATES, PAPER_RECEIVERS, scaled


@dataclass
class Discovery:
    circuit: Circuit
    scores: PathPatchingResult
    sizes: dict[str, int]
    receivers: dict[str, int]
    n_prompts: int
    seed: int
    minimality: dict | None = None


def discover_circuit(model, *, n_prompts: int = 300, n_boxes: int = 7, seed: int = 0,
                     sizes: dict[str, int] | None = None, receivers: dict[str, int] | None = None,
                     minimal: bool = False, threshold: float = 0.01, batch_size: int = 100,
                     progress: bool = True, cache=None, triage: bool = False) -> Discovery:
    """Find the entity-tracking circuit of ``model`` from scratch, with the paper's procedure.

    ``triage=True`` scores every head by attribution and path-patches exactly only the top candidates
    (``mechtest.methods.path_patching.attribution.triage``); the default scores every head exactly.
    """
    from mechtest.tasks.entity_tracking import make_dataset, mean_ablation_set, path_patching_corruption

    total = model.n_layers * model.n_heads
    sizes = {**scaled(PAPER_CANDIDATES, total), **(sizes or {})}
    receivers = {**scaled(PAPER_RECEIVERS, total), **(receivers or {})}
    base = make_dataset(model.tokenizer, n_prompts, n_boxes=n_boxes, seed=seed)
    corrupt = path_patching_corruption(base, model.tokenizer, seed=seed + 1)
    if triage:
        from mechtest.methods.path_patching.attribution import triage as triage_path_patching

        scores = triage_path_patching(model, base, corrupt, receivers=receivers, sizes=sizes, seed=seed,
                                      batch_size=batch_size, progress=progress).result
    else:
        scores = path_patching(model, base, corrupt, receivers=receivers, seed=seed, batch_size=batch_size,
                               progress=progress)
    circuit = candidate_circuit(scores.steps, sizes)
    circuit = Circuit(circuit.groups, f"discovered:{model.name}").found_in(model)
    report = None
    if minimal:
        reference = mean_ablation_set(model.tokenizer, n_prompts, n_boxes=n_boxes, seed=seed + 2)
        circuit, report = minimality(model, circuit, base, reference, threshold=threshold, cache=cache)
        circuit = Circuit(circuit.groups, f"discovered:{model.name}").found_in(model)
    return Discovery(circuit, scores, sizes, receivers, n_prompts, seed, report)

