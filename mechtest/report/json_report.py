"""The JSON report (pytest-benchmark style): every claim's result and where the numbers came from."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from mechtest.errors import MechtestError
from mechtest.report.result import ClaimResult


def provenance(*, rootdir: Path, models: dict[str, dict], seeds, cache_stats: dict, options: dict) -> dict:
    """Where the numbers came from (pytest-benchmark style): versions, machine, commit, models, seeds."""

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    from mechtest.linear_kernel import describe
    from mechtest.version import __version__

    return {
        "mechtest": __version__,
        "torch": version("torch"),
        "transformers": version("transformers"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "linear_kernel": describe(),
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


def json_report(results: list[ClaimResult], skipped: list[dict], provenance_: dict, *, interrupted: bool = False,
                not_run: list[str] = ()) -> dict:
    """The report; ``interrupted`` and ``not_run`` (node ids of collected claims that never ran) tell a CI that
    reads only this file that the run is incomplete."""
    keys = ("id", "model", "metric", "value", "ci_low", "ci_high", "expect", "outcome", "passed", "n_prompts",
            "seed", "n_boxes", "nodeid", "heatmap", "error", "details", "decide", "level", "looks", "prompts_needed",
            "cached", "task")
    claims = [{k: r.to_dict()[k] for k in keys} for r in sorted(results, key=lambda r: (r.nodeid, r.id, r.model))]
    tasks = {}
    for c in claims:  # per task: its claims' outcomes, so a gate over several mechanisms reads each one
        group = tasks.setdefault(c["task"], {"claims": [], "outcomes": {}})
        group["claims"].append(c["nodeid"] or f"{c['id']}[{c['model']}]")
        group["outcomes"][c["outcome"]] = group["outcomes"].get(c["outcome"], 0) + 1
    return {"interrupted": interrupted, "not_run": sorted(not_run), "claims": claims,
            "tasks": dict(sorted(tasks.items())),
            "skipped": sorted(skipped, key=lambda s: (s["nodeid"], s["model"])),
            "provenance": provenance_}


def check_json_path(path: Path) -> None:
    """Refuse a report path that cannot be written, before the run (not after an hour of claims)."""
    if path.is_dir():
        raise MechtestError(f"--mechtest-json {path}: is a directory; give a file name, e.g. {path / 'mechtest.json'}")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise MechtestError(f"--mechtest-json {path}: {parent} is not a directory")
    from mechtest.preflight import writable_problem

    if problem := writable_problem(parent):
        raise MechtestError(f"--mechtest-json {path}: {problem}")


def write_json(path: Path, data: dict) -> None:
    """Write atomically (temp file + rename); no temp file is left behind if writing fails."""
    check_json_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
