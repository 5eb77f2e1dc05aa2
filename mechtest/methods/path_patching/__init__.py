"""Four-step path patching (spec section 4): the public names.

``core``: steps, score matrices, positions and the chaining of steps; ``patching``: the exact engines' entry
points (``fast`` is the default engine, ``reference`` the obviously-correct naive loop, ``batch`` their shared
per-batch state); ``attribution``: gradient estimates and triage.
"""

from mechtest.methods.path_patching.attribution import Triage, attribution_scores, attribution_step, triage
from mechtest.methods.path_patching.core import (DEFAULT_RECEIVERS, PLAN, PathPatchingResult, Step, StepResult,
                                                 chain)
from mechtest.methods.path_patching.patching import patch_step, path_patching
from mechtest.spec import POSITIONS

__all__ = ["DEFAULT_RECEIVERS", "PLAN", "POSITIONS", "PathPatchingResult", "Step", "StepResult", "Triage",
           "attribution_scores", "attribution_step", "chain", "patch_step", "path_patching", "triage"]
