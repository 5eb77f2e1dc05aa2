"""Fixtures shared by mechtest's own tests."""

from __future__ import annotations

import pytest

from zoo_models import zoo_ini


@pytest.fixture
def pytester(pytester):
    """pytester runs see the zoo under the names this repository's ini gives it."""
    pytester.makeini(zoo_ini())
    return pytester
