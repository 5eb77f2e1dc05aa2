"""Claim results stored on disk, so an unchanged claim on unchanged weights is read back, not recomputed.

The key covers everything the result depends on: the claim's fields and decision rule, the sample settings
actually used, the fingerprint of every model the claim reads (computed without loading the weights), the
content of any circuit file it names, the metric's ``version`` and mechtest's version. Entries are JSON
written atomically (temp file + ``os.replace``). Each entry carries its own key, the claim id and model it
answers and a checksum of its content, all verified on read: a file moved or copied under another key (a CI
cache restore mixing two runs), a torn write or an edit is a miss, never served, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

from mechtest.report.result import ClaimResult


def claim_key(claim, model_name: str, *, fingerprints: dict[str, str], settings: dict, metric_version: str) -> str:
    """sha256 of what a claim's result depends on (see the module docstring)."""
    from mechtest.version import __version__

    files = {}
    for value in claim.params.values():
        if isinstance(value, str) and value.endswith(".json") and Path(value).is_file():
            files[value] = hashlib.sha256(Path(value).read_bytes()).hexdigest()
    payload = {
        "mechtest": __version__, "metric": claim.metric, "metric_version": metric_version,
        "params": claim.params, "expect": str(claim.expect), "n_prompts": claim.n_prompts, "seed": claim.seed,
        "n_boxes": claim.n_boxes, "decide": claim.decide, "max_prompts": claim.max_prompts, "model": model_name,
        "fingerprints": fingerprints, "files": files, "settings": settings,
    }
    if "task" in claim.params:  # a task's definition changes its prompts: key on it (absent: entity tracking)
        from mechtest.tasks.registry import get_task

        payload["task"] = get_task(claim.params["task"]).identity()
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:40]


class ResultCache:
    """``<cache dir>/claims/<key>.json``: one decided ClaimResult per key."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory) / "claims"

    def get(self, key: str, *, claim_id: str, model: str) -> ClaimResult | None:
        """The result stored under ``key`` for claim ``claim_id`` on ``model``; None unless the entry verifies."""
        try:
            entry = json.loads((self.directory / f"{key}.json").read_text(encoding="utf-8"))
            body = {k: entry[k] for k in ("key", "claim", "model", "result")}
            if entry.get("sha256") != _checksum(body) or (body["key"], body["claim"], body["model"]) != (
                    key, claim_id, model):
                return None
            result = ClaimResult.from_dict(body["result"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None
        return result if (result.id, result.model) == (claim_id, model) else None

    def put(self, key: str, result: ClaimResult) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{key}.json"
        body = {"key": key, "claim": result.id, "model": result.model,
                "result": replace(result, heatmap=None).to_dict()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({**body, "sha256": _checksum(body)}), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _checksum(body: dict) -> str:
    """sha256 of an entry's canonical JSON: any edit to key, identity or result changes it."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
