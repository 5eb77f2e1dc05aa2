"""The plugin's command-line and ini options, and the one place that reads them into checked ``Settings``."""

from __future__ import annotations

from pathlib import Path

import pytest

from mechtest.decision import MAX_PROMPTS
from mechtest.errors import MechtestError
from mechtest.model_registry import ModelSpec, parse_model_option, worker_device
from mechtest.settings import Settings

DEFAULT_CLAIM_FILES = ["claims.toml", "*.claims.toml", "claims_*.toml"]


def add_options(parser: pytest.Parser) -> None:
    """Register every mechtest option on pytest's parser."""
    group = parser.getgroup("mechtest", "mechtest: mechanistic-interpretability claims")
    group.addoption("--mechtest-model", action="append", default=[], metavar="NAME=REF", dest="mechtest_model",
                    help="make a checkpoint available under NAME (repeatable); REF: a directory, a .gguf file, a "
                         "hub id name / org/name[@revision] found in the local hub cache, a PEFT adapter directory, "
                         "or BASE+ADAPTER_DIR")
    group.addoption("--mechtest-device", default=None, metavar="DEVICE",
                    help="device for every model: cpu, cuda, cuda:N, mps, or auto (device_map='auto' across the "
                         "visible GPUs); default: cuda if available, else cpu")
    group.addoption("--mechtest-dtype", default=None, metavar="DTYPE",
                    help="dtype for every model: float32 (default), bfloat16, float16")
    group.addoption("--mechtest-cache-dir", default=None, metavar="DIR",
                    help="activation cache directory (default: ini mechtest_cache_dir or <rootdir>/.mechtest_cache)")
    group.addoption("--mechtest-clear-cache", action="store_true", default=False,
                    help="empty the activation cache before the run")
    group.addoption("--mechtest-prompts", type=int, default=None, metavar="N",
                    help="use N prompts for every claim and method call (a quick run); default: each claim's n_prompts")
    group.addoption("--mechtest-inconclusive", default=None, choices=("pass", "fail", "xfail"),
                    help="what an INCONCLUSIVE claim (its interval straddles the bound) does: fail (default), pass, "
                         "or xfail; overrides each claim's own 'inconclusive'")
    group.addoption("--mechtest-recompute", action="store_true", default=False,
                    help="measure every claim again instead of reading unchanged claims' cached results")
    group.addoption("--mechtest-plan", action="store_true", default=False,
                    help="print each claim's forward passes, whether it is cached and a time estimate; run nothing")
    group.addoption("--mechtest-max-models", type=int, default=None, metavar="N",
                    help="keep at most N models in memory; loading another releases the least recently used")
    group.addoption("--mechtest-progress", default="auto", choices=("auto", "yes", "no"),
                    help="one line per claim with its forward passes and estimated time, and an updating line "
                         "for every long step (loading, path patching, CMAP, evaluation), shown through pytest's "
                         "capture: auto = on a terminal and not under CI (default), yes, no")
    group.addoption("--mechtest-json", default=None, metavar="PATH",
                    help="write every claim's result and the run's provenance as JSON to PATH")
    group.addoption("--mechtest-report", default=None, metavar="DIR",
                    help="write head heat maps (PNG) of path-patching scores, circuit heads outlined, into DIR")
    group.addoption("--mechtest-require", action="append", default=[], metavar="NAME", dest="mechtest_require",
                    help="fail at start unless model NAME is configured and found (repeatable; for CI gates)")
    parser.addini("mechtest_require", type="linelist", default=[],
                  help="models that must be configured and found, one name per line (for CI gates)")
    parser.addini("mechtest_models", type="linelist", default=[],
                  help="models by name, one 'name = ref' per line (a directory relative to the rootdir, a .gguf "
                       "file, or a hub id)")
    parser.addini("mechtest_cache_dir", type="string", default="",
                  help="activation cache directory (relative: the rootdir); default .mechtest_cache")
    parser.addini("mechtest_circuit_dirs", type="linelist", default=[],
                  help="folders (relative: the rootdir) circuit files of claims may also come from, besides the "
                       "rootdir and the claim file's folder; '/' allows any")
    parser.addini("mechtest_claim_files", type="args", default=DEFAULT_CLAIM_FILES,
                  help="glob patterns of TOML files collected as claims (default: %s)" % " ".join(DEFAULT_CLAIM_FILES))


def settings_from_config(config: pytest.Config) -> Settings:
    """Settings from options and ini, checked once here so a bad value stops the run before any work."""
    root = config.rootpath
    models: dict[str, ModelSpec] = {}
    for where, lines, base in (("ini option mechtest_models", config.getini("mechtest_models"), root),
                               ("--mechtest-model", config.getoption("mechtest_model"), Path.cwd())):
        given: set[str] = set()
        for text in lines:
            try:
                name, ref = parse_model_option(text)
            except ValueError as e:
                hint = " (one 'name = path' per line)" if where.startswith("ini") else ""
                raise pytest.UsageError(f"{where}: {e}{hint}") from None
            if name in given:
                raise pytest.UsageError(f"{where}: model {name!r} is given twice; give each name once")
            given.add(name)  # the command line overrides the ini
            models[name] = ModelSpec(name, ref, base, "--mechtest-model" if where.startswith("--") else
                                     "ini mechtest_models")
    for name in [*config.getini("mechtest_require"), *config.getoption("mechtest_require")]:
        if name not in models:
            raise pytest.UsageError(f"required model {name!r} is not configured (--mechtest-require / ini "
                                    f"mechtest_require): pass --mechtest-model {name}=PATH")
        try:
            models[name].resolve()
        except MechtestError as e:
            raise pytest.UsageError(f"required model {name!r}: {e}") from None
    prompts = config.getoption("mechtest_prompts")
    if prompts is not None and (prompts < 1 or prompts > MAX_PROMPTS):
        raise pytest.UsageError(f"--mechtest-prompts must be >= 1, got {prompts}" if prompts < 1 else
                                f"--mechtest-prompts must be <= {MAX_PROMPTS}, got {prompts}")
    cache = config.getoption("mechtest_cache_dir") or config.getini("mechtest_cache_dir") or ".mechtest_cache"
    cache_dir = Path(cache).expanduser()
    if not cache_dir.is_absolute():
        base = Path.cwd() if config.getoption("mechtest_cache_dir") else root
        cache_dir = base / cache_dir
    dtype = config.getoption("mechtest_dtype")
    if dtype is not None:
        known = {"float32", "fp32", "float16", "fp16", "half", "bfloat16", "bf16"}
        if dtype.lower() not in known:
            raise pytest.UsageError(f"--mechtest-dtype: unknown dtype {dtype!r}; use one of {', '.join(sorted(known))}")
    device = worker_device(config.getoption("mechtest_device"), getattr(config, "workerinput", {}).get("workerid"))
    if device is not None:
        from mechtest.model import check_device

        try:
            device = check_device(device)
        except MechtestError as e:
            raise pytest.UsageError(f"--mechtest-device: {e}") from None
    report = config.getoption("mechtest_report")
    from mechtest.preflight import check_report_dir
    from mechtest.report.json_report import check_json_path

    try:
        if config.getoption("mechtest_json"):
            check_json_path(Path(config.getoption("mechtest_json")))
        if report:
            check_report_dir(Path(report))
    except MechtestError as e:
        raise pytest.UsageError(str(e)) from None
    return Settings(models=models, device=device, dtype=dtype, cache_dir=cache_dir,
                    prompts=prompts, report_dir=Path(report).resolve() if report else None,
                    update_snapshots=bool(getattr(config.option, "update_snapshots", False)),
                    inconclusive=config.getoption("mechtest_inconclusive"),
                    recompute=config.getoption("mechtest_recompute"),
                    max_models=_positive(config.getoption("mechtest_max_models"), "--mechtest-max-models"))


def _positive(value: int | None, option: str) -> int | None:
    if value is not None and value < 1:
        raise pytest.UsageError(f"{option} must be >= 1, got {value}")
    return value
