"""The metric registry: a project adds a metric in one file (here a conftest) and claim files can use it."""

from __future__ import annotations

import pytest

from mechtest.claims import load_claims
from mechtest.errors import ClaimError
from mechtest.metrics import REGISTRY, Field, Metric, register_metric

pytest_plugins = ["pytester"]

TOY_CONFTEST = '''
from mechtest.metrics import Field, Metric, Outcome, register_metric


@register_metric
class Vocabulary(Metric):
    """The model's vocabulary size, optionally divided by a factor (a toy metric: no forward pass)."""

    name = "vocab_size"
    fields = {"divide_by": Field("int", minimum=1), "other": Field("model")}

    def measure(self, api, claim, model, *, n, seed, n_boxes):
        loaded = api.model(model)
        return Outcome(len(loaded.tokenizer.get_vocab()) / claim.get("divide_by", 1), details={"n": n})
'''


def test_a_conftest_metric_runs_as_claims_and_is_validated(pytester):
    pytester.makeconftest(TOY_CONFTEST)
    pytester.makefile(".toml", claims='''
[[claim]]
id = "vocab"
metric = "vocab_size"
models = ["zoo-planted"]
divide_by = 141
expect = "== 1"

[[claim]]
id = "vocab-too-small"
metric = "vocab_size"
models = ["zoo-planted"]
expect = "< 10"

[[claim]]
id = "needs-other"
metric = "vocab_size"
models = ["zoo-planted"]
other = "absent"
expect = "> 0"
''')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs", "--mechtest-prompts", "3")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["vocab *zoo-planted*1.000*== 1*PASS", "vocab-too-small*141.000*< 10*FAIL"])
    result.stdout.fnmatch_lines(["*model 'absent' is not configured*"])  # a "model" field: skip logic


def test_conftest_metric_fields_are_checked_at_collection(pytester):
    pytester.makeconftest(TOY_CONFTEST)
    pytester.makefile(".toml", claims='[[claim]]\nid = "v"\nmetric = "vocab_size"\nmodels = ["m"]\n'
                                       'divide_by = 0\nexpect = "> 0"\n')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*claim 'v': field 'divide_by': must be >= 1, got 0*"])
    assert result.ret == pytest.ExitCode.INTERRUPTED


def test_every_shipped_metric_declares_typed_fields():
    assert {"accuracy", "faithfulness", "completeness", "random_circuit_faithfulness", "path_patching", "dcm",
            "cmap_accuracy", "knockout_accuracy", "verdict"} <= set(REGISTRY)
    for metric in (m for m in REGISTRY.values() if type(m).__module__.startswith("mechtest.metrics")):
        assert metric.expects in ("number", "verdict", "snapshot") and metric.description, metric.name
        assert all(isinstance(f, Field) for f in metric.fields.values()), metric.name


def test_a_metric_with_a_bad_field_kind_is_refused_at_registration():
    with pytest.raises(ClaimError, match="unknown kind 'float'"):
        @register_metric
        class Broken(Metric):
            name = "broken"
            fields = {"x": Field("float")}
    assert "broken" not in REGISTRY


def test_an_unknown_metric_lists_the_registered_ones(tmp_path):
    path = tmp_path / "claims.toml"
    path.write_text('[[claim]]\nid = "x"\nmetric = "magic"\nmodels = ["a"]\nexpect = ">= 1"\n')
    with pytest.raises(ClaimError, match="known metrics: accuracy, faithfulness"):
        load_claims(path)


def _readme_block(after: str, lang: str) -> str:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index(f"```{lang}\n", readme.index(after)) + len(lang) + 4
    return readme[start:readme.index("```", start)]


def test_the_readme_metric_with_its_own_memoised_method_runs(pytester):
    """The README's user metric (a Field default, a method memoised through ``service.memoised``) works from a
    conftest without editing the package, and its memoised method runs once for two claims on the same sample."""
    conftest = _readme_block("### Write your own metric", "python")
    conftest = conftest.replace("def answer_margin_hits(model, data, margin):",
                                "CALLS = []\n\n\ndef answer_margin_hits(model, data, margin):\n    CALLS.append(margin)")
    conftest += '''

def pytest_sessionfinish(session):
    print(f"margin method ran {len(CALLS)} time(s)")
'''
    pytester.makeconftest(conftest)
    claim = _readme_block("### Write your own metric", "toml").replace('["candidate"]', '["zoo-planted"]')
    pytester.makefile(".toml", claims=claim + claim.replace("answers-with-margin", "again-with-margin"))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-s", "--mechtest-prompts", "20",
                                          "--mechtest-inconclusive", "pass", "--mechtest-recompute")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*margin method ran 1 time(s)*", "again-with-margin*zoo-planted*PASS",
                                 "answers-with-margin*zoo-planted*PASS"])
