"""Measurements with bootstrap confidence intervals over prompts: what every claim reports."""

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


def mean_ci(per_prompt: np.ndarray, *, seed: int = 0) -> tuple[float, float]:
    return bootstrap_ci([per_prompt], lambda a: a.mean(axis=1), seed=seed)


def ratio_ci(numerator: np.ndarray, denominator: np.ndarray, *, seed: int = 0) -> tuple[float, float]:
    """Interval of mean(numerator) / mean(denominator), paired over prompts."""

    def stat(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return a.mean(axis=1) / b.mean(axis=1)

    return bootstrap_ci([numerator, denominator], stat, seed=seed)
