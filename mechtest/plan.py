"""What a run will cost before it runs: forward passes per claim, which are cached, and a time estimate.

``pytest --mechtest-plan`` collects, then prints one row per claim and model instead of running anything
heavy: the forward passes its metric needs (the metric's ``forwards``), whether its result is already in
the claim-result cache, and seconds estimated from one timed forward of each model on the chosen device.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from mechtest.errors import MechtestError
from mechtest.metrics import get_metric
from mechtest.result_cache import ResultCache


@dataclass(frozen=True)
class PlanRow:
    claim: str
    model: str
    metric: str
    n_prompts: int
    forwards: int
    cached: bool
    seconds: float | None
    note: str = ""


def plan_rows(service, items, *, timed: bool = True) -> list[PlanRow]:
    """One row per claim item (objects with ``claim`` and ``model_name``), cheapest facts first."""
    from mechtest.runner import cache_key

    per_forward: dict[str, float | None] = {}
    rows = []
    for item in items:
        claim, name = item.claim, item.model_name
        metric = get_metric(claim.metric)
        n = service.n_prompts(claim.max_prompts if claim.n_prompts == "auto" else claim.n_prompts)
        missing = [m for m in (name, *metric.models_needed(claim.params)) if not service.is_configured(m)]
        if missing:
            rows.append(PlanRow(claim.id, name, claim.metric, n, 0, False, None, f"skipped: {missing[0]} not configured"))
            continue
        try:
            heads = _heads_total(service, name)
            key = cache_key(service, claim, metric, name)
            cached = key is not None and ResultCache(service.settings.cache_dir).get(
                key, claim_id=claim.id, model=name) is not None
            if timed and name not in per_forward:
                per_forward[name] = _time_one_forward(service, name)
        except MechtestError as e:
            rows.append(PlanRow(claim.id, name, claim.metric, n, 0, False, None, f"error: {e}"))
            continue
        forwards = metric.forwards(claim, n, heads)
        seconds = None if per_forward.get(name) is None else forwards * per_forward[name]
        rows.append(PlanRow(claim.id, name, claim.metric, n, forwards, cached, seconds))
    return rows


def plan_lines(rows: list[PlanRow]) -> list[str]:
    table = [("claim", "model", "metric", "prompts", "forwards", "cached", "estimate")]
    for r in rows:
        estimate = r.note or ("-" if r.seconds is None else _duration(0 if r.cached else r.seconds))
        table.append((r.claim, r.model, r.metric, str(r.n_prompts), str(r.forwards), "yes" if r.cached else "no",
                      estimate))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    todo = [r for r in rows if not r.cached and not r.note]
    total = sum(r.seconds or 0 for r in todo)
    lines.append(f"{len(rows)} claims: {sum(r.forwards for r in todo)} forward passes to run "
                 f"({sum(r.cached for r in rows)} claims cached), estimated {_duration(total)}")
    return lines


def _heads_total(service, name: str) -> int:
    """Layers x heads from the checkpoint's config.json, without loading it (1 if it cannot be read)."""
    ref = service.models.ref(name)
    try:
        config = json.loads((ref.path / "config.json").read_text())
        return int(config.get("num_hidden_layers", config.get("n_layer", 1))) * int(
            config.get("num_attention_heads", config.get("n_head", 1)))
    except (OSError, ValueError, TypeError):
        return 1


def _time_one_forward(service, name: str) -> float:
    """Seconds of one forward pass of one evaluation prompt (best of three, after a warm-up)."""
    import torch

    from mechtest.tasks.entity_tracking import make_dataset

    key = ("seconds per forward", name)
    if key in service.memo:  # progress lines ask once per claim: time each model once per session
        return service.memo[key]
    model = service.model(name)
    data = make_dataset(model.tokenizer, 1, n_boxes=service.n_boxes(name), seed=0)
    ids = data.input_ids.to(model.device)
    best = float("inf")
    with torch.no_grad():
        for _ in range(4):
            start = time.perf_counter()
            model.hf(ids)
            best = min(best, time.perf_counter() - start)
    service.memo[key] = best
    return best


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
