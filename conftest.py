"""Repository-level pytest configuration: thread count and Hypothesis profiles for mechtest's own tests."""

from __future__ import annotations

import os

# The tiny fixture models run fastest on one thread per process (and xdist workers share 2 cores);
# set before torch is first imported by a test module.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

try:
    from mechtest.tasks.strategies import register_profiles
except ImportError:  # the strategies module is optional while developing
    register_profiles = None

if register_profiles is not None:
    register_profiles()
    from hypothesis import settings

    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
