"""Path-patching snapshot claims: every head's four step scores compared with a committed snapshot."""

from __future__ import annotations

from pathlib import Path

from mechtest.metrics.base import Field, Metric, Outcome, register_metric
from mechtest.tasks.registry import get_task


def path_patching_forwards(n: int, n_heads_total: int) -> int:
    """Full-forward equivalents of the four path-patching steps with the fast engine: every head is a sender
    in each step, and a sender's run touches ~1-3 of the prompt's positions (about a tenth of a forward)."""
    return n * (2 + 4 * max(1, n_heads_total // 10))


@register_metric
class PathPatchingSnapshot(Metric):
    name = "path_patching"
    expects = "snapshot"
    always_draws_heatmap = True
    def cache_inputs(self, claim, model: str, settings) -> dict | None:
        """The outcome also depends on the snapshot file: its content is part of the key; never on update."""
        if settings.update_snapshots:
            return None
        path = snapshot_path(claim, model)
        return {"snapshot": path.read_text(encoding="utf-8") if path.is_file() else None}
    description = "path-patching scores of every head (spec 4), compared with a snapshot within rtol/atol"
    fields = {"group": Field("string"), "receivers": Field("table"), "circuit": Field("circuit"),
              "rtol": Field("number", minimum=0), "atol": Field("number", minimum=0),
              "tolerance": Field("number", minimum=0)}

    def forwards(self, claim, n, n_heads_total):
        return path_patching_forwards(n, n_heads_total)

    def check(self, params, models, fail):
        groups = get_task(params.get("task")).groups
        if "group" in params and params["group"] not in groups:
            fail("group", f"unknown group {params['group']!r}; use one of {', '.join(groups)}")
        for group, k in params.get("receivers", {}).items():
            if group not in groups[1:] or not isinstance(k, int) or isinstance(k, bool) or k < 1:
                fail("receivers", f"entries are {', '.join(groups[1:])} = positive integer, got {group} = {k!r}")

    def measure(self, service, claim, model, *, n, seed, n_boxes):
        from mechtest.snapshots import ATOL, RTOL, check_claim_snapshot, to_payload

        scores = service.path_patching(model, n=n, seed=seed, n_boxes=n_boxes, receivers=claim.get("receivers"),
                                       task=claim.task)
        payload = to_payload(scores)
        if claim.get("group"):
            payload["steps"] = {claim.get("group"): payload["steps"][claim.get("group")]}
        path = snapshot_path(claim, model)
        check = check_claim_snapshot(path, payload, settings={"n_prompts": n, "seed": seed, "n_boxes": n_boxes},
                                     update=service.settings.update_snapshots, rtol=claim.get("rtol", RTOL),
                                     atol=claim.get("atol", claim.get("tolerance", ATOL)))
        circuit = None
        if claim.get("circuit"):
            circuit = self.circuit_of(service, claim, n=n, seed=seed)
        return Outcome(check.status, detail=check.detail, details={"snapshot": str(path)}, circuit=circuit)


def snapshot_path(claim, model_name: str) -> Path:
    """``<claim file dir>/__snapshots__/<claim file stem>/<claim id>[<model>].json`` (syrupy's layout)."""
    from mechtest.report.result import safe_name

    stem = claim.path.name.removesuffix(".toml")
    return claim.path.parent / "__snapshots__" / stem / f"{safe_name(claim.id)}[{safe_name(model_name)}].json"
