"""The package keeps the layering the README draws: imports point down, no cycles, every module placed, no
private name imported across modules. A second test plants each kind of violation and sees it reported."""

from __future__ import annotations

import re
from pathlib import Path

from layering import violations

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mechtest"

# Top to bottom: a module may import from its own layer (without cycles) and the layers below it.
LAYERS = [
    ("pytest", ["mechtest.plugin", "mechtest.options"]),
    ("face", ["mechtest", "mechtest.api"]),
    ("claims", ["mechtest.claims", "mechtest.runner", "mechtest.plan", "mechtest.result_cache"]),
    ("metrics", ["mechtest.metrics", "mechtest.metrics.*"]),
    ("reports", ["mechtest.report", "mechtest.report.*", "mechtest.snapshots", "mechtest.preflight"]),
    ("service", ["mechtest.service", "mechtest.properties"]),
    ("loading", ["mechtest.model_registry", "mechtest.export", "mechtest.model", "mechtest.adapters",
                 "mechtest.gguf_cache", "mechtest.model_ref", "mechtest.checkpoint_files", "mechtest.checkpoint_config",
                 "mechtest.fingerprint"]),
    ("methods", ["mechtest.methods", "mechtest.methods.*"]),
    ("task & statistics", ["mechtest.tasks", "mechtest.tasks.*", "mechtest.measure", "mechtest.decision"]),
    ("engine", ["mechtest.heads", "mechtest.forward", "mechtest.linear_kernel", "mechtest.architectures",
                "mechtest.compat"]),
    ("foundation", ["mechtest.spec", "mechtest.cache", "mechtest.errors", "mechtest.settings", "mechtest.version",
                    "mechtest.progress", "mechtest.data"]),
]


def test_the_package_keeps_its_layers():
    problems = violations(PACKAGE, LAYERS)
    assert not problems, "\n".join(problems)


def test_the_readme_table_is_this_table():
    """The README's architecture table names the same layers in the same order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Architecture"):]
    rows = re.findall(r"^\| ([a-z &]+) \| ", table, flags=re.M)
    assert [r for r in rows if r != "layer"][:len(LAYERS)] == [name for name, _ in LAYERS]


def test_every_kind_of_violation_is_reported(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "top.py").write_text("from pkg.low import helper\n")
    (pkg / "low.py").write_text("def helper():\n    from pkg.top import thing\n\nfrom pkg.other import _secret\n")
    (pkg / "other.py").write_text("_secret = 1\nimport importlib\nimportlib.import_module('pkg.low')\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "stray.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                          "    from pkg.top import thing\n")
    layers = [("top", ["pkg", "pkg.top"]), ("low", ["pkg.low", "pkg.other"])]
    problems = "\n".join(violations(pkg, layers))
    assert "pkg.low:2 imports pkg.top from a higher layer (low -> top)" in problems
    assert "pkg.low:4 imports private _secret from pkg.other" in problems
    assert "import cycle: pkg.low -> pkg.other" in problems
    assert "pkg.sub is in no layer" in problems and "pkg.sub.stray is in no layer" in problems
    assert "stray:3" not in problems  # an import under TYPE_CHECKING never runs
