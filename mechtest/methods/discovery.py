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
from mechtest.spec import PAPER_CANDIDATES, PAPER_RECEIVERS, derived_seed, scaled  # noqa: F401  (re-exported)
from mechtest.tasks.base import DEFAULT_TASK
from mechtest.tasks.base import scaled as scaled_for
from mechtest.tasks.registry import get_task

# scores(model, base prompts, receivers, *, seed) -> the four steps' scores of every head
Scores = Callable[..., PathPatchingResult]

# triage is the default for models with this many heads and an LM head of this many weights (vocab x d_model):
# exact path patching computes the LM head for every sender, triage once per prompt and step
# (benchmarks/triage_default.py; README, Performance)
TRIAGE_MIN_HEADS = 256
TRIAGE_MIN_LM_HEAD = 64_000_000


@dataclass
class Discovery:
    circuit: Circuit
    scores: PathPatchingResult
    sizes: dict[str, int]
    receivers: dict[str, int]
    n_prompts: int
    seed: int
    minimality: dict | None = None


def default_sizes(model, sizes: dict[str, int] | None = None, task: str = DEFAULT_TASK) -> dict[str, int]:
    """The task's candidate counts (the paper's for entity tracking) scaled to ``model``'s head count,
    overridden by ``sizes``."""
    spec = get_task(task)
    return {**scaled_for(spec.candidates, model.n_layers * model.n_heads, spec.reference_heads), **(sizes or {})}


def default_receivers(model, receivers: dict[str, int] | None = None, task: str = DEFAULT_TASK) -> dict[str, int]:
    """The task's receiver counts scaled to ``model``'s head count, overridden by ``receivers``."""
    spec = get_task(task)
    return {**scaled_for(spec.receivers, model.n_layers * model.n_heads, spec.reference_heads), **(receivers or {})}


def discover_circuit(model, *, n_prompts: int = 300, n_boxes: int = 7, seed: int = 0,
                     sizes: dict[str, int] | None = None, receivers: dict[str, int] | None = None,
                     minimal: bool = False, threshold: float = 0.01, batch_size: int = 100,
                     progress: bool = True, cache=None, triage: bool | None = None, scores: Scores | None = None,
                     task: str = DEFAULT_TASK) -> Discovery:
    """Find ``task``'s circuit (default: entity tracking) in ``model`` from scratch, with the paper's procedure.

    ``scores`` computes the path-patching scores; by default :func:`mechtest.methods.cached.cached_path_patching`
    (through ``cache`` when one is given): exact for every head, or with ``triage=True`` by attribution first and
    exactly only for the top candidates (:func:`mechtest.methods.path_patching.triage`); ``triage=None`` (the
    default) picks triage where it was measured faster (:func:`triage_by_default`).
    """
    from mechtest.forward import check_fits
    from mechtest.methods.cached import cached_path_patching
    from mechtest.methods.evaluation import minimality
    spec = get_task(task)
    sizes, receivers = default_sizes(model, sizes, task), default_receivers(model, receivers, task)
    base = spec.dataset(model.tokenizer, n_prompts, n_boxes=n_boxes, seed=seed)
    check_fits(model, base)
    if triage is None:
        triage = triage_by_default(model)
    if scores is None:
        def scores(model, base, receivers, *, seed):
            return cached_path_patching(model, base, receivers, seed=seed, cache=cache, triage=triage, sizes=sizes,
                                        batch_size=batch_size, progress=progress)
    found = scores(model, base, receivers, seed=seed)
    circuit = Circuit(candidate_circuit(found.steps, sizes, spec.name).groups, f"discovered:{model.name}",
                      task=spec.name).found_in(model)
    report = None
    if minimal:
        reference = spec.reference(model.tokenizer, n_prompts, n_boxes=n_boxes,
                                   seed=derived_seed(seed, "minimality_reference"))
        circuit, report = minimality(model, circuit, base, reference, threshold=threshold, cache=cache)
        circuit = Circuit(circuit.groups, f"discovered:{model.name}", task=spec.name).found_in(model)
    return Discovery(circuit, found, sizes, receivers, n_prompts, seed, report)


def layer_parameters(model) -> int:
    """Parameters outside the embeddings and the LM head: what a forward multiplies per token."""
    hf = model.hf
    outside = {id(p) for m in (hf.get_input_embeddings(), hf.get_output_embeddings()) if m is not None
               for p in m.parameters()}
    return sum(p.numel() for p in hf.parameters() if id(p) not in outside)


def lm_head_size(model) -> int:
    weight = model.hf.get_output_embeddings().weight
    return int(weight.shape[0] * weight.shape[1])


def triage_by_default(model) -> bool:
    """The default of ``discover_circuit(triage=None)``: triage for models of >= ``TRIAGE_MIN_HEADS`` heads with
    an LM head of >= ``TRIAGE_MIN_LM_HEAD`` weights, exact path patching otherwise.

    Measured (CPU time, 8 prompts): exact was faster on every small-vocabulary model up to 336 heads and 358M
    layer parameters (triage 0.52-0.72x), triage 1.63x faster on Qwen2.5-0.5B (336 heads, 151,936 x 896 LM
    head), finding the same circuit each time: the per-sender LM head is what makes exact path patching dear.
    """
    return model.n_layers * model.n_heads >= TRIAGE_MIN_HEADS and lm_head_size(model) >= TRIAGE_MIN_LM_HEAD
