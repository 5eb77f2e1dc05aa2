"""The plugin's command-line and ini options (their checks live with the settings they build)."""

from __future__ import annotations

import pytest

DEFAULT_CLAIM_FILES = ["claims.toml", "*.claims.toml", "claims_*.toml"]


def add_options(parser: pytest.Parser) -> None:
    """Register every mechtest option on pytest's parser."""
    group = parser.getgroup("mechtest", "mechtest: mechanistic-interpretability claims")
    group.addoption("--mechtest-model", action="append", default=[], metavar="NAME=REF", dest="mechtest_model",
                    help="make a checkpoint available under NAME (repeatable); REF: a directory, a .gguf file, or a "
                         "hub id name / org/name[@revision] found in the local hub cache")
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
                    help="one line per claim with its forward passes and estimated time, shown through pytest's "
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
