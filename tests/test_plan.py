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
    assert "RUN INTERRUPTED" not in result.stdout.str() and "mechtest claims" not in result.stdout.str()


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


DISCOVERED = '''
[[claim]]
id = "faith-a"
metric = "faithfulness"
circuit = "discovered:zoo-planted"
models = ["zoo-planted"]
n_prompts = 70
discover_prompts = 20
expect = ">= 0.9"

[[claim]]
id = "faith-b"
metric = "accuracy"
circuit = "discovered:zoo-planted"
models = ["zoo-planted"]
n_prompts = 70
discover_prompts = 20
expect = ">= 0.9"
'''


def test_a_shared_discovery_is_costed_once_on_discover_prompts_and_loading_has_a_row(pytester, tmp_path):
    pytester.makefile(".toml", claims=DISCOVERED)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mechtest-plan",
                                          f"--mechtest-cache-dir={tmp_path}")
    # 16 heads: discovery on 20 prompts = 20 * (2 + 4 * 1) = 120 forwards, counted with the first claim only
    result.stdout.fnmatch_lines([
        "faith-a*zoo-planted*faithfulness*70*330*no*s",
        "faith-b*zoo-planted*accuracy*70*210*no*s",
        "(load)*zoo-planted*load*(measured)",
        "2 claims: 540 forward passes to run (0 claims cached), estimated * including loading",
    ])


class _Api:
    def __init__(self, ref):
        self.models = type("Models", (), {"ref": staticmethod(lambda name: ref)})()


def test_head_counts_of_gguf_and_adapter_without_loading(tmp_path, monkeypatch):
    pytest = __import__("pytest")
    pytest.importorskip("gguf")
    import mechtest.gguf_cache as gguf_cache
    from mechtest.model import load_model
    from mechtest.model_ref import resolve_model
    from mechtest.plan import heads_total
    from test_gguf import gguf_dir
    from tiny_models import save_tiny

    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "cache"))
    source = load_model(save_tiny("llama", tmp_path / "hf"), device="cpu")
    ref = resolve_model(gguf_dir(source, tmp_path / "g") / "tiny.gguf", base_dir=".")
    assert heads_total(_Api(ref), "g") == 3 * 4  # from the GGUF's metadata, nothing converted
    assert not (tmp_path / "cache").exists()
    load_model(ref, device="cpu")
    monkeypatch.setattr(gguf_cache, "header_shape", lambda ref: None)
    assert heads_total(_Api(ref), "g") == 3 * 4  # from the cached config
    zoo = Path(__file__).resolve().parents[1] / "fixtures" / "zoo"
    adapter = tmp_path / "ft"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "base_model_name_or_path": "%s"}'
                                                 % (zoo / "base"))
    assert heads_total(_Api(resolve_model(adapter, base_dir=".")), "ft") == 4 * 4
