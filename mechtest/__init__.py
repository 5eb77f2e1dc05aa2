"""mechtest: mechanistic-interpretability claims about Hugging Face causal LMs as pytest regression tests.

Importing this package is cheap on purpose (pytest imports it on every run once installed): torch and
transformers load only when a public name that needs them is first used.
"""

from __future__ import annotations

import importlib

from mechtest.version import __version__

# public name -> module that defines it (imported on first access)
_LAZY = {
    **dict.fromkeys(["MechtestError", "ModelLoadError", "ArchitectureError", "HeadIndexError", "TokenizerError",
                     "TaskError", "CacheError", "CircuitError", "ClaimError"], "mechtest.errors"),
    **dict.fromkeys(["load_model", "LoadedModel"], "mechtest.model"),
    **dict.fromkeys(["EntityTrackingDataset", "CounterfactualPairs", "Vocabulary", "make_dataset", "make_example",
                     "path_patching_corruption", "mean_ablation_set", "desiderata", "usable_vocabulary",
                     "DESIDERATA", "ADDITIONAL_DESIDERATA"], "mechtest.tasks.entity_tracking"),
    **dict.fromkeys(["entity_tracking_examples", "register_profiles"], "mechtest.tasks.strategies"),
    **dict.fromkeys(["Circuit", "load_circuit", "random_circuit"], "mechtest.methods.circuits"),
    **dict.fromkeys(["path_patching", "PathPatchingResult"], "mechtest.methods.path_patching"),
    **dict.fromkeys(["discover_circuit", "Discovery"], "mechtest.methods.discovery"),
    **dict.fromkeys(["accuracy", "faithfulness", "completeness", "random_circuit_faithfulness", "minimality"],
                    "mechtest.methods.evaluation"),
    **dict.fromkeys(["Claim", "Expectation", "load_claims"], "mechtest.claims"),
    "Mechtest": "mechtest.api",
    "prompts": "mechtest.properties",
    "MechtestSession": "mechtest.api",  # the name before 0.2
    **dict.fromkeys(["Metric", "Field", "Outcome", "register_metric"], "mechtest.metrics"),
    "run_claim": "mechtest.runner",
    "HeadSnapshotExtension": "mechtest.snapshots",
    "ClaimResult": "mechtest.report",
    **dict.fromkeys(["dcm", "functionality_patching", "DCMResult"], "mechtest.methods.dcm"),
    "cmap": "mechtest.methods.cmap",
    **dict.fromkeys(["attention_knockout", "KnockoutCurve"], "mechtest.methods.knockout"),
    **dict.fromkeys(["compare", "Comparison"], "mechtest.methods.compare"),
    "Measurement": "mechtest.measure",
    "ActivationCache": "mechtest.cache",
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
