"""This repository's zoo, by the names its ini gives the models (for pytester runs)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ZOO = {"zoo-base": "base", "zoo-finetuned": "finetuned", "zoo-other": "other", "zoo-planted": "planted",
       "zoo-planted-b": "planted-b"}
ZOO_MODELS = {name: REPO / "fixtures" / "zoo" / folder for name, folder in ZOO.items()}


def zoo_ini(extra: str = "", circuits_anywhere: bool = True) -> str:
    """A ``[pytest]`` ini registering the zoo by absolute path, as this repository's pyproject does; with
    ``circuits_anywhere``, claims may name circuit files outside the test's rootdir (the repository's
    fixtures, other temporary folders)."""
    lines = "".join(f"    {name} = {path}\n" for name, path in ZOO_MODELS.items())
    anywhere = "mechtest_circuit_dirs = /\n" if circuits_anywhere else ""
    return f"[pytest]\nmechtest_models =\n{lines}{anywhere}{extra}"
