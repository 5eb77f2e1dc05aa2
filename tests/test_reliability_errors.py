"""Every failure names its cause: bad claim files, exceptions in metrics, interrupted runs, unusable output
paths and settings, and the README's benchmark commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
ACC = '[[claim]]\nid = "{id}"\nmetric = "{metric}"\nmodels = ["zoo-planted"]\nn_prompts = 20\nexpect = ">= 0.5"\n'


def run(pytester, *args):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args, no_reraise_ctrlc=True)


# --- a claim file that cannot be read is a collection error naming the file and the cause ---------------


@pytest.mark.parametrize("content, cause", [
    (b'[[claim]]\nid = "caf\xe9"\n', "not valid UTF-8"),
    (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    (b"claim = [1, 2]\n", "'claim' must be an array of tables"),
    (b'[[claim]]\nid = "x"\nmetric = "touchy"\nmodels = ["m"]\nexpect = ">= 0"\n',
     "cannot be read as a claim file: RuntimeError: the metric's own check broke"),
], ids=["invalid-utf8", "deep-toml", "not-tables", "any-exception"])
def test_an_unreadable_claim_file_is_a_collection_error(pytester, content, cause):
    pytester.makeconftest("""
        from mechtest.metrics import Metric, register_metric

        @register_metric
        class Touchy(Metric):
            name = "touchy"
            def check(self, params, models, fail):
                raise RuntimeError("the metric's own check broke")
    """)
    path = pytester.path / "claims.toml"
    path.write_bytes(content)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.INTERRUPTED  # collection errors, not INTERNALERROR (3)
    result.stdout.fnmatch_lines([f"*ClaimError: {path}*{cause}*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


# --- an exception inside a metric: the claim, the metric, the cause, our frames ----------------------------

EXPLODING = """
    from mechtest.metrics import Metric, Outcome, register_metric

    def deep(n):
        return deep(n - 1) if n else {}["missing key"]

    @register_metric
    class Exploding(Metric):
        name = "exploding"
        def measure(self, api, claim, model, *, n, seed, n_boxes):
            return deep(3)

    @register_metric
    class Silent(Metric):
        name = "silent"
        def measure(self, api, claim, model, *, n, seed, n_boxes):
            return None
"""


def test_an_exception_in_a_metric_shows_the_claim_the_metric_and_our_frames(pytester):
    pytester.makeconftest(EXPLODING)
    pytester.makefile(".toml", claims=ACC.format(id="boom", metric="exploding"))
    result = run(pytester, "--mechtest-json", "out.json")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    failure = out[out.index("= FAILURES ="):out.index("mechtest claims")]
    result.stdout.fnmatch_lines(["*claim 'boom' on model 'zoo-planted': metric 'exploding' raised KeyError: "
                                 "'missing key'*", "*mechtest/runner.py*", "*conftest.py*in deep*",
                                 "KeyError: 'missing key'"])
    assert "pluggy" not in failure and "_pytest" not in failure
    assert len(failure.splitlines()) < 40, failure
    claim = json.loads((pytester.path / "out.json").read_text())["claims"][0]
    assert claim["outcome"] == "ERROR" and claim["error"] == "KeyError: 'missing key'"
    # --tb=long: every frame
    long = run(pytester, "--tb=long").stdout.str()
    assert "pluggy" in long or "_pytest" in long


def test_a_metric_returning_none_is_an_error_naming_it(pytester):
    pytester.makeconftest(EXPLODING)
    pytester.makefile(".toml", claims=ACC.format(id="quiet", metric="silent"))
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*MechtestError: metric 'silent': measure() returned NoneType, not an Outcome*"])
    assert "AttributeError" not in result.stdout.str()


# --- an interrupted run says so and lists what never ran -----------------------------------------------------


@pytest.mark.parametrize("stop, args", [("interrupt", []), ("fail", ["-x"])], ids=["ctrl-c", "maxfail"])
def test_an_interrupted_run_says_so_in_the_table_and_the_json(pytester, stop, args):
    pytester.makeconftest("""
        from mechtest.metrics import Metric, Outcome, register_metric

        @register_metric
        class Ok(Metric):
            name = "ok"
            def measure(self, api, claim, model, *, n, seed, n_boxes):
                return Outcome(1.0)

        @register_metric
        class Stop(Metric):
            name = "stop"
            def measure(self, api, claim, model, *, n, seed, n_boxes):
                raise KeyboardInterrupt
    """)
    claim = '[[claim]]\nid = "{}"\nmetric = "{}"\nmodels = ["zoo-planted"]\nexpect = "{}"\ndecide = "estimate"\n'
    second = ("stop", ">= 0.5") if stop == "interrupt" else ("ok", "<= 0.5")  # -x: the second claim fails
    pytester.makefile(".toml", claims="".join(claim.format(*c) for c in (
        ("a-first", "ok", ">= 0.5"), ("b-stops", *second), ("c-never", "ok", ">= 0.5"), ("d-never", "ok", ">= 0.5"))))
    result = run(pytester, "--mechtest-json", "out.json", *args)
    data = json.loads((pytester.path / "out.json").read_text())
    assert data["interrupted"] is True
    never = ["claims.toml::c-never[zoo-planted]", "claims.toml::d-never[zoo-planted]"]
    assert data["not_run"] == (never if stop == "fail" else ["claims.toml::b-stops[zoo-planted]", *never])
    result.stdout.fnmatch_lines(["RUN INTERRUPTED: * collected claim* never ran:", "  not run: *c-never*"])
    assert [c["id"] for c in data["claims"]] == (["a-first", "b-stops"] if stop == "fail" else ["a-first"])


def test_a_complete_run_is_not_interrupted(pytester):
    pytester.makefile(".toml", claims=ACC.format(id="acc", metric="accuracy"))
    result = run(pytester, "--mechtest-json", "out.json")
    result.assert_outcomes(passed=1)
    data = json.loads((pytester.path / "out.json").read_text())
    assert data["interrupted"] is False and data["not_run"] == []
    assert "INTERRUPTED" not in result.stdout.str()


# --- settings checked at start ---------------------------------------------------------------------------


def test_unwritable_outputs_stop_the_run_before_any_work(pytester):
    pytester.makefile(".toml", claims=ACC.format(id="acc", metric="accuracy"))
    (pytester.path / "a-file").write_text("x")
    for args, message in ((["--mechtest-json", "/proc/mechtest/out.json"], "*--mechtest-json /proc/mechtest/out"
                                                                            ".json: /proc is not writable*"),
                          (["--mechtest-report", "a-file"], "*--mechtest-report a-file: is a file*"),
                          (["--mechtest-report", "a-file/maps"], "*--mechtest-report a-file/maps: *a-file is not a "
                                                                 "directory*"),
                          (["--mechtest-prompts", "10000000"], "*--mechtest-prompts must be <= 100000*")):
        result = run(pytester, *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, args
        result.stderr.fnmatch_lines([message])
        assert len(result.stderr.str().strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_json_folder_stops_the_run(pytester):
    pytester.makefile(".toml", claims=ACC.format(id="acc", metric="accuracy"))
    locked = pytester.path / "locked"
    locked.mkdir(mode=0o555)
    result = run(pytester, "--mechtest-json", "locked/out.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*locked is not writable*"])


@pytest.mark.parametrize("field, message", [
    ('expect = "== 1 ± -0.1"', "field 'expect': negative tolerance"),
    ("n_prompts = 10000000", "field 'n_prompts': must be <= 100000, got 10000000"),
    ("discover_prompts = 10000000", "field 'discover_prompts': must be <= 100000"),
])
def test_absurd_claim_settings_fail_collection(pytester, field, message):
    body = '[[claim]]\nid = "acc"\nmetric = "accuracy"\nmodels = ["zoo-planted"]\n' + field + "\n"
    if "expect" not in field:
        body += 'expect = ">= 0.5"\n'
    pytester.makefile(".toml", claims=body)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([f"*{message}*"])


def test_snapshot_update_into_an_unwritable_folder_stops_at_start(pytester):
    pytester.makefile(".toml", claims='[[claim]]\nid = "pp"\nmetric = "path_patching"\nmodels = ["zoo-planted"]\n'
                                       'n_prompts = 10\n')
    (pytester.path / "__snapshots__").write_text("not a folder")
    result = run(pytester, "--snapshot-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --snapshot-update cannot write snapshots into *__snapshots__/claims: "
                                 "*__snapshots__ is not a directory"])
    assert len(result.stderr.str().strip().splitlines()) == 1


def test_a_snapshot_write_that_fails_is_one_line(tmp_path):
    from mechtest.errors import SnapshotError
    from mechtest.snapshots import check_claim_snapshot

    (tmp_path / "__snapshots__").write_text("not a folder")
    with pytest.raises(SnapshotError, match="cannot read or write the snapshot .*: Not a directory"):
        check_claim_snapshot(tmp_path / "__snapshots__" / "claims" / "pp[m].json", {"steps": {}},
                             settings={"n_prompts": 10, "seed": 0, "n_boxes": 3}, update=True)


# --- the README's commands run from the repository root ---------------------------------------------------


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("[!_]*.py")))
def test_every_benchmark_answers_help_from_the_repository_root(script):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a newcomer runs it
    out = subprocess.run([sys.executable, f"benchmarks/{script}", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr[-2000:]


def test_the_zoo_tool_answers_help_from_the_repository_root():
    out = subprocess.run([sys.executable, "-m", "tools.zoo", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert "usage: python -m tools.zoo" in out.stdout + out.stderr and "Error" not in out.stderr
