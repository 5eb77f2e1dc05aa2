"""Fixtures shared by mechtest's own tests."""

from __future__ import annotations

import pytest

from zoo_models import zoo_ini


@pytest.fixture
def pytester(pytester):
    """pytester runs see the zoo under the names this repository's ini gives it."""
    pytester.makeini(zoo_ini())
    return pytester


@pytest.fixture(scope="session", autouse=True)
def _private_gguf_cache(tmp_path_factory):
    """Dequantised GGUFs of this run go to a temporary folder, never the user's cache."""
    import os

    before = os.environ.get("MECHTEST_GGUF_CACHE")
    os.environ["MECHTEST_GGUF_CACHE"] = str(tmp_path_factory.mktemp("gguf-cache"))
    yield
    if before is None:
        os.environ.pop("MECHTEST_GGUF_CACHE", None)
    else:
        os.environ["MECHTEST_GGUF_CACHE"] = before


@pytest.fixture(scope="session", autouse=True)
def _import_model_stack():
    """Import what loading and fingerprinting a model imports, once, in this process: pytester's in-process
    runs drop the modules first imported inside them, and torch refuses to register its libraries twice."""
    from mechtest.model import checkpoint_fingerprint, load_model
    from mechtest.model_ref import resolve_model
    from mechtest.tasks.entity_tracking import make_dataset
    from zoo_models import ZOO_MODELS

    ref = resolve_model(ZOO_MODELS["zoo-base"], base_dir=ZOO_MODELS["zoo-base"])
    model = load_model(ref, name="warm-up")
    checkpoint_fingerprint(ref)
    make_dataset(model.tokenizer, 3, n_boxes=3)
