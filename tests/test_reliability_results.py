"""No result is served that was not measured on these inputs: cache entries verify, every file that changes a
result keys it, snapshots match their shape, and a circuit of no heads is refused wherever it is read."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from mechtest.errors import CircuitError, SnapshotError
from mechtest.report.result import ClaimResult
from mechtest.result_cache import ResultCache

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
PLANTED = REPO / "fixtures" / "zoo" / "planted"


def run(pytester, cache, *args):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--mechtest-cache-dir={cache}",
                                        "--mechtest-json", "out.json", *args)


def report(pytester) -> dict:
    return {c["id"]: c for c in json.loads((pytester.path / "out.json").read_text())["claims"]}


# --- the claim-result cache verifies what it serves ----------------------------------------------------


def result(claim_id: str, value: float, passed: bool) -> ClaimResult:
    return ClaimResult(id=claim_id, model="m", metric="accuracy", value=value, ci_low=value, ci_high=value,
                       expect=">= 0.9", passed=passed, outcome="PASS" if passed else "FAIL")


@pytest.mark.parametrize("damage", ["swap", "copy", "edit", "torn", "rekeyed"])
def test_a_moved_copied_or_edited_entry_is_a_miss(tmp_path, damage):
    cache = ResultCache(tmp_path)
    cache.put("a" * 40, result("a", 1.0, True))
    cache.put("b" * 40, result("b", 0.1, False))
    a, b = cache.directory / f"{'a' * 40}.json", cache.directory / f"{'b' * 40}.json"
    assert cache.get("a" * 40, claim_id="a", model="m").value == 1.0
    if damage == "swap":
        ta, tb = a.read_text(), b.read_text()
        a.write_text(tb)
        b.write_text(ta)
    elif damage == "copy":
        shutil.copy(b, a)
    elif damage == "edit":
        a.write_text(a.read_text().replace('"value": 1.0', '"value": 0.5'))
    elif damage == "torn":
        a.write_text(a.read_text()[: len(a.read_text()) // 2])
    else:  # the entry's own key and checksum rewritten consistently, but for another claim id
        entry = json.loads(b.read_text())
        entry["key"] = "a" * 40
        import mechtest.result_cache as rc

        entry["sha256"] = rc._checksum({k: entry[k] for k in ("key", "claim", "model", "result")})
        a.write_text(json.dumps(entry))
    assert cache.get("a" * 40, claim_id="a", model="m") is None
    assert cache.get("a" * 40, claim_id="a", model="other") is None


def test_swapped_entries_of_a_run_are_measured_again(pytester, tmp_path):
    """A CI cache restore mixing entries: a claim measured at 1.000 against <= 0.5 must not pass."""
    cache = tmp_path / "cache"
    pytester.makefile(".toml", claims='''
[[claim]]
id = "holds"
metric = "accuracy"
models = ["m"]
n_prompts = 20
expect = ">= 0.5"

[[claim]]
id = "fails"
metric = "accuracy"
models = ["m"]
n_prompts = 21
expect = "<= 0.5"
''')
    run(pytester, cache, "--mechtest-model", f"m={PLANTED}").assert_outcomes(passed=1, failed=1)
    entries = sorted((cache / "claims").glob("*.json"))
    assert len(entries) == 2
    first, second = (e.read_text() for e in entries)
    entries[0].write_text(second)
    entries[1].write_text(first)
    result = run(pytester, cache, "--mechtest-model", f"m={PLANTED}")
    result.assert_outcomes(passed=1, failed=1)
    claims = report(pytester)
    assert claims["fails"]["outcome"] == "FAIL" and claims["fails"]["value"] > 0.5
    assert not claims["fails"]["cached"] and not claims["holds"]["cached"]


# --- every file that changes a result is in the key ---------------------------------------------------


def _edit_tokenizer(ckpt: Path) -> None:
    data = json.loads((ckpt / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    word = next(w for w in vocab if w.strip() == "Box")
    del vocab[word]  # a template word the task needs
    (ckpt / "tokenizer.json").write_text(json.dumps(data))


def _edit_json(name: str, key: str, value):
    def edit(ckpt: Path) -> None:
        path = ckpt / name
        data = json.loads(path.read_text()) if path.is_file() else {}
        data[key] = value
        path.write_text(json.dumps(data))
    return edit


def _tokenizer_error(claim: dict) -> bool:
    return claim["outcome"] == "ERROR" and "TokenizerError" in claim["error"]


@pytest.mark.parametrize("edit, measured_again, fresh", [
    (_edit_tokenizer, True, _tokenizer_error),  # what a fresh cache says, not the stale PASS
    (_edit_json("mechtest.json", "n_boxes", 3), True, lambda claim: claim["n_boxes"] == 3),
    (_edit_json("tokenizer_config.json", "model_max_length", 77), True, None),
    (_edit_json("generation_config.json", "temperature", 0.5), True, None),
    (_edit_json("special_tokens_map.json", "pad_token", "<pad>"), True, None),  # a file that was not there
    (lambda ckpt: (ckpt / "README.md").write_text("notes"), False, None),  # documentation changes nothing
], ids=["tokenizer.json", "mechtest.json", "tokenizer_config", "generation_config", "new-file", "readme"])
def test_editing_a_file_that_changes_the_result_measures_again(pytester, tmp_path, edit, measured_again, fresh):
    ckpt, cache = tmp_path / "ckpt", tmp_path / "cache"
    shutil.copytree(PLANTED, ckpt)
    pytester.makefile(".toml", claims='[[claim]]\nid = "acc"\nmetric = "accuracy"\nmodels = ["m"]\n'
                                       'n_prompts = 20\nexpect = ">= 0.5"\n')
    run(pytester, cache, "--mechtest-model", f"m={ckpt}").assert_outcomes(passed=1)
    run(pytester, cache, "--mechtest-model", f"m={ckpt}")
    assert report(pytester)["acc"]["cached"] is True
    edit(ckpt)
    run(pytester, cache, "--mechtest-model", f"m={ckpt}")
    claim = report(pytester)["acc"]
    assert claim["cached"] is not measured_again
    assert fresh is None or fresh(claim), claim


def test_side_files_of_a_checkpoint_and_of_a_gguf(tmp_path):
    from mechtest.fingerprint import side_files

    for name in ("config.json", "tokenizer.json", "merges.txt", "spiece.model", "chat_template.jinja",
                 "model.safetensors", "optimizer.pt", "README.md", ".gitattributes", "notes.yaml", "x.gguf"):
        (tmp_path / name).write_text("x")
    assert [f.name for f in side_files(tmp_path)] == ["chat_template.jinja", "config.json", "merges.txt",
                                                       "notes.yaml", "spiece.model", "tokenizer.json"]
    assert [f.name for f in side_files(tmp_path, gguf=True)] == ["chat_template.jinja", "config.json",
                                                                  "merges.txt", "spiece.model", "tokenizer.json"]


# --- snapshots match their shape -----------------------------------------------------------------------


def _snapshot(path: Path, rows: list[list[float]], shape=(4, 4)) -> None:
    steps = {g: {"shape": list(shape), "values": rows} for g in ("value_fetcher", "pos_transmitter")}
    path.write_text(json.dumps({"kind": "path-patching", "n_prompts": 10, "seed": 0, "steps": steps,
                                "n_boxes": 3}))


GOOD = [[0.0, -0.5, 0.0, 0.0], [0.0, 0.0, 0.1, 0.0], [0.2, 0.0, 0.0, 0.0], [0.0, -0.9, 0.0, 0.0]]


@pytest.mark.parametrize("rows", [GOOD[:3], GOOD + [[0.0] * 4], [r[:3] for r in GOOD],
                                  [*GOOD[:3], GOOD[3] + [1.0]]],
                         ids=["row-missing", "extra-row", "column-missing", "extra-column"])
def test_a_snapshot_whose_values_do_not_match_its_shape_is_a_snapshot_error(tmp_path, rows):
    from mechtest.snapshots import check_claim_snapshot, compare_text, dumps

    path = tmp_path / "s[m].json"
    _snapshot(path, rows)
    payload = {"kind": "path-patching", "steps": {g: {"shape": [4, 4], "values": GOOD}
                                                  for g in ("value_fetcher", "pos_transmitter")}}
    malformed = re.escape(f"snapshot {path} is malformed: ") + ".*does not match its shape"
    with pytest.raises(SnapshotError, match=malformed):
        check_claim_snapshot(path, payload, settings={"n_prompts": 10, "seed": 0, "n_boxes": 3}, update=False)
    # the syrupy extension's comparison never passes such a snapshot either
    actual = dumps({**payload, "n_prompts": 10, "seed": 0, "n_boxes": 3})
    mismatch = compare_text(actual, path.read_text())
    assert mismatch is not None and "the snapshot is malformed" in str(mismatch)


def test_a_well_formed_snapshot_still_matches(tmp_path):
    from mechtest.snapshots import check_claim_snapshot

    path = tmp_path / "s[m].json"
    _snapshot(path, GOOD)
    payload = {"kind": "path-patching", "steps": {g: {"shape": [4, 4], "values": GOOD}
                                                  for g in ("value_fetcher", "pos_transmitter")}}
    assert check_claim_snapshot(path, payload, settings={"n_prompts": 10, "seed": 0, "n_boxes": 3},
                                update=False).status == "matches"


# --- a circuit of no heads ----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"value_fetcher": [], "pos_transmitter": [], "pos_detector": [],
                                       "struct_reader": []}, {"found_on": {"n_layers": 4, "n_heads": 4}}])
def test_an_empty_circuit_file_fails_collection(pytester, body):
    (pytester.path / "empty.json").write_text(json.dumps(body))
    pytester.makefile(".toml", claims='[[claim]]\nid = "f"\nmetric = "random_circuit_faithfulness"\n'
                                       'circuit = "empty.json"\nmodels = ["zoo-base"]\nexpect = "<= 0.3"\n')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*claim 'f': field 'circuit': circuit 'empty' has no heads*"])
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error, nothing ran


def test_an_empty_circuit_is_refused_by_the_api_and_after_discovery(monkeypatch):
    from mechtest.api import Mechtest
    from mechtest.methods.circuits import Circuit, load_circuit
    from mechtest.methods.discovery import Discovery

    api = Mechtest()
    for spec in ({}, {"value_fetcher": []}, Circuit({}, "mine")):
        with pytest.raises(CircuitError, match="has no heads"):
            api.circuit(spec)
        with pytest.raises(CircuitError, match="has no heads"):
            load_circuit(spec)
    nothing = Discovery(Circuit({}, "discovered:m"), None, {}, {}, 10, 0)
    monkeypatch.setattr(api, "discover", lambda *a, **k: nothing)
    with pytest.raises(CircuitError, match="has no heads.*path patching found no head"):
        api.circuit("discovered:m")
    assert len(api.circuit({"value_fetcher": [[0, 1]]})) == 1  # one head is a circuit
