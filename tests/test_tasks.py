"""Tasks as a plugin point: the registry, entity tracking behind the interface with unchanged prompts, IOI as a
template task, user tasks from a conftest.py and from TOML, vocabulary checks at collection, circuits that
record their task, and the planted IOI circuit recovered exactly by discovery."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from mechtest.claims import load_claims
from mechtest.errors import CircuitError, ClaimError, TaskError, TokenizerError
from mechtest.methods.circuits import Circuit, load_circuit
from mechtest.model import load_model
from mechtest.tasks.registry import get_task, register_task, task_names
from mechtest.tasks.template import TemplateTask, parse_tasks

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
ZOO = REPO / "fixtures" / "zoo"
CIRCUITS = REPO / "fixtures" / "circuits"
IOI_MODELS = {"zoo-ioi": "ioi-planted", "zoo-ioi-b": "ioi-planted-b", "zoo-ioi-noisy": "ioi-planted-noisy",
              "zoo-planted": "planted"}


@pytest.fixture(scope="module")
def ioi_model():
    return load_model(ZOO / "ioi-planted")


@pytest.fixture
def ini(pytester):
    lines = "".join(f"    {name} = {ZOO / folder}\n" for name, folder in IOI_MODELS.items())
    pytester.makeini(f"[pytest]\nmechtest_models =\n{lines}mechtest_circuit_dirs = /\n")
    return pytester


def run(pytester, *args):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--mechtest-cache-dir={pytester.path / 'c'}",
                                        *args)


# --- the registry and entity tracking -------------------------------------------------------------------

def test_builtin_tasks_and_an_unknown_name():
    assert {"entity_tracking", "ioi"} <= set(task_names())
    with pytest.raises(TaskError, match="unknown task 'nope'; known tasks: .*entity_tracking"):
        get_task("nope")


def test_entity_tracking_task_gives_exactly_the_builders_prompts():
    from mechtest.tasks.entity_tracking import make_dataset, mean_ablation_set, path_patching_corruption

    tok = load_model(ZOO / "planted").tokenizer
    task = get_task("entity_tracking")
    data = task.dataset(tok, 30, n_boxes=4, seed=3)
    assert torch.equal(data.input_ids, make_dataset(tok, 30, n_boxes=4, seed=3).input_ids)
    assert torch.equal(task.reference(tok, 9, n_boxes=4, seed=3).input_ids,
                       mean_ablation_set(tok, 9, n_boxes=4, seed=3).input_ids)
    assert torch.equal(task.corruption(data, tok, seed=5).input_ids,
                       path_patching_corruption(data, tok, seed=5).input_ids)
    assert task.plan[0] == ("value_fetcher", "last", None, None) and task.chance(4) == 0.25


# --- IOI, a template task -------------------------------------------------------------------------------

def test_ioi_prompts_positions_and_corruptions(ioi_model):
    task, tok = get_task("ioi"), ioi_model.tokenizer
    data = task.dataset(tok, 40, seed=0)
    rows = torch.arange(len(data))
    assert data.prompts[0].startswith("When ") and data.prompts[0].endswith(" to")
    # the answer is the IO name; S occurs at S1 and S2, IO once
    assert torch.equal(data.input_ids[rows, data.io_pos], data.answer_ids)
    assert torch.equal(data.input_ids[rows, data.s1_pos], data.input_ids[rows, data.s2_pos])
    assert not torch.equal(data.input_ids[rows, data.s1_pos], data.answer_ids)
    assert torch.equal(data.end_pos, data.last_pos) and set(data.io_pos.tolist()) == {2, 4}  # after BOS
    corrupt = task.corruption(data, tok, seed=1)  # the subject swapped: S2 now repeats the IO
    assert torch.equal(corrupt.input_ids[rows, corrupt.s2_pos], data.answer_ids)
    assert torch.equal(corrupt.answer_ids, data.answer_ids)
    ref = task.reference(tok, 40, seed=0)  # ABC: three different names, none repeated
    names = torch.stack([ref.input_ids[rows, ref.io_pos], ref.input_ids[rows, ref.s1_pos],
                         ref.input_ids[rows, ref.s2_pos]], 1)
    assert all(len(set(r)) == 3 for r in names.tolist())
    assert task.chance(7) == 0.5


@pytest.mark.parametrize("variant", ["ioi-planted", "ioi-planted-b", "ioi-planted-noisy"])
def test_discovery_recovers_the_planted_ioi_circuit_exactly(variant):
    from mechtest.methods.discovery import discover_circuit

    found = discover_circuit(load_model(ZOO / variant), n_prompts=60, task="ioi", progress=False).circuit
    truth = load_circuit(CIRCUITS / f"{variant}.json")
    assert found.task == truth.task == "ioi"
    assert dict(found.groups) == dict(truth.groups)


def test_a_circuit_records_its_task_and_refuses_another(ioi_model):
    from mechtest.methods.evaluation import ablation_edits

    circuit = load_circuit(CIRCUITS / "ioi-planted.json")
    assert circuit.to_dict()["task"] == "ioi" and circuit.nodes[0][0] == "name_mover"
    assert "task" not in load_circuit(CIRCUITS / "planted.json").to_dict()  # entity tracking: absent
    et = get_task("entity_tracking").dataset(load_model(ZOO / "planted").tokenizer, 7, n_boxes=3)
    with pytest.raises(CircuitError, match="found on task 'ioi'; it cannot be applied to a claim of task "
                                           "'entity_tracking'"):
        ablation_edits(ioi_model, et, torch.zeros(3, 64, 4, 64), keep=circuit)
    with pytest.raises(CircuitError, match="unknown group"):
        Circuit.from_dict({"task": "ioi", "value_fetcher": [[0, 0]]})


def test_a_claim_applying_another_tasks_circuit_fails_at_collection(tmp_path):
    path = tmp_path / "claims.toml"
    path.write_text(textwrap.dedent(f"""
        [[claim]]
        id = "wrong-task"
        metric = "faithfulness"
        circuit = "{CIRCUITS / 'ioi-planted.json'}"
        models = ["m"]
        expect = ">= 0.9"
    """))
    with pytest.raises(ClaimError, match="field 'circuit': circuit 'ioi-planted' was found on task 'ioi'"):
        load_claims(path)
    path.write_text(path.read_text().replace('id = "wrong-task"', 'id = "x"\ntask = "nope"'))
    with pytest.raises(ClaimError, match="field 'task': unknown task 'nope'"):
        load_claims(path)


def test_result_cache_key_and_task_identity():
    from mechtest.result_cache import claim_key

    def claim(tmp, task):
        body = f'[[claim]]\nid = "a"\nmetric = "accuracy"\nmodels = ["m"]\nexpect = ">= 0.5"\n{task}'
        (tmp / "claims.toml").write_text(body)
        return load_claims(tmp / "claims.toml")[0]

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        et, ioi = claim(Path(d), ""), claim(Path(d), 'task = "ioi"')
        assert et.task == "entity_tracking" and ioi.task == "ioi"
        keys = {claim_key(c, "m", fingerprints={}, settings={}, metric_version="1") for c in (et, ioi)}
        assert len(keys) == 2
    spec = TOML_TASK.format(name="gift-key", names='["Mary", "John", "Tom"]')
    a, b = parse_tasks(spec, "x")[0], parse_tasks(spec.replace("gave", "handed"), "x")[0]
    assert a.identity() != b.identity()


# --- user tasks ---------------------------------------------------------------------------------------

TOML_TASK = """
[[task]]
name = "{name}"
templates = ["When {{IO}} and {{S}} went to the {{place}}, {{S}} gave a {{object}} to"]
answer = "IO"
slots = {{IO = "names", S = "names", place = "places", object = "objects"}}
vocabularies = {{names = {names}, places = ["store", "park"], objects = ["drink", "book"]}}
positions = {{io = "IO", s2 = "S#2", end = "last"}}
corruption = {{"S#2" = "IO"}}
reference = {{IO = "fresh", S = "fresh", "S#2" = "fresh"}}
candidates = {{mover = 1, inhibitor = 1}}

[[task.step]]
group = "mover"
position = "end"

[[task.step]]
group = "inhibitor"
position = "end"
receivers = "mover"
site = "q"
"""

CLAIM = """
[[claim]]
id = "gift-accuracy"
task = "{name}"
metric = "accuracy"
models = ["zoo-ioi"]
n_prompts = 60
expect = ">= 0.9"
"""


def test_a_toml_task_file_next_to_the_claims_runs(ini):
    (ini.path / "gift.task.toml").write_text(TOML_TASK.format(name="gift-file", names='"names.csv"'))
    (ini.path / "names.csv").write_text("word\nMary\nJohn\nTom\nAnna\n")
    ini.makefile(".toml", claims=CLAIM.format(name="gift-file"))
    result = run(ini)
    result.assert_outcomes(passed=1)
    assert "gift-accuracy" in result.stdout.str() and "1.000" in result.stdout.str()


def test_a_multi_token_slot_word_fails_at_collection_naming_task_slot_and_word(ini):
    body = TOML_TASK.format(name="gift-multi", names='["Mary", "John", "Mary-Ann"]') + CLAIM.format(name="gift-multi")
    ini.makefile(".toml", claims=body)
    result = run(ini)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "ClaimError" in out and "task 'gift-multi', slot 'IO': word 'Mary-Ann' is not a single known token" in out


def test_a_malformed_task_fails_at_collection(tmp_path):
    bad = TOML_TASK.format(name="gift-bad", names='["Mary", "John", "Tom"]')
    bad = bad.replace('receivers = "mover"', 'receivers = "nobody"')
    (tmp_path / "claims.toml").write_text(bad + CLAIM.format(name="gift-bad"))
    with pytest.raises(ClaimError, match="task 'gift-bad', step 'inhibitor': its receivers 'nobody' come from no "
                                         "earlier step"):
        load_claims(tmp_path / "claims.toml")
    with pytest.raises(TaskError, match="vocabulary 'names': 2 words for 2 slot"):
        parse_tasks(TOML_TASK.format(name="gift-bad", names='["Mary", "John"]'), "x")


def test_a_python_task_registered_from_a_conftest(ini):
    (ini.path / "gift.toml.txt").write_text(TOML_TASK.format(name="gift-py", names='["Mary", "John", "Tom"]'))
    ini.makeconftest("""
        from pathlib import Path

        from mechtest.tasks.registry import register_task
        from mechtest.tasks.template import parse_tasks

        register_task(parse_tasks((Path(__file__).parent / "gift.toml.txt").read_text(), "conftest")[0])
    """)
    ini.makefile(".toml", claims=CLAIM.format(name="gift-py"))
    run(ini).assert_outcomes(passed=1)


def test_register_task_refuses_a_second_definition_of_a_name():
    task = parse_tasks(TOML_TASK.format(name="gift-reg", names='["Mary", "John", "Tom"]'), "x")[0]
    register_task(task)
    register_task(parse_tasks(TOML_TASK.format(name="gift-reg", names='["Mary", "John", "Tom"]'), "x")[0])  # same
    other = parse_tasks(TOML_TASK.format(name="gift-reg", names='["Mary", "John", "Tom", "Ann"]'), "x")[0]
    with pytest.raises(TaskError, match="task 'gift-reg' is registered already"):
        register_task(other)
    assert isinstance(get_task("gift-reg"), TemplateTask)


def test_ioi_vocabulary_check_names_the_template_for_another_tokenizer():
    with pytest.raises(TokenizerError, match="task 'ioi': template .* maps to its unknown token"):
        get_task("ioi").check_vocabulary(load_model(ZOO / "planted").tokenizer)




def test_table_and_json_group_claims_by_task():
    from mechtest.report.json_report import json_report
    from mechtest.report.result import ClaimResult
    from mechtest.report.terminal import summary_lines

    def result(id_, task, outcome):
        return ClaimResult(id=id_, model="m", metric="verdict", value="preserved", ci_low=None, ci_high=None,
                           expect="preserved", passed=outcome == "PASS", outcome=outcome, task=task,
                           nodeid=f"f::{id_}[m]")

    results = [result("a-ioi", "ioi", "FAIL"), result("z-et", "entity_tracking", "PASS"),
               result("b-ioi", "ioi", "PASS")]
    lines = summary_lines(results, [])
    assert lines[0].split()[:2] == ["task", "claim"]
    assert [line.split()[:2] for line in lines[2:5]] == [["entity_tracking", "z-et"], ["ioi", "a-ioi"],
                                                          ["ioi", "b-ioi"]]
    tasks = json_report(results, [], {})["tasks"]
    assert tasks == {"entity_tracking": {"claims": ["f::z-et[m]"], "outcomes": {"PASS": 1}},
                     "ioi": {"claims": ["f::a-ioi[m]", "f::b-ioi[m]"], "outcomes": {"FAIL": 1, "PASS": 1}}}
    assert summary_lines(results[1:2], [])[0].startswith("claim")  # one task: the table as before


def test_a_user_template_task_discovers_through_its_own_step_plan(ioi_model):
    from mechtest.methods.discovery import discover_circuit

    task = parse_tasks(TOML_TASK.format(name="gift-disc", names='["Mary", "John", "Tom", "Anna"]'), "x")[0]
    register_task(task)
    assert task.receivers == {"inhibitor": 1}  # default: the size of the group the receivers come from
    found = discover_circuit(ioi_model, n_prompts=30, task="gift-disc", progress=False).circuit
    truth = load_circuit(CIRCUITS / "ioi-planted.json")
    assert found.task == "gift-disc"
    assert found.heads("mover") == truth.heads("name_mover") and found.heads("inhibitor") == truth.heads("s_inhibition")
