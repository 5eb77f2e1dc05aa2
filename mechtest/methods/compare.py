"""Base vs. candidate (e.g. a fine-tune): does the candidate still run the base model's mechanism?

Everything is measured on the same prompts for both models, so accuracy differences and CMAP gains get
paired bootstrap intervals. The verdict rests on mechanism measures, each with a threshold:

* faithfulness of the base's discovered circuit inside the candidate (spec 5.2): the candidate can
  still solve the task with everything but the base's heads mean-ablated;
* overlap of the value-fetcher groups discovered in each model (spec 5.5), as |base ∩ candidate| / |base|:
  the heads that do the final fetch are the same heads;

  these two circuit checks apply only when the base's discovered circuit is faithful in the base itself
  (same threshold): a circuit that does not explain the base cannot show that the candidate kept it, and
  its top-k membership is then noise (on the tiny trained zoo the paper's four position classes explain
  0.2-0.4 of the base, and the top value fetcher changes with the prompts); the explanation says so;
* Pearson correlation of the head-importance profiles (accuracy drop when one head is mean-ablated at
  every position, for every head), each layer centred on its own mean: the same heads *within each
  layer* matter in both models, whatever positions they act at and wherever a top-k cut falls. The
  centring matters: heads are interchangeable only within a layer, so any two models of the task share
  the layer-level profile (e.g. "layer 0 matters, layer 1 less") and would correlate through it alone;
* the candidate's accuracy stays ``accuracy_over_chance`` above chance (1 / n_boxes): faithfulness is
  a ratio, so a candidate that no longer solves the task could otherwise look faithful.

Path-patching score correlations per step are reported but do not decide: with few heads and small
scores they are noisy (base vs. its own fine-tune in the trained zoo: 0.37 for the value-fetcher step).

Accuracy alone never decides: a model with the same accuracy and other heads is "not preserved". A
shape or tokenizer mismatch is an error, not a verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from mechtest.methods.circuits import GROUPS, Circuit
from mechtest.methods.cmap import check_compatible, cmap_correct
from mechtest.measure import Measurement, difference, proportion, ratio


@dataclass(frozen=True)
class Thresholds:
    """What "preserved" requires; every bound is inclusive."""

    faithfulness: float = 0.80   # base circuit's faithfulness in the candidate (if it reaches it in the base)
    overlap: float = 0.50        # |base ∩ candidate| / |base| of the ``group`` heads (same condition)
    importance: float = 0.50     # Pearson r of the single-head ablation profiles
    accuracy_over_chance: float = 0.10  # candidate accuracy >= 1 / n_boxes + this
    group: str = "value_fetcher"


@dataclass(frozen=True)
class GroupOverlap:
    group: str
    n_base: int
    n_candidate: int
    n_common: int

    @property
    def of_base(self) -> float:
        """|∩| / |base| (the paper's "precision" when the base is Llama)."""
        return self.n_common / self.n_base if self.n_base else float("nan")

    @property
    def of_candidate(self) -> float:
        return self.n_common / self.n_candidate if self.n_candidate else float("nan")


@dataclass(frozen=True)
class Comparison:
    """All measurements of one base-vs-candidate comparison, and the verdict they give."""

    base: str
    candidate: str
    n_prompts: int
    n_boxes: int
    seed: int
    base_accuracy: Measurement
    candidate_accuracy: Measurement
    accuracy_difference: Measurement          # candidate - base, paired over prompts
    base_circuit: Circuit
    candidate_circuit: Circuit
    base_faithfulness: Measurement | None     # base circuit in the base (a sanity reference)
    faithfulness: Measurement | None          # base circuit in the candidate; None if the candidate scores 0
    overlap: dict[str, GroupOverlap]
    correlation: dict[str, float]             # per path-patching step
    importance: dict[str, list[list[float]]]  # "base"/"candidate" -> (layers, heads) accuracy drop, one head ablated
    importance_correlation: float
    cmap_accuracy: Measurement                # base with the candidate's circuit-head outputs patched in
    cmap_gain: Measurement                    # cmap_accuracy - base accuracy, paired
    thresholds: Thresholds
    checks: tuple[tuple[str, float, float, bool], ...] = field(default=())  # (name, value, bound, passed)
    notes: tuple[str, ...] = field(default=())  # checks not applied, and why
    sizes: dict[str, int] = field(default_factory=dict)
    receivers: dict[str, int] = field(default_factory=dict)

    @property
    def preserved(self) -> bool:
        return bool(self.checks) and all(passed for *_, passed in self.checks)

    @property
    def verdict(self) -> str:
        return "preserved" if self.preserved else "not preserved"

    def reason(self) -> str:
        """One sentence: the checks, with the failing ones when the verdict is negative."""
        parts = [f"{name} {_fmt(value)} {'>=' if ok else '<'} {bound:.2f}" for name, value, bound, ok in self.checks]
        if self.preserved:
            return f"candidate keeps the base circuit: {', '.join(parts)}" + "".join(f"; {n}" for n in self.notes)
        failed = [p for p, (*_, ok) in zip(parts, self.checks) if not ok]
        return f"candidate does not keep the base circuit: {', '.join(failed)}"

    def explain(self) -> str:
        lines = [f"{self.candidate} vs {self.base}: {self.verdict.upper()} - {self.reason()}",
                 f"  accuracy: base {self.base_accuracy.value:.3f}, candidate {self.candidate_accuracy.value:.3f}, "
                 f"difference {self.accuracy_difference.value:+.3f} (95% CI {self.accuracy_difference.ci_low:+.3f}.."
                 f"{self.accuracy_difference.ci_high:+.3f}); {self.n_prompts} prompts, {self.n_boxes} boxes, "
                 f"seed {self.seed}"]
        if self.base_faithfulness is not None:
            lines.append(f"  base circuit ({len(self.base_circuit)} nodes) in the base: "
                         f"{self.base_faithfulness.explain()}")
        lines.append("  base circuit in the candidate: "
                     + (self.faithfulness.explain() if self.faithfulness else "undefined (candidate scores 0)"))
        for g in GROUPS:
            o = self.overlap[g]
            lines.append(f"  {g}: {o.n_common} common of {o.n_base} (base) / {o.n_candidate} (candidate): "
                         f"{_fmt(o.of_base)} of base, {_fmt(o.of_candidate)} of candidate; score correlation "
                         f"{_fmt(self.correlation.get(g, float('nan')))}")
        lines.append(f"  head-importance correlation {_fmt(self.importance_correlation)} (within layers; accuracy "
                     f"drop per head mean-ablated at every position; base {_rows(self.importance['base'])}, candidate "
                     f"{_rows(self.importance['candidate'])})")
        lines.append(f"  CMAP (candidate's circuit heads into the base): {self.cmap_accuracy.value:.3f}, gain "
                     f"{self.cmap_gain.value:+.3f} (95% CI {self.cmap_gain.ci_low:+.3f}.."
                     f"{self.cmap_gain.ci_high:+.3f})")
        t = self.thresholds
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append(f"  thresholds: faithfulness >= {t.faithfulness:.2f}, {t.group} overlap >= {t.overlap:.2f}, "
                     f"head-importance correlation >= {t.importance:.2f}, candidate accuracy >= "
                     f"{1 / self.n_boxes + t.accuracy_over_chance:.2f} (chance {1 / self.n_boxes:.2f} + "
                     f"{t.accuracy_over_chance:.2f}); discovery sizes {self.sizes}, receivers {self.receivers}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        def m(x: Measurement | None):
            return None if x is None else {k: _json(v) for k, v in x.to_dict().items()}

        return {
            "base": self.base, "candidate": self.candidate, "verdict": self.verdict, "reason": self.reason(),
            "n_prompts": self.n_prompts, "n_boxes": self.n_boxes, "seed": self.seed,
            "base_accuracy": m(self.base_accuracy), "candidate_accuracy": m(self.candidate_accuracy),
            "accuracy_difference": m(self.accuracy_difference),
            "base_faithfulness": m(self.base_faithfulness), "faithfulness": m(self.faithfulness),
            "base_circuit": self.base_circuit.to_dict(), "candidate_circuit": self.candidate_circuit.to_dict(),
            "overlap": {g: {"n_base": o.n_base, "n_candidate": o.n_candidate, "n_common": o.n_common,
                            "of_base": _json(o.of_base), "of_candidate": _json(o.of_candidate)}
                        for g, o in self.overlap.items()},
            "correlation": {g: _json(v) for g, v in self.correlation.items()},
            "importance": _json(self.importance), "importance_correlation": _json(self.importance_correlation),
            "notes": list(self.notes),
            "cmap_accuracy": m(self.cmap_accuracy), "cmap_gain": m(self.cmap_gain),
            "thresholds": asdict(self.thresholds),
            "checks": [{"name": n, "value": _json(v), "bound": b, "passed": ok} for n, v, b, ok in self.checks],
            "sizes": dict(self.sizes), "receivers": dict(self.receivers),
        }


def compare(base, candidate, *, n_prompts: int = 200, n_boxes: int = 7, seed: int = 0,
            n_discovery_prompts: int | None = None, sizes: dict[str, int] | None = None,
            receivers: dict[str, int] | None = None, thresholds: Thresholds = Thresholds(),
            batch_size: int = 50, progress: bool = True) -> Comparison:
    """Compare ``candidate`` with ``base`` on the same prompts and give a "preserved" verdict.

    Circuits are discovered in each model with ``discover_circuit`` (same prompts, ``seed``; ``sizes``
    and ``receivers`` default to discovery's scaled paper values). Accuracy, faithfulness and CMAP use
    ``n_prompts`` fresh prompts (seeds ``seed + 3`` and ``seed + 4`` for the mean-ablation reference).
    """
    from mechtest.methods.discovery import discover_circuit
    from mechtest.methods.evaluation import ablation_edits, ablation_means, correct
    from mechtest.tasks.entity_tracking import make_dataset, mean_ablation_set

    check_compatible(base, candidate)
    n_disc = n_prompts if n_discovery_prompts is None else n_discovery_prompts
    disc_base = discover_circuit(base, n_prompts=n_disc, n_boxes=n_boxes, seed=seed, sizes=sizes,
                                 receivers=receivers, batch_size=batch_size, progress=progress)
    disc_cand = disc_base if candidate is base else discover_circuit(
        candidate, n_prompts=n_disc, n_boxes=n_boxes, seed=seed, sizes=sizes, receivers=receivers,
        batch_size=batch_size, progress=progress)
    base_circuit, cand_circuit = disc_base.circuit, disc_cand.circuit

    data = make_dataset(base.tokenizer, n_prompts, n_boxes=n_boxes, seed=seed + 3)
    reference = mean_ablation_set(base.tokenizer, n_prompts, n_boxes=n_boxes, seed=seed + 4)
    base_hits = correct(base, data, batch_size=batch_size)
    cand_hits = correct(candidate, data, batch_size=batch_size)

    means = {m: ablation_means(m, reference, batch_size=batch_size) for m in dict.fromkeys((base, candidate))}

    def faithful(model, hits) -> Measurement | None:
        if hits.mean() == 0:
            return None
        circ = correct(model, data, batch_size=batch_size,
                       edits_for_batch=ablation_edits(model, data, means[model], keep=base_circuit))
        return ratio("faithfulness", circ, hits, seed=seed, model=model.name, circuit=base_circuit.name,
                     circuit_accuracy=float(circ.mean()), model_accuracy=float(hits.mean()))

    base_faith = faithful(base, base_hits)
    faith = faithful(candidate, cand_hits)
    cmap_hits = cmap_correct(base, candidate, data, circuit=cand_circuit, batch_size=batch_size, progress=progress)

    overlap = {g: _overlap(g, base_circuit, cand_circuit) for g in GROUPS}
    correlation = {g: _pearson(disc_base.scores.steps[g].scores, disc_cand.scores.steps[g].scores)
                   for g in GROUPS if g in disc_base.scores.steps and g in disc_cand.scores.steps}
    importance = {role: _importance(m, data, means[m], hits, batch_size)
                  for role, m, hits in (("base", base, base_hits), ("candidate", candidate, cand_hits))}
    importance_r = _within_layer_pearson(torch.tensor(importance["base"]), torch.tensor(importance["candidate"]))
    measured = Comparison(
        base=base.name, candidate=candidate.name, n_prompts=len(data), n_boxes=n_boxes, seed=seed,
        base_accuracy=proportion("accuracy", base_hits, seed=seed, model=base.name),
        candidate_accuracy=proportion("accuracy", cand_hits, seed=seed, model=candidate.name),
        accuracy_difference=difference("accuracy_difference", cand_hits, base_hits, seed=seed),
        base_circuit=base_circuit, candidate_circuit=cand_circuit, base_faithfulness=base_faith,
        faithfulness=faith, overlap=overlap, correlation=correlation,
        cmap_accuracy=proportion("cmap_accuracy", cmap_hits, seed=seed, donor=candidate.name, model=base.name),
        cmap_gain=difference("cmap_gain", cmap_hits, base_hits, seed=seed),
        importance=importance, importance_correlation=importance_r,
        thresholds=thresholds, sizes=dict(disc_base.sizes), receivers=dict(disc_base.receivers),
    )
    return judge(measured, thresholds)


def judge(comparison: Comparison, thresholds: Thresholds) -> Comparison:
    """The same measurements judged against other thresholds (no model is run)."""
    t, c = thresholds, comparison
    checks, notes = [], []
    if c.base_faithfulness is not None and c.base_faithfulness.value >= t.faithfulness:
        checks.append(("faithfulness", float("nan") if c.faithfulness is None else c.faithfulness.value,
                       t.faithfulness))
        checks.append((f"{t.group} overlap", c.overlap[t.group].of_base, t.overlap))
    else:
        explained = 0.0 if c.base_faithfulness is None else c.base_faithfulness.value
        notes.append(f"faithfulness and {t.group} overlap not checked: the base's discovered circuit explains only "
                     f"{explained:.2f} of the base (< {t.faithfulness:.2f})")
    checks += [
        ("head-importance correlation", c.importance_correlation, t.importance),
        ("candidate accuracy", c.candidate_accuracy.value, 1 / c.n_boxes + t.accuracy_over_chance),
    ]
    checks = tuple((name, value, bound, bool(np.isfinite(value) and value >= bound)) for name, value, bound in checks)
    return replace(comparison, thresholds=thresholds, checks=checks, notes=tuple(notes))


# --- internals -------------------------------------------------------------------------------------

def _importance(model, data, means, hits, batch_size: int) -> list[list[float]]:
    """(layers, heads): accuracy drop when that one head is mean-ablated at every position."""
    from mechtest.heads import mean_heads
    from mechtest.methods.evaluation import correct

    seq = data.input_ids.shape[1]
    drops = [[float(hits.mean() - correct(model, data, batch_size=batch_size, edits_for_batch=lambda sl, l=l, h=h: {
        ("head_out", l): mean_heads([h], means[l, :seq])}).mean()) for h in range(model.n_heads)]
        for l in range(model.n_layers)]
    return drops


def _rows(matrix) -> str:
    return "[" + "; ".join(" ".join(f"{v:.2f}" for v in row) for row in matrix) + "]"


def _overlap(group: str, base: Circuit, candidate: Circuit) -> GroupOverlap:
    a, b = set(base.heads(group)), set(candidate.heads(group))
    return GroupOverlap(group, len(a), len(b), len(a & b))


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.flatten().double(), y.flatten().double()
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    return float((x @ y) / denom) if denom > 0 else float("nan")


def _within_layer_pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson r of two (layers, heads) matrices after removing each layer's mean from both."""
    return _pearson(x - x.mean(dim=1, keepdim=True), y - y.mean(dim=1, keepdim=True))


def _fmt(value: float) -> str:
    return "nan" if not np.isfinite(value) else f"{value:.2f}"


def _json(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json(value.item())
    return value
