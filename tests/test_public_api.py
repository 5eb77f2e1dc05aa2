"""The public API is pinned: adding or removing a name is a deliberate change to this list."""

from __future__ import annotations

import mechtest

EXPECTED = {
    "__version__", "MechtestError", "ModelLoadError", "ArchitectureError", "HeadIndexError", "TokenizerError",
    "TaskError", "CacheError", "CircuitError", "ClaimError", "load_model", "LoadedModel",
    "EntityTrackingDataset", "CounterfactualPairs", "Vocabulary", "make_dataset", "make_example",
    "path_patching_corruption", "mean_ablation_set", "desiderata", "usable_vocabulary", "DESIDERATA",
    "ADDITIONAL_DESIDERATA", "entity_tracking_examples", "register_profiles", "Circuit", "load_circuit",
    "random_circuit", "path_patching", "PathPatchingResult", "discover_circuit", "Discovery", "accuracy",
    "faithfulness", "completeness", "random_circuit_faithfulness", "minimality", "Measurement", "ActivationCache",
    "Claim", "Expectation", "load_claims", "MechtestSession", "HeadSnapshotExtension", "ClaimResult",
    "dcm", "functionality_patching", "DCMResult", "cmap", "attention_knockout", "KnockoutCurve", "compare",
    "Comparison", "Mechtest", "Metric", "Field", "Outcome", "register_metric", "run_claim", "prompts",
}


def test_all_is_pinned():
    assert set(mechtest.__all__) == EXPECTED


def test_every_public_name_resolves():
    for name in mechtest.__all__:
        assert getattr(mechtest, name) is not None, name


def test_errors_share_one_root():
    for name in mechtest.__all__:
        if name.endswith("Error"):
            assert issubclass(getattr(mechtest, name), mechtest.MechtestError)
