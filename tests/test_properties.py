"""Property claims: statements checked on generated prompts, batched, and shrunk to the minimal failing prompt."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechtest import properties as P
from mechtest.claims import load_claims
from mechtest.errors import ClaimError, MechtestError
from mechtest.heads import attention_module
from mechtest.tasks.entity_tracking import usable_vocabulary

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
PLANTED = REPO / "fixtures" / "circuits" / "planted.json"
PLANTED_B = REPO / "fixtures" / "circuits" / "planted-b.json"
SMALLEST = "The book is in Box A, the car is in Box B. Box A contains the"  # the first words of planted's vocabulary


@pytest.fixture(scope="module", autouse=True)
def _bound(mechtest):
    """prompts("name") resolves through the session (the plugin's job once it calls properties.bind)."""
    P.bind(mechtest)
    yield
    P.unbind(mechtest)


@pytest.fixture(scope="module")
def planted(mechtest):
    return mechtest.model("zoo-planted")


def broken_from_box(model, first_box: int):
    """planted whose struct reader (L0 H2) writes box 0's object at the label of every box >= ``first_box``:
    querying such a box answers box 0's object, every other query is untouched."""
    cand = dataclasses.replace(model, name=f"planted-broken-{first_box}", hf=copy.deepcopy(model.hf))
    d = cand.head_dim

    def hook(module, args):
        x = args[0].clone()
        seq = x.shape[1]  # BOS, then box s = "the <object> is in Box <label>," at 7s+1..7s+7: label at 7s+6
        for pos in range(7 * first_box + 6, seq - 5, 7):
            x[:, pos, 2 * d:3 * d] = x[:, 6, 2 * d:3 * d]
        return (x,) + tuple(args[1:])

    attention_module(cand, 0).c_proj.register_forward_pre_hook(hook)
    return cand


# ------------------------------------------------------------------------------------------ prompts

@settings(max_examples=15, deadline=None)
@given(example=P.prompts("zoo-planted", min_boxes=3, max_boxes=5))
def test_prompts_by_name_resolve_through_the_session(example):
    assert len(example) == 1 and 3 <= example.n_boxes <= 5
    assert example.prompts[0].endswith("contains the")


@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_prompts_drawn_inside_a_test_through_the_fixture(mechtest, data):
    example = data.draw(P.prompts("zoo-planted", 3, api=mechtest))
    assert example.n_boxes == 3 and P.from_spec(mechtest, "agrees_with:zoo-planted-b", "zoo-planted").check(example).holds


def test_the_number_of_examples_defaults_to_the_hypothesis_profile(planted):
    settings.register_profile("props-test", max_examples=7)
    previous = settings.get_current_profile_name()
    settings.load_profile("props-test")
    try:
        result = P.check_property(P.knockout_keeps(planted, "last->query_label", 3), P.prompts(planted, 2))
    finally:
        settings.load_profile(previous)
    assert result.n_examples == 7 and result.holds


def test_prompts_need_a_session_for_a_name(planted):
    strategy = P.prompts("zoo-planted", api=None)
    saved = list(P._SESSIONS)
    P._SESSIONS.clear()
    try:
        with pytest.raises(MechtestError, match="none is bound"):
            strategy.validate()
            strategy.wrapped_strategy  # noqa: B018 (resolves the deferred strategy)
    finally:
        P._SESSIONS.extend(saved)
    one = P.prompts(planted, 4)
    assert one.validate() is None


# --------------------------------------------------------------------------------- holding properties

@pytest.mark.parametrize("make", [
    lambda api, m: P.agrees_with(api.model("zoo-planted-b"), m),
    lambda api, m: P.circuit_agrees(m, api.circuit(str(PLANTED)), P.session_means(api, m, n=100)),
    lambda api, m: P.knockout_keeps(m, "last->query_label", 3),
    lambda api, m: P.knockout_breaks(m, "last->object", 0),
    lambda api, m: P.knockout_breaks(m, "query_label->query_context", 1),
], ids=["agrees_with-planted-b", "circuit_agrees", "knockout_keeps-L3", "knockout_breaks-object",
        "knockout_breaks-query_context-L1"])
def test_properties_that_hold_on_planted(mechtest, planted, make):
    result = P.check_property(make(mechtest, planted), P.prompts(planted, min_boxes=2, max_boxes=8),
                              max_examples=200, seed=0)
    assert result.holds and result.n_failures == 0 and result.n_examples == 200, result.explain()
    assert result.fraction == 1.0 and result.minimal is None
    assert result.n_forwards <= 2 * 7 and result.n_shrink_forwards == 0  # one batch per box count


def test_finetuned_keeps_its_answer_without_the_query_label_in_its_last_layer(mechtest):
    model = mechtest.model("zoo-finetuned")
    # the zoo's position transmitter (layer 2) reads the query label; from layer 3 on nothing does
    result = P.check_property(P.knockout_keeps(model, "last->query_label", 3), P.prompts(model, min_boxes=2,
                              max_boxes=3), max_examples=200, seed=0)
    assert result.holds, result.explain()


def test_agrees_with_across_tokenizers_rebuilds_the_prompts_for_the_base(monkeypatch, mechtest, planted):
    monkeypatch.setattr(P, "_same_tokenizer", lambda a, b: False)
    prop = P.agrees_with(mechtest.model("zoo-planted-b"), planted)
    assert prop.objects and prop.labels  # the words both tokenizers can use
    strategy = P.prompts(planted, max_boxes=4, objects=prop.objects, labels=prop.labels)
    assert P.check_property(prop, strategy, max_examples=50, seed=2).holds


def test_prediction_helpers_report_token_and_probabilities(mechtest, planted):
    examples = P._draw(P.prompts(planted, min_boxes=2, max_boxes=4), 12, 0)
    full = P.run(planted, examples)
    assert all(p.correct and p.prob > 0.9 and p.answer_prob == p.prob for p in full)
    assert [p.token for p in full] == [ex.objects[0][int(ex.queried_index[0])] for ex in examples]
    circuit = P.run_circuit(planted, mechtest.circuit(str(PLANTED)), examples, P.reference_means(planted, n=50))
    assert [p.token_id for p in circuit] == [p.token_id for p in full]
    blocked = P.run_knockout(planted, examples, "last->object", 3)
    assert not any(p.correct for p in blocked) and all(p.answer_prob < 0.5 for p in blocked)


def test_batched_verdicts_equal_one_at_a_time(mechtest, planted):
    prop = P.circuit_agrees(planted, mechtest.circuit(str(PLANTED_B)), P.session_means(mechtest, planted, n=100))
    examples = P._draw(P.prompts(planted, min_boxes=2, max_boxes=5), 30, 4)
    batched = prop.check_all(examples)
    assert batched == [prop.check(ex) for ex in examples]
    assert not all(v.holds for v in batched)  # planted-b's heads are not planted's circuit


# ---------------------------------------------------------------------------------- failing properties

def test_knockout_of_the_transmitter_edge_does_not_always_break_planted(planted):
    """Blocking last -> query label leaves the last token guessing among the objects: right on some prompts."""
    result = P.check_property(P.knockout_breaks(planted, "last->query_label", 0), P.prompts(planted, max_boxes=8),
                              max_examples=200, seed=0)
    assert not result.holds and 0 < result.n_failures < 200 and result.shrunk
    m = result.minimal
    assert (m.prompt, m.n_boxes, m.queried_index, m.expected, m.produced) == (SMALLEST, 2, 0, "not 'book'", "book")
    text = result.explain()
    assert repr(SMALLEST) in text and "seed 0" in text and "expected: not 'book' (p=0.99" in text
    assert "produced: 'book' (p=0.9" in text and "(2 boxes, query position 0)" in text


@pytest.mark.parametrize("first_box", [1, 2, 3, 6])  # 6: only 7-box prompts querying the last box fail
@pytest.mark.slow
def test_a_candidate_broken_for_late_boxes_shrinks_to_the_first_broken_box(planted, first_box):
    vocab = usable_vocabulary(planted.tokenizer)
    candidate = broken_from_box(planted, first_box)
    result = P.check_property(P.agrees_with(planted, candidate), P.prompts(planted, min_boxes=2, max_boxes=7),
                              max_examples=200, seed=0)
    assert not result.holds and result.shrunk
    m, n = result.minimal, max(2, first_box + 1)
    assert (m.n_boxes, m.queried_index) == (n, first_box), result.explain()
    words = [f"the {o} is in Box {lab}" for o, lab in zip(vocab.objects[:n], vocab.labels[:n])]
    assert m.prompt == "T" + ", ".join(words)[1:] + f". Box {vocab.labels[first_box]} contains the"
    assert (m.expected, m.produced) == (repr(vocab.objects[first_box]), vocab.objects[0])
    assert m.expected_prob > 0.9 and m.produced_prob > 0.5
    # reproducible from the seed alone
    again = P.check_property(P.agrees_with(planted, candidate), P.prompts(planted, min_boxes=2, max_boxes=7),
                             max_examples=200, seed=0)
    assert again == result


def test_a_failure_found_without_shrinking_is_the_smallest_one_seen(planted):
    result = P.check_property(P.knockout_keeps(planted, "last->object", 0), P.prompts(planted, 3),
                              max_examples=20, seed=1, shrink=False)
    assert not result.shrunk and result.n_failures == 20 and result.minimal.n_boxes == 3
    assert result.minimal.queried_index == 0


def test_bad_arguments_are_one_line_errors(planted):
    with pytest.raises(MechtestError, match="unknown property edge 'last->random'; use one of last->object"):
        P.run_knockout(planted, P._draw(P.prompts(planted, 2), 1, 0), "last->random")
    with pytest.raises(MechtestError, match="max_examples must be >= 1"):
        P.check_property(P.knockout_keeps(planted, "last->object"), P.prompts(planted, 2), max_examples=0)


# ---------------------------------------------------------------------------------------- claim files

CLAIMS = f"""
[[claim]]
id = "planted-b-agrees"
metric = "property"
property = "agrees_with:zoo-planted-b"
models = ["zoo-planted"]
max_examples = 100
expect = "== 1"

[[claim]]
id = "circuit-alone-agrees"
metric = "property"
property = "circuit_agrees"
circuit = "{PLANTED}"
models = ["zoo-planted"]
n_prompts = 100
expect = "== 1"

[[claim]]
id = "transmitter-knockout-breaks"
metric = "property"
property = "knockout_breaks"
edge = "last->query_label"
layer = 0
models = ["zoo-planted"]
max_examples = 100
expect = "== 1"

[[claim]]
id = "agrees-with-absent"
metric = "property"
property = "agrees_with:absent"
models = ["zoo-planted"]
expect = "== 1"
"""


@pytest.mark.slow
def test_property_claims_pass_fail_skip_and_report_the_minimal_prompt(pytester):
    pytester.makefile(".toml", claims=CLAIMS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs", "--mechtest-json", "out.json")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.fnmatch_lines([
        "*planted-b-agrees*zoo-planted*1.000*== 1*PASS",
        "*transmitter-knockout-breaks*zoo-planted*== 1*FAIL",
    ])
    result.stdout.fnmatch_lines([
        "*property knockout_breaks holds on * of 100 generated prompts (seed 0); minimal failing prompt*",
        f"*prompt:   {SMALLEST!r} (2 boxes, query position 0)",
        "*expected: not 'book' (p=0.99*)",
        "*produced: 'book' (p=0.9*)",
    ])
    result.stdout.fnmatch_lines(["*model 'absent' is not configured*"])
    report = json.loads((pytester.path / "out.json").read_text())
    by_id = {c["id"]: c for c in report["claims"]}
    failed = by_id["transmitter-knockout-breaks"]
    assert failed["outcome"] == "FAIL" and failed["ci_low"] is None and 0 < failed["value"] < 1
    details = failed["details"]
    assert details["property"] == "knockout_breaks" and details["n_examples"] == 100 and details["seed"] == 0
    assert details["shrunk"] and details["minimal"]["prompt"] == SMALLEST
    assert details["minimal"]["produced"] == "book" and details["minimal"]["n_boxes"] == 2
    assert by_id["circuit-alone-agrees"]["details"]["n_failures"] == 0


@pytest.mark.parametrize("fields, message", [
    ('property = "always"', "unknown property 'always'; use one of agrees_with:<model>, circuit_agrees"),
    ('property = "agrees_with:"', "agrees_with:<model> needs a model name"),
    ('property = "agrees_with:m"', "the model 'm' of 'agrees_with:m' is also one of the claim's models"),
    ('property = "circuit_agrees"', "field 'circuit': missing (property 'circuit_agrees' needs a circuit)"),
    (f'property = "knockout_breaks"\ncircuit = "{PLANTED}"\nedge = "last->object"', "only property 'circuit_agrees'"),
    ('property = "knockout_keeps"', "field 'edge': missing (property 'knockout_keeps' needs an edge"),
    ('property = "knockout_keeps"\nedge = "last->random"', "field 'edge': unknown edge 'last->random'"),
    ('property = "agrees_with:x"\nlayer = 2', "field 'layer': only properties knockout_breaks and knockout_keeps"),
    ('property = "agrees_with:x"\nmin_boxes = 5\nmax_boxes = 3', "field 'min_boxes': 5 is more than max_boxes = 3"),
])
def test_malformed_property_claims_fail_at_collection(tmp_path, fields, message):
    path = tmp_path / "claims.toml"
    path.write_text(f'[[claim]]\nid = "p"\nmetric = "property"\nmodels = ["m"]\nexpect = "== 1"\n{fields}\n')
    with pytest.raises(ClaimError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_claims(path)


HAND_WRITTEN = f'''
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mechtest import properties


@pytest.fixture(scope="module", autouse=True)
def _bound(mechtest):
    properties.bind(mechtest)
    yield
    properties.unbind(mechtest)


@settings(max_examples=20, deadline=None)
@given(example=properties.prompts("zoo-planted"))
def test_circuit_agrees(mechtest, example):
    prop = properties.from_spec(mechtest, "circuit_agrees", "zoo-planted", circuit="{PLANTED}", n_reference=50)
    verdict = prop.check(example)
    assert verdict.holds, verdict.explain()


@settings(max_examples=50, deadline=None)
@given(example=properties.prompts("zoo-planted"))
def test_transmitter_knockout_breaks(mechtest, example):
    verdict = properties.from_spec(mechtest, "knockout_breaks", "zoo-planted", edge="last->query_label").check(example)
    assert verdict.holds, verdict.explain()


@given(example=properties.prompts("no-such-model"))
def test_an_unconfigured_model_skips(example):
    raise AssertionError("never drawn")
'''


@pytest.mark.slow
def test_hand_written_given_tests_shrink_and_honour_the_hypothesis_seed(pytester):
    pytester.makepyfile(test_hand=HAND_WRITTEN)
    outputs = []
    for _ in range(2):
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--hypothesis-seed=3")
        result.assert_outcomes(passed=1, failed=1, skipped=1)
        result.stdout.fnmatch_lines([f"*prompt: {SMALLEST!r} -> answer 'book'*"])  # Hypothesis's note, shrunk
        outputs.append([line for line in result.outlines if "Falsifying example" in line or "prompt:" in line])
    assert outputs[0] == outputs[1]
