"""What a run measured, collected on each xdist worker and merged on the controller for the reports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mechtest.report.result import ClaimResult


@dataclass
class RunLog:
    """Claim results, skips, model provenance, seeds and cache statistics of one process, then of the run."""

    results: list[ClaimResult] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    models: dict[str, dict] = field(default_factory=dict)
    seeds: set[int] = field(default_factory=set)
    cache: list[dict] = field(default_factory=list)  # one stats dict per process
    collected: list[str] = field(default_factory=list)  # node ids of the claim items the run was to run
    interrupted: bool = False  # Ctrl-C, -x / --maxfail or pytest.exit ended the run early

    def record_skip(self, claim, model_name: str, nodeid: str, reason: str) -> None:
        self.skipped.append({"id": claim.id, "model": model_name, "nodeid": nodeid, "reason": reason})

    def absorb(self, api) -> None:
        """Take the façade's provenance (loaded models, seeds used, cache statistics) at the end of a process."""
        self.models.update(api.models.fingerprints)
        self.seeds.update(api.seeds)
        self.cache.append(api.cache_stats())

    def to_worker_output(self) -> str:
        return json.dumps({"results": [r.to_dict() for r in self.results], "skipped": self.skipped,
                           "models": self.models, "seeds": sorted(self.seeds), "cache": self.cache})

    def merge_worker_output(self, text: str) -> None:
        data = json.loads(text)
        self.results += [ClaimResult.from_dict(d) for d in data["results"]]
        self.skipped += data["skipped"]
        self.models.update(data["models"])
        self.seeds.update(data["seeds"])
        self.cache += data["cache"]

    def not_run(self) -> list[str]:
        """Collected claims with neither a result nor a skip: an interrupted run never reached them."""
        done = {r.nodeid for r in self.results} | {s["nodeid"] for s in self.skipped}
        return sorted(set(self.collected) - done)

    def cache_stats(self) -> dict:
        total = {"hits": 0, "misses": 0, "computed": 0, "invalid": 0}
        for stats in self.cache:
            for k, v in stats.items():
                total[k] = total.get(k, 0) + v
        return total
