"""Command-line and ini options of the plugin: models by name, device/dtype, cache directory, prompts.

These runs load at most the planted GPT-2 (tiny); most load nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest


pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
PLANTED = REPO / "fixtures" / "zoo" / "planted"


@pytest.fixture(scope="module", autouse=True)
def _import_model_stack():
    """Import what loading a model imports, in this process: pytester's in-process runs drop modules first
    imported inside them, which leaves transformers' lazy modules half-initialised for the next run."""
    from mechtest.model import load_model
    from mechtest.tasks.entity_tracking import make_dataset

    load_model(PLANTED, name="warm-up")
    del make_dataset


def run(pytester, *args):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)


def test_malformed_model_option_is_a_usage_error(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = run(pytester, "--mechtest-model", "planted")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mechtest-model: expected NAME=PATH, got 'planted'*"])


@pytest.mark.parametrize("args, message", [
    (["--mechtest-prompts", "0"], "*--mechtest-prompts must be >= 1, got 0*"),
    (["--mechtest-dtype", "float8"], "*--mechtest-dtype: unknown dtype 'float8'*"),
])
def test_bad_option_values_are_usage_errors(pytester, args, message):
    pytester.makepyfile("def test_x(): pass")
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_malformed_ini_models_line_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nmechtest_models =\n    just-a-name\n")
    pytester.makepyfile("def test_x(): pass")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option mechtest_models: expected NAME=PATH*"])


def test_models_from_ini_and_cli(pytester):
    """ini paths resolve against the rootdir; the command line overrides the ini; nothing else is registered."""
    pytester.makepyprojecttoml("""
        [tool.pytest.ini_options]
        mechtest_models = [
            "mine = checkpoints/mine",
            "both = from-ini",
        ]
    """)
    pytester.makepyfile(f"""
        def test_registry(mechtest):
            models = mechtest.settings.models
            root = {str(pytester.path)!r}
            assert models["mine"].ref == "checkpoints/mine" and str(models["mine"].base_dir) == root
            assert models["mine"].source == "ini mechtest_models"
            assert models["both"].source == "--mechtest-model"
            assert models["both"].ref == {str(PLANTED)!r}
            assert mechtest.model_names == ["both", "mine"]
    """)
    run(pytester, "--mechtest-model", f"both={PLANTED}").assert_outcomes(passed=1)


def test_cache_dir_default_ini_and_option(pytester, tmp_path):
    pytester.makepyfile("""
        import os
        def test_cache(mechtest):
            print("CACHE=" + str(mechtest.settings.cache_dir))
    """)
    result = run(pytester, "-s")
    result.stdout.fnmatch_lines([f"*CACHE={pytester.path / '.mechtest_cache'}"])
    pytester.makeini("[pytest]\nmechtest_cache_dir = somewhere/cache\n")
    result = run(pytester, "-s")
    result.stdout.fnmatch_lines([f"*CACHE={pytester.path / 'somewhere' / 'cache'}"])
    result = run(pytester, "-s", f"--mechtest-cache-dir={tmp_path / 'c'}")
    result.stdout.fnmatch_lines([f"*CACHE={tmp_path / 'c'}"])


def test_clear_cache(pytester, tmp_path):
    cache = tmp_path / "cache"
    entry = cache / "ab" / ("ab" + "0" * 62 + ".safetensors")
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"x")
    pytester.makepyfile("def test_x(): pass")
    run(pytester, f"--mechtest-cache-dir={cache}").assert_outcomes(passed=1)
    assert entry.exists()
    run(pytester, f"--mechtest-cache-dir={cache}", "--mechtest-clear-cache").assert_outcomes(passed=1)
    assert not entry.exists()


def test_device_dtype_and_prompts_reach_the_models(pytester, tmp_path):
    """--mechtest-dtype/--mechtest-device are used for loading; --mechtest-prompts overrides sample sizes;
    a model is loaded once per session."""
    pytester.makepyfile("""
        import torch
        import mechtest.model

        calls = []
        _load = mechtest.model.load_model

        def counting(*args, **kwargs):
            calls.append(args)
            return _load(*args, **kwargs)

        mechtest.model.load_model = counting

        def test_one(mechtest):
            m = mechtest.model("zoo-planted")
            assert m.dtype == torch.bfloat16 and m.device == torch.device("cpu")
            assert len(mechtest.dataset(m, n=500)) == 7
            assert mechtest.n_boxes("zoo-planted") == 7

        def test_two(mechtest):
            assert mechtest.model("zoo-planted") is mechtest.model("zoo-planted")
            assert len(calls) == 1
    """)
    run(pytester, "--mechtest-dtype", "bfloat16", "--mechtest-device", "cpu", "--mechtest-prompts", "7",
        f"--mechtest-cache-dir={tmp_path}").assert_outcomes(passed=2)


def test_model_card_sets_the_box_count(pytester, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "mechtest.json").write_text('{"n_boxes": 4}')
    pytester.makepyfile("""
        def test_boxes(mechtest):
            assert mechtest.n_boxes("mine") == 4
            assert mechtest.n_boxes("zoo-planted") == 7
    """)
    run(pytester, "--mechtest-model", f"mine={ckpt}").assert_outcomes(passed=1)


def test_absent_model_in_a_test_is_skipped_with_the_option_to_pass(pytester):
    pytester.makepyfile("""
        def test_needs_vicuna(mechtest):
            mechtest.model("vicuna")
    """)
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*model 'vicuna' is not configured: pass --mechtest-model vicuna=PATH*"])


def test_marker_parametrizes_over_models(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.mechtest_models("zoo-planted", "absent-model")
        def test_named(mechtest_model):
            assert mechtest_model.name == "zoo-planted"

        @pytest.mark.mechtest_models(all=True)
        def test_all(mechtest_model):
            assert mechtest_model.n_layers == 4

        def test_without_marker(mechtest_model):
            pass
    """)
    result = run(pytester, "-rs", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*test_named[[]zoo-planted[]]", "*test_named[[]absent-model[]]"])
    result.stdout.fnmatch_lines(["*test_all[[]zoo-planted-b[]]"])
    result = run(pytester, "-rs", "-k", "named or without or (all and planted-b)")
    result.assert_outcomes(passed=2, skipped=1, errors=1)
    result.stdout.fnmatch_lines(["*needs @pytest.mark.mechtest_models*"])
    result.stdout.fnmatch_lines(["*model 'absent-model' is not configured*"])


def test_xdist_workers_spread_over_gpus():
    from mechtest.model_registry import worker_device

    assert [worker_device(None, f"gw{i}", n_gpus=4) for i in range(6)] == \
        ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert worker_device("cuda", "gw3", n_gpus=2) == "cuda:1"
    assert worker_device("cuda:0", "gw3", n_gpus=4) == "cuda:0"  # pinned by the user
    assert worker_device("auto", "gw3", n_gpus=4) == "auto" and worker_device("cpu", "gw1", n_gpus=4) == "cpu"
    assert worker_device(None, "gw1", n_gpus=1) is None and worker_device(None, None, n_gpus=4) is None


def test_at_most_max_models_are_resident(pytester):
    pytester.makepyfile("""
        def test_lru(mechtest):
            for name in ("zoo-base", "zoo-finetuned", "zoo-other", "zoo-base"):
                mechtest.model(name)
            assert mechtest.models.resident == ["zoo-other", "zoo-base"]
            assert set(mechtest.models.fingerprints) == {"zoo-base", "zoo-finetuned", "zoo-other"}
            assert mechtest.models.fingerprint("zoo-finetuned") == mechtest.model("zoo-finetuned").fingerprint
    """)
    run(pytester, "--mechtest-max-models", "2").assert_outcomes(passed=1)
