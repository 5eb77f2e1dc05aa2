"""Repository-level pytest configuration: Hypothesis profiles for mechtest's own tests."""

from __future__ import annotations

import os

try:
    from mechtest.tasks.strategies import register_profiles
except ImportError:  # the strategies module is optional while developing
    register_profiles = None

if register_profiles is not None:
    register_profiles()
    from hypothesis import settings

    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
