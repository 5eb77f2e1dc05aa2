"""Claim results and what is made of them: failure text, terminal table, JSON with provenance, heat maps.

Nothing here imports torch; matplotlib is imported only when a heat map is drawn.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any


@dataclass
class ClaimResult:
    """One claim evaluated on one model (what the JSON report, the summary and JUnit properties carry)."""

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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClaimResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def properties(self) -> list[tuple[str, Any]]:
        """(name, value) pairs for ``record_property`` / ``item.user_properties`` (JUnit XML)."""
        props = [("mechtest_metric", self.metric), ("mechtest_model", self.model),
                 ("mechtest_value", _fmt(self.value)), ("mechtest_expect", self.expect)]
        if self.ci_low is not None:
            props += [("mechtest_ci_low", _fmt(self.ci_low)), ("mechtest_ci_high", _fmt(self.ci_high))]
        if self.n_prompts is not None:
            props += [("mechtest_n_prompts", self.n_prompts), ("mechtest_seed", self.seed)]
        if self.heatmap:
            props.append(("mechtest_heatmap", self.heatmap))
        return props

    def failure_text(self) -> str:
        """What a failing claim prints: measured vs expected, interval, prompts, heat map."""
        lines = [f"claim {self.id!r} on model {self.model!r} ({self.metric}) does not hold"]
        if self.error:
            lines.append(f"  error:     {self.error}")
        else:
            lines.append(f"  measured:  {_fmt(self.value)}")
            lines.append(f"  expected:  {self.expect}")
            if self.ci_low is not None:
                lines.append(f"  95% CI:    [{_fmt(self.ci_low)}, {_fmt(self.ci_high)}]")
        if self.n_prompts is not None:
            boxes = f", {self.n_boxes} boxes" if self.n_boxes else ""
            lines.append(f"  prompts:   n={self.n_prompts}, seed={self.seed}{boxes}")
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


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


# ------------------------------------------------------------------------------------------- terminal


def summary_lines(results: list[ClaimResult], skipped: list[dict]) -> list[str]:
    """A fixed-width table, one row per evaluated claim, sorted by claim id and model."""
    rows = [("claim", "model", "measured", "interval", "expected", "result")]
    for r in sorted(results, key=lambda r: (r.id, r.model, r.nodeid)):
        interval = f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if r.ci_low is not None else "-"
        outcome = "PASS" if r.passed else ("ERROR" if r.error else "FAIL")
        rows.append((r.id, r.model, _fmt(r.value), interval, r.expect, outcome))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n_pass = sum(r.passed for r in results)
    tail = f"{n_pass} of {len(results)} claims hold"
    if skipped:
        tail += f"; {len(skipped)} skipped (model not configured)"
    return lines + [tail]


# ----------------------------------------------------------------------------------------------- JSON


def provenance(*, rootdir: Path, models: dict[str, dict], seeds, cache_stats: dict, options: dict) -> dict:
    """Where the numbers came from (pytest-benchmark style): versions, machine, commit, models, seeds."""

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    import mechtest

    return {
        "mechtest": mechtest.__version__,
        "torch": version("torch"),
        "transformers": version("transformers"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "git": git_info(rootdir),
        "models": {name: models[name] for name in sorted(models)},
        "seeds": sorted(set(seeds)),
        "cache": cache_stats,
        "options": options,
    }


def git_info(rootdir: Path) -> dict | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=rootdir, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=rootdir,
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def json_report(results: list[ClaimResult], skipped: list[dict], provenance_: dict) -> dict:
    keys = ("id", "model", "metric", "value", "ci_low", "ci_high", "expect", "passed", "n_prompts", "seed",
            "n_boxes", "nodeid", "heatmap", "error")
    claims = [{k: r.to_dict()[k] for k in keys} for r in sorted(results, key=lambda r: (r.nodeid, r.id, r.model))]
    return {"claims": claims,
            "skipped": sorted(skipped, key=lambda s: (s["nodeid"], s["model"])),
            "provenance": provenance_}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------- heat maps


GROUP_TITLES = {"value_fetcher": "value fetcher (last)", "pos_transmitter": "position transmitter (last)",
                "pos_detector": "position detector (query label)", "struct_reader": "structure reader (context)"}


def heatmap(scores: dict[str, Any], path: Path, *, title: str, circuit=None) -> Path:
    """Draw each path-patching step's (layers, heads) scores, the circuit's heads of that group outlined.

    ``scores`` maps group -> 2-D array-like; ``circuit`` is a Circuit or None. Writes a PNG; returns its path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    groups = [g for g in GROUP_TITLES if g in scores]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.0), squeeze=False)
    for ax, group in zip(axes[0], groups):
        data = np.asarray(scores[group], dtype=float)
        bound = float(np.nanmax(np.abs(data))) or 1.0
        image = ax.imshow(data, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
        ax.set_title(GROUP_TITLES[group], fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        if circuit is not None:
            for layer, head in circuit.heads(group):
                ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", lw=2))
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title + ("  (outlined: " + circuit.name + ")" if circuit is not None else ""), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
