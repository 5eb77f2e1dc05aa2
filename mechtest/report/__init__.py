"""Reports a CI can gate on: claim results, the terminal table, JSON with provenance, heat maps, xdist merge.

Nothing here imports torch; matplotlib is imported only when a heat map is drawn.
"""

from mechtest.report.heatmap import heatmap
from mechtest.report.json_report import json_report, provenance, write_json
from mechtest.report.result import ClaimResult, safe_name
from mechtest.report.run_log import RunLog
from mechtest.report.terminal import summary_lines

__all__ = ["ClaimResult", "RunLog", "heatmap", "json_report", "provenance", "safe_name", "summary_lines",
           "write_json"]
