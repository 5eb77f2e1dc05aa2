"""The shipped tiny zoo (fixtures/zoo/*) loads, solves entity tracking in its band, and can be rebuilt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "fixtures" / "zoo"
NAMES = ("base", "finetuned", "other")
N_PROMPTS = 1000  # the full held-out set: a forward pass of a tiny model, well under a second
BANDS = {"base": (0.55, 0.80), "finetuned": (0.95, 1.0), "other": (0.90, 1.0)}
MAX_BYTES = 5 * 1024 * 1024


def _meta(name: str) -> dict:
    return json.loads((ZOO / name / "mechtest.json").read_text())


def _heldout(tokenizer, meta: dict, n: int = N_PROMPTS):
    from mechtest.tasks.entity_tracking import make_dataset

    return make_dataset(tokenizer, n, n_boxes=meta["n_boxes"], seed=meta["heldout_seed"])


def _accuracy(model, ds) -> float:
    with torch.no_grad():
        logits = model(input_ids=ds.input_ids, attention_mask=ds.attention_mask).logits
    pred = logits[torch.arange(len(ds)), ds.last_pos].float().argmax(-1)  # full vocabulary
    return (pred == ds.answer_ids).float().mean().item()


@pytest.fixture(scope="module", params=NAMES)
def hf_checkpoint(request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ZOO / request.param
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return request.param, model, tokenizer


def test_checkpoint_files_and_size():
    for name in NAMES:
        d = ZOO / name
        for f in ("config.json", "model.safetensors", "tokenizer.json", "mechtest.json", "README.md",
                  "training_curve.png"):
            assert (d / f).is_file(), f"{d / f} missing"
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        assert size <= MAX_BYTES, f"{name}: {size} bytes > 5 MB"


def test_mechtest_json_fields():
    metas = {name: _meta(name) for name in NAMES}
    for name, m in metas.items():
        assert m["task"] == "entity_tracking"
        assert m["heldout_n"] == 1000
        assert len(m["accuracy_by_queried_position"]) == m["n_boxes"]
        for key in ("heldout_seed", "accuracy", "train_seed", "steps"):
            assert key in m, (name, key)
    # one box count and one held-out set for the whole zoo
    assert len({m["n_boxes"] for m in metas.values()}) == 1
    assert len({m["heldout_seed"] for m in metas.values()}) == 1
    assert metas["other"]["train_seed"] != metas["base"]["train_seed"]


def test_same_shape_and_tokenizer():
    from tools.zoo.vocab import build_tokenizer

    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "tie_word_embeddings")
    configs = [json.loads((ZOO / n / "config.json").read_text()) for n in NAMES]
    assert configs[0]["architectures"] == ["LlamaForCausalLM"]
    for c in configs[1:]:
        assert {k: c.get(k) for k in keys} == {k: configs[0].get(k) for k in keys}
    vocabs = [json.loads((ZOO / n / "tokenizer.json").read_text())["model"]["vocab"] for n in NAMES]
    assert vocabs[0] == vocabs[1] == vocabs[2] == build_tokenizer().get_vocab()


def test_loads_and_accuracy_in_band(hf_checkpoint):
    name, model, tokenizer = hf_checkpoint
    assert next(model.parameters()).dtype == torch.float32
    meta = _meta(name)
    acc = _accuracy(model, _heldout(tokenizer, meta))
    lo, hi = BANDS[name]
    assert lo <= acc <= hi, f"{name}: held-out accuracy {acc:.3f} outside [{lo}, {hi}]"
    assert acc == pytest.approx(meta["accuracy"], abs=1e-6), "mechtest.json disagrees with a fresh evaluation"


def test_loads_through_mechtest_load_model():
    model_mod = pytest.importorskip("mechtest.model")
    for name in NAMES:
        lm = model_mod.load_model(ZOO / name)
        meta = _meta(name)
        acc = _accuracy(lm.hf, _heldout(lm.tokenizer, meta, 300))
        lo, hi = BANDS[name]
        # 300 prompts: allow ~2 standard errors around the band
        assert lo - 0.06 <= acc <= hi + 0.06, f"{name}: {acc:.3f}"


def test_accuracy_flat_across_queried_positions():
    """Binding, not position: every queried box position is answered well above chance."""
    for name in NAMES:
        m = _meta(name)
        by_pos = m["accuracy_by_queried_position"]
        assert min(by_pos) > 1.0 / m["n_boxes"] + 0.1, (name, by_pos)
        assert max(by_pos) - min(by_pos) < 0.25, (name, by_pos)


def test_absent_query_label_choice_depends_on_the_label():
    """With a query label absent from the context, which object wins depends on the (absent) label's identity
    rather than being a fixed default per context (1.0 would mean the label is ignored)."""
    for name in NAMES:
        ab = _meta(name)["absent_label"]["absent"]
        assert ab["same_choice_for_two_absent_labels"] < 0.9, (name, ab)


def test_other_relies_on_other_heads():
    """The independent model's important heads are not those of base/finetuned."""
    imp = {n: {(l, h) for l, h, _ in _meta(n)["important_heads"]} for n in NAMES}
    top = {n: tuple(_meta(n)["important_heads"][0][:2]) for n in NAMES}
    assert imp["base"] and imp["finetuned"] and imp["other"]
    assert top["other"] != top["finetuned"] and top["other"] != top["base"]
    assert imp["other"] != imp["finetuned"]


def test_build_smoke(tmp_path):
    """The build script runs a few steps per checkpoint and writes loadable checkpoints."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "tools.zoo", "build", "--steps", "3", "--heldout-n", "30",
         "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in NAMES:
        model = AutoModelForCausalLM.from_pretrained(tmp_path / name)
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / name)
        meta = json.loads((tmp_path / name / "mechtest.json").read_text())
        assert meta["steps"] == (6 if name == "finetuned" else 3)
        ds = _heldout(tokenizer, meta, 20)
        assert model(input_ids=ds.input_ids).logits.shape[-1] == len(tokenizer)
