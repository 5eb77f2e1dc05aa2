"""The shipped zoo mirrors the paper: a base whose discovered circuit is a faithful proper subset, a fine-tune
that is more accurate and keeps it, an independent model that does not, and the controls' verdicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mechtest.methods.compare import compare
from mechtest.methods.evaluation import faithfulness, random_circuit_faithfulness
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
