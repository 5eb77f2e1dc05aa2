"""Circuit evaluation (spec 5): accuracy, mean ablation, faithfulness, completeness, random circuits, minimality.

Mean ablation (spec 5.1): every head output at every position is replaced by its per-position mean over a
reference prompt set (computed on the model under evaluation), except the circuit's heads at their
group's position. "Model minus K" ablates only K's nodes. Accuracies are kept unrounded (spec Q12).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from mechtest.errors import MechtestError
from mechtest.forward import dataset_logits
from mechtest.heads import masked_replace, run_and_read
from mechtest.measure import Measurement, proportion, ratio, statistic
from mechtest.methods.circuits import Circuit, node_positions, random_circuit
from mechtest.tasks.registry import task_of

Node = tuple[str, int, int]
ENTITY_TRACKING_PRUNING = ("struct_reader", "pos_transmitter", "pos_detector", "value_fetcher")


def correct(model, dataset, *, batch_size: int = 50, edits_for_batch=None, progress: str | None = None) -> np.ndarray:
    """Per prompt: does the argmax over the full vocabulary at the last position equal the answer?"""
    logits = dataset_logits(model, dataset, batch_size=batch_size, edits_for_batch=edits_for_batch, progress=progress)
    return (logits.argmax(-1) == dataset.answer_ids).numpy()


def accuracy(model, dataset, *, batch_size: int = 50, seed: int = 0, edits_for_batch=None) -> Measurement:
    hits = correct(model, dataset, batch_size=batch_size, edits_for_batch=edits_for_batch,
                   progress=f"accuracy {model.name}")
    return proportion("accuracy", hits, seed=seed)


def ablation_means(model, reference, *, batch_size: int = 50, cache=None, progress: bool = True) -> torch.Tensor:
    """Per-position mean head output over ``reference``: (layers, seq, heads, head_dim), on the model's device.

    Goes through the on-disk activation cache when one is given (keyed on the model and the prompts).
    """
    from mechtest.forward import progress_bar

    if not bool(reference.attention_mask.bool().all()):
        raise MechtestError("the mean-ablation reference prompts must share one layout (no padding)")

    def compute() -> dict[str, torch.Tensor]:
        total = None
        starts = range(0, len(reference), batch_size)
        for start in progress_bar(starts, f"ablation means {model.name}" if progress else None, len(starts)):
            acts = run_and_read(model, reference.input_ids[start:start + batch_size], sites=("head_out",))
            batch = torch.stack([acts[("head_out", l)].float().sum(0) for l in range(model.n_layers)])
            total = batch if total is None else total + batch
        return {"means": (total / len(reference)).cpu()}

    if cache is None:
        means = compute()["means"]
    else:
        key = cache.key(fingerprint=model.fingerprint, inputs=reference.input_ids, site="head_out_mean",
                        dtype=model.dtype)
        means = cache.get_or_compute(key, compute)["means"]
    return means.to(model.device, model.dtype)


def ablation_edits(model, dataset, means: torch.Tensor, *, keep: Circuit | None = None,
                   ablate: Iterable[Node] | None = None):
    """Edits for one batch slice: mean-ablate everything but ``keep``'s nodes, or only ``ablate``'s nodes."""
    if (keep is None) == (ablate is None):
        raise MechtestError("give exactly one of keep= (a circuit) or ablate= (nodes)")
    seq = dataset.input_ids.shape[1]
    if means.shape[1] < seq:
        raise MechtestError(f"ablation means cover {means.shape[1]} positions, the prompts have {seq}")
    nodes = keep.nodes if keep is not None else list(ablate)
    if keep is not None:
        keep.check(model)
        keep.for_task(task_of(dataset).name)

    def for_batch(sl: slice):
        b = len(range(*sl.indices(len(dataset))))
        rows = torch.arange(b)
        masks = torch.full((model.n_layers, b, seq, model.n_heads), keep is not None)
        for group, l, h in nodes:
            masks[l, rows, node_positions(dataset, group)[sl], h] = keep is None
        return {("head_out", l): masked_replace(masks[l], means[l, :seq])
                for l in range(model.n_layers) if masks[l].any()}

    return for_batch


def circuit_correct(model, circuit: Circuit, dataset, means, *, batch_size: int = 50,
                    progress: str | None | bool = True) -> np.ndarray:
    """Per prompt: is the circuit run (every head but ``circuit``'s nodes mean-ablated) right?

    Prompts of one layout take :mod:`~mechtest.methods.circuit_run` (only the positions that can matter run
    with attention); padded ones the plain masked run. Both give the same answers (tested)."""
    from mechtest.methods.circuit_run import circuit_logits

    label = f"circuit {circuit.name}" if progress is True else progress or None
    if bool(dataset.attention_mask.bool().all()):
        logits = circuit_logits(model, circuit, dataset, means, batch_size=batch_size, progress=label)
        return (logits.argmax(-1) == dataset.answer_ids).numpy()
    return correct(model, dataset, batch_size=batch_size, edits_for_batch=ablation_edits(model, dataset, means, keep=circuit),
                   progress=label)


def faithfulness(model, circuit: Circuit, dataset, reference, *, batch_size: int = 50, seed: int = 0,
                 cache=None) -> Measurement:
    """Circuit accuracy / model accuracy (spec 5.2), with a paired bootstrap interval over prompts."""
    means = ablation_means(model, reference, batch_size=batch_size, cache=cache)
    full = correct(model, dataset, batch_size=batch_size, progress=f"accuracy {model.name}")
    circ = circuit_correct(model, circuit, dataset, means, batch_size=batch_size)
    if full.mean() == 0:
        raise MechtestError(f"{model.name} answers no prompt correctly: faithfulness is undefined")
    return ratio("faithfulness", circ, full, seed=seed, model_accuracy=float(full.mean()),
                 circuit_accuracy=float(circ.mean()), circuit=circuit.name, circuit_size=len(circuit))


def random_circuit_faithfulness(model, circuit: Circuit, dataset, reference, *, n_draws: int = 10,
                                batch_size: int = 50, seed: int = 0, cache=None) -> Measurement:
    """Mean faithfulness of ``n_draws`` random circuits with the same group sizes (spec 5.2, Q10)."""
    means = ablation_means(model, reference, batch_size=batch_size, cache=cache)
    full = correct(model, dataset, batch_size=batch_size, progress=f"accuracy {model.name}")
    if full.mean() == 0:
        raise MechtestError(f"{model.name} answers no prompt correctly: faithfulness is undefined")
    draws = [circuit_correct(model, random_circuit(circuit, model.n_layers, model.n_heads, seed + i), dataset,
                             means, batch_size=batch_size) for i in range(n_draws)]
    avg = np.mean(draws, axis=0)
    return ratio("random_circuit_faithfulness", avg, full, seed=seed,
                 draws=[float(d.mean() / full.mean()) for d in draws], n_draws=n_draws)


def completeness(model, circuit: Circuit, dataset, reference, *, mode: str = "random", n_draws: int = 10,
                 batch_size: int = 50, seed: int = 0, cache=None) -> Measurement:
    """Mean |F(C \\ K) - F(M \\ K)| (spec 5.3); K random halves of the nodes, or each whole group.

    Lower is more complete. ``details["pairs"]`` holds every (F(C\\K), F(M\\K)) for the scatter plot.
    """
    means = ablation_means(model, reference, batch_size=batch_size, cache=cache)
    rng = random.Random(seed)
    if mode == "random":
        subsets = [[n for n in circuit.nodes if rng.random() < 0.5] for _ in range(n_draws)]
    elif mode == "group":
        subsets = [[n for n in circuit.nodes if n[0] == g] for g in circuit.group_names if circuit.heads(g)]
    else:
        raise MechtestError(f"unknown completeness mode {mode!r}; use 'random' or 'group'")
    circ, full = [], []
    for k in subsets:
        circ.append(circuit_correct(model, circuit.without(k), dataset, means, batch_size=batch_size))
        full.append(correct(model, dataset, batch_size=batch_size,
                            edits_for_batch=ablation_edits(model, dataset, means, ablate=k)))
    n_k = len(subsets)

    def stat(*arrays):
        return np.mean([np.abs(arrays[i].mean(1) - arrays[n_k + i].mean(1)) for i in range(n_k)], axis=0)

    value = float(np.mean([abs(c.mean() - m.mean()) for c, m in zip(circ, full)]))
    return statistic("completeness", value, circ + full, stat, seed=seed, mode=mode,
                     pairs=[(float(c.mean()), float(m.mean())) for c, m in zip(circ, full)],
                     subset_sizes=[len(k) for k in subsets])


def minimality(model, circuit: Circuit, dataset, reference, *, threshold: float = 0.01,
               partner_fraction: float = 0.3, batch_size: int = 100, cache=None,
               groups: Sequence[str] | None = None) -> tuple[Circuit, dict[Node, dict]]:
    """Prune nodes whose removal does not hurt (spec 5.4), scoring each group against the full candidate.

    For each node v: pair drops F(C \\ {v, u}) rank partners u by F(C\\{u}) - F(C\\{v,u}); the partner set K_v
    is the first ceil(fraction * group size) with positive value; keep v iff F(C\\K_v) / F(C\\(K_v+v)) - 1 >=
    threshold. Equality is by value (spec Q5) and a zero denominator counts as essential (Q6). Groups are
    pruned in ``ENTITY_TRACKING_PRUNING``'s order for entity tracking, in reverse discovery order for another
    task, unless ``groups`` says otherwise.
    """
    means = ablation_means(model, reference, batch_size=batch_size, cache=cache)
    memo: dict[frozenset, float] = {}

    def acc_without(nodes) -> float:
        key = frozenset(nodes)
        if key not in memo:
            memo[key] = float(circuit_correct(model, circuit.without(key), dataset, means,
                                              batch_size=batch_size).mean())
        return memo[key]

    kept = circuit
    report: dict[Node, dict] = {}
    if groups is None:  # entity tracking keeps its recorded order
        groups = ENTITY_TRACKING_PRUNING if circuit.task == "entity_tracking" else tuple(reversed(circuit.group_names))
    for g in groups:
        members = [n for n in circuit.nodes if n[0] == g]
        n_partners = math.ceil(partner_fraction * len(members))
        drop_pruned = []
        for v in members:
            gains = []
            for u in members:
                if u == v:
                    continue
                gains.append((acc_without([u]) - acc_without([v, u]), u))
            gains.sort(key=lambda t: -t[0])
            partners = []
            for value, u in gains[:n_partners]:
                if value <= 0:
                    break
                partners.append(u)
            before, after = acc_without(partners), acc_without(partners + [v])
            score = math.inf if after == 0 else before / after - 1
            report[v] = {"before": before, "after": after, "score": score, "partners": partners,
                         "kept": score >= threshold}
            if score < threshold:
                drop_pruned.append(v)
        kept = kept.without(drop_pruned)
    return Circuit(kept.groups, f"{circuit.name}-minimal", circuit.found_on), report
