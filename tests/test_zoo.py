"""The shipped zoo mirrors the paper: a base whose discovered circuit is a faithful proper subset, a fine-tune
that is more accurate and keeps it, an independent model that does not, and the controls' verdicts; and its base
behaves like a trained network: weight noise and ordinary fine-tuning keep it (issue 23)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mechtest.methods.compare import compare
from mechtest.methods.evaluation import accuracy, faithfulness, random_circuit_faithfulness
from mechtest.methods.circuits import load_circuit
from mechtest.model import load_model
from mechtest.tasks.entity_tracking import make_dataset, mean_ablation_set

ROOT = Path(__file__).resolve().parents[1]
ZOO, CONTROLS = ROOT / "fixtures" / "zoo", ROOT / "fixtures" / "controls"
CIRCUIT = ROOT / "fixtures" / "circuits" / "zoo-base.json"
MAX_BYTES = 5 * 1024 * 1024
N_BOXES = 7
PROMPTS = 140


def _meta(path: Path) -> dict:
    return json.loads((path / "mechtest.json").read_text())


@pytest.fixture(scope="module")
def base():
    return load_model(ZOO / "base", name="base")


@pytest.fixture(scope="module")
def sample(base):
    return (make_dataset(base.tokenizer, PROMPTS, n_boxes=N_BOXES, seed=11),
            mean_ablation_set(base.tokenizer, PROMPTS, n_boxes=N_BOXES, seed=12))


def test_checkpoints_are_small_loadable_and_share_shape_and_tokenizer(base):
    folders = [ZOO / n for n in ("base", "finetuned", "other")] + sorted(CONTROLS.iterdir())
    assert len(folders) >= 10
    for folder in folders:
        assert (folder / "model.safetensors").stat().st_size <= MAX_BYTES, folder
        assert (folder / "README.md").is_file() and _meta(folder)["n_boxes"] == N_BOXES, folder
        model = load_model(folder, name=folder.name)
        assert model.shape == base.shape and model.tokenizer.get_vocab() == base.tokenizer.get_vocab(), folder


@pytest.mark.slow
def test_base_circuit_is_a_faithful_proper_subset(base, sample):
    circuit = load_circuit(CIRCUIT)
    assert len(circuit) <= base.n_layers * base.n_heads // 2
    data, reference = sample
    f = faithfulness(base, circuit, data, reference)
    random = random_circuit_faithfulness(base, circuit, data, reference, n_draws=5)
    assert f.ci_low >= 0.8, f.explain()
    assert random.value <= 0.3, random.explain()


@pytest.mark.parametrize("name, keeps", [("finetuned", True), ("other", False)])
def test_fine_tune_keeps_the_circuit_and_an_independent_model_does_not(base, sample, name, keeps):
    model = load_model(ZOO / name, name=name)
    f = faithfulness(model, load_circuit(CIRCUIT), *sample)
    if keeps:
        assert f.ci_low >= 0.8, f.explain()
    else:
        assert f.ci_high <= 0.5, f.explain()


def _noised(folder: Path, r: float, seed: int, out: Path) -> Path:
    """``folder``'s model with N(0, (r * std(p))^2) added to every tensor ``p`` (written here, not the builder's)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * r * float(p.std()))
    model.save_pretrained(out)
    for f in folder.glob("*token*"):
        shutil.copy(f, out / f.name)
    return out


def test_base_keeps_its_accuracy_under_one_percent_weight_noise(base, tmp_path):
    data = make_dataset(base.tokenizer, 300, n_boxes=N_BOXES, seed=21)
    clean = accuracy(base, data).value
    for seed in (0, 1, 2):
        noised = load_model(_noised(ZOO / "base", 0.01, seed, tmp_path / str(seed)), name=f"noised-{seed}")
        assert abs(accuracy(noised, data).value - clean) <= 0.05, (seed, clean)


@pytest.mark.slow
def test_a_noised_base_is_preserved(base, tmp_path):
    noised = load_model(_noised(ZOO / "base", 0.01, 0, tmp_path), name="noised")
    c = compare(base, noised, n_prompts=PROMPTS, n_boxes=N_BOXES, seed=0, progress=False)
    assert c.verdict == "preserved", c.explain()


def test_ordinary_fine_tunes_never_dip_below_the_base():
    """AdamW 1e-4 / 3e-4, batch 32, 2-7 boxes, until 0.9: no logged step below the base's accuracy."""
    start = _meta(ZOO / "base")["start_valid_accuracy"]
    for name in ("fallback-benign-adamw1e-4", "fallback-benign-adamw3e-4"):
        stage, = _meta(CONTROLS / name)["stages"]
        assert stage["lowest_valid_accuracy"] >= start and stage["valid_accuracy"] >= 0.9, (name, stage)


@pytest.mark.slow
def test_adamw_3e4_fine_tune_built_here_is_preserved(base, tmp_path):
    """The fine-tune's data seed 13 collapsed every earlier base within 10-30 steps (tools/zoo/ROBUST.md)."""
    import torch

    from tools.zoo.fallback import _adamw, _Ctx, accuracy as zoo_accuracy, train_stage
    from transformers import AutoModelForCausalLM

    ctx = _Ctx()
    model = AutoModelForCausalLM.from_pretrained(ZOO / "base", torch_dtype=torch.float32)
    start = zoo_accuracy(model, ctx.valid)
    torch.manual_seed(0)
    stage = train_stage(model, ctx, _adamw(13, 3e-4), (), log=lambda msg: None)
    assert stage["lowest_valid_accuracy"] >= start and stage["valid_accuracy"] >= 0.9, stage
    model.save_pretrained(tmp_path)
    ctx.tok.save_pretrained(tmp_path)
    c = compare(base, load_model(tmp_path, name="adamw3e-4"), n_prompts=300, n_boxes=N_BOXES, seed=0,
                progress=False)
    assert c.verdict == "preserved", c.explain()


def test_learned_reroute_recovered_accuracy_with_the_circuit_heads_silenced():
    """The rerouted-from-base control: base's circuit heads are zero in it, and its accuracy is back at the
    base's (its verdict, "not preserved", is pinned with every control's below)."""
    from safetensors.torch import load_file

    meta = _meta(CONTROLS / "fallback-rerouted-learned")
    assert meta["start"]["from"] == "base" and meta["start"]["zeroed_valid_accuracy"] < 0.1, meta["start"]
    base_meta = _meta(ZOO / "base")
    assert meta["start_valid_accuracy"] >= base_meta["start_valid_accuracy"], meta["start_valid_accuracy"]
    # held out (1,000 prompts, SE ~0.014): the same accuracy within sampling error
    assert meta["heldout_accuracy"] >= base_meta["heldout_accuracy"] - 0.03, meta["heldout_accuracy"]
    weights = load_file(CONTROLS / "fallback-rerouted-learned" / "model.safetensors")
    heads = sorted([layer, head] for _, layer, head in load_circuit(CIRCUIT).nodes)
    assert sorted(meta["frozen_heads"]) == heads, "the heads frozen must be the base's discovered circuit"
    for layer, head in heads:
        w = weights[f"transformer.h.{layer}.attn.c_proj.weight"][head * 64:(head + 1) * 64]
        assert (w == 0).all(), (layer, head)


def _expected(folder: Path) -> str:
    name = folder.name
    if name in ("finetuned",) or "benign" in name:
        return "preserved"
    return "not preserved"  # other, rerouted, independent


@pytest.mark.parametrize("folder", [ZOO / "finetuned", ZOO / "other", *sorted(CONTROLS.iterdir())],
                         ids=lambda p: p.name)
@pytest.mark.slow
def test_controls_get_the_right_verdict(base, folder):
    candidate = load_model(folder, name=folder.name)
    c = compare(base, candidate, n_prompts=PROMPTS, n_boxes=N_BOXES, seed=0, progress=False)
    assert c.verdict == _expected(folder), c.explain()
    if folder.name == "finetuned":  # more accurate, and CMAP of the circuit heads explains the gain
        assert c.accuracy_difference.ci_low > 0 and c.cmap_explained.ci_low >= 0.5, c.explain()


@pytest.mark.slow
def test_scratch_trainer_smoke(tmp_path):
    """The from-scratch trainer (not the shipped zoo's builder) still runs and writes loadable checkpoints."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "tools.zoo", "scratch", "--steps", "3", "--heldout-n", "30",
                           "--out", str(tmp_path), "--only", "base"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert load_model(tmp_path / "base").n_layers >= 1
