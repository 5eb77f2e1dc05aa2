"""Entity tracking (the paper's task) behind the :class:`~mechtest.tasks.base.Task` interface.

Every method delegates to the builders of :mod:`mechtest.tasks.datasets`, so the prompts, corruptions and
positions (and with them every recorded number) are exactly those of the functions the paper's methods used
before tasks were a plugin point.
"""

from __future__ import annotations

import random

from mechtest.spec import GROUPS, PAPER_CANDIDATES, PAPER_HEADS, PAPER_RECEIVERS, POSITIONS, STEP_PLAN
from mechtest.tasks.base import DEFAULT_TASK, Task


class EntityTracking(Task):
    name = DEFAULT_TASK
    description = "The {o} is in Box {L}, ... Box {Lq} contains the -> {o of Lq} (Prakash et al., 2024)"
    groups = GROUPS
    positions = POSITIONS
    step_plan = STEP_PLAN
    candidates = PAPER_CANDIDATES
    receivers = PAPER_RECEIVERS
    reference_heads = PAPER_HEADS
    uses_boxes = True

    def dataset(self, tokenizer, n, *, n_boxes=7, seed=0):
        from mechtest.tasks.datasets import make_dataset

        return make_dataset(tokenizer, n, n_boxes=n_boxes, seed=seed)

    def reference(self, tokenizer, n, *, n_boxes=7, seed=0):
        from mechtest.tasks.datasets import mean_ablation_set

        return mean_ablation_set(tokenizer, n, n_boxes=n_boxes, seed=seed)

    def corruption(self, base, tokenizer, *, seed=0):
        from mechtest.tasks.datasets import path_patching_corruption

        return path_patching_corruption(base, tokenizer, seed=seed)

    def corrupt_position(self, corrupt, position, seed):
        """P_corr of spec 4.3: for the context label, a uniformly random box-label position per example."""
        if position != "query_context":
            return self.position(corrupt, position)
        import torch

        rng = random.Random(seed)
        idx = torch.tensor([rng.randrange(corrupt.n_boxes) for _ in range(len(corrupt))])
        return corrupt.label_pos[torch.arange(len(corrupt)), idx]

    def chance(self, n_boxes):
        return 1 / n_boxes

    def check_vocabulary(self, tokenizer):
        from mechtest.tasks.vocabulary import usable_vocabulary

        usable_vocabulary(tokenizer)

    def strategy(self, tokenizer, **kwargs):
        from mechtest.tasks.strategies import entity_tracking_examples

        return entity_tracking_examples(tokenizer, **kwargs)

    def desiderata(self, *args, **kwargs):
        from mechtest.tasks.desiderata import desiderata

        return desiderata(*args, **kwargs)
