"""The gate's statistics: every deciding check carries an interval, a benign fine-tune is "preserved" at every
seed, a fine-tune that forgot the task is not, CMAP's "explained" interval does not collapse, and a recorded
base circuit replaces the base's discovery.

Controls: ``fixtures/controls/*benign-*`` and ``gate-forgetting`` (``python -m tools.zoo gate-controls``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mechtest.measure import wilson_ci
from mechtest.methods.circuits import load_circuit
from mechtest.methods.compare import Thresholds, cmap_explained, compare, judge
from mechtest.methods.discovery import discover_circuit
from mechtest.methods.fetcher_share import share_of
from mechtest.model import load_model

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
ZOO, CONTROLS = ROOT / "fixtures" / "zoo", ROOT / "fixtures" / "controls"
CIRCUIT = ROOT / "fixtures" / "circuits" / "zoo-base.json"
BENIGN = [ZOO / "finetuned", *sorted(CONTROLS.glob("*benign-*"))]
PROMPTS, N_BOXES, SEEDS = 140, 7, (0, 1, 2)


@pytest.fixture(scope="module")
def base():
    return load_model(ZOO / "base", name="base")


@pytest.fixture(scope="module")
def base_discoveries(base):
    """The base's discovery per seed, shared by every candidate (as the façade's cache does)."""
    return {s: discover_circuit(base, n_prompts=PROMPTS, n_boxes=N_BOXES, seed=s, progress=False) for s in SEEDS}


def _compare(base, discoveries, candidate, seed):
    return compare(base, candidate, n_prompts=PROMPTS, n_boxes=N_BOXES, seed=seed, progress=False,
                   base_discovery=discoveries[seed])


@pytest.mark.slow
@pytest.mark.parametrize("folder", BENIGN, ids=lambda p: p.name)
def test_benign_fine_tunes_are_preserved_at_every_seed(base, base_discoveries, folder):
    assert any("lora" in p.name for p in BENIGN)  # the rank-4 LoRA control is among them
    candidate = load_model(folder, name=folder.name)
    for seed in SEEDS:
        c = _compare(base, base_discoveries, candidate, seed)
        assert c.verdict == "preserved", c.explain()
        assert all(k.ci_low is not None for k in c.checks), c.explain()  # every deciding check has an interval


@pytest.fixture(scope="module")
def forgetting(base, base_discoveries):
    candidate = load_model(CONTROLS / "gate-forgetting", name="gate-forgetting")
    return [_compare(base, base_discoveries, candidate, s) for s in SEEDS]


@pytest.mark.slow
def test_a_fine_tune_that_forgot_the_task_is_not_preserved(forgetting):
    for c in forgetting:
        assert c.verdict == "not preserved", c.explain()
        outcomes = {k.name: k.outcome for k in c.checks}
        assert outcomes["accuracy vs base (non-inferiority)"] == "FAIL", c.explain()
        assert outcomes["candidate accuracy"] == "PASS", c.explain()  # above the chance floor: it alone would pass


@pytest.mark.slow
def test_only_the_margin_holds_the_forgetting_fine_tune(forgetting):
    """With the margin lifted no check fails on the same measurements: no mechanism check would have held it."""
    c = forgetting[0]
    assert c.accuracy_difference.ci_high < -0.2, c.explain()
    lifted = judge(c, Thresholds(accuracy_margin=1.0))
    assert lifted.verdict != "not preserved" and "FAIL" not in {k.outcome for k in lifted.checks}, lifted.explain()
    check = next(k for k in judge(c, Thresholds(accuracy_margin=0.3)).checks if "non-inferiority" in k.name)
    assert check.bound == -0.3 and check.value == c.accuracy_difference.value


def test_cmap_explained_interval_does_not_collapse_when_cmap_matches_the_candidate_everywhere():
    base = np.array([0.0] * 40 + [1.0] * 60)
    cand = np.ones(100)
    m = cmap_explained(base, cand, cand.copy(), seed=0)
    # the paired bootstrap alone gives exactly 1 in every resample: [1, 1]
    floor = wilson_ci(0, 100)[1] / 0.4
    assert m.value == 1.0 and m.ci_low == pytest.approx(1 - floor) and m.ci_high == pytest.approx(1 + floor)
    assert m.details["discordant_prompts"] == 0
    assert m.at_level(0.99).ci_low < m.ci_low  # the floor follows the level


def test_cmap_explained_keeps_the_bootstrap_when_it_is_wider():
    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.5).astype(float)
    cand = np.maximum(base, rng.random(200) < 0.6)
    cmap = np.where(rng.random(200) < 0.5, cand, base)  # about half of the gain
    m = cmap_explained(base, cand, cmap, seed=0)
    assert 0.2 < m.value < 0.8 and m.ci_high - m.ci_low > 2 * wilson_ci(m.details["discordant_prompts"], 200)[1]


def _scores(means, n=200, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    return np.asarray(means)[:, None] + noise * rng.standard_normal((len(means), n))


def test_fetcher_share_is_stable_where_a_set_of_top_heads_flips():
    """Head 0 (the base's value fetcher) and head 1 are tied in the candidate: which one is on top flips
    between samples, the share does not leave (1/3, 2/3)."""
    tops, shares = set(), []
    for seed in range(10):
        s = _scores([-0.5, -0.5, 0.0, 0.01], seed=seed)
        tops.add(int(np.argmin(s.mean(axis=1))))
        shares.append(share_of(s, [0], seed=seed))
    assert tops == {0, 1}
    assert all(1 / 3 < m.ci_low and m.ci_high < 2 / 3 for m in shares), [m.explain() for m in shares]


def test_fetcher_share_fails_when_the_base_heads_do_nothing():
    m = share_of(_scores([0.0, -0.5, 0.0, 0.0]), [0])
    assert m.ci_high < 0.2, m.explain()
    clean = share_of(_scores([-0.5, 0.0, 0.0, 0.0], noise=0.05), [0])
    assert clean.ci_low > 0.9 and clean.ci_high <= 1.0, clean.explain()


@pytest.mark.slow
def test_a_recorded_base_circuit_skips_the_base_discovery(base, monkeypatch):
    import mechtest.methods.discovery as discovery

    def refuse(*args, **kwargs):
        raise AssertionError("discovery must not run with a recorded base circuit")

    monkeypatch.setattr(discovery, "discover_circuit", refuse)
    c = compare(base, load_model(ZOO / "finetuned", name="finetuned"), n_prompts=PROMPTS, n_boxes=N_BOXES, seed=0,
                base_circuit=load_circuit(CIRCUIT), progress=False)
    assert c.verdict == "preserved", c.explain()
    assert c.recorded_circuit and c.candidate_circuit is None and c.overlap == {}
    assert [n for n, _ in c.not_applied if "discovery finds" in n], c.not_applied
    assert "base circuit (recorded)" in c.explain()
    d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    assert d["recorded_circuit"] is True and d["candidate_circuit"] is None
    # CMAP judges a gain only where its interval clears the margin: a gain of a few prompts leaves the ratio unbounded
    assert "accuracy gain explained by CMAP" in {k.name for k in c.checks}
    wide = judge(c, Thresholds(accuracy_margin=c.accuracy_difference.ci_low + 0.01))
    assert "accuracy gain explained by CMAP" not in {k.name for k in wide.checks}
    assert [w for n, w in wide.not_applied if "CMAP" in n and "margin to explain" in w], wide.not_applied


@pytest.mark.slow
def test_verdict_claim_takes_a_recorded_circuit_and_a_margin(pytester, tmp_path):
    from mechtest.claims import load_claims
    from mechtest.errors import ClaimError

    shutil.copy(CIRCUIT, pytester.path / "base.json")
    pytester.makefile(".toml", claims="""
        [[claim]]
        id = "gate"
        metric = "verdict"
        base = "base"
        models = ["candidate"]
        base_circuit = "base.json"
        accuracy_margin = 0.1
        faithfulness_bound = 0.7
        n_prompts = 98
        share_prompts = 40
        expect = "preserved"
    """)
    (claim,) = load_claims(pytester.path / "claims.toml")
    assert claim.get("base_circuit") == str(pytester.path / "base.json")
    bad = tmp_path / "bad.claims.toml"
    bad.write_text((pytester.path / "claims.toml").read_text().replace("0.1", "-0.1"))
    with pytest.raises(ClaimError, match="accuracy_margin"):
        load_claims(bad)
    bad.write_text((pytester.path / "claims.toml").read_text().replace("0.7", "1.7"))
    with pytest.raises(ClaimError, match="faithfulness_bound"):
        load_claims(bad)
    bad.write_text((pytester.path / "claims.toml").read_text().replace("= 40", "= 4"))
    with pytest.raises(ClaimError, match="share_prompts"):
        load_claims(bad)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--mechtest-cache-dir={tmp_path / 'cache'}",
                                          "--mechtest-model", f"base={ZOO / 'base'}",
                                          "--mechtest-model", f"candidate={ZOO / 'finetuned'}",
                                          "--mechtest-json", str(tmp_path / "out.json"))
    result.assert_outcomes(passed=1)
    (row,) = json.loads((tmp_path / "out.json").read_text())["claims"]
    assert row["details"]["recorded_circuit"] is True
    check = next(k for k in row["details"]["checks"] if "non-inferiority" in k["name"])
    assert check["bound"] == -0.1 and check["outcome"] == "PASS" and check["ci_low"] is not None
    faithful = [k for k in row["details"]["checks"] if k["name"].startswith("base circuit faithful")]
    assert len(faithful) == 2 and {k["bound"] for k in faithful} == {0.7}
    # the value fetchers' share ran on the first 40 prompts only, and its check says so
    (share,) = [k for k in row["details"]["checks"] if "share" in k["name"]]
    assert share["name"].endswith("(first 40 of 98 prompts)"), share


def test_prompt_scores_average_to_the_step_scores():
    from mechtest.methods.path_patching import Step, patch_step, prompt_scores
    from mechtest.tasks.entity_tracking import make_dataset, path_patching_corruption

    model = load_model(ZOO / "planted", name="planted")
    data = make_dataset(model.tokenizer, 21, n_boxes=N_BOXES, seed=0)
    corrupt = path_patching_corruption(data, model.tokenizer, seed=1)
    step = Step("value_fetcher", "last")
    per_prompt = prompt_scores(model, data, corrupt, step, batch_size=8)
    assert per_prompt.shape == (model.n_layers * model.n_heads, 21)
    mean = patch_step(model, data, corrupt, step, batch_size=8, progress=False).scores.flatten()
    assert per_prompt.mean(dim=1).double().allclose(mean.double(), atol=1e-6)


def test_a_base_is_run_once_for_every_candidate(base, tmp_path):
    """The base's plain and circuit runs (and its ablation means) come from the cache for a second candidate,
    with the same per-prompt outcomes as a run without any cache."""
    from mechtest.cache import ActivationCache

    cache, circuit = ActivationCache(tmp_path), load_circuit(CIRCUIT)
    run = dict(n_prompts=40, n_boxes=N_BOXES, seed=0, base_circuit=circuit, progress=False)
    compare(base, load_model(ZOO / "finetuned", name="finetuned"), cache=cache, **run)
    first = cache.stats.computed
    other = load_model(ZOO / "other", name="other")
    cached = compare(base, other, cache=cache, **run)
    assert cache.stats.computed - first == 3  # the new candidate's plain run, ablation means and circuit run
    fresh = compare(base, other, **run)
    assert cached.base_faithfulness.value == fresh.base_faithfulness.value
    assert cached.faithfulness.value == fresh.faithfulness.value and cached.verdict == fresh.verdict
