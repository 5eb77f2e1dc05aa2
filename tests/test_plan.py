"""--mechtest-plan: a cost table per claim, nothing measured; a serial run says its forward passes first."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CIRCUIT = Path(__file__).resolve().parents[1] / "fixtures" / "circuits" / "planted.json"
CLAIMS = f'''
[[claim]]
id = "acc"
metric = "accuracy"
models = ["zoo-planted", "absent"]
n_prompts = 70
expect = ">= 0.9"

[[claim]]
id = "faith"
metric = "faithfulness"
circuit = "{CIRCUIT}"
models = ["zoo-planted"]
n_prompts = 70
expect = ">= 0.9"
'''


def test_plan_prints_costs_and_runs_nothing(pytester, tmp_path):
    pytester.makefile(".toml", claims=CLAIMS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mechtest-plan",
                                          f"--mechtest-cache-dir={tmp_path}")
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "*= mechtest plan =*",
        "claim*model*metric*prompts*forwards*cached*estimate",
        "acc *zoo-planted*accuracy*70*70*no*s",
        "acc *absent*skipped: absent not configured",
        "faith*zoo-planted*faithfulness*70*210*no*s",
        "3 claims: 280 forward passes to run (0 claims cached), estimated*",
    ])
    assert "passed" not in result.stdout.str() and not (tmp_path / "claims").exists()


def test_plan_marks_cached_claims(pytester, tmp_path):
    pytester.makefile(".toml", claims=CLAIMS)
    pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--mechtest-cache-dir={tmp_path}").assert_outcomes(
        passed=2, skipped=1)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mechtest-plan",
                                          f"--mechtest-cache-dir={tmp_path}")
    result.stdout.fnmatch_lines(["acc *zoo-planted*accuracy*70*70*yes*", "faith*zoo-planted*210*yes*",
                                 "3 claims: 0 forward passes to run (2 claims cached)*"])


def test_a_serial_run_announces_its_forward_passes(pytester, tmp_path):
    pytester.makefile(".toml", claims=CLAIMS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--mechtest-cache-dir={tmp_path}")
    result.stdout.fnmatch_lines(["3 claims: 280 forward passes to run (0 claims cached) (--mechtest-plan*"])


def test_progress_lines_go_through_the_capture_when_asked(pytester, tmp_path):
    pytester.makefile(".toml", claims=CLAIMS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--mechtest-cache-dir={tmp_path}",
                                          "--mechtest-progress=yes")
    result.stdout.fnmatch_lines(["mechtest: acc[[]zoo-planted[]]: 70 forward passes, estimated *",
                                 "mechtest: acc[[]zoo-planted[]]: PASS in * s"])
    quiet = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--mechtest-cache-dir={tmp_path}")
    assert "mechtest: acc[" not in quiet.stdout.str()  # not a terminal: no progress unless asked
