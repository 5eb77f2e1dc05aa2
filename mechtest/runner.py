"""The claim runner: one claim on one model -> an immutable ClaimResult, decided in one place.

The metric (from the registry) measures; this module decides pass/fail from the claim's expectation and
turns every exception into a result, so each claim is accounted for in the table and the JSON whatever
went wrong.
"""

from __future__ import annotations

from dataclasses import replace

from mechtest.claims import Claim
from mechtest.errors import MechtestError
from mechtest.metrics import get_metric
from mechtest.report.result import ClaimResult


def run_claim(api, claim: Claim, model_name: str, nodeid: str = "") -> tuple[ClaimResult, BaseException | None]:
    """Measure ``claim`` on ``model_name`` through the façade ``api`` and check its expectation.

    Returns the result and, when the measurement raised something other than a MechtestError (a bug, an
    out-of-memory, a torch error), that exception, for the caller to re-raise with its traceback.
    """
    metric = get_metric(claim.metric)
    n = api.n_prompts(claim.n_prompts)
    seed = claim.seed
    api.seeds.add(seed)
    result = ClaimResult(id=claim.id, model=model_name, metric=claim.metric, value=None, ci_low=None,
                         ci_high=None, expect=str(claim.expect), passed=False, nodeid=nodeid, n_prompts=n,
                         seed=seed, n_boxes=claim.n_boxes)
    circuit, raised = None, None
    try:
        n_boxes = claim.n_boxes or api.n_boxes(model_name)
        result = replace(result, n_boxes=n_boxes)
        outcome = metric.measure(api, claim, model_name, n=n, seed=seed, n_boxes=n_boxes)
        circuit = outcome.circuit
        m = outcome.measurement
        value = m.value if m is not None else outcome.value
        details = {**(_scalars(m.details) if m is not None else {}), **outcome.details}
        result = replace(result, value=value, passed=claim.expect.check(value), detail=outcome.detail,
                         details=details,
                         **({"ci_low": m.ci_low, "ci_high": m.ci_high, "n_prompts": m.n_prompts} if m is not None
                            else {}))
    except MechtestError as e:
        result = replace(result, error=f"{type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001  (recorded as ERROR, then re-raised by the caller)
        result = replace(result, error=f"{type(e).__name__}: {first_line(e)}")
        raised = e
    if api.settings.report_dir is not None and raised is None and (
            claim.metric == "path_patching" or not result.passed):
        from mechtest.report.heatmap import claim_heatmap

        result = replace(result, heatmap=claim_heatmap(api, claim, model_name, circuit, n=n, seed=seed,
                                                       n_boxes=result.n_boxes))
    return result, raised


def error_result(claim: Claim, model_name: str, nodeid: str, error: BaseException) -> ClaimResult:
    """The result of a claim that died outside the runner (e.g. in setup)."""
    return ClaimResult(id=claim.id, model=model_name, metric=claim.metric, value=None, ci_low=None, ci_high=None,
                       expect=str(claim.expect), passed=False, nodeid=nodeid, seed=claim.seed,
                       error=f"{type(error).__name__}: {first_line(error)}")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def _scalars(details: dict) -> dict:
    return {k: v for k, v in details.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
