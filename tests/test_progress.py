"""Progress lines: shown for long steps wherever asked (even under pytest's capture), never where not asked,
and a warm rerun loads no model to estimate anything."""

from __future__ import annotations

import time

import pytest

from mechtest import progress

pytest_plugins = ["pytester"]

CLAIMS = '''
[[claim]]
id = "acc"
metric = "accuracy"
models = ["zoo-planted"]
n_prompts = 120
expect = ">= 0.9"
'''


@pytest.fixture
def lines(monkeypatch):
    written: list[str] = []
    yield written
    progress.configure()


def test_a_long_step_shows_count_elapsed_and_estimate(lines, monkeypatch):
    monkeypatch.setenv(progress.DELAY_ENV, "0")
    progress.configure("yes", sink=lines.append, tty=False)
    assert list(progress.steps(range(3), "path patching value_fetcher", 3)) == [0, 1, 2]
    assert lines[0].startswith("mechtest: path patching value_fetcher 1/3 0.0 s, ~0.0 s left")
    assert lines[-1] == "mechtest: path patching value_fetcher done in 0.0 s\n"


def test_quiet_when_short_not_a_terminal_under_ci_or_off(lines, monkeypatch):
    progress.configure("yes", sink=lines.append, tty=True)
    list(progress.steps(range(3), "short", 3))  # under the 2 s delay: nothing
    monkeypatch.setenv(progress.DELAY_ENV, "0")
    for mode, tty, ci in (("auto", False, None), ("auto", True, "true"), ("no", True, None)):
        if ci:
            monkeypatch.setenv("CI", ci)
        else:
            monkeypatch.delenv("CI", raising=False)
        progress.configure(mode, sink=lines.append, tty=tty)
        list(progress.steps(range(3), "step", 3))
    assert lines == []
    monkeypatch.delenv("CI", raising=False)
    progress.configure("auto", sink=lines.append, tty=True)
    list(progress.steps(range(2), "step", 2))
    assert lines[-1] == "\rmechtest: step done in 0.0 s\x1b[K\n"  # a terminal: one line rewritten in place


def test_heartbeat_names_the_inner_step_on_one_line(lines, monkeypatch):
    monkeypatch.setenv(progress.DELAY_ENV, "0")
    progress.configure("yes", sink=lines.append, tty=True)  # rewritten at most twice a second
    with progress.heartbeat("loading qwen", every=0.05):
        with progress.heartbeat("dequantising model.gguf", every=0.05):
            time.sleep(0.8)
    assert any(line.startswith("\rmechtest: loading qwen: dequantising model.gguf ") for line in lines)
    assert lines[-1].startswith("\rmechtest: loading qwen done in ")


def test_steps_show_under_pytest_capture_when_forced(pytester, tmp_path, monkeypatch):
    monkeypatch.setenv(progress.DELAY_ENV, "0")
    pytester.makefile(".toml", claims=CLAIMS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--mechtest-cache-dir={tmp_path}",
                                          "--mechtest-progress=yes")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["mechtest: loading zoo-planted done in *", "mechtest: accuracy zoo-planted 1/3 *",
                                 "mechtest: accuracy zoo-planted done in *"])
    quiet = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--mechtest-cache-dir={tmp_path / 'b'}")
    assert "mechtest: accuracy" not in quiet.stdout.str()  # not a terminal: nothing unless asked


def test_a_warm_rerun_loads_no_model(pytester, tmp_path, monkeypatch):
    pytester.makefile(".toml", claims=CLAIMS)
    args = ("-p", "no:cacheprovider", f"--mechtest-cache-dir={tmp_path}", "--mechtest-progress=yes")
    pytester.runpytest_inprocess(*args).assert_outcomes(passed=1)
    import mechtest.model

    def refuse(*a, **k):
        raise AssertionError("a model was loaded on a warm rerun")

    monkeypatch.setattr(mechtest.model, "load_model", refuse)
    result = pytester.runpytest_inprocess(*args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["mechtest: acc[[]zoo-planted[]]: cached", "*PASS (cached)*"])


def test_a_verdict_shows_every_step_that_runs_a_model(lines, monkeypatch):
    """Ablation means, circuit accuracy (base and candidate), CMAP and the value fetchers' path patching: each
    runs the model over every prompt, so each gets a line (on Qwen each takes 20-160 s). Both models' accuracies
    come out of CMAP's passes (the candidate's run, the base's clean run that its patched run continues): no
    pass of their own."""
    from pathlib import Path

    from mechtest.methods.circuits import load_circuit
    from mechtest.methods.compare import compare
    from mechtest.model import load_model

    zoo = Path(__file__).resolve().parents[1] / "fixtures" / "zoo"
    base, cand = load_model(zoo / "planted", name="base"), load_model(zoo / "planted-b", name="cand")
    circuit = load_circuit({"value_fetcher": [[3, 1]], "pos_transmitter": [], "pos_detector": [[2, 0]],
                            "struct_reader": []})
    monkeypatch.setenv(progress.DELAY_ENV, "0")
    progress.configure("yes", sink=lines.append, tty=False)
    compare(base, cand, n_prompts=20, n_boxes=3, base_circuit=circuit, batch_size=10, share_prompts=10)
    done = {line.split(" done in ")[0] for line in lines if " done in " in line}
    assert not {"mechtest: accuracy cand", "mechtest: accuracy base"} & done, done
    assert {f"mechtest: {step}" for step in ("ablation means base",
                                             "ablation means cand", "circuit accuracy base",
                                             "circuit accuracy cand", "cmap cand->base")} <= done, done
    assert any(line.startswith("mechtest: path patching value_fetcher") for line in lines), lines
