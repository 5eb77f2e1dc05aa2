"""The metric registry: one class per metric owns its claim fields, the models it needs and how it measures.

Claim parsing (:mod:`mechtest.claims`), the claim runner (:mod:`mechtest.runner`) and the plugin's skip
logic all read this registry, so a metric is added in one file::

    from mechtest.metrics import Field, Metric, Outcome, register_metric

    @register_metric
    class LogitGap(Metric):
        name = "logit_gap"
        fields = {"layer": Field("int", minimum=0)}

        def measure(self, service, claim, model, *, n, seed, n_boxes):
            ...
            return Outcome(value=gap)

A project registers its own metrics the same way from a ``conftest.py`` (claims are parsed after conftests
load). Importing this package imports no torch: metrics import the methods inside ``measure``.
"""

from __future__ import annotations

import mechtest.metrics.circuit  # noqa: F401  (the shipped metrics register themselves on import)
import mechtest.metrics.interventions  # noqa: F401
import mechtest.metrics.path_patching  # noqa: F401
import mechtest.metrics.property  # noqa: F401
import mechtest.metrics.verdict  # noqa: F401
from mechtest.metrics.base import ANY_SHAPE, REGISTRY, Field, Metric, Outcome, get_metric, register_metric

__all__ = ["ANY_SHAPE", "REGISTRY", "Field", "Metric", "Outcome", "get_metric", "register_metric"]
