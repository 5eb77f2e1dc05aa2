"""ClaimResult: one claim evaluated on one model, immutable, and the text a failing claim prints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

OUTCOMES = ("PASS", "FAIL", "INCONCLUSIVE", "ERROR")


@dataclass(frozen=True)
class ClaimResult:
    """What the JSON report, the terminal table and JUnit properties carry for one claim on one model."""

    id: str
    model: str
    metric: str
    value: float | str | None
    ci_low: float | None
    ci_high: float | None
    expect: str
    passed: bool
    nodeid: str = ""
    n_prompts: int | None = None
    seed: int | None = None
    n_boxes: int | None = None
    heatmap: str | None = None
    detail: str = ""
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    outcome: str = "FAIL"  # PASS | FAIL | INCONCLUSIVE | ERROR (``passed`` also applies the inconclusive policy)
    decide: str = "ci"  # the rule: "ci" (the whole interval) or "estimate"
    level: float | None = None  # confidence level of the interval the decision used
    looks: list[int] = field(default_factory=list)  # sample sizes looked at (sequential sampling)
    prompts_needed: int | None = None  # prompts that would decide at the observed effect
    cached: bool = False  # read back from the claim-result cache (same claim, same weights)
    rule: str = ""  # how the metric decides, when not on its interval or estimate (e.g. a verdict's checks)
    task: str = "entity_tracking"  # the claim's task (mechtest.tasks): the report groups claims by it

    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClaimResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def properties(self) -> list[tuple[str, Any]]:
        """(name, value) pairs for ``record_property`` / ``item.user_properties`` (JUnit XML)."""
        props = [("mechtest_metric", self.metric), ("mechtest_model", self.model),
                 ("mechtest_value", fmt(self.value)), ("mechtest_expect", self.expect),
                 ("mechtest_outcome", self.outcome), ("mechtest_decide", self.decide)]
        if self.ci_low is not None:
            props += [("mechtest_ci_low", fmt(self.ci_low)), ("mechtest_ci_high", fmt(self.ci_high))]
        if self.n_prompts is not None:
            props += [("mechtest_n_prompts", self.n_prompts), ("mechtest_seed", self.seed)]
        if self.heatmap:
            props.append(("mechtest_heatmap", self.heatmap))
        return props

    def decision_text(self) -> str:
        """How the outcome was decided, and how many prompts would decide an undecided claim."""
        rule = self.rule or ("the whole interval against the bound" if self.decide == "ci" else "the point estimate")
        text = f"{self.outcome} on {rule}"
        if self.prompts_needed is not None and self.outcome == "INCONCLUSIVE":
            text += f"; about {self.prompts_needed} prompts would decide at the observed effect"
        elif self.outcome == "INCONCLUSIVE" and self.prompts_needed is None and self.ci_low is not None:
            text += "; the estimate sits on the bound: no sample size decides"
        return text

    def failure_text(self) -> str:
        """What a failing claim prints: measured vs expected, interval, decision, prompts, heat map."""
        verb = "is inconclusive" if self.outcome == "INCONCLUSIVE" else "does not hold"
        lines = [f"claim {self.id!r} on model {self.model!r} ({self.metric}) {verb}"]
        if self.error:
            lines.append(f"  error:     {self.error}")
        else:
            lines.append(f"  measured:  {fmt(self.value)}")
            lines.append(f"  expected:  {self.expect}")
            if self.ci_low is not None:
                level = f"{self.level:.0%}" if self.level else "95%"
                lines.append(f"  {level + ' CI:':<10} [{fmt(self.ci_low)}, {fmt(self.ci_high)}]")
            lines.append(f"  decided:   {self.decision_text()}")
        if self.n_prompts is not None:
            boxes = f", {self.n_boxes} boxes" if self.n_boxes else ""
            looks = f" (looks at {', '.join(map(str, self.looks))})" if len(self.looks) > 1 else ""
            lines.append(f"  prompts:   n={self.n_prompts}, seed={self.seed}{boxes}{looks}")
        if self.detail:
            lines += ["  " + line for line in self.detail.splitlines()]
        lines.append(f"  heat map:  {self.heatmap}" if self.heatmap
                     else "  heat map:  not written (pass --mechtest-report DIR to draw one)")
        return "\n".join(lines)


def _plain(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def safe_name(text: str) -> str:
    """A file-name-safe form of a claim id or model name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
