"""Claim results are read back for an unchanged claim on unchanged weights, and recomputed otherwise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
PLANTED = REPO / "fixtures" / "zoo" / "planted"
CIRCUIT = REPO / "fixtures" / "circuits" / "planted.json"


def run(pytester, cache, *args):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--mechtest-cache-dir={cache}",
                                        "--mechtest-json", "out.json", *args)


def claims(pytester, expect=">= 0.9", circuit=CIRCUIT):
    pytester.makefile(".toml", claims=f'''
[[claim]]
id = "faith"
metric = "faithfulness"
circuit = "{circuit}"
models = ["m"]
n_prompts = 70
expect = "{expect}"
''')


def outcome(pytester) -> dict:
    return json.loads((pytester.path / "out.json").read_text())["claims"][0]


def test_a_warm_rerun_reads_the_result_back(pytester, tmp_path):
    ckpt, cache = tmp_path / "ckpt", tmp_path / "cache"
    shutil.copytree(PLANTED, ckpt)
    claims(pytester)
    run(pytester, cache, "--mechtest-model", f"m={ckpt}").assert_outcomes(passed=1)
    cold = outcome(pytester)
    assert cold["cached"] is False
    result = run(pytester, cache, "--mechtest-model", f"m={ckpt}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["faith*m*PASS (cached)"])
    warm = outcome(pytester)
    assert warm["cached"] is True and warm["value"] == cold["value"] and warm["ci_low"] == cold["ci_low"]
    # --mechtest-recompute measures again
    run(pytester, cache, "--mechtest-model", f"m={ckpt}", "--mechtest-recompute").assert_outcomes(passed=1)
    assert outcome(pytester)["cached"] is False
    # another expectation, another sample size: another key
    claims(pytester, expect=">= 0.5")
    run(pytester, cache, "--mechtest-model", f"m={ckpt}").assert_outcomes(passed=1)
    assert outcome(pytester)["cached"] is False
    run(pytester, cache, "--mechtest-model", f"m={ckpt}", "--mechtest-prompts", "14").assert_outcomes(passed=1)
    assert outcome(pytester)["cached"] is False


def test_changed_weights_or_circuit_file_miss_the_cache(pytester, tmp_path):
    ckpt, cache, circuit = tmp_path / "ckpt", tmp_path / "cache", tmp_path / "circuit.json"
    shutil.copytree(PLANTED, ckpt)
    shutil.copy(CIRCUIT, circuit)
    claims(pytester, circuit=circuit)
    run(pytester, cache, "--mechtest-model", f"m={ckpt}").assert_outcomes(passed=1)
    # the same weights at another path share the entry (the fingerprint never holds a path)
    moved = tmp_path / "moved"
    shutil.copytree(ckpt, moved)
    run(pytester, cache, "--mechtest-model", f"m={moved}").assert_outcomes(passed=1)
    assert outcome(pytester)["cached"] is True
    # an edited circuit file
    data = json.loads(circuit.read_text())
    data["value_fetcher"] = [[0, 0]]
    circuit.write_text(json.dumps(data))
    run(pytester, cache, "--mechtest-model", f"m={ckpt}").assert_outcomes(failed=1)
    assert outcome(pytester)["cached"] is False
    shutil.copy(CIRCUIT, circuit)
    # edited weights (same size): measured again, and now the claim fails
    weights = ckpt / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-4000:] = bytes(4000)
    weights.write_bytes(bytes(raw))
    run(pytester, cache, "--mechtest-model", f"m={ckpt}")
    assert outcome(pytester)["cached"] is False


def test_a_corrupt_entry_is_a_miss(pytester, tmp_path):
    cache = tmp_path / "cache"
    claims(pytester)
    run(pytester, cache, "--mechtest-model", f"m={PLANTED}").assert_outcomes(passed=1)
    for entry in (cache / "claims").glob("*.json"):
        entry.write_text("{torn")
    run(pytester, cache, "--mechtest-model", f"m={PLANTED}").assert_outcomes(passed=1)
    assert outcome(pytester)["cached"] is False


def test_snapshot_claims_are_keyed_on_their_snapshot_file_and_never_cached_on_update(tmp_path):
    from types import SimpleNamespace

    from mechtest.claims import load_claims
    from mechtest.metrics import REGISTRY

    (tmp_path / "claims.toml").write_text('[[claim]]\nid = "s"\nmetric = "path_patching"\nmodels = ["m"]\n')
    (claim,) = load_claims(tmp_path / "claims.toml")
    metric = REGISTRY["path_patching"]
    plain, update = SimpleNamespace(update_snapshots=False), SimpleNamespace(update_snapshots=True)
    assert metric.cache_inputs(claim, "m", plain) == {"snapshot": None}
    snap = tmp_path / "__snapshots__" / "claims" / "s[m].json"
    snap.parent.mkdir(parents=True)
    snap.write_text("{}")
    assert metric.cache_inputs(claim, "m", plain) == {"snapshot": "{}"}
    assert metric.cache_inputs(claim, "m", update) is None
