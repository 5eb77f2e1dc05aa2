"""What a run will cost before it runs: forward passes per claim, which are cached, and a time estimate.

``pytest --mechtest-plan`` collects, then prints one row per claim and model instead of running anything
heavy: the forward passes its metric needs (the metric's ``forwards``), whether its result is already in
the claim-result cache, and seconds estimated from a timed batched forward of each model with uncached work.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from mechtest.errors import MechtestError
from mechtest.metrics import get_metric
from mechtest.progress import duration
from mechtest.result_cache import ResultCache


_TIMED_BATCH = 8


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


def plan_rows(service, items, *, timed: bool = True, loads: bool = False) -> list[PlanRow]:
    """One row per claim item (objects with ``claim`` and ``model_name``), cheapest facts first.

    A circuit discovery several claims share (``discovered:<model>``, a verdict's base) is costed once, on its
    ``discover_prompts``, with the first uncached claim that needs it. Only models with uncached work are timed
    (a fully cached run loads nothing); ``loads`` adds one row per such model with its measured load time.
    """
    from mechtest.metrics.path_patching import path_patching_forwards
    from mechtest.runner import cache_key

    rows, discovered, timed_models = [], set(), {}
    for item in items:
        claim, name = item.claim, item.model_name
        metric = get_metric(claim.metric)
        n = service.n_prompts(claim.max_prompts if claim.n_prompts == "auto" else claim.n_prompts)
        missing = [m for m in (name, *metric.models_needed(claim.params)) if not service.is_configured(m)]
        if missing:
            rows.append(PlanRow(claim.id, name, claim.metric, n, 0, False, None, f"skipped: {missing[0]} not configured"))
            continue
        try:
            key = cache_key(service, claim, metric, name)
            cached = key is not None and ResultCache(service.settings.cache_dir).get(
                key, claim_id=claim.id, model=name) is not None
            costs = [(name, metric.forwards(claim, n, heads_total(service, name)))]
            n_disc = service.n_prompts(claim.get("discover_prompts") or n)
            for model in [] if cached else metric.discoveries(claim, name):
                found = (model, n_disc, claim.seed, claim.n_boxes or service.n_boxes(model))
                if found not in discovered:
                    discovered.add(found)
                    costs.append((model, path_patching_forwards(n_disc, heads_total(service, model))))
            per_forward = {m: _time_one_forward(service, m, claim.n_boxes) for m, _ in costs} \
                if timed and not cached else {}
            timed_models.update(per_forward)
        except MechtestError as e:
            rows.append(PlanRow(claim.id, name, claim.metric, n, 0, False, None, f"error: {e}"))
            continue
        forwards = sum(f for _, f in costs)
        seconds = sum(f * per_forward[m] for m, f in costs) if per_forward else None
        rows.append(PlanRow(claim.id, name, claim.metric, n, forwards, cached, seconds))
    if loads:
        rows += [PlanRow("(load)", m, "load", 0, 0, False, service.memo.get(("seconds to load", m))) for m in timed_models]
    return rows


def plan_lines(rows: list[PlanRow]) -> list[str]:
    table = [("claim", "model", "metric", "prompts", "forwards", "cached", "estimate")]
    for r in rows:
        if r.metric == "load":
            table.append((r.claim, r.model, "load", "-", "-", "-", "-" if r.seconds is None else
                          duration(r.seconds) + " (measured)"))
            continue
        estimate = r.note or ("-" if r.seconds is None else duration(0 if r.cached else r.seconds))
        table.append((r.claim, r.model, r.metric, str(r.n_prompts), str(r.forwards), "yes" if r.cached else "no",
                      estimate))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(plan_summary(rows))
    return lines


def plan_summary(rows: list[PlanRow], *, estimate: bool = True) -> str:
    """The plan's last line: claims, forward passes to run, cached claims and (``estimate``) the time."""
    claims = [r for r in rows if r.metric != "load"]
    todo = [r for r in rows if not r.cached and not r.note]
    line = (f"{len(claims)} claims: {sum(r.forwards for r in todo)} forward passes to run "
            f"({sum(r.cached for r in claims)} claims cached)")
    if not estimate:
        return line
    return line + f", estimated {duration(sum(r.seconds or 0 for r in todo))}" + (
        " including loading" if len(claims) < len(rows) else "")


def row_summary(row: PlanRow) -> str:
    """One claim's plan in words, for the progress line before it runs."""
    if row.cached:
        return "cached"
    return row.note or f"{row.forwards} forward passes" + (
        "" if row.seconds is None else f", estimated {duration(row.seconds)}")


def heads_total(service, name: str) -> int:
    """Layers x heads without loading the model: from config.json; an adapter's base's; a GGUF's converted
    config when cached, else its metadata. A model whose shape cannot be read is an error naming it."""
    from mechtest.errors import ModelLoadError

    ref = service.models.ref(name)
    ref = ref.base if ref.kind == "adapter" else ref
    if ref.gguf_file:
        from mechtest import gguf_cache

        config = gguf_cache.cached_config(ref)
        if config is None:
            shape = gguf_cache.header_shape(ref)
            if shape is None:
                raise ModelLoadError(f"cannot read the layer and head counts of {ref.display!r}")
            return shape[0] * shape[1]
    else:
        try:
            config = json.loads((ref.path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot read the config of {ref.display!r}: {e}") from None
    try:
        return int(config.get("num_hidden_layers", config.get("n_layer"))) * int(
            config.get("num_attention_heads", config.get("n_head")))
    except (TypeError, ValueError):
        raise ModelLoadError(f"the config of {ref.display!r} gives no layer and head counts") from None


def _time_one_forward(service, name: str, n_boxes: int | None = None) -> float:
    """Seconds of one prompt's forward pass, timed in a batch of ``_TIMED_BATCH`` as the methods run them (best of
    two, after a warm-up), on prompts of the claim's box count (7-box prompts are twice as long as 3-box ones); a
    single prompt's forward would overstate a batched run several times."""
    import torch

    from mechtest.compat import accepts_logits_to_keep
    from mechtest.tasks.entity_tracking import make_dataset

    n_boxes = n_boxes or service.n_boxes(name)
    key = ("seconds per forward", name, n_boxes)
    if key in service.memo:  # progress lines ask once per claim: time each model once per session
        return service.memo[key]
    loaded = name in service.models.resident
    start = time.perf_counter()
    model = service.model(name)
    if not loaded:
        service.memo[("seconds to load", name)] = time.perf_counter() - start
    data = make_dataset(model.tokenizer, _TIMED_BATCH, n_boxes=n_boxes, seed=0)
    ids, mask = data.input_ids.to(model.device), data.attention_mask.to(model.device)
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}  # as the methods read logits
    best = float("inf")
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            model.hf(ids, attention_mask=mask, **keep)
            best = min(best, (time.perf_counter() - start) / _TIMED_BATCH)
    service.memo[key] = best
    return best
