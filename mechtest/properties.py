"""Property claims: a statement about every generated prompt, checked in batches, shrunk by Hypothesis.

A property ("the candidate answers whatever the base answers", "the circuit alone gives the full model's
answer", "blocking an attention edge destroys the answer") is decided per prompt. :func:`check_property`
draws ``max_examples`` prompts from a seeded Hypothesis strategy, evaluates them in a few batched forwards
(one batch per prompt shape), and only when some fail replays the same seeded search through ``@given``,
one prompt at a time (the batch's verdicts reused), so Hypothesis shrinks to the smallest failing prompt:
fewest boxes, then first objects and labels, then the earliest query position.

Hand-written tests use :func:`prompts` in ``@given`` and a property's ``check(example)``. The prompts run
through :mod:`mechtest.methods.predictions` (``run``, ``run_circuit``, ``run_knockout``, also importable from
here); torch and Hypothesis load inside the functions that use them, so importing this module is free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from mechtest.errors import MechtestError
from mechtest.spec import PROPERTY_KINDS as KINDS

_SESSIONS: list = []  # the plugin's Mechtest while a pytest session runs (bind), for prompts("name")
# running prompts through a model, a circuit or a knockout: mechtest.methods.predictions (imports torch)
_PREDICTIONS = ("EDGES", "Prediction", "run", "run_circuit", "run_knockout", "reference_means")


def __getattr__(name: str):
    if name in _PREDICTIONS:
        from mechtest.methods import predictions

        return getattr(predictions, name)
    raise AttributeError(f"module 'mechtest.properties' has no attribute {name!r}")


# ------------------------------------------------------------------------------------------ prompts

def bind(api) -> None:
    """Let ``api`` (the session's Mechtest) resolve model names given to :func:`prompts` (plugin hook)."""
    _SESSIONS.append(api)


def unbind(api) -> None:
    _SESSIONS[:] = [s for s in _SESSIONS if s is not api]


def prompts(model, n_boxes=None, *, min_boxes: int = 2, max_boxes: int | None = None, api=None,
            objects=None, labels=None):
    """Single-prompt examples valid for ``model``'s tokenizer (a loaded model, a tokenizer, or a name).

    A name is resolved when the first example is drawn, through ``api`` or the running pytest session (an
    unconfigured model then skips the test), so ``@given(example=prompts("zoo-planted"))`` works at import
    time. ``n_boxes`` (an int or a strategy) wins over ``min_boxes``..``max_boxes`` (default: up to the
    model's box count for a name, else 7).
    """
    from hypothesis import strategies as st

    from mechtest.tasks.strategies import entity_tracking_examples

    if isinstance(model, str):
        return st.deferred(lambda: _named_prompts(model, n_boxes, min_boxes, max_boxes, api, objects, labels))
    tokenizer = getattr(model, "tokenizer", model)
    if n_boxes is None:
        n_boxes = st.integers(min_boxes, max(min_boxes, max_boxes or 7))
    return entity_tracking_examples(tokenizer, n_boxes, objects=objects, labels=labels)


def _named_prompts(name, n_boxes, min_boxes, max_boxes, api, objects, labels):
    api = api if api is not None else (_SESSIONS[-1] if _SESSIONS else None)
    if api is None:
        raise MechtestError(f"prompts({name!r}) resolves model names through the mechtest session, and none is "
                            "bound: pass a loaded model, or draw with data.draw(prompts(name, api=mechtest))")
    model = api.model(name)
    return prompts(model, n_boxes, min_boxes=min_boxes, max_boxes=max_boxes or api.n_boxes(model),
                   objects=objects, labels=labels)


def session_means(api, model, *, n: int | None = None, seed: int = 0) -> Callable[[int], object]:
    """:func:`reference_means` through the session's memo and on-disk cache (the circuit metrics' means)."""
    return lambda n_boxes: api.ablation_means(api.model(model), n, n_boxes, seed)


# ------------------------------------------------------------------------------------- properties

@dataclass(frozen=True)
class Verdict:
    """Whether the property holds on one prompt, and the two answers it compared."""

    holds: bool
    prompt: str
    n_boxes: int
    queried_index: int
    expected: str       # what the property asks for, e.g. the full model's answer
    expected_prob: float
    produced: str       # what the run under test gave
    produced_prob: float

    def explain(self) -> str:
        return (f"prompt:   {self.prompt!r} ({self.n_boxes} boxes, query position {self.queried_index})\n"
                f"expected: {self.expected} (p={self.expected_prob:.3f})\n"
                f"produced: {self.produced!r} (p={self.produced_prob:.3f})")


@dataclass(frozen=True)
class Property:
    """A named per-prompt statement: ``evaluate`` maps a batch to one Verdict per prompt."""

    name: str
    evaluate: Callable[[object], list[Verdict]]
    forwards_per_batch: int = 2
    objects: tuple[str, ...] | None = None  # words every model involved can use (None: the tokenizer's own)
    labels: tuple[str, ...] | None = None

    def check(self, example) -> Verdict:
        """The verdict on one example (hand-written ``@given`` tests)."""
        return self.check_all([example])[0]

    def check_all(self, examples) -> list[Verdict]:
        from mechtest.methods.predictions import per_layout

        return per_layout(examples, 256, self.evaluate)


def agrees_with(base, candidate) -> Property:
    """On every prompt ``base`` answers correctly, ``candidate`` does too."""
    from mechtest.methods.predictions import run

    same = _same_tokenizer(base.tokenizer, candidate.tokenizer)

    def evaluate(batch):
        ref = run(base, batch if same else _retokenized(base.tokenizer, batch))
        got = run(candidate, batch)
        return [_verdict(batch, i, not r.correct or g.correct, repr(_answer(batch, i)), r.answer_prob,
                         g.token, g.prob) for i, (r, g) in enumerate(zip(ref, got))]

    words = (None, None) if same else _shared_words(base.tokenizer, candidate.tokenizer)
    return Property(f"agrees_with:{base.name}", evaluate, 2, *words)


def circuit_agrees(model, circuit, means) -> Property:
    """With only ``circuit``'s heads (every other head mean-ablated) ``model`` gives its full answer."""
    from mechtest.methods.predictions import run, run_circuit

    circuit.check(model)

    def evaluate(batch):
        full, circ = run(model, batch), run_circuit(model, circuit, batch, means)
        return [_verdict(batch, i, c.token_id == f.token_id, repr(f.token), f.prob, c.token, c.prob)
                for i, (f, c) in enumerate(zip(full, circ))]

    return Property("circuit_agrees", evaluate)


def knockout_breaks(model, edge: str, layer: int = 0) -> Property:
    """Blocking ``edge`` in every layer >= ``layer`` makes ``model`` miss the answer."""
    return _knockout("knockout_breaks", model, edge, layer)


def knockout_keeps(model, edge: str, layer: int = 0) -> Property:
    """Blocking ``edge`` in every layer >= ``layer`` leaves ``model``'s answer as it was."""
    return _knockout("knockout_keeps", model, edge, layer)


def _knockout(name: str, model, edge: str, layer: int) -> Property:
    from mechtest.methods.predictions import run, run_knockout

    breaks = name == "knockout_breaks"

    def evaluate(batch):
        ko, full = run_knockout(model, batch, edge, layer), run(model, batch)
        return [_verdict(batch, i, not k.correct if breaks else k.token_id == f.token_id,
                         f"not {_answer(batch, i)!r}" if breaks else repr(f.token),
                         f.answer_prob if breaks else f.prob, k.token, k.prob) for i, (k, f) in enumerate(zip(ko, full))]

    return Property(name, evaluate)


def from_spec(api, spec: str, model: str, *, circuit=None, edge: str | None = None, layer: int = 0,
              n_reference: int | None = None, seed: int = 0) -> Property:
    """The property a claim names (``agrees_with:<model>``, ``circuit_agrees``, ``knockout_breaks``,
    ``knockout_keeps``) on the session's models; circuits' means come from ``n_reference`` prompts."""
    loaded = api.model(model)
    if spec.startswith("agrees_with:"):
        return agrees_with(api.model(spec.split(":", 1)[1]), loaded)
    if spec == "circuit_agrees":
        if circuit is None:
            raise MechtestError("property 'circuit_agrees' needs a circuit")
        return circuit_agrees(loaded, api.circuit(circuit), session_means(api, loaded, n=n_reference, seed=seed))
    if spec in ("knockout_breaks", "knockout_keeps"):
        if edge is None:
            from mechtest.methods.predictions import EDGES

            raise MechtestError(f"property {spec!r} needs an edge ({', '.join(EDGES)})")
        return (knockout_breaks if spec == "knockout_breaks" else knockout_keeps)(loaded, edge, layer)
    raise MechtestError(f"unknown property {spec!r}; use one of {', '.join(KINDS)}")


# ---------------------------------------------------------------------------------- checking

@dataclass(frozen=True)
class PropertyResult:
    """A property over ``n_examples`` generated prompts; on failure the minimal failing prompt (shrunk by
    Hypothesis when ``shrunk``) with both answers, and the seed that reproduces it."""

    name: str
    holds: bool
    n_examples: int
    n_failures: int
    seed: int
    minimal: Verdict | None = None
    shrunk: bool = False
    n_forwards: int = 0           # batched forwards over the generated prompts
    n_shrink_forwards: int = 0    # one-prompt forwards while shrinking

    @property
    def fraction(self) -> float:
        """Fraction of the generated prompts on which the property holds."""
        return 1 - self.n_failures / self.n_examples if self.n_examples else math.nan

    def explain(self) -> str:
        text = (f"property {self.name} holds on {self.n_examples - self.n_failures} of {self.n_examples} "
                f"generated prompts (seed {self.seed})")
        if self.minimal is not None:
            how = "minimal failing prompt (shrunk by Hypothesis)" if self.shrunk else "smallest failing prompt seen"
            text += (f"; {how}:\n{self.minimal.explain()}\n"
                     f"reproduce: check_property(..., max_examples={self.n_examples}, seed={self.seed})")
        return text

    def to_details(self) -> dict:
        return {"property": self.name, "holds": self.holds, "n_examples": self.n_examples,
                "n_failures": self.n_failures, "seed": self.seed, "shrunk": self.shrunk,
                "minimal": None if self.minimal is None else dataclasses.asdict(self.minimal),
                "n_forwards": self.n_forwards, "n_shrink_forwards": self.n_shrink_forwards}


def check_property(prop: Property, examples, *, max_examples: int | None = None, seed: int = 0,
                   batch_size: int = 256, shrink: bool = True) -> PropertyResult:
    """Evaluate ``prop`` on ``max_examples`` prompts (default: the loaded Hypothesis profile's) drawn from
    ``examples`` with ``seed``, batched; when some fail, replay the seeded search one prompt at a time so
    Hypothesis shrinks to the minimal failure. The seed, not Hypothesis's database, decides the prompts."""
    if max_examples is None:
        from hypothesis import settings

        max_examples = settings().max_examples
    if max_examples < 1:
        raise MechtestError(f"max_examples must be >= 1, got {max_examples}")
    from mechtest.methods.predictions import layout_groups, stack

    drawn = _draw(examples, max_examples, seed)
    memo: dict[str, Verdict] = {}
    groups = layout_groups(drawn, batch_size)
    for group in groups:
        batch = stack(group)
        memo.update(zip(batch.prompts, prop.evaluate(batch)))
    failures = [memo[ex.prompts[0]] for ex in drawn if not memo[ex.prompts[0]].holds]
    minimal, shrunk, single = None, False, [0]
    if failures and shrink:
        minimal = _shrunk(prop, examples, max_examples, seed, memo, single)
        shrunk = minimal is not None
    if failures and minimal is None:
        minimal = min(failures, key=lambda v: (v.n_boxes, v.queried_index))
    return PropertyResult(prop.name, not failures, len(drawn), len(failures), seed, minimal, shrunk,
                          len(groups) * prop.forwards_per_batch, single[0] * prop.forwards_per_batch)


class _Fails(Exception):
    """Raised inside the replayed search on a failing prompt (never escapes check_property)."""


def _settings(max_examples: int, phases):
    from hypothesis import HealthCheck, Verbosity, settings

    # every setting that changes which prompts are drawn is fixed here, whatever profile is loaded
    return settings(max_examples=max_examples, phases=phases, database=None, deadline=None, derandomize=False,
                    verbosity=Verbosity.quiet, report_multiple_bugs=False, print_blob=False,
                    suppress_health_check=list(HealthCheck))


def _draw(strategy, n: int, seed: int) -> list:
    from hypothesis import Phase, given, seed as hypothesis_seed

    drawn: list = []

    @_settings(n, (Phase.generate,))
    @hypothesis_seed(seed)
    @given(strategy)
    def collect(example):
        drawn.append(example)

    collect()
    return drawn


def _shrunk(prop: Property, strategy, n: int, seed: int, memo: dict, single: list) -> Verdict | None:
    """The same seeded search as :func:`_draw`, now failing: Hypothesis's last call is its minimal example."""
    from hypothesis import Phase, given, seed as hypothesis_seed

    seen: list[Verdict] = []

    @_settings(n, (Phase.generate, Phase.shrink))
    @hypothesis_seed(seed)
    @given(strategy)
    def replay(example):
        verdict = memo.get(example.prompts[0])
        if verdict is None:
            verdict = memo[example.prompts[0]] = prop.evaluate(example)[0]
            single[0] += 1
        if not verdict.holds:
            seen.append(verdict)
            raise _Fails

    try:
        replay()
    except _Fails:
        return seen[-1]
    return None


# ------------------------------------------------------------------------------------ internals

def _verdict(batch, i, holds, expected, expected_prob, produced, produced_prob) -> Verdict:
    return Verdict(bool(holds), batch.prompts[i], batch.n_boxes, int(batch.queried_index[i]), expected,
                   float(expected_prob), produced, float(produced_prob))


def _answer(batch, i) -> str:
    return batch.objects[i][int(batch.queried_index[i])]


def _same_tokenizer(a, b) -> bool:
    return a is b or (type(a) is type(b) and a.get_vocab() == b.get_vocab())


def _shared_words(a, b) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Objects and labels usable by both tokenizers (agrees_with across tokenizers)."""
    from mechtest.tasks.entity_tracking import usable_vocabulary

    va, vb = usable_vocabulary(a), usable_vocabulary(b)
    return (tuple(w for w in vb.objects if w in set(va.objects)), tuple(w for w in vb.labels if w in set(va.labels)))


def _retokenized(tokenizer, batch):
    """The same prompts (words, query) built for another tokenizer, as a list of one-prompt examples."""
    from mechtest.tasks.entity_tracking import make_example

    return [make_example(tokenizer, batch.objects[i], batch.labels[i], int(batch.queried_index[i]))
            for i in range(len(batch))]
