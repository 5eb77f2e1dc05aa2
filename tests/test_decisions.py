"""Claims decided with their uncertainty: PASS / FAIL / INCONCLUSIVE exactly as the interval says, policies,
sequential sampling that converges, and the prompts-to-decide estimate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mechtest.claims import Expectation
from mechtest.decision import FAIL, INCONCLUSIVE, PASS, decide, look_level, prompts_to_decide, schedule
from mechtest.measure import proportion, ratio, wilson_ci

pytest_plugins = ["pytester"]


@pytest.mark.parametrize("expect, low, high, outcome", [
    (">= 0.9", 0.91, 0.99, PASS), (">= 0.9", 0.90, 0.99, PASS), (">= 0.9", 0.85, 0.99, INCONCLUSIVE),
    (">= 0.9", 0.70, 0.89, FAIL), ("> 0.9", 0.90, 0.99, INCONCLUSIVE), ("> 0.9", 0.80, 0.90, FAIL),
    ("<= 0.3", 0.1, 0.3, PASS), ("<= 0.3", 0.2, 0.4, INCONCLUSIVE), ("<= 0.3", 0.31, 0.4, FAIL),
    ("< 0.3", 0.1, 0.3, INCONCLUSIVE), ("< 0.3", 0.3, 0.4, FAIL),
    ("in [0.5, 0.8]", 0.55, 0.75, PASS), ("in [0.5, 0.8]", 0.45, 0.75, INCONCLUSIVE),
    ("in [0.5, 0.8]", 0.81, 0.9, FAIL), ("in [0.5, 0.8]", 0.1, 0.49, FAIL),
    ("== 0.66 ± 0.05", 0.62, 0.70, PASS), ("== 0.66 ± 0.05", 0.58, 0.70, INCONCLUSIVE),
    ("== 0.66 ± 0.05", 0.72, 0.80, FAIL),
])
def test_the_whole_interval_decides(expect, low, high, outcome):
    e = Expectation.parse(expect)
    assert decide(e, (low + high) / 2, low, high, "ci") == outcome
    # the point-estimate rule never says inconclusive
    assert decide(e, (low + high) / 2, low, high, "estimate") in (PASS, FAIL)


def test_a_borderline_estimate_is_inconclusive_not_a_coin_flip():
    """0.951 [0.90, 0.99] against >= 0.95 passes on its estimate and is inconclusive on its interval."""
    e = Expectation.parse(">= 0.95")
    assert decide(e, 0.951, 0.90, 0.99, "estimate") == PASS
    assert decide(e, 0.951, 0.90, 0.99, "ci") == INCONCLUSIVE


def test_wilson_interval_does_not_collapse_at_100_percent():
    m = proportion("accuracy", np.ones(50))
    assert m.value == 1.0 and m.ci_high == 1.0 and 0.92 < m.ci_low < 0.94 and m.interval == "wilson"
    assert wilson_ci(0, 20)[0] == 0.0 and wilson_ci(0, 20)[1] > 0.1
    # a faithfulness of 1 on 0/1 outcomes keeps the numerator's binomial uncertainty
    f = ratio("faithfulness", np.ones(40), np.ones(40))
    assert f.value == 1.0 and f.ci_low < 0.95


def test_intervals_widen_with_the_level_and_narrow_with_the_sample():
    hits = np.r_[np.ones(80), np.zeros(20)]
    m = proportion("accuracy", hits)
    wide = m.at_level(look_level(5))
    assert wide.level == pytest.approx(0.99) and wide.ci_low < m.ci_low and wide.ci_high > m.ci_high
    big = proportion("accuracy", np.tile(hits, 4))
    assert big.ci_high - big.ci_low < m.ci_high - m.ci_low


def test_prompts_to_decide_follows_the_square_root_law():
    e = Expectation.parse(">= 0.9")
    assert prompts_to_decide(e, 0.95, 0.85, 1.0, 100) == 400  # half-width 0.1, distance 0.05
    assert prompts_to_decide(e, 0.9, 0.8, 1.0, 100) is None  # on the bound: no sample size decides
    assert prompts_to_decide(Expectation.parse("preserved", metric="verdict"), "preserved", None, None, 9) is None


def test_sequential_schedule_and_error_spending():
    assert schedule(1600) == [50, 100, 200, 400, 800, 1600]
    assert schedule(300) == [50, 100, 200, 300] and schedule(20) == [20]
    assert look_level(6) == pytest.approx(1 - 0.05 / 6)


def test_bonferroni_looks_keep_the_false_decision_rate(pytester=None):
    """Simulated: a true accuracy exactly on the bound must rarely be decided either way over all looks."""
    rng = np.random.default_rng(0)
    e = Expectation.parse(">= 0.8")
    sizes = schedule(800)
    level = look_level(len(sizes))
    wrong = 0
    for _ in range(400):
        hits = (rng.random(sizes[-1]) < 0.8).astype(float)
        for n in sizes:
            m = proportion("accuracy", hits[:n]).at_level(level)
            if decide(e, m.value, m.ci_low, m.ci_high) == FAIL:
                wrong += 1
                break
    assert wrong / 400 <= 0.05  # the one-sided error over every look stays under alpha


METRIC = '''
import numpy as np
from mechtest.measure import proportion
from mechtest.metrics import Field, Metric, Outcome, register_metric


@register_metric
class Coin(Metric):
    """Per-prompt hits with a fixed success rate; prompt i's outcome does not depend on n (prefix stable)."""

    name = "coin"
    fields = {"rate": Field("number")}

    def measure(self, api, claim, model, *, n, seed, n_boxes):
        rng = np.random.default_rng(seed)
        hits = (rng.random(n) < claim.get("rate")).astype(float)
        return Outcome(None, proportion("coin", hits, seed=seed))
'''


def _claims(rate, expect, extra=""):
    return (f'[[claim]]\nid = "c"\nmetric = "coin"\nmodels = ["zoo-base"]\nrate = {rate}\n'
            f'expect = "{expect}"\n{extra}')


@pytest.mark.parametrize("rate, expect, extra, outcome, pytest_outcome", [
    (0.97, ">= 0.9", "n_prompts = 400", "PASS", "passed"),
    (0.5, ">= 0.9", "n_prompts = 400", "FAIL", "failed"),
    (0.9, ">= 0.9", "n_prompts = 400", "INCONCLUSIVE", "failed"),
    (0.9, ">= 0.9", 'n_prompts = 400\ninconclusive = "pass"', "INCONCLUSIVE (accepted)", "passed"),
    (0.9, ">= 0.9", 'n_prompts = 400\ninconclusive = "xfail"', "INCONCLUSIVE", "xfailed"),
    (0.93, ">= 0.9", 'n_prompts = 400\ndecide = "estimate"', "PASS", "passed"),  # ci: [0.881, 0.936]
])
def test_claims_flip_exactly_as_their_interval_says(pytester, rate, expect, extra, outcome, pytest_outcome):
    pytester.makeconftest(METRIC)
    (pytester.path / "claims.toml").write_text(_claims(rate, expect, extra))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mechtest-json", "out.json",
                                          "--junitxml", "junit.xml")
    result.assert_outcomes(**{pytest_outcome: 1})
    result.stdout.fnmatch_lines([f"c *zoo-base*>= 0.9*{outcome}"])
    claim = json.loads((pytester.path / "out.json").read_text())["claims"][0]
    assert claim["outcome"] == outcome.split()[0]
    assert f'name="mechtest_outcome" value="{outcome.split()[0]}"' in (pytester.path / "junit.xml").read_text()
    if outcome.startswith("INCONCLUSIVE") and pytest_outcome == "failed":
        result.stdout.fnmatch_lines(["*is inconclusive*", "*prompts would decide at the observed effect*"])


def test_the_command_line_overrides_the_inconclusive_policy(pytester):
    pytester.makeconftest(METRIC)
    (pytester.path / "claims.toml").write_text(_claims(0.9, ">= 0.9", 'n_prompts = 400\ninconclusive = "pass"'))
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mechtest-inconclusive=fail").assert_outcomes(
        failed=1)
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mechtest-inconclusive=xfail").assert_outcomes(
        xfailed=1)


def test_auto_prompts_converge_and_report_their_looks(pytester):
    pytester.makeconftest(METRIC)
    (pytester.path / "claims.toml").write_text(_claims(0.95, ">= 0.9", 'n_prompts = "auto"\nmax_prompts = 1600'))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mechtest-json", "out.json")
    result.assert_outcomes(passed=1)
    claim = json.loads((pytester.path / "out.json").read_text())["claims"][0]
    assert claim["outcome"] == "PASS" and claim["looks"][0] == 50 and claim["n_prompts"] == claim["looks"][-1]
    assert 1 < len(claim["looks"]) < 6 and claim["n_prompts"] < 1600
    assert claim["level"] == pytest.approx(1 - 0.05 / 6)
    # a true rate on the bound spends the whole budget and stays inconclusive
    (pytester.path / "claims.toml").write_text(_claims(0.9, ">= 0.9", 'n_prompts = "auto"\nmax_prompts = 400'))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mechtest-json", "out.json")
    claim = json.loads((pytester.path / "out.json").read_text())["claims"][0]
    assert claim["outcome"] == "INCONCLUSIVE" and claim["looks"] == [50, 100, 200, 400]
    assert not math.isnan(claim["prompts_needed"] or math.nan)


def test_max_prompts_needs_auto(tmp_path):
    from mechtest.claims import load_claims
    from mechtest.errors import ClaimError

    path = tmp_path / "claims.toml"
    path.write_text('[[claim]]\nid = "x"\nmetric = "accuracy"\nmodels = ["a"]\nmax_prompts = 9\nexpect = ">= 0"\n')
    with pytest.raises(ClaimError, match='only applies with n_prompts = "auto"'):
        load_claims(path)
