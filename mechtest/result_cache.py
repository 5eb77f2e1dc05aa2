"""Claim results stored on disk, so an unchanged claim on unchanged weights is read back, not recomputed.

The key covers everything the result depends on: the claim's fields and decision rule, the sample settings
actually used, the fingerprint of every model the claim reads (computed without loading the weights), the
content of any circuit file it names, the metric's ``version`` and mechtest's version. Entries are JSON
written atomically (temp file + ``os.replace``); an unreadable entry is a miss, never an error.
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
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:40]


class ResultCache:
    """``<cache dir>/claims/<key>.json``: one decided ClaimResult per key."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory) / "claims"

    def get(self, key: str) -> ClaimResult | None:
        try:
            return ClaimResult.from_dict(json.loads((self.directory / f"{key}.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def put(self, key: str, result: ClaimResult) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{key}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(replace(result, heatmap=None).to_dict()), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
