"""Per-prompt outcomes -> a Measurement with a confidence interval: what every method and claim reports.

Every method builds its Measurement here, so intervals are computed one way throughout the package:

* proportions (accuracies: 0/1 per prompt) get a Wilson score interval, which stays honest at 0 % and
  100 % (a percentile bootstrap collapses to [1, 1] there);
* ratios of means and paired differences get a paired percentile bootstrap over prompts; a ratio of 0/1
  outcomes is never narrower than the numerator's Wilson interval scaled by the denominator's mean, for the
  same reason. BCa would correct the bootstrap's bias for skewed statistics, but it needs scipy (a large
  dependency for one formula) and jackknife passes over every prompt; at the sample sizes claims use, the
  percentile interval and BCa differ by less than the claims' tolerances.

A Measurement keeps how to recompute its interval at another level (``at_level``), which sequential
sampling uses to spend its error rate over several looks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Measurement:
    """A measured value with a confidence interval (``level``, default 95 %) and the sample it came from."""

    metric: str
    value: float
    ci_low: float
    ci_high: float
    n_prompts: int
    seed: int
    details: dict = field(default_factory=dict, compare=False)
    level: float = LEVEL
    interval: str = "bootstrap"  # how the interval was computed: "wilson", "bootstrap", "wilson+bootstrap"
    recompute: Callable[[float], tuple[float, float]] | None = field(default=None, compare=False, repr=False)

    def at_level(self, level: float) -> Measurement:
        """The same measurement with its interval at another confidence level (same prompts)."""
        if self.recompute is None or level == self.level:
            return self
        low, high = self.recompute(level)
        return replace(self, ci_low=low, ci_high=high, level=level)

    def to_dict(self) -> dict:
        """Plain data for JSON (everything but the recompute function)."""
        return {"metric": self.metric, "value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "n_prompts": self.n_prompts, "seed": self.seed, "level": self.level, "interval": self.interval,
                "details": self.details}

    def explain(self) -> str:
        return (f"{self.metric} = {self.value:.3f} ({self.level:.0%} CI {self.ci_low:.3f}..{self.ci_high:.3f}; "
                f"{self.n_prompts} prompts, seed {self.seed})")

    def __str__(self) -> str:
        return self.explain()


def bootstrap_ci(samples: Sequence[np.ndarray], statistic: Callable[..., np.ndarray], *, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over prompts resampled with replacement.

    ``samples`` are per-prompt arrays of equal length, resampled with the SAME indices (a paired
    bootstrap), and ``statistic`` maps the resampled arrays, each of shape (n_boot, n), to (n_boot,).
    """
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    n = len(arrays[0])
    if n == 0:
        return (float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    stats = statistic(*(a[idx] for a in arrays))
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1 - level) / 2
    return (float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))


def _mean(a):
    return a.mean(axis=1)


def _ratio(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return a.mean(axis=1) / b.mean(axis=1)


def _difference(a, b):
    return a.mean(axis=1) - b.mean(axis=1)


def wilson_ci(successes: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (well-behaved at 0 and 1, unlike the Wald interval)."""
    if n == 0:
        return (float("nan"), float("nan"))
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = centre - half, centre + half
    return (0.0 if successes == 0 else max(0.0, low), 1.0 if successes == n else min(1.0, high))


def _is_binary(a: np.ndarray) -> bool:
    return bool(np.isin(a, (0.0, 1.0)).all())


def proportion(metric: str, hits, *, seed: int = 0, **details) -> Measurement:
    """The mean of per-prompt outcomes: Wilson interval for 0/1 hits, a bootstrap for fractional ones."""
    hits = np.asarray(hits, dtype=np.float64)
    value = float(hits.mean()) if hits.size else float("nan")
    if _is_binary(hits):
        def recompute(level):
            return wilson_ci(float(hits.sum()), len(hits), level)
        kind = "wilson"
    else:
        def recompute(level):
            return bootstrap_ci([hits], _mean, seed=seed, level=level)
        kind = "bootstrap"
    low, high = recompute(LEVEL)
    return Measurement(metric, value, low, high, len(hits), seed, details, interval=kind, recompute=recompute)


def ratio(metric: str, numerator, denominator, *, seed: int = 0, **details) -> Measurement:
    """mean(numerator) / mean(denominator), paired over prompts (e.g. circuit accuracy / model accuracy)."""
    num, den = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    value = float(num.mean() / den.mean()) if den.size and den.mean() != 0 else float("nan")
    binary = _is_binary(num) and den.size and den.mean() != 0

    def recompute(level):
        low, high = bootstrap_ci([num, den], _ratio, seed=seed, level=level)
        if binary:  # never narrower than the numerator's own binomial uncertainty
            w_low, w_high = wilson_ci(float(num.sum()), len(num), level)
            low, high = min(low, w_low / den.mean()), max(high, w_high / den.mean())
        return (low, high)

    low, high = recompute(LEVEL)
    return Measurement(metric, value, low, high, len(num), seed, details,
                       interval="wilson+bootstrap" if binary else "bootstrap", recompute=recompute)


def difference(metric: str, a, b, *, seed: int = 0, **details) -> Measurement:
    """mean(a) - mean(b), paired over prompts (e.g. candidate accuracy - base accuracy)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)

    def recompute(level):
        return bootstrap_ci([a, b], _difference, seed=seed, level=level)

    low, high = recompute(LEVEL)
    return Measurement(metric, float(a.mean() - b.mean()), low, high, len(a), seed, details, recompute=recompute)


def statistic(metric: str, value: float, samples: Sequence[np.ndarray], stat: Callable[..., np.ndarray], *,
              seed: int = 0, **details) -> Measurement:
    """Any paired statistic of per-prompt arrays: ``value`` measured, ``stat`` bootstrapped for the interval."""
    def recompute(level):
        return bootstrap_ci(samples, stat, seed=seed, level=level)

    low, high = recompute(LEVEL)
    return Measurement(metric, float(value), low, high, len(samples[0]), seed, details, recompute=recompute)
