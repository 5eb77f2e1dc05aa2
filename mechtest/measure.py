"""Per-prompt outcomes -> a Measurement with a confidence interval: what every method and claim reports.

Every method builds its Measurement here (a proportion, a ratio of means, a paired difference, or any
statistic with a paired bootstrap), so intervals are computed one way throughout the package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Measurement:
    """A measured value with a 95% bootstrap interval and the sample it came from."""

    metric: str
    value: float
    ci_low: float
    ci_high: float
    n_prompts: int
    seed: int
    details: dict = field(default_factory=dict, compare=False)

    def explain(self) -> str:
        return (f"{self.metric} = {self.value:.3f} (95% CI {self.ci_low:.3f}..{self.ci_high:.3f}; "
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


def proportion(metric: str, hits, *, seed: int = 0, **details) -> Measurement:
    """The mean of per-prompt outcomes (an accuracy: hits are 0/1)."""
    hits = np.asarray(hits, dtype=np.float64)
    low, high = bootstrap_ci([hits], _mean, seed=seed)
    return Measurement(metric, float(hits.mean()) if hits.size else float("nan"), low, high, len(hits), seed,
                       details)


def ratio(metric: str, numerator, denominator, *, seed: int = 0, **details) -> Measurement:
    """mean(numerator) / mean(denominator), paired over prompts (e.g. circuit accuracy / model accuracy)."""
    num, den = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    low, high = bootstrap_ci([num, den], _ratio, seed=seed)
    value = float(num.mean() / den.mean()) if den.size and den.mean() != 0 else float("nan")
    return Measurement(metric, value, low, high, len(num), seed, details)


def difference(metric: str, a, b, *, seed: int = 0, **details) -> Measurement:
    """mean(a) - mean(b), paired over prompts (e.g. candidate accuracy - base accuracy)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    low, high = bootstrap_ci([a, b], _difference, seed=seed)
    return Measurement(metric, float(a.mean() - b.mean()), low, high, len(a), seed, details)


def statistic(metric: str, value: float, samples: Sequence[np.ndarray], stat: Callable[..., np.ndarray], *,
              seed: int = 0, **details) -> Measurement:
    """Any paired statistic of per-prompt arrays: ``value`` measured, ``stat`` bootstrapped for the interval."""
    low, high = bootstrap_ci(samples, stat, seed=seed)
    return Measurement(metric, float(value), low, high, len(samples[0]), seed, details)
