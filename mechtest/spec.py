"""The paper's domain names in one torch-free place: groups, positions, sites, the step plan, receivers,
desiderata and knockout edges.

Claims are validated against these at collection time (before torch is imported), and the methods use the
same names, so a new group or edge is added here once. The ``Literal`` aliases document what a ``str``
parameter may hold; the tuples are what code iterates and validates against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Group = Literal["value_fetcher", "pos_transmitter", "pos_detector", "struct_reader"]
Position = Literal["last", "query_label", "query_context"]
Site = Literal["head_out", "q", "k", "v"]

# The circuit's four groups, in the order path patching finds them (spec 4.4).
GROUPS: tuple[Group, ...] = ("value_fetcher", "pos_transmitter", "pos_detector", "struct_reader")
# The position class where each group's heads act (spec 4.3, 5.1).
POSITIONS: tuple[Position, ...] = ("last", "query_label", "query_context")
GROUP_POSITION: dict[Group, Position] = {"value_fetcher": "last", "pos_transmitter": "last",
                                         "pos_detector": "query_label", "struct_reader": "query_context"}
SITES: tuple[Site, ...] = ("head_out", "q", "k", "v")


@dataclass(frozen=True)
class PlannedStep:
    """One path-patching step: its senders' group, where they are patched, and who receives them.

    ``previous`` is the group whose top heads become this step's receivers, read at ``receiver_site``
    (None for the first step, which reads the logits directly).
    """

    group: Group
    position: Position
    previous: Group | None
    receiver_site: Site | None


# Spec 4.4: value fetchers read the logits; position transmitters write the fetchers' queries; position
# detectors write the transmitters' values at the query label; structure readers write the detectors' values.
STEP_PLAN: tuple[PlannedStep, ...] = (
    PlannedStep("value_fetcher", "last", None, None),
    PlannedStep("pos_transmitter", "last", "value_fetcher", "q"),
    PlannedStep("pos_detector", "query_label", "pos_transmitter", "v"),
    PlannedStep("struct_reader", "query_context", "pos_detector", "v"),
)

# The paper's Llama-7B run (1,024 heads): receivers kept between steps and candidate sizes per group.
PAPER_HEADS = 32 * 32
PAPER_RECEIVERS: dict[Group, int] = {"pos_transmitter": 20, "pos_detector": 5, "struct_reader": 10}
PAPER_CANDIDATES: dict[Group, int] = {"value_fetcher": 58, "pos_transmitter": 10, "pos_detector": 25,
                                      "struct_reader": 5}


def scaled(counts: dict[str, int], n_heads_total: int) -> dict[str, int]:
    """The paper's counts scaled to a model with ``n_heads_total`` heads, at least one per group."""
    return {g: max(1, round(k * n_heads_total / PAPER_HEADS)) for g, k in counts.items()}


# Desiderata of DCM (spec 6.2) and the additional ones of spec 3.4.
DESIDERATA = ("positional", "object_value", "box_label_value")
ADDITIONAL_DESIDERATA = ("random_text_start", "random_text_end", "add_tokens_btw_box_and_obj", "add_seg_start",
                         "add_seg_end", "add_box_before_correct_segment", "incorrect_segment",
                         "altered_box_obj_order", "altered_box_obj_association", "no_comma", "add_comma")

# Attention-knockout edges (spec 8): name -> (from, to) position classes; "object" is the queried
# segment's object token, "random" a random context position (a control).
KNOCKOUT_EDGES: dict[str, tuple[str, str]] = {
    "last->object": ("last", "object"),
    "last->query_label": ("last", "query_label"),
    "query_label->query_context": ("query_label", "query_context"),
    "last->random": ("last", "random"),
    "query_label->random": ("query_label", "random"),
}

# CMAP (spec 7): what is carried from the donor: pre-W_O head outputs, or their post-W_O contribution.
CMAP_TRANSFERS = ("head_output", "head_contribution")

# the fine-tuning gate's outcomes (mechtest.methods.compare); a claim may expect the first two
VERDICTS = ("preserved", "not preserved", "inconclusive")
# attention edges whose knockout a property claim may state (the random-target edges are controls only)
PROPERTY_EDGES = tuple(name for name, (_, to) in KNOCKOUT_EDGES.items() if to != "random")
# property claims (mechtest.properties): what is stated about every generated prompt
PROPERTY_KINDS = ("agrees_with:<model>", "circuit_agrees", "knockout_breaks", "knockout_keeps")
# random circuits (or random halves) drawn by random_circuit_faithfulness and completeness
DEFAULT_DRAWS = 10


def derived_seed(seed: int, purpose: str) -> int:
    """The seed of a prompt set derived from a claim's or a call's ``seed``, one rule for every method: the
    path-patching corruption, discovery's minimality reference and the gate's evaluation sets must neither
    coincide with the sample they are derived from nor with each other."""
    return seed + _SEED_OFFSETS[purpose]


_SEED_OFFSETS = {"corruption": 1, "minimality_reference": 2, "evaluation": 3, "evaluation_reference": 4}
