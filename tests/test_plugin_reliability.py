"""Bad input to the plugin stops the run at once with one clear line, or is counted: never a silent number."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "fixtures" / "zoo" / "base"


def run(pytester, *args):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)


@pytest.mark.parametrize("args, message", [
    (["--mechtest-device", "gpu"], "*--mechtest-device: unknown device 'gpu'*"),
    (["--mechtest-device", "cuda:0"], "*--mechtest-device:*CUDA*"),
    (["--mechtest-json", "."], "*--mechtest-json .: is a directory*"),
    (["--mechtest-model", "a=x", "--mechtest-model", "a=y"], "*--mechtest-model: model 'a' is given twice*"),
    (["--mechtest-require", "candidate"], "*required model 'candidate' is not configured*"),
    (["--mechtest-require", "c", "--mechtest-model", "c=./nowhere"], "*required model 'c': checkpoint not found*"),
])
def test_bad_run_options_stop_before_any_work(pytester, args, message):
    pytester.makepyfile("def test_x(): pass")
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert not list(pytester.path.glob("*.tmp")) and not list(pytester.path.glob(".*.tmp"))


def test_required_models_from_the_ini(pytester):
    pytester.makeini("[pytest]\nmechtest_require =\n    base\n    candidate\n")
    pytester.makepyfile("def test_x(): pass")
    result = run(pytester, "--mechtest-model", f"base={BASE}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*required model 'candidate' is not configured*"])
    run(pytester, "--mechtest-model", f"base={BASE}", "--mechtest-model", f"candidate={BASE}").assert_outcomes(
        passed=1)


def test_the_readme_gate_fails_when_a_required_model_is_missing(pytester):
    """The README's CI example: a misspelt model name must not end green with everything skipped."""
    shutil.copy(REPO / "suites" / "entity_tracking" / "gate.claims.toml", pytester.path)
    result = run(pytester, "--mechtest-require", "base", "--mechtest-require", "candidate",
                 "--mechtest-model", f"base={BASE}", "--mechtest-model", f"candidat={BASE}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*required model 'candidate' is not configured*"])


def test_a_hub_id_resolves_through_the_local_hub_cache(pytester, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / "abc123"
    shutil.copytree(BASE, snapshot)
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    pytester.makepyfile("""
        def test_hub(mechtest):
            m = mechtest.model("tiny")
            assert m.n_layers >= 2 and mechtest.n_boxes("tiny") == mechtest.n_boxes("local")
    """)
    run(pytester, "--mechtest-model", "tiny=org/tiny", "--mechtest-model", f"local={BASE}").assert_outcomes(passed=1)


def test_a_malformed_task_card_is_an_error_naming_the_file(pytester, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(BASE, ckpt)
    pytester.makefile(".toml", claims='[[claim]]\nid = "acc"\nmetric = "accuracy"\nmodels = ["m"]\n'
                                       'n_prompts = 3\nexpect = ">= 0"\n')
    for bad, words in (("{not json", "not valid JSON"), ('{"n_boxes": 1}', "n_boxes must be an integer >= 2"),
                       ('{"n_boxes": "3"}', "n_boxes must be an integer >= 2"), ("[3]", "must hold a JSON object")):
        (ckpt / "mechtest.json").write_text(bad)
        result = run(pytester, "--mechtest-model", f"m={ckpt}")
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines([f"*ModelLoadError: {ckpt / 'mechtest.json'}*{words}*"])


def test_a_negative_seed_is_refused_at_collection(pytester):
    pytester.makefile(".toml", claims='[[claim]]\nid = "acc"\nmetric = "accuracy"\nmodels = ["m"]\n'
                                       'seed = -1\nexpect = ">= 0"\n')
    result = run(pytester)
    result.stdout.fnmatch_lines(["*claim 'acc': field 'seed': must be >= 0, got -1*"])


def test_any_exception_in_a_claim_is_an_error_row_and_in_the_json(pytester, monkeypatch):
    """A bug or a torch error (not a MechtestError) still appears in the table and the JSON, as ERROR."""
    pytester.makeconftest("""
        from mechtest.metrics import Metric, register_metric

        @register_metric
        class Exploding(Metric):
            name = "exploding"
            def measure(self, api, claim, model, *, n, seed, n_boxes):
                raise IndexError("index 7 is out of bounds for dimension 0 with size 3\\nsecond line")
    """)
    pytester.makefile(".toml", claims='[[claim]]\nid = "boom"\nmetric = "exploding"\nmodels = ["zoo-base"]\n'
                                       'expect = ">= 0"\n')
    result = run(pytester, "--mechtest-json", "out.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["boom*zoo-base*ERROR", "0 of 1 claims hold (1 error)"])
    result.stdout.fnmatch_lines(["*IndexError: index 7 is out of bounds*"])  # the traceback is shown too
    claim = json.loads((pytester.path / "out.json").read_text())["claims"][0]
    assert claim["outcome"] == "ERROR" and claim["error"] == "IndexError: index 7 is out of bounds for " \
                                                             "dimension 0 with size 3"


def test_a_circuit_found_on_another_shape_is_refused_unless_the_claim_says_so(pytester, tmp_path):
    circuit = tmp_path / "c.json"
    circuit.write_text(json.dumps({"value_fetcher": [[1, 0]], "pos_transmitter": [[0, 1]],
                                   "found_on": {"n_layers": 3, "n_heads": 8, "model_type": "llama"}}))
    body = f'[[claim]]\nid = "f"\nmetric = "faithfulness"\ncircuit = "{circuit}"\nmodels = ["zoo-base"]\n' \
           'n_prompts = 30\nexpect = ">= 0"\n'
    pytester.makefile(".toml", claims=body)
    result = run(pytester, f"--mechtest-cache-dir={tmp_path / 'cache'}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*CircuitError: circuit 'c' was found on a llama model with 3 layers x 8 heads*"
                                 "any_shape = true*"])
    pytester.makefile(".toml", claims=body + "any_shape = true\n")
    run(pytester, f"--mechtest-cache-dir={tmp_path / 'cache'}").assert_outcomes(passed=1)


def test_prompts_longer_than_the_context_are_refused_before_any_forward(pytester, tmp_path):
    from tiny_models import save_tiny

    ckpt = save_tiny("llama", tmp_path / "ckpt")  # RoPE: the context length is a config number, not a table
    config = json.loads((ckpt / "config.json").read_text())
    config["max_position_embeddings"] = 16
    (ckpt / "config.json").write_text(json.dumps(config))
    pytester.makefile(".toml", claims='[[claim]]\nid = "acc"\nmetric = "accuracy"\nmodels = ["m"]\n'
                                       'n_prompts = 6\nexpect = ">= 0"\n')
    result = run(pytester, "--mechtest-model", f"m={ckpt}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*TaskError: prompts of * tokens (* boxes) are longer than 'm''s context of 16*"])


def test_a_tokenizer_without_the_template_words_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mechtest.errors import TokenizerError
    from mechtest.tasks.entity_tracking import make_dataset

    words = ["<unk>", "The", "the", "is", "in", ",", ".", "contains", "apple", "car", "A", "B"]  # no "Box"
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    with pytest.raises(TokenizerError, match=r"maps template word\(s\) \['Box'\] to its unknown token"):
        make_dataset(fast, 4, n_boxes=2, objects=["apple", "car"], labels=["A", "B"])
