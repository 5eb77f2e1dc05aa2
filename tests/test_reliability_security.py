"""mechtest never runs code a checkpoint ships, and a claim file cannot make it read (or echo) files outside
the project."""

from __future__ import annotations

import builtins
import json
import os
import shutil
from pathlib import Path

import pytest

from mechtest.errors import ArchitectureError, ModelLoadError
from zoo_models import zoo_ini

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
PLANTED = REPO / "fixtures" / "zoo" / "planted"
CIRCUIT = REPO / "fixtures" / "circuits" / "planted.json"


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """``make(model_type, tokenizer_code)``: a copy of the planted checkpoint whose config (and optionally
    tokenizer config) points at a .py that writes a marker file when imported; every prompt to run it is
    answered "y" (as a user at a terminal might)."""
    marker = tmp_path / "MARKER"
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(builtins, "input", lambda *args: "y")

    def make(model_type: str = "evil_model", tokenizer_code: bool = False) -> Path:
        ckpt = tmp_path / f"ckpt-{model_type}-{tokenizer_code}"
        shutil.copytree(PLANTED, ckpt)
        config = json.loads((ckpt / "config.json").read_text())
        config.update(model_type=model_type, auto_map={"AutoConfig": "evil.EvilConfig",
                                                       "AutoModelForCausalLM": "evil.EvilModel"})
        (ckpt / "config.json").write_text(json.dumps(config))
        if tokenizer_code:
            tok = json.loads((ckpt / "tokenizer_config.json").read_text())
            tok.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
            (ckpt / "tokenizer_config.json").write_text(json.dumps(tok))
        (ckpt / "evil.py").write_text(
            f"import pathlib\npathlib.Path({str(marker)!r}).write_text('checkpoint code ran')\n"
            "from transformers import PretrainedConfig, PreTrainedTokenizerFast\n"
            f"class EvilConfig(PretrainedConfig):\n    model_type = {model_type!r}\n"
            "class EvilModel:\n    pass\n"
            "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
        return ckpt

    make.marker = marker
    return make


def test_fingerprint_and_load_never_run_checkpoint_code(hostile):
    from mechtest.model import checkpoint_fingerprint, load_model
    from mechtest.model_ref import resolve_model

    ckpt = hostile()
    ref = resolve_model(str(ckpt), base_dir=ckpt)
    for entry in (checkpoint_fingerprint, load_model):
        with pytest.raises(ModelLoadError, match="declares model type 'evil_model', which only its own code "
                                                 r"\(auto_map in config.json\).*never runs checkpoint code"):
            entry(ref)
    assert not hostile.marker.exists()


def test_a_supported_type_with_an_auto_map_loads_the_native_class(hostile):
    """Many hub checkpoints ship an auto_map beside a type transformers implements: the code is not run."""
    from mechtest.model import checkpoint_fingerprint, load_model

    ckpt = hostile(model_type="gpt2", tokenizer_code=True)
    model = load_model(ckpt)
    assert type(model.hf).__module__.startswith("transformers.models.gpt2")
    assert checkpoint_fingerprint(model.ref) == model.fingerprint
    assert not hostile.marker.exists()


def test_an_unsupported_type_without_code_is_the_architecture_error(tmp_path):
    from mechtest.model import checkpoint_fingerprint
    from mechtest.model_ref import resolve_model

    ckpt = tmp_path / "ckpt"
    shutil.copytree(PLANTED, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ArchitectureError, match="architecture 'bert' is not supported"):
        checkpoint_fingerprint(resolve_model(str(ckpt), base_dir=ckpt))


@pytest.mark.parametrize("args", [[], ["--mechtest-plan"]], ids=["run", "plan"])
def test_the_plugin_never_runs_checkpoint_code(pytester, hostile, args):
    ckpt = hostile()
    pytester.makefile(".toml", claims='[[claim]]\nid = "acc"\nmetric = "accuracy"\nmodels = ["m"]\n'
                                       'n_prompts = 20\nexpect = ">= 0.5"\n')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mechtest-model", f"m={ckpt}", *args)
    result.stdout.fnmatch_lines(["*never runs checkpoint code*"])
    assert not hostile.marker.exists()


# --- circuit files stay inside the project ------------------------------------------------------------


def claim_naming(pytester, circuit) -> None:
    pytester.makefile(".toml", claims=f'[[claim]]\nid = "f"\nmetric = "faithfulness"\ncircuit = "{circuit}"\n'
                                       'models = ["zoo-planted"]\nn_prompts = 20\nexpect = ">= 0"\n')


def collect(pytester):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q")


def test_a_circuit_outside_the_project_is_refused(pytester, tmp_path):
    pytester.makeini(zoo_ini(circuits_anywhere=False))
    outside = tmp_path / "elsewhere" / "c.json"
    outside.parent.mkdir()
    shutil.copy(CIRCUIT, outside)
    for spec in (outside, os.path.relpath(outside, pytester.path)):
        claim_naming(pytester, spec)
        result = collect(pytester)
        result.stdout.fnmatch_lines(["*field 'circuit': circuit file * lies outside the rootdir and the claim "
                                     "file's folder*mechtest_circuit_dirs*"])
        assert result.ret == pytest.ExitCode.INTERRUPTED
    # a link inside the project that points outside is outside
    (pytester.path / "link.json").symlink_to(outside)
    claim_naming(pytester, "link.json")
    collect(pytester).stdout.fnmatch_lines(["*lies outside the rootdir*"])
    # inside the project: fine
    shutil.copy(CIRCUIT, pytester.path / "mine.json")
    claim_naming(pytester, "mine.json")
    collect(pytester).stdout.fnmatch_lines(["*claims.toml::f[[]zoo-planted[]]*"])


def test_mechtest_circuit_dirs_opts_in_to_other_folders(pytester, tmp_path):
    outside = tmp_path / "shared-circuits"
    outside.mkdir()
    shutil.copy(CIRCUIT, outside / "c.json")
    claim_naming(pytester, outside / "c.json")
    pytester.makeini(zoo_ini(f"mechtest_circuit_dirs = {outside}\n", circuits_anywhere=False))
    collect(pytester).stdout.fnmatch_lines(["*claims.toml::f[[]zoo-planted[]]*"])


@pytest.mark.parametrize("content", [
    {"aws_secret_access_key": "SECRETVALUE123"},
    {"value_fetcher": "SECRETVALUE123"},
    {"value_fetcher": [["SECRETVALUE123", 1]]},
    {"value_fetcher": [[1, 2]], "found_on": "SECRETVALUE123"},
    ["SECRETVALUE123"],
])
def test_a_file_that_is_not_a_circuit_is_described_by_shape_only(pytester, content):
    (pytester.path / "secrets.json").write_text(json.dumps(content))
    claim_naming(pytester, "secrets.json")
    result = collect(pytester)
    result.stdout.fnmatch_lines(["*field 'circuit': circuit 'secrets'*"])
    assert "SECRETVALUE123" not in result.stdout.str() + result.stderr.str()
    assert "aws_secret" not in result.stdout.str() + result.stderr.str()


def test_load_model_refuses_to_trust_remote_code():
    from mechtest.model import load_model

    with pytest.raises(ModelLoadError, match="never runs code a checkpoint ships"):
        load_model(PLANTED, trust_remote_code=True)
