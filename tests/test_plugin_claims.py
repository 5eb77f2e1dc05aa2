"""Claim files: the schema, the expect grammar, and collection errors that name file, claim and field.

Nothing here loads a model: malformed claims must fail at collection, before any weights load.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mechtest.claims import Expectation, load_claims
from mechtest.errors import ClaimError, MechtestError

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
PLANTED = REPO / "fixtures" / "circuits" / "planted.json"


def write(tmp_path: Path, body: str, name: str = "claims.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


GOOD = f"""
[[claim]]
id = "faith"
metric = "faithfulness"
circuit = "{PLANTED}"
models = ["a", "b"]
ablation = "mean"
n_prompts = 50
seed = 3
expect = ">= 0.9"
"""


def test_a_valid_claim_parses(tmp_path):
    (claim,) = load_claims(write(tmp_path, GOOD))
    assert claim.id == "faith" and claim.metric == "faithfulness" and claim.models == ("a", "b")
    assert claim.n_prompts == 50 and claim.seed == 3 and claim.n_boxes is None
    assert claim.get("circuit") == str(PLANTED) and claim.expect.check(0.95) and not claim.expect.check(0.5)


def test_claim_error_is_a_mechtest_error():
    assert issubclass(ClaimError, MechtestError)


@pytest.mark.parametrize("text, holds, fails", [
    (">= 0.95", [0.95, 1.0], [0.9499]),
    ("<= 0.1", [0.1, 0.0], [0.11]),
    ("> 0.5", [0.51], [0.5]),
    ("< 0.5", [0.49], [0.5]),
    ("== 0.66 ± 0.05", [0.61, 0.71, 0.66], [0.60, 0.72]),
    ("== 0.66 +- 0.05", [0.62], [0.72]),
    ("== 1", [1.0], [0.999]),
    ("in [0.4, 0.9]", [0.4, 0.9, 0.5], [0.39, 0.91]),
    ("in [-1, 1e-3]", [0.0], [0.01]),
])
def test_expect_grammar(text, holds, fails):
    e = Expectation.parse(text)
    assert all(e.check(v) for v in holds)
    assert not any(e.check(v) for v in fails)
    assert not e.check(math.nan)


@pytest.mark.parametrize("text", ["0.9", ">= ", "=> 0.9", ">= abc", "in [1, 0]", "in (0, 1)", "== 1 ± x", "preserved"])
def test_bad_expect_is_rejected(text):
    with pytest.raises(ValueError):
        Expectation.parse(text)


def test_verdict_and_snapshot_expectations():
    assert Expectation.parse("preserved", metric="verdict").check("preserved")
    assert not Expectation.parse("preserved", metric="verdict").check("not preserved")
    assert Expectation.parse("Not  Preserved", metric="verdict").check("not preserved")
    with pytest.raises(ValueError):
        Expectation.parse(">= 0.9", metric="verdict")
    with pytest.raises(ValueError):
        Expectation.parse(">= 0.9", metric="path_patching")


# each case: (claim body, field named in the error, words the message must contain)
BAD = {
    "unknown metric": ('id = "x"\nmetric = "magic"\nmodels = ["a"]\nexpect = ">= 1"', "metric", "unknown metric"),
    "bad expect": ('id = "x"\nmetric = "accuracy"\nmodels = ["a"]\nexpect = "at least 0.9"', "expect", "cannot parse"),
    "missing expect": ('id = "x"\nmetric = "accuracy"\nmodels = ["a"]', "expect", "missing"),
    "missing models": ('id = "x"\nmetric = "accuracy"\nexpect = ">= 1"', "models", "missing"),
    "missing id": ('metric = "accuracy"\nmodels = ["a"]\nexpect = ">= 1"', "id", "missing"),
    "missing circuit": ('id = "x"\nmetric = "faithfulness"\nmodels = ["a"]\nexpect = ">= 1"', "circuit", "missing"),
    "unknown key": ('id = "x"\nmetric = "accuracy"\nmodels = ["a"]\nexpect = ">= 1"\nprompts = 5', "prompts",
                    "unknown key"),
    "wrong type n_prompts": ('id = "x"\nmetric = "accuracy"\nmodels = ["a"]\nexpect = ">= 1"\nn_prompts = "5"',
                             "n_prompts", 'must be a positive integer or "auto"'),
    "wrong type models": ('id = "x"\nmetric = "accuracy"\nmodels = "a"\nexpect = ">= 1"', "models", "list of strings"),
    "bool seed": ('id = "x"\nmetric = "accuracy"\nmodels = ["a"]\nexpect = ">= 1"\nseed = true', "seed", "integer"),
    "unknown paper circuit": ('id = "x"\nmetric = "faithfulness"\ncircuit = "paper:gpt"\nmodels = ["a"]\n'
                              'expect = ">= 1"', "circuit", "unknown paper circuit"),
    "missing circuit file": ('id = "x"\nmetric = "faithfulness"\ncircuit = "nowhere.json"\nmodels = ["a"]\n'
                             'expect = ">= 1"', "circuit", "unknown circuit"),
    "unknown group": ('id = "x"\nmetric = "path_patching"\nmodels = ["a"]\ngroup = "heads"', "group", "unknown group"),
    "unknown desideratum": ('id = "x"\nmetric = "dcm"\ncircuit = "paper:llama"\ngroup = "value_fetcher"\n'
                            'desideratum = "colour"\nmodels = ["a"]\nexpect = ">= 1"', "desideratum", "unknown"),
    "bad verdict": ('id = "x"\nmetric = "verdict"\nbase = "b"\nmodels = ["a"]\nexpect = ">= 0.9"', "expect",
                    "preserved"),
    "verdict without base": ('id = "x"\nmetric = "verdict"\nmodels = ["a"]\nexpect = "preserved"', "base", "missing"),
    "cmap without source": ('id = "x"\nmetric = "cmap_accuracy"\nmodels = ["a"]\nexpect = ">= 1"', "source", "missing"),
    "ablation": ('id = "x"\nmetric = "faithfulness"\ncircuit = "paper:llama"\nablation = "zero"\nmodels = ["a"]\n'
                 'expect = ">= 1"', "ablation", "only 'mean'"),
    "zero prompts": ('id = "x"\nmetric = "accuracy"\nmodels = ["a"]\nexpect = ">= 1"\nn_prompts = 0', "n_prompts",
                     ">= 1"),
    "empty models": ('id = "x"\nmetric = "accuracy"\nmodels = []\nexpect = ">= 1"', "models", "non-empty"),
    "id with brackets": ('id = "x[1]"\nmetric = "accuracy"\nmodels = ["a"]\nexpect = ">= 1"', "id", "brackets"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_claims_name_file_claim_and_field(tmp_path, case):
    body, fieldname, words = BAD[case]
    path = write(tmp_path, "[[claim]]\n" + body + "\n")
    with pytest.raises(ClaimError) as info:
        load_claims(path)
    message = str(info.value)
    assert str(path) in message
    assert f"field {fieldname!r}" in message
    assert words in message
    if 'id = "x"' in body:
        assert "claim 'x'" in message


def test_duplicate_ids_and_bad_toml(tmp_path):
    with pytest.raises(ClaimError, match="duplicate id"):
        load_claims(write(tmp_path, GOOD + GOOD))
    with pytest.raises(ClaimError, match="not valid TOML"):
        load_claims(write(tmp_path, "[[claim]\nid = 1"))
    with pytest.raises(ClaimError, match="unknown top-level"):
        load_claims(write(tmp_path, "[claims]\nid = 1\n"))


def test_circuit_paths_resolve_against_the_claim_file(tmp_path):
    (tmp_path / "c.json").write_text(PLANTED.read_text())
    sub = tmp_path / "sub"
    sub.mkdir()
    body = GOOD.replace(str(PLANTED), "../c.json")
    (claim,) = load_claims(write(sub, body))
    assert Path(claim.get("circuit")) == (tmp_path / "c.json").resolve()


def test_a_malformed_circuit_file_fails_at_collection(tmp_path):
    (tmp_path / "bad.json").write_text('{"value_fetcher": [[0]]}')
    with pytest.raises(ClaimError, match="field 'circuit'.*not \\[layer, head\\]"):
        load_claims(write(tmp_path, GOOD.replace(str(PLANTED), "bad.json")))


def test_collection_error_before_any_weights_load(pytester, monkeypatch):
    """A malformed claim is a collection error naming file, claim and field; no model is loaded."""
    import mechtest.model

    def _refuse(*a, **k):
        raise AssertionError("weights loaded")

    # patched here (and undone by monkeypatch), not in the inner conftest: the run is in-process
    monkeypatch.setattr(mechtest.model, "load_model", _refuse)
    pytester.makefile(".toml", claims='[[claim]]\nid = "bad-one"\nmetric = "accuracy"\nmodels = ["zoo-planted"]\n'
                                      'expect = "about 0.9"\n')
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ClaimError: *claims.toml, claim 'bad-one': field 'expect': cannot parse*"])
    assert "weights loaded" not in result.stdout.str()


def test_claims_are_items_with_readable_ids_and_skip_absent_models(pytester):
    pytester.makefile(".toml", claims=GOOD)
    result = pytester.runpytest_inprocess("--collect-only", "-q")
    result.stdout.fnmatch_lines(["claims.toml::faith[[]a[]]", "claims.toml::faith[[]b[]]"])
    result = pytester.runpytest_inprocess("-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*model 'a' is not configured: pass --mechtest-model a=PATH*"])


def test_claim_file_patterns(pytester):
    body = '[[claim]]\nid = "x"\nmetric = "accuracy"\nmodels = ["m"]\nexpect = ">= 0"\n'
    for name in ("one.claims.toml", "claims_two.toml", "other.toml"):
        (pytester.path / name).write_text(body)
    result = pytester.runpytest_inprocess("--collect-only", "-q")
    out = result.stdout.str()
    assert "one.claims.toml::x[m]" in out and "claims_two.toml::x[m]" in out
    assert "other.toml" not in out
    pytester.makeini("[pytest]\nmechtest_claim_files = other.toml\n")
    result = pytester.runpytest_inprocess("--collect-only", "-q")
    result.stdout.fnmatch_lines(["other.toml::x[[]m[]]"])


def test_import_does_not_load_torch():
    code = "import mechtest, mechtest.plugin, mechtest.claims, sys; assert 'torch' not in sys.modules, 'torch'; " \
           "assert 'transformers' not in sys.modules, 'transformers'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_discovery_sample_apart_from_the_evaluation_sample(tmp_path):
    path = tmp_path / "claims.toml"
    path.write_text('[[claim]]\nid = "v"\nmetric = "verdict"\nbase = "b"\nmodels = ["c"]\nn_prompts = 1000\n'
                    'discover_prompts = 50\nexpect = "preserved"\n')
    (claim,) = load_claims(path)
    assert claim.n_prompts == 1000 and claim.get("discover_prompts") == 50
    path.write_text(path.read_text().replace("discover_prompts = 50", "discover_prompts = 0"))
    with pytest.raises(ClaimError, match="field 'discover_prompts': must be >= 1"):
        load_claims(path)
