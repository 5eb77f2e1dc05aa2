"""Head-level snapshots: readable serialisation, rtol/atol comparison, mismatch reports, syrupy integration."""

from __future__ import annotations

import json

import torch

from mechtest.methods.circuits import load_circuit
from mechtest.snapshots import HeadSnapshotExtension, compare_payloads, compare_text, dumps, to_payload

pytest_plugins = ["pytester"]


def test_matrices_serialise_as_shape_and_rounded_rows():
    text = dumps(to_payload(torch.tensor([[0.123456, -1e-9], [2.0, -0.5]])))
    data = json.loads(text)
    assert data == {"shape": [2, 2], "values": [[0.1235, 0.0], [2.0, -0.5]]}
    assert "[0.1235, 0.0]" in text and "[2.0, -0.5]" in text  # one row per line


def test_circuits_serialise_by_group():
    data = to_payload(load_circuit("paper:llama"))
    assert data["kind"] == "circuit" and data["name"] == "paper:llama"
    assert len(data["groups"]["value_fetcher"]) == 40


def test_tolerance_and_worst_heads():
    expected = to_payload({"vf": torch.zeros(3, 4)})
    moved = torch.zeros(3, 4)
    moved[2, 1] = -0.5
    moved[0, 3] = 0.02
    moved[1, 1] = 0.0005  # within atol
    mismatch = compare_payloads(to_payload({"vf": moved}), expected, rtol=0.0, atol=1e-3)
    assert mismatch is not None and mismatch.n_differ == 2 and mismatch.n_total == 12
    text = str(mismatch)
    assert "2 of 12 entries differ" in text and "max abs error 0.5" in text
    lines = text.splitlines()
    assert "vf (L2, H1)" in lines[2] and "vf (L0, H3)" in lines[3]  # worst first
    assert compare_payloads(to_payload({"vf": moved}), expected, rtol=0.0, atol=0.6) is None


def test_relative_tolerance():
    a = to_payload(torch.tensor([[1.0, -2.0]]))
    b = to_payload(torch.tensor([[1.04, -2.06]]))
    assert compare_payloads(b, a, rtol=0.05, atol=0.0) is None
    assert compare_payloads(b, a, rtol=0.01, atol=0.0) is not None


def test_structural_mismatches_are_named():
    m = compare_payloads(to_payload({"a": torch.zeros(2, 2)}), to_payload({"a": torch.zeros(3, 2)}))
    assert m is not None and "shape [2, 2] obtained, [3, 2] expected" in str(m)
    m = compare_payloads({"kind": "x", "b": 1}, {"kind": "y", "c": 1})
    assert "kind" in str(m) and "c: missing" in str(m) and "b: not in the snapshot" in str(m)
    assert "not valid JSON" in str(compare_text("{}", "{oops"))


def test_extension_serialize_and_matches():
    ext = HeadSnapshotExtension.with_tolerance(rtol=0.0, atol=0.01)()
    old = ext.serialize(torch.tensor([[0.5, 0.0]]))
    assert ext.matches(serialized_data=ext.serialize(torch.tensor([[0.505, 0.0]])), snapshot_data=old)
    assert not ext.matches(serialized_data=ext.serialize(torch.tensor([[0.6, 0.0]])), snapshot_data=old)
    assert not ext.matches(serialized_data=old, snapshot_data="not json")
    diff = "\n".join(ext.diff_lines(ext.serialize(torch.tensor([[0.6, 0.0]])), old))
    assert "1 of 2 entries differ" in diff and "(L0, H0): 0.5 -> 0.6" in diff


def test_head_snapshot_fixture_with_syrupy(pytester, monkeypatch):
    """--snapshot-update writes a readable .json; small drift passes; a real move fails naming the head."""
    pytester.makepyfile(test_scores="""
        import os
        import torch

        def test_scores(head_snapshot):
            scores = torch.zeros(2, 3)
            scores[1, 2] = float(os.environ.get("MOVE", "-0.9"))
            assert {"value_fetcher": scores} == head_snapshot
    """)
    result = pytester.runpytest_inprocess("--snapshot-update", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    (snap,) = (pytester.path / "__snapshots__" / "test_scores").glob("*.json")
    assert '"shape": [2, 3]' in snap.read_text() and "[0.0, 0.0, -0.9]" in snap.read_text()

    monkeypatch.setenv("MOVE", "-0.9004")
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)

    monkeypatch.setenv("MOVE", "-0.3")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*1 of 6 entries differ*", "*value_fetcher (L1, H2): -0.9 -> -0.3*"])

    result = pytester.runpytest_inprocess("--snapshot-update", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "-0.3" in snap.read_text()
