"""Repository-level pytest configuration: thread count and Hypothesis profiles for mechtest's own tests."""

from __future__ import annotations

import os

from hypothesis import settings

from mechtest.tasks.strategies import register_profiles

register_profiles()
# --hypothesis-profile (read later, by Hypothesis's pytest plugin) wins over this; HYPOTHESIS_PROFILE is kept as a
# fallback for environments that cannot pass options
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_configure(config):
    # The tiny fixture models run fastest on one thread per process (thread start-up costs more than their
    # matrix products gain), and pytest-xdist workers share the machine's cores.
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    # the test tiers of pyproject.toml: a test that is neither slow nor real is fast
    import pytest

    for item in items:
        if not any(item.get_closest_marker(tier) for tier in ("slow", "real")):
            item.add_marker(pytest.mark.fast)
