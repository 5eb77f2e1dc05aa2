"""The terminal table of claim results: measured vs expected, one row per claim and model."""

from __future__ import annotations

from mechtest.report.result import ClaimResult, fmt


def summary_lines(results: list[ClaimResult], skipped: list[dict], *, interrupted: bool = False,
                  not_run: list[str] = ()) -> list[str]:
    """A fixed-width table, one row per evaluated claim, sorted by claim id and model; claims of several tasks
    are grouped by task (a first column); an interrupted run says so and lists the collected claims that never
    ran."""
    by_task = len({r.task for r in results}) > 1
    rows = [("task",) * by_task + ("claim", "model", "measured", "interval", "expected", "result")]
    for r in sorted(results, key=lambda r: (r.task if by_task else "", r.id, r.model, r.nodeid)):
        interval = f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]" if r.ci_low is not None else "-"
        outcome = r.outcome + (" (accepted)" if r.outcome == "INCONCLUSIVE" and r.passed else "") + \
            (" (cached)" if r.cached else "")
        rows.append((r.task,) * by_task + (r.id, r.model, fmt(r.value), interval, r.expect, outcome))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = {o: sum(r.outcome == o for r in results) for o in ("PASS", "FAIL", "INCONCLUSIVE", "ERROR")}
    tail = f"{counts['PASS']} of {len(results)} claims hold"
    broken = [f"{n} {word}" for n, word in ((counts["FAIL"], "failed"), (counts["INCONCLUSIVE"], "inconclusive"),
                                            (counts["ERROR"], "error" if counts["ERROR"] == 1 else "errors")) if n]
    if broken:
        tail += f" ({', '.join(broken)})"
    if skipped:
        tail += f"; {len(skipped)} skipped (model not configured)"
    if not interrupted and not not_run:
        return lines + [tail]
    stop = [f"RUN INTERRUPTED: {len(not_run)} collected claim{'s' if len(not_run) != 1 else ''} never ran"
            + (":" if not_run else "")]
    return lines + [tail, *stop, *(f"  not run: {nodeid}" for nodeid in not_run)]
