"""The claim runner: one claim on one model -> an immutable ClaimResult, decided in one place.

The metric (from the registry) measures; this module decides pass/fail from the claim's expectation and
turns every exception into a result, so each claim is accounted for in the table and the JSON whatever
went wrong.
"""

from __future__ import annotations

from dataclasses import replace

from mechtest.claims import Claim
from mechtest.decision import ERROR, INCONCLUSIVE, PASS, decide, look_level, prompts_to_decide, schedule
from mechtest.errors import MechtestError
from mechtest.metrics import Outcome, get_metric
from mechtest.report.result import ClaimResult, safe_name
from mechtest.result_cache import ResultCache, claim_key
from mechtest.tasks.registry import get_task


def run_claim(service, claim: Claim, model_name: str, nodeid: str = "") -> tuple[ClaimResult, BaseException | None]:
    """Measure ``claim`` on ``model_name`` through the ``service`` (:class:`mechtest.service.Service`) and decide it (:mod:`mechtest.decision`).

    Returns the result and, when the measurement raised something other than a MechtestError (a bug, an
    out-of-memory, a torch error), that exception, for the caller to re-raise with its traceback.
    """
    metric = get_metric(claim.metric)
    seed = claim.seed
    service.seeds.add(seed)
    sequential = claim.n_prompts == "auto" and service.settings.prompts is None
    sizes = schedule(claim.max_prompts) if sequential else [service.n_prompts(
        claim.max_prompts if claim.n_prompts == "auto" else claim.n_prompts)]
    level = look_level(len(sizes))
    result = ClaimResult(id=claim.id, model=model_name, metric=claim.metric, value=None, ci_low=None,
                         ci_high=None, expect=str(claim.expect), passed=False, nodeid=nodeid, n_prompts=sizes[0],
                         seed=seed, n_boxes=claim.n_boxes, decide=claim.decide, task=claim.task)
    circuit, raised = None, None
    key = cache_key(service, claim, metric, model_name)
    cached = ResultCache(service.settings.cache_dir).get(key, claim_id=claim.id, model=model_name) if key else None
    if cached is not None:
        return _finished(service, claim, model_name, replace(cached, nodeid=nodeid, cached=True), None), None
    try:
        n_boxes = claim.n_boxes or service.n_boxes(model_name)
        for n in sizes:
            outcome = metric.measure(service, claim, model_name, n=n, seed=seed, n_boxes=n_boxes)
            if not isinstance(outcome, Outcome):
                raise MechtestError(f"metric {claim.metric!r}: measure() returned {type(outcome).__name__}, not "
                                    "an Outcome (return Outcome(value, measurement))")
            boxes = n_boxes if get_task(claim.task).uses_boxes else None  # reported only where they shape prompts
            result, circuit = _decided(result, claim, outcome, n, boxes, level), outcome.circuit
            if result.outcome != INCONCLUSIVE:
                break
    except MechtestError as e:
        result = replace(result, outcome=ERROR, error=f"{type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001  (recorded as ERROR, then re-raised by the caller)
        result = replace(result, outcome=ERROR, error=f"{type(e).__name__}: {first_line(e)}")
        raised = e
    policy = service.settings.inconclusive or claim.inconclusive or "fail"
    result = replace(result, passed=result.outcome == PASS or (result.outcome == INCONCLUSIVE and policy == "pass"),
                     rule=metric.decision_rule or "")
    if key and result.outcome != ERROR:
        ResultCache(service.settings.cache_dir).put(key, result)
    return _finished(service, claim, model_name, result, circuit) if raised is None else result, raised


def _finished(service, claim: Claim, model_name: str, result: ClaimResult, circuit) -> ClaimResult:
    """Draw the claim's heat map when ``--mechtest-report`` asks: for a failing claim, or for every claim of a
    metric that ``always_draws_heatmap`` (path patching)."""
    if service.settings.report_dir is None or not (get_metric(claim.metric).always_draws_heatmap or not result.passed):
        return result
    if circuit is None and claim.get("circuit") and not claim.get("circuit").startswith("discovered:"):
        circuit = service.circuit(claim.get("circuit"), task=claim.task)
    return replace(result, heatmap=_heatmap(service, claim, model_name, circuit, result))


def _heatmap(service, claim: Claim, model_name: str, circuit, result: ClaimResult) -> str:
    """The model's path-patching scores on the claim's sample, drawn; the PNG's path, or why it was not written."""
    from mechtest.report.heatmap import heatmap

    n, seed = result.n_prompts, result.seed
    try:
        scores = service.path_patching(model_name, n=n, seed=seed, n_boxes=result.n_boxes,
                                       receivers=claim.get("receivers"), task=claim.task)
        path = service.settings.report_dir / f"{safe_name(claim.id)}[{safe_name(model_name)}].png"
        return str(heatmap({g: s.scores.numpy() for g, s in scores.steps.items()}, path, circuit=circuit,
                           title=f"{claim.id} on {model_name}: path-patching scores (n={n}, seed={seed})"))
    except (MechtestError, ImportError, OSError) as e:
        return f"not written ({type(e).__name__}: {e})"


def cache_key(service, claim: Claim, metric, model_name: str) -> str | None:
    """The claim's result-cache key, or None when it is not cacheable (or a model cannot be fingerprinted:
    the measurement then reports why)."""
    extra = metric.cache_inputs(claim, model_name, service.settings)
    if extra is None or service.settings.recompute:
        return None
    names = [model_name, *metric.models_needed(claim.params)]
    try:
        fingerprints = {name: service.models.fingerprint(name) for name in names}
    except MechtestError:
        return None
    s = service.settings
    return claim_key(claim, model_name, fingerprints=fingerprints, metric_version=metric.version,
                     settings={"prompts": s.prompts, "dtype": s.dtype, "device": s.device,
                               "inconclusive": s.inconclusive, **extra})


def _decided(result: ClaimResult, claim: Claim, outcome, n: int, n_boxes: int | None, level: float) -> ClaimResult:
    """The result of one look: the measurement at the look's confidence level, decided."""
    m = outcome.measurement
    if m is not None:
        m = m.at_level(level)
    value = m.value if m is not None else outcome.value
    low, high = (m.ci_low, m.ci_high) if m is not None else (None, None)
    n_used = m.n_prompts if m is not None else n
    details = {**(_scalars(m.details) if m is not None else {}), **outcome.details}
    return replace(result, value=value, ci_low=low, ci_high=high, n_prompts=n_used, n_boxes=n_boxes,
                   outcome=decide(claim.expect, value, low, high, claim.decide), detail=outcome.detail,
                   details=details, level=m.level if m is not None else None, looks=[*result.looks, n_used],
                   prompts_needed=prompts_to_decide(claim.expect, value, low, high, n_used))


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def _scalars(details: dict) -> dict:
    return {k: v for k, v in details.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
