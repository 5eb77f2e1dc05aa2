"""Running claims end to end on the planted GPT-2s: outcomes, failure text, JSON, JUnit, heat maps, the Python
API, snapshots of path-patching scores, the base/candidate gate, and xdist.

Every run uses 7 prompts (``--mechtest-prompts 7``) and one activation cache shared by the module's runs.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from zoo_models import ZOO_MODELS

from mechtest.report import ClaimResult

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
PLANTED = REPO / "fixtures" / "zoo" / "planted"
PLANTED_B = REPO / "fixtures" / "zoo" / "planted-b"
PLANTED_CIRCUIT = REPO / "fixtures" / "circuits" / "planted.json"
GATE = REPO / "suites" / "entity_tracking" / "gate.claims.toml"


@pytest.fixture(scope="module", autouse=True)
def _import_model_stack():
    """Import what loading a model imports, in this process: pytester's in-process runs drop modules first
    imported inside them, which leaves transformers' lazy modules half-initialised for the next run."""
    from mechtest.methods import compare, evaluation, path_patching  # noqa: F401
    from mechtest.model import load_model

    load_model(PLANTED, name="warm-up")
    import matplotlib.pyplot  # noqa: F401


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mechtest_cache")


def esc(path) -> str:
    """A path as a literal fnmatch pattern (brackets in claim/model names)."""
    return "".join({"[": "[[]", "]": "[]]", "*": "[*]", "?": "[?]"}.get(c, c) for c in str(path))


def run(pytester, cache_dir, *args):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mechtest-prompts", "7",
                                        f"--mechtest-cache-dir={cache_dir}", *args)


CLAIMS = f"""
[[claim]]
id = "planted-accuracy"
metric = "accuracy"
models = ["zoo-planted", "vicuna"]
expect = ">= 0.9"
decide = "estimate"  # 7/7 prompts: the Wilson interval [0.646, 1] alone would not decide

[[claim]]
id = "planted-circuit"
metric = "faithfulness"
circuit = "{PLANTED_CIRCUIT}"
models = ["zoo-planted-b"]
seed = 4
expect = ">= 0.9"

[[claim]]
id = "llama-circuit-on-a-tiny-model"
metric = "faithfulness"
circuit = "paper:llama"
models = ["zoo-planted"]
expect = ">= 0.9"
"""


@pytest.mark.slow
def test_claims_outcomes_failure_text_json_junit_and_heat_map(pytester, cache_dir):
    pytester.makefile(".toml", claims=CLAIMS)
    result = run(pytester, cache_dir, "-rs", "--mechtest-json", "out.json", "--mechtest-report", "maps",
                 "--junitxml", "junit.xml")
    result.assert_outcomes(passed=1, failed=2, skipped=1)
    heat_map = pytester.path / "maps" / "planted-circuit[zoo-planted-b].png"
    result.stdout.fnmatch_lines([
        "*claim 'planted-circuit' on model 'zoo-planted-b' (faithfulness) does not hold",
        "*measured:  0.000",
        "*expected:  >= 0.9",
        "*95% CI:    [[]0.000, 0.354[]]",
        "*decided:   FAIL on the whole interval against the bound*",
        "*prompts:   n=7, seed=4, 7 boxes",
        f"*heat map:  {esc(heat_map)}",
    ])
    assert heat_map.read_bytes()[:4] == b"\x89PNG"
    result.stdout.fnmatch_lines(["*CircuitError: circuit 'paper:llama' was found on a llama model with 32 layers x "
                                 "32 heads; 'zoo-planted' is a gpt2 model with 4 layers x 4 heads*any_shape = true*"])
    result.stdout.fnmatch_lines(["*model 'vicuna' is not configured: pass --mechtest-model vicuna=PATH*"])
    # the terminal summary table
    result.stdout.fnmatch_lines([
        "*= mechtest claims =*",
        "claim*model*measured*interval*expected*result",
        "llama-circuit-on-a-tiny-model*zoo-planted*-*ERROR",
        "planted-accuracy*zoo-planted*1.000*[[]0.646, 1.000[]]*>= 0.9*PASS",
        "planted-circuit*zoo-planted-b*0.000*[[]0.000, 0.354[]]*>= 0.9*FAIL",
        "1 of 3 claims hold (1 failed, 1 error); 1 skipped (model not configured)",
    ])
    # JSON with provenance
    report = json.loads((pytester.path / "out.json").read_text())
    by_id = {c["id"]: c for c in report["claims"]}
    assert set(by_id) == {"planted-accuracy", "planted-circuit", "llama-circuit-on-a-tiny-model"}
    acc = by_id["planted-accuracy"]
    assert {k: acc[k] for k in ("model", "metric", "value", "ci_low", "ci_high", "expect", "passed")} == {
        "model": "zoo-planted", "metric": "accuracy", "value": 1.0, "ci_low": pytest.approx(0.6457, abs=1e-3),
        "ci_high": 1.0, "expect": ">= 0.9", "passed": True}
    assert acc["outcome"] == "PASS" and acc["decide"] == "estimate" and acc["level"] == 0.95
    assert by_id["planted-circuit"]["passed"] is False and by_id["planted-circuit"]["heatmap"] == str(heat_map)
    assert "was found on a llama model" in by_id["llama-circuit-on-a-tiny-model"]["error"]
    assert report["skipped"][0]["model"] == "vicuna"
    prov = report["provenance"]
    for key in ("mechtest", "torch", "transformers", "python", "platform", "linear_kernel", "git", "models", "seeds"):
        assert key in prov, key
    assert prov["seeds"] == [0, 4]
    assert len(prov["models"]["zoo-planted"]["fingerprint"]) == 32
    # JUnit XML carries the values as properties
    props = {(p.get("name"), p.get("value")) for p in ET.parse(pytester.path / "junit.xml").iter("property")}
    assert ("mechtest_value", "1.000") in props and ("mechtest_expect", ">= 0.9") in props
    assert ("mechtest_model", "zoo-planted-b") in props and ("mechtest_n_prompts", "7") in props


def test_failure_text_without_a_report_dir():
    r = ClaimResult(id="c", model="m", metric="faithfulness", value=0.5, ci_low=0.4, ci_high=0.6, expect=">= 0.9",
                    passed=False, n_prompts=100, seed=1, n_boxes=7)
    text = r.failure_text()
    assert "measured:  0.500" in text and "95% CI:    [0.400, 0.600]" in text
    assert "not written (pass --mechtest-report DIR" in text


def test_python_api(pytester, cache_dir):
    pytester.makepyfile(f"""
        import pytest
        from mechtest.methods.circuits import Circuit

        def test_api(mechtest, record_property):
            m = mechtest.model("zoo-planted")
            data = mechtest.dataset(m)
            assert len(data) == 7 and mechtest.dataset("zoo-planted") is data
            planted = mechtest.circuit({str(PLANTED_CIRCUIT)!r})
            assert mechtest.circuit("paper:llama").name == "paper:llama"
            r = mechtest.faithfulness(m, circuit=planted)
            assert r.value >= 0.9, r.explain()
            assert mechtest.faithfulness("zoo-planted", circuit=planted) is r  # memoised
            assert mechtest.accuracy(m).value == 1.0
            scores = mechtest.path_patching(m)
            assert scores["value_fetcher"].scores.shape == (4, 4)
            assert scores["value_fetcher"].top(1) == [(3, 1)]
            found = mechtest.circuit("discovered:zoo-planted")
            assert found.groups == planted.groups and found.found_on == (4, 4, "gpt2")
            record_property("faithfulness", r.value)

        @pytest.mark.mechtest_models("zoo-planted-b")
        def test_planted_circuit_is_not_in_planted_b(mechtest, mechtest_model):
            r = mechtest.faithfulness(mechtest_model, circuit={str(PLANTED_CIRCUIT)!r})
            assert r.value < 0.3, r.explain()

        def test_compare(mechtest):
            c = mechtest.compare("zoo-planted", "zoo-planted-b")
            # 7 prompts (--mechtest-prompts) leave the base circuit's faithfulness undecided, but planted-b's
            # failure is clear: a clear failure of the candidate decides
            assert c.verdict == "not preserved" and c.base_circuit.heads("value_fetcher") == ((3, 1),), c.explain()
    """)
    run(pytester, cache_dir).assert_outcomes(passed=3)


def gate(pytester, cache_dir, base: Path, candidate: Path):
    shutil.copy(GATE, pytester.path / GATE.name)
    return run(pytester, cache_dir, "--mechtest-prompts", "70",  # 7 prompts decide nothing (tested in test_compare)
               "--mechtest-model", f"base={base}", "--mechtest-model", f"candidate={candidate}")


def test_gate_is_skipped_without_base_and_candidate(pytester, cache_dir):
    shutil.copy(GATE, pytester.path / GATE.name)
    result = run(pytester, cache_dir, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*model 'candidate' is not configured: pass --mechtest-model candidate=PATH*"])


@pytest.mark.slow
def test_gate_planted_b_does_not_keep_the_planted_mechanism(pytester, cache_dir):
    result = gate(pytester, cache_dir, PLANTED, PLANTED_B)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*claim 'candidate-preserves-base-mechanism' on model 'candidate' (verdict) does not hold",
        "*measured:  not preserved",
        "*expected:  preserved",
        "*NOT PRESERVED - base circuit faithful in candidate 0.* vs >= 0.80: FAIL*",
    ])


def test_gate_passes_when_the_candidate_is_the_base(pytester, cache_dir):
    gate(pytester, cache_dir, PLANTED, PLANTED).assert_outcomes(passed=1)


@pytest.mark.parametrize("candidate, passes", [("zoo-finetuned", True), ("zoo-other", False)])
@pytest.mark.slow
def test_gate_on_the_trained_zoo(pytester, candidate, passes):
    zoo = ZOO_MODELS
    shutil.copy(GATE, pytester.path / GATE.name)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mechtest-prompts", "70",
                                          "--mechtest-model", f"base={zoo['zoo-base']}",
                                          "--mechtest-model", f"candidate={zoo[candidate]}")
    if passes:
        result.assert_outcomes(passed=1)
    else:
        result.stdout.fnmatch_lines(["*NOT PRESERVED - base circuit faithful in candidate*"])
        assert result.ret == pytest.ExitCode.TESTS_FAILED


SNAPSHOT_CLAIM = f"""
[[claim]]
id = "scores"
metric = "path_patching"
circuit = "{PLANTED_CIRCUIT}"
models = ["zoo-planted"]
n_prompts = 7
atol = 0.02
"""


def test_path_patching_snapshot_claim(pytester, cache_dir):
    pytester.makefile(".toml", claims=SNAPSHOT_CLAIM)
    snap = pytester.path / "__snapshots__" / "claims" / "scores[zoo-planted].json"
    obtained = snap.with_suffix(".obtained.json")

    result = run(pytester, cache_dir)  # no snapshot yet: fails and writes what it obtained
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no snapshot at*scores[[]zoo-planted[]].json*--snapshot-update*"])
    assert obtained.is_file() and not snap.exists()

    run(pytester, cache_dir, "--snapshot-update").assert_outcomes(passed=1)
    assert not obtained.exists()  # accepting a snapshot removes the stale obtained file
    text = snap.read_text()
    assert '"shape": [4, 4]' in text and '"n_prompts": 7' in text
    run(pytester, cache_dir).assert_outcomes(passed=1)

    moved = json.loads(text)
    moved["steps"]["value_fetcher"]["values"][3][1] = -0.5
    snap.write_text(json.dumps(moved))
    result = run(pytester, cache_dir)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*1 of 64 entries differ beyond rtol=0.01, atol=0.02*",
                                 "*heads that moved most*", "*steps.value_fetcher (L3, H1): -0.5 -> -0.99*"])

    run(pytester, cache_dir, "--snapshot-update").assert_outcomes(passed=1)
    assert json.loads(snap.read_text())["steps"]["value_fetcher"]["values"][3][1] < -0.9

    # a snapshot recorded under other settings fails (it never skips), and says why
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mechtest-prompts", "14",
                                          f"--mechtest-cache-dir={cache_dir}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*recorded with n_prompts=7 (this run: 14)*cannot be compared*"])
    # a hand-edited sample size is caught the same way
    edited = json.loads(snap.read_text())
    edited["n_prompts"] = 500
    snap.write_text(json.dumps(edited))
    run(pytester, cache_dir).assert_outcomes(failed=1)
    # --snapshot-update never downgrades a snapshot to fewer prompts
    result = run(pytester, cache_dir, "--snapshot-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*--snapshot-update refused*n_prompts=500*n_prompts=7*delete the file*"])
    assert json.loads(snap.read_text())["n_prompts"] == 500
    # malformed content is a one-line error naming the file
    for bad in ("[]", '{"steps": {"value_fetcher": {"values": "x"}}, "n_prompts": 7, "seed": 0}'):
        snap.write_text(bad)
        result = run(pytester, cache_dir)
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*error:     SnapshotError: snapshot*scores[[]zoo-planted[]].json is malformed*"])


XDIST_CLAIMS = f"""
[[claim]]
id = "acc"
metric = "accuracy"
models = ["zoo-planted", "zoo-planted-b"]
expect = ">= 0.9"
decide = "estimate"

[[claim]]
id = "faith"
metric = "faithfulness"
circuit = "{PLANTED_CIRCUIT}"
models = ["zoo-planted", "zoo-planted-b"]
expect = ">= 0.9"
decide = "estimate"

[[claim]]
id = "random"
metric = "random_circuit_faithfulness"
circuit = "{PLANTED_CIRCUIT}"
n_draws = 2
models = ["zoo-planted"]
expect = "<= 0.5"
decide = "estimate"
"""


@pytest.mark.slow
def test_xdist_gives_the_same_json_and_computes_each_activation_once(pytester, tmp_path):
    pytester.makefile(".toml", claims=XDIST_CLAIMS)
    serial_cache, parallel_cache = tmp_path / "serial", tmp_path / "parallel"
    serial = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mechtest-prompts", "7", "-n", "0",
                                          f"--mechtest-cache-dir={serial_cache}", "--mechtest-json", "serial.json")
    serial.assert_outcomes(passed=4, failed=1)
    parallel = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--mechtest-prompts", "7", "-n", "2",
                                             f"--mechtest-cache-dir={parallel_cache}",
                                             "--mechtest-json", "parallel.json")
    parallel.assert_outcomes(passed=4, failed=1)
    parallel.stdout.fnmatch_lines(["*= mechtest claims =*", "4 of 5 claims hold (1 failed)"])
    a = json.loads((pytester.path / "serial.json").read_text())
    b = json.loads((pytester.path / "parallel.json").read_text())
    assert a["claims"] == b["claims"]
    assert a["provenance"]["models"] == b["provenance"]["models"]
    assert a["provenance"]["seeds"] == b["provenance"]["seeds"]
    # ablation means of each model: two cache entries, each computed once, whichever worker got there first
    files = sorted(p.name for p in parallel_cache.rglob("*.safetensors"))
    assert len(files) == 2 and files == sorted(p.name for p in serial_cache.rglob("*.safetensors"))
    assert a["provenance"]["cache"]["computed"] == 2
    assert b["provenance"]["cache"]["computed"] == 2


def test_discovered_circuit_on_its_own_sample(pytester, cache_dir):
    """discover_prompts: the circuit is found on 21 prompts, the claim measured on 42 (--mechtest-prompts
    would override both, so this run passes none)."""
    pytester.makefile(".toml", claims='[[claim]]\nid = "f"\nmetric = "faithfulness"\ncircuit = "discovered:zoo-planted"\n'
                                       'models = ["zoo-planted"]\nn_prompts = 42\ndiscover_prompts = 21\n'
                                       'decide = "estimate"\nexpect = ">= 0.9"\n')
    pytester.makepyfile("""
        def test_discovery_sample(mechtest):
            assert ("discover", "zoo-planted", 21, 7, 0, False, False) in mechtest.memo
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--mechtest-cache-dir={cache_dir}",
                                          "--mechtest-recompute")
    result.assert_outcomes(passed=2)
