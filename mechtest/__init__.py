"""mechtest: mechanistic-interpretability claims about Hugging Face causal LMs as pytest regression tests.

Importing this package is cheap on purpose (pytest imports it on every run once installed): torch and
transformers load only when a public name that needs them is first used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY = {
    "MechtestError": "mechtest.errors",
    "load_model": "mechtest.model",
    "LoadedModel": "mechtest.model",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mechtest' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
