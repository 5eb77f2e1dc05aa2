"""Base vs. candidate (e.g. a fine-tune): does the candidate still run the base model's mechanism?

The verdict rests on the paper's evidence, each check decided on its confidence interval:

* **the base circuit is faithful in the base** (precondition): a circuit that does not explain the base
  cannot show that the candidate kept it, so if it clearly fails the verdict is ``inconclusive``; if its
  interval straddles the bound, only a clear failure of the candidate decides (``not preserved``);
* **faithfulness of the base's circuit in the candidate** (spec 5.2; Vicuna/Goat keep Llama's circuit);
* **the base's value fetchers are still strong in the candidate** (spec 5.5): their share of the
  candidate's value-fetcher effect against its strongest other heads (``fetcher_share``), bootstrapped over
  prompts. Each model's own discovered value fetchers, compared as sets, are reported as supporting evidence
  only: a set flips between samples when two heads are nearly tied;
* **CMAP explains the gain** (spec 7): when the candidate is more accurate by clearly more than
  ``accuracy_margin`` (the gain's interval above it), patching the candidate's outputs of the base circuit's
  heads into the base recovers at least half of the gain;
* **non-inferiority**: candidate accuracy >= base accuracy - ``accuracy_margin`` (paired difference), so
  a fine-tune that forgot the task is not preserved however faithful its circuit looks (faithfulness is a
  ratio); and the candidate is above chance.

A recorded base circuit (``base_circuit=``) skips the base's discovery: the circuit is then not checked to
be what path patching finds in the base on these settings, and no path-patching profiles are compared; every
deciding check is still measured.

Heads are compared **by index**: the gate asks whether a fine-tune kept the mechanism in the same heads,
which is what fine-tuning does. A function-identical copy with heads renamed within a layer, or an
independently trained model, is "not preserved" by design. The path-patching score profiles are reported
as supporting evidence only, with a within-layer relabelling p-value (null: the candidate's heads renamed
at random within each layer), so an index coincidence is visible as such and never decides.

Every check is PASS, FAIL or INCONCLUSIVE (interval straddling its bound). Any FAIL: ``not preserved``; all
PASS: ``preserved``; otherwise ``inconclusive``, with the prompts that would decide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mechtest.decision import FAIL, INCONCLUSIVE, decide_interval, prompts_to_clear
from mechtest.measure import LEVEL, Measurement, bootstrap_ci, difference, proportion, ratio, wilson_ci
from mechtest.methods.circuits import Circuit
from mechtest.methods.cmap import check_compatible, cmap_correct
from mechtest.spec import VERDICTS, derived_seed  # noqa: F401  (VERDICTS: re-exported)
from mechtest.tasks.base import DEFAULT_TASK
from mechtest.tasks.registry import get_task



@dataclass(frozen=True)
class Thresholds:
    """What "preserved" requires; every bound is inclusive."""

    faithfulness: float = 0.80   # base circuit's faithfulness, in the base and in the candidate
    fetcher_share: float = 1 / 3  # the candidate's strongest other heads at most twice as strong as the base's
    cmap_explained: float = 0.50  # share of a significant accuracy gain that CMAP of the circuit heads recovers
    accuracy_margin: float = 0.05  # candidate accuracy >= base accuracy - this (paired)
    accuracy_over_chance: float = 0.10  # candidate accuracy >= 1 / n_boxes + this
    permutations: int = 1000     # within-layer relabellings for the profile p-value


@dataclass(frozen=True)
class Check:
    """One piece of evidence: its value (and interval), the bound it must meet, and the outcome."""

    name: str
    value: float
    ci_low: float | None
    ci_high: float | None
    bound: float
    outcome: str  # PASS | FAIL | INCONCLUSIVE
    prompts_to_decide: int | None = None

    def line(self) -> str:
        ci = f" [{self.ci_low:.3f}, {self.ci_high:.3f}]" if self.ci_low is not None else ""
        more = f"; ~{self.prompts_to_decide} prompts would decide" if self.prompts_to_decide else ""
        return f"{self.name} {_fmt(self.value)}{ci} vs >= {self.bound:.2f}: {self.outcome}{more}"


@dataclass(frozen=True)
class Comparison:
    """All measurements of one base-vs-candidate comparison, the checks and the verdict they give."""

    base: str
    candidate: str
    n_prompts: int
    n_boxes: int
    seed: int
    base_accuracy: Measurement
    candidate_accuracy: Measurement
    accuracy_difference: Measurement          # candidate - base, paired over prompts
    base_circuit: Circuit
    candidate_circuit: Circuit | None          # the candidate's own discovery (None with a recorded base circuit)
    base_faithfulness: Measurement | None     # base circuit in the base (the precondition)
    faithfulness: Measurement | None          # base circuit in the candidate; None if the candidate scores 0
    fetcher_share: Measurement                # base's value fetchers vs the candidate's strongest other heads
    overlap: dict[str, float]                 # per group: |base ∩ candidate| / |base| (supporting only)
    cmap_accuracy: Measurement                # base with the candidate's base-circuit head outputs patched in
    cmap_gain: Measurement                    # cmap_accuracy - base accuracy, paired
    cmap_explained: Measurement | None        # cmap gain / accuracy gain (when the gain is significant)
    profile_correlation: float                # path-patching score profiles, within layers (supporting)
    profile_p_value: float                    # within-layer relabelling null
    thresholds: Thresholds
    recorded_circuit: bool = False            # the base circuit was given, not discovered in the base
    checks: tuple[Check, ...] = ()
    not_applied: tuple[tuple[str, str], ...] = ()  # (check, why)
    verdict: str = "inconclusive"
    reason: str = ""
    sizes: dict[str, int] = field(default_factory=dict)
    receivers: dict[str, int] = field(default_factory=dict)
    task: str = DEFAULT_TASK

    @property
    def preserved(self) -> bool:
        return self.verdict == "preserved"

    def explain(self) -> str:
        lines = [f"{self.candidate} vs {self.base}: {self.verdict.upper()} - {self.reason}"]
        lines += [f"  check: {c.line()}" for c in self.checks]
        lines += [f"  not applied: {name} ({why})" for name, why in self.not_applied]
        d = self.accuracy_difference
        lines.append(f"  accuracy: base {self.base_accuracy.value:.3f}, candidate {self.candidate_accuracy.value:.3f}, "
                     f"gain {d.value:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]; {self.n_prompts} prompts, "
                     f"{self.n_boxes} boxes, seed {self.seed}")
        origin = "recorded" if self.recorded_circuit else "discovered in the base"
        own = "not discovered" if self.candidate_circuit is None else _heads(self.candidate_circuit)
        lines.append(f"  base circuit ({origin}): {_heads(self.base_circuit)}; candidate's own: {own}")
        lines.append(f"  CMAP (candidate's base-circuit heads into the base): {self.cmap_accuracy.value:.3f}, gain "
                     f"{self.cmap_gain.value:+.3f} [{self.cmap_gain.ci_low:+.3f}, {self.cmap_gain.ci_high:+.3f}]")
        if self.overlap:
            first = get_task(self.task).groups[0]
            lines.append(f"  supporting only: own discoveries' {first} overlap {_fmt(self.overlap[first])}"
                         f"; path-patching profile correlation {_fmt(self.profile_correlation)} "
                         f"(within layers; relabelling p = {_fmt(self.profile_p_value)})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        def m(x: Measurement | None):
            return None if x is None else _json(x.to_dict())

        return {
            "base": self.base, "candidate": self.candidate, "verdict": self.verdict, "reason": self.reason,
            "n_prompts": self.n_prompts, "n_boxes": self.n_boxes, "seed": self.seed,
            "checks": [_json(asdict(c)) for c in self.checks],
            "not_applied": [{"check": n, "reason": r} for n, r in self.not_applied],
            "base_accuracy": m(self.base_accuracy), "candidate_accuracy": m(self.candidate_accuracy),
            "accuracy_difference": m(self.accuracy_difference), "base_faithfulness": m(self.base_faithfulness),
            "faithfulness": m(self.faithfulness), "fetcher_share": m(self.fetcher_share),
            "cmap_accuracy": m(self.cmap_accuracy),
            "cmap_gain": m(self.cmap_gain), "cmap_explained": m(self.cmap_explained),
            "overlap": _json(self.overlap), "profile_correlation": _json(self.profile_correlation),
            "profile_p_value": _json(self.profile_p_value),
            "base_circuit": self.base_circuit.to_dict(), "recorded_circuit": self.recorded_circuit,
            "candidate_circuit": None if self.candidate_circuit is None else self.candidate_circuit.to_dict(),
            "thresholds": asdict(self.thresholds), "sizes": dict(self.sizes), "receivers": dict(self.receivers),
        }


def compare(base, candidate, *, n_prompts: int = 200, n_boxes: int = 7, seed: int = 0,
            n_discovery_prompts: int | None = None, thresholds: Thresholds = Thresholds(), batch_size: int = 50,
            base_discovery=None, candidate_discovery=None, base_circuit: Circuit | None = None, cache=None,
            progress: bool = True, task: str = DEFAULT_TASK, share_prompts: int | None = None) -> Comparison:
    """Compare ``candidate`` with ``base`` on the same prompts and give a verdict on the paper's evidence.

    Circuits are discovered in each model on ``n_discovery_prompts`` prompts (seed ``seed``), unless
    discoveries are passed in (the façade passes its cached ones, so a base is discovered once for every
    candidate), or ``base_circuit`` is given: then neither model is discovered (the candidate's discovery
    is supporting evidence only). Accuracy, faithfulness, CMAP and the value fetchers' share use ``n_prompts``
    other prompts (the derived ``"evaluation"``, ``"evaluation_reference"`` and ``"evaluation_corruption"``
    seeds, :func:`mechtest.spec.derived_seed`). ``share_prompts`` runs the value fetchers' share on the first
    that many of them only: it path-patches every head on every prompt (most of a verdict's time on a large
    model), and the check then names the prompts it used.
    """
    from mechtest.methods.discovery import discover_circuit
    from mechtest.methods.evaluation import ablation_means, circuit_correct
    from mechtest.methods.fetcher_share import fetcher_share
    spec = get_task(task)
    check_compatible(base, candidate)
    n_disc = n_prompts if n_discovery_prompts is None else n_discovery_prompts
    disc_base = disc_cand = None
    if base_circuit is None:
        disc_base = base_discovery or discover_circuit(base, n_prompts=n_disc, n_boxes=n_boxes, seed=seed,
                                                       progress=progress, cache=cache, task=task)
        disc_cand = candidate_discovery or (disc_base if candidate is base else discover_circuit(
            candidate, n_prompts=n_disc, n_boxes=n_boxes, seed=seed, progress=progress, cache=cache, task=task))
    else:
        base_circuit.check(base)
    circuit = (base_circuit if base_circuit is not None else disc_base.circuit).for_task(spec.name)

    data = spec.dataset(base.tokenizer, n_prompts, n_boxes=n_boxes, seed=derived_seed(seed, "evaluation"))
    reference = spec.reference(base.tokenizer, n_prompts, n_boxes=n_boxes, seed=derived_seed(seed, "evaluation_reference"))
    def label(what: str, model) -> str | None:  # a progress line, shown only for a step that runs long
        return f"{what} {model.name}" if progress else None

    # both models' accuracies come out of CMAP's passes: the candidate's run reads the circuit heads' outputs
    # anyway, and the base's clean run is the prefix its patched run continues (unless the base's are cached)
    known = None if cache is None else cache.get(_hits_key(base, data, cache, {}))
    donor_hits: list = []
    own_hits: list | None = None if known is not None else []
    cmap_hits = cmap_correct(base, candidate, data, circuit=circuit, batch_size=batch_size, progress=progress,
                             donor_hits=donor_hits, own_hits=own_hits)
    base_hits = known["hits"].numpy() if known is not None else \
        _hits(base, data, cache, {}, lambda: np.concatenate(own_hits))
    cand_hits = _hits(candidate, data, cache, {}, lambda: np.concatenate(donor_hits))

    def faithful(model, hits) -> Measurement | None:
        if hits.mean() == 0:
            return None
        means = ablation_means(model, reference, batch_size=batch_size, cache=cache, progress=progress)
        run = {"keep": [list(n) for n in circuit.nodes], "reference": _digest(reference.input_ids)}
        circ = _hits(model, data, cache, run, lambda: circuit_correct(model, circuit, data, means, batch_size=batch_size,
                                                                      progress=label("circuit accuracy", model)))
        return ratio("faithfulness", circ, hits, seed=seed, model=model.name, circuit=circuit.name,
                     circuit_accuracy=float(circ.mean()), model_accuracy=float(hits.mean()))

    gain = difference("accuracy_difference", cand_hits, base_hits, seed=seed)
    explained = cmap_explained(base_hits, cand_hits, cmap_hits, seed=seed) if gain.ci_low > 0 else None
    share_data = data if share_prompts is None or share_prompts >= len(data) else data[:share_prompts]
    share = fetcher_share(candidate, share_data, circuit.heads(spec.groups[0]),
                          seed=derived_seed(seed, "evaluation_corruption"), batch_size=batch_size, progress=progress)
    r, p = (float("nan"), float("nan")) if disc_base is None else \
        profile_evidence(disc_base.scores, disc_cand.scores, thresholds.permutations, seed)
    measured = Comparison(
        base=base.name, candidate=candidate.name, n_prompts=len(data), n_boxes=n_boxes, seed=seed,
        base_accuracy=proportion("accuracy", base_hits, seed=seed, model=base.name),
        candidate_accuracy=proportion("accuracy", cand_hits, seed=seed, model=candidate.name),
        accuracy_difference=gain, base_circuit=circuit,
        candidate_circuit=None if disc_cand is None else disc_cand.circuit,
        base_faithfulness=faithful(base, base_hits), faithfulness=faithful(candidate, cand_hits),
        fetcher_share=share,
        overlap={} if disc_cand is None else {g: _overlap(g, circuit, disc_cand.circuit) for g in spec.groups},
        cmap_accuracy=proportion("cmap_accuracy", cmap_hits, seed=seed, donor=candidate.name, model=base.name),
        cmap_gain=difference("cmap_gain", cmap_hits, base_hits, seed=seed), cmap_explained=explained,
        profile_correlation=r, profile_p_value=p, thresholds=thresholds, recorded_circuit=disc_base is None,
        sizes={} if disc_base is None else dict(disc_base.sizes),
        receivers={} if disc_base is None else dict(disc_base.receivers), task=spec.name)
    return judge(measured, thresholds)


def _hits(model, data, cache, what: dict, compute) -> np.ndarray:
    """Per-prompt correctness through the activation cache (when given), keyed on the model, the prompts, their
    answers and ``what`` else the run depends on: a base's plain and circuit runs are shared by every candidate."""
    if cache is None:
        return compute()
    key = _hits_key(model, data, cache, what)
    return cache.get_or_compute(key, lambda: {"hits": torch.as_tensor(compute())})["hits"].numpy()


def _hits_key(model, data, cache, what: dict) -> str:
    return cache.key(fingerprint=model.fingerprint, inputs=data.input_ids, site="correct", dtype=model.dtype,
                     extra={"answers": _digest(data.answer_ids), **what})


def _digest(tensor: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def cmap_explained(base_hits, cand_hits, cmap_hits, *, seed: int = 0) -> Measurement:
    """(CMAP accuracy - base accuracy) / (candidate accuracy - base accuracy), paired over prompts.

    When CMAP gives the candidate's answer on every prompt, every bootstrap resample gives exactly 1 and the
    percentile interval collapses to a point; but the rate at which the two disagree is only known up to its
    Wilson interval. Since ``explained = 1 - mean(cand - cmap) / gain`` and ``|mean(cand - cmap)|`` is at most
    that rate, the interval is never narrower than ``value ± (the rate's Wilson upper bound) / gain``."""
    base_hits, cand_hits, cmap_hits = (np.asarray(a, dtype=np.float64) for a in (base_hits, cand_hits, cmap_hits))
    gain = cand_hits.mean() - base_hits.mean()
    value = (cmap_hits.mean() - base_hits.mean()) / gain
    discordant = float((cmap_hits != cand_hits).sum())

    def recompute(level):
        low, high = bootstrap_ci([base_hits, cand_hits, cmap_hits], _explained, seed=seed, level=level)
        floor = wilson_ci(discordant, len(cand_hits), level)[1] / gain
        return min(low, value - floor), max(high, value + floor)

    low, high = recompute(LEVEL)
    return Measurement("cmap_explained", float(value), low, high, len(cand_hits), seed,
                       {"discordant_prompts": int(discordant)}, interval="bootstrap+wilson", recompute=recompute)


def judge(c: Comparison, t: Thresholds) -> Comparison:
    """Decide each check on its interval and combine them into the verdict (no model is run)."""
    from dataclasses import replace

    checks, not_applied = [], []
    base_ok = c.base_faithfulness is not None and _check("base circuit faithful in base", c.base_faithfulness,
                                                         t.faithfulness)
    if not base_ok or base_ok.outcome == FAIL:
        why = "the base answers no prompt" if not base_ok else base_ok.line()
        checks += [base_ok] if base_ok else []
        return replace(c, thresholds=t, checks=tuple(checks), verdict="inconclusive",
                       not_applied=(("the candidate checks", "a circuit that does not explain the base cannot show "
                                                             "that the candidate kept it"),),
                       reason=f"the base's discovered circuit is not faithful in the base: {why}")
    checks.append(base_ok)  # PASS, or INCONCLUSIVE: a clear failure of the candidate still decides
    if c.faithfulness is None:
        checks.append(Check("base circuit faithful in candidate", 0.0, None, None, t.faithfulness, FAIL))
    else:
        checks.append(_check("base circuit faithful in candidate", c.faithfulness, t.faithfulness))
    spec = get_task(c.task)
    first = "value fetchers'" if spec.name == DEFAULT_TASK else f"{spec.groups[0]} heads'"
    subset = f" (first {c.fetcher_share.n_prompts} of {c.n_prompts} prompts)" \
        if c.fetcher_share.n_prompts < c.n_prompts else ""
    checks.append(_check(f"base {first} share in candidate{subset}", c.fetcher_share, t.fetcher_share))
    # a gain is explained only where it is clearly more than the margin the gate treats as no change: a gain of
    # a few prompts makes the ratio's interval unbounded (the 1 % noised Qwen: +0.02 [0.01, 0.04], CMAP 0.43 [-1.4, 2.3])
    if c.cmap_explained is not None and c.accuracy_difference.ci_low > t.accuracy_margin:
        checks.append(_check("accuracy gain explained by CMAP", c.cmap_explained, t.cmap_explained))
    else:
        d = c.accuracy_difference
        not_applied.append(("accuracy gain explained by CMAP",
                            f"no gain clearly above the {t.accuracy_margin:.2f} margin to explain: "
                            f"{d.value:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]"))
    if c.recorded_circuit:
        not_applied.append(("base circuit is what discovery finds in the base",
                            "recorded base circuit: the base was not path-patched, so neither own discoveries nor "
                            "path-patching profiles are compared"))
    checks.append(_check("accuracy vs base (non-inferiority)", c.accuracy_difference, -t.accuracy_margin))
    checks.append(_check("candidate accuracy", c.candidate_accuracy, spec.chance(c.n_boxes) + t.accuracy_over_chance))
    outcomes = [k.outcome for k in checks]
    if FAIL in outcomes:
        verdict = "not preserved"
        reason = "; ".join(k.line() for k in checks if k.outcome == FAIL)
    elif INCONCLUSIVE in outcomes:
        verdict = "inconclusive"
        reason = "undecided: " + "; ".join(k.line() for k in checks if k.outcome == INCONCLUSIVE)
    else:
        verdict = "preserved"
        reason = "every check holds on its whole interval"
    return replace(c, thresholds=t, checks=tuple(checks), not_applied=tuple(not_applied), verdict=verdict,
                   reason=reason)


def profile_evidence(base_scores, cand_scores, permutations: int, seed: int) -> tuple[float, float]:
    """Within-layer correlation of the two models' path-patching scores (all steps), and its p-value under
    random renaming of the candidate's heads within each layer (the same renaming in every step)."""
    groups = [g for g in base_scores.steps if g in cand_scores.steps]
    if not groups:
        return float("nan"), float("nan")
    x = torch.stack([base_scores.steps[g].scores.double() for g in groups])  # (steps, layers, heads)
    y = torch.stack([cand_scores.steps[g].scores.double() for g in groups])
    observed = _within_layer_r(x, y)
    gen = torch.Generator().manual_seed(seed)
    n_layers, n_heads = x.shape[1], x.shape[2]
    hits = 0
    for _ in range(permutations):
        perm = torch.stack([torch.randperm(n_heads, generator=gen) for _ in range(n_layers)])
        shuffled = torch.gather(y, 2, perm.unsqueeze(0).expand_as(y))
        hits += _within_layer_r(x, shuffled) >= observed
    return observed, (1 + hits) / (1 + permutations)


# --- internals -------------------------------------------------------------------------------------

def _check(name: str, m: Measurement, bound: float) -> Check:
    outcome = decide_interval(m.ci_low, m.ci_high, bound, float("inf"))
    needed = prompts_to_clear(m.value, m.ci_low, m.ci_high, bound, m.n_prompts) if outcome == INCONCLUSIVE else None
    return Check(name, m.value, m.ci_low, m.ci_high, bound, outcome, needed)


def _explained(base, cand, cmap):
    with np.errstate(divide="ignore", invalid="ignore"):
        return (cmap.mean(axis=1) - base.mean(axis=1)) / (cand.mean(axis=1) - base.mean(axis=1))


def _within_layer_r(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(dim=-1, keepdim=True), y - y.mean(dim=-1, keepdim=True)
    denom = float(x.norm() * y.norm())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def _overlap(group: str, base: Circuit, candidate: Circuit) -> float:
    a, b = set(base.heads(group)), set(candidate.heads(group))
    return len(a & b) / len(a) if a else float("nan")


def _heads(circuit: Circuit) -> str:
    return ", ".join(f"{g} {list(map(list, circuit.heads(g)))}" for g in circuit.group_names if circuit.heads(g))


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
