"""Deciding a claim with its uncertainty: PASS, FAIL or INCONCLUSIVE, and how many prompts would decide.

``decide = "ci"`` (the default) passes a claim only when its whole confidence interval meets the bound and
fails it only when the whole interval misses; an interval straddling the bound is INCONCLUSIVE. A CI gate
then gives the same answer on every seed: a checkpoint measured at 0.951 [0.90, 0.99] against ">= 0.95"
is inconclusive every time instead of passing today and failing tomorrow. ``decide = "estimate"`` compares
the point estimate alone (the rule for quick exploratory runs).

Sequential sampling (``n_prompts = "auto"``) looks at the same claim on 50, 100, 200, ... prompts up to
``max_prompts`` and stops at the first decided look. Repeated looks at a 95 % interval are not a 95 %
decision, so the error rate is spent over the looks: each of the K planned looks uses level 1 - 0.05 / K
(Bonferroni), which bounds the chance of any wrong decision over all looks by 5 %. Datasets are prefix
stable, so each larger sample contains the earlier one.
"""

from __future__ import annotations

import math

PASS, FAIL, INCONCLUSIVE, ERROR = "PASS", "FAIL", "INCONCLUSIVE", "ERROR"
RULES = ("ci", "estimate")
POLICIES = ("fail", "pass", "xfail")  # what an INCONCLUSIVE claim does to the pytest outcome
DEFAULT_RULE = "ci"
ALPHA = 0.05
FIRST_LOOK = 50
DEFAULT_MAX_PROMPTS = 1600
# the most prompts a claim or a run may ask for: far above any sample a decision needs (intervals shrink as
# 1/sqrt(n)), far below what a typo (10000000) would make a run compute for days
MAX_PROMPTS = 100_000


def bounds(expect) -> tuple[float, float, bool, bool]:
    """The accepted region of a numeric expectation: (low, high, low inclusive, high inclusive)."""
    op, a, b = expect.op, expect.a, expect.b
    return {
        ">=": (a, math.inf, True, True), ">": (a, math.inf, False, True),
        "<=": (-math.inf, a, True, True), "<": (-math.inf, a, True, False),
        "==": (a - b - 1e-12, a + b + 1e-12, True, True), "in": (a, b, True, True),
    }[op]


def _inside(x: float, low: float, high: float, low_inc: bool, high_inc: bool) -> bool:
    return (x > low or (low_inc and x == low)) and (x < high or (high_inc and x == high))


def decide_interval(ci_low: float, ci_high: float, low: float, high: float, low_inc: bool = True,
                    high_inc: bool = True) -> str:
    """PASS if the whole interval lies in the accepted region, FAIL if none of it does, else INCONCLUSIVE."""
    if _inside(ci_low, low, high, low_inc, high_inc) and _inside(ci_high, low, high, low_inc, high_inc):
        return PASS
    if ci_high < low or (ci_high == low and not low_inc) or ci_low > high or (ci_low == high and not high_inc):
        return FAIL
    return INCONCLUSIVE


def decide(expect, value, ci_low: float | None, ci_high: float | None, rule: str = DEFAULT_RULE) -> str:
    """PASS / FAIL / INCONCLUSIVE for a measured value (and interval) against the claim's expectation."""
    if expect.op == "verdict" and str(value) == "inconclusive":
        return INCONCLUSIVE
    if expect.op in ("verdict", "snapshot") or rule == "estimate" or ci_low is None or ci_high is None \
            or not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return PASS if expect.check(value) else FAIL
    if value is None or not math.isfinite(float(value)):
        return FAIL
    return decide_interval(ci_low, ci_high, *bounds(expect))


def prompts_to_clear(value: float, ci_low: float, ci_high: float, bound: float, n: int) -> int | None:
    """Prompts at which an interval of the same shape would no longer contain ``bound`` (1/sqrt(n) law)."""
    distance, half = abs(value - bound), max(value - ci_low, ci_high - value)
    if distance <= 0 or not all(math.isfinite(x) for x in (value, ci_low, ci_high, bound)):
        return None
    return max(n, math.ceil(round(n * (half / distance) ** 2, 6)))


def prompts_to_decide(expect, value, ci_low, ci_high, n: int) -> int | None:
    """Prompts an interval of the same shape would need to clear the nearest bound at the observed effect.

    Interval half-widths shrink as 1/sqrt(n): n' = n * (half-width / distance to the bound)^2. None when the
    estimate sits on the bound (no sample size decides) or the claim has no interval.
    """
    if expect.op in ("verdict", "snapshot") or ci_low is None or ci_high is None or value is None:
        return None
    value = float(value)
    if not all(math.isfinite(x) for x in (value, ci_low, ci_high)):
        return None
    low, high, *_ = bounds(expect)
    nearest = min((x for x in (low, high) if math.isfinite(x)), key=lambda x: abs(value - x))
    return prompts_to_clear(value, ci_low, ci_high, nearest, n)


def schedule(max_prompts: int, first: int = FIRST_LOOK) -> list[int]:
    """The sample sizes of sequential sampling: first, 2 first, 4 first, ..., ending at max_prompts."""
    sizes = [min(first, max_prompts)]
    while sizes[-1] < max_prompts:
        sizes.append(min(2 * sizes[-1], max_prompts))
    return sizes


def look_level(n_looks: int, alpha: float = ALPHA) -> float:
    """Confidence level of each look so that all looks together keep the error rate at ``alpha``."""
    return 1 - alpha / n_looks
