"""The entity-tracking task (spec sections 2-3) for any tokenizer: the public names in one place.

Prompts follow the paper's template, "The {o1} is in Box {L1}, the {o2} is in Box {L2}, ... Box {Lq}
contains the". Token positions are found by searching the real tokenization (never by constants) and
asserted, so that LLaMA, GPT-2 style byte-level BPE and word-level tokenizers all give correct layouts.
Everything is seeded with local random generators: the same arguments always give the same data.

Modules: :mod:`~mechtest.tasks.vocabulary` (usable words), :mod:`~mechtest.tasks.layout` (prompts, token
positions, the dataset types), :mod:`~mechtest.tasks.datasets` (builders), :mod:`~mechtest.tasks.desiderata`
(counterfactual pairs).
"""

from mechtest.spec import ADDITIONAL_DESIDERATA, DESIDERATA
from mechtest.tasks.datasets import make_dataset, make_example, mean_ablation_set, path_patching_corruption
from mechtest.tasks.desiderata import desiderata
from mechtest.tasks.layout import CounterfactualPairs, EntityTrackingDataset
from mechtest.tasks.vocabulary import DEFAULT_LABELS, Vocabulary, object_names, usable_vocabulary

__all__ = ["ADDITIONAL_DESIDERATA", "DEFAULT_LABELS", "DESIDERATA", "CounterfactualPairs", "EntityTrackingDataset",
           "Vocabulary", "desiderata", "make_dataset", "make_example", "mean_ablation_set", "object_names",
           "path_patching_corruption", "usable_vocabulary"]
