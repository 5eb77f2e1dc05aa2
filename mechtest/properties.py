"""Property claims: a statement about every generated prompt, checked in batches, shrunk by Hypothesis.

A property ("the candidate answers whatever the base answers", "the circuit alone gives the full model's
answer", "blocking an attention edge destroys the answer") is decided per prompt. :func:`check_property`
draws ``max_examples`` prompts from a seeded Hypothesis strategy, evaluates them in a few batched forwards
(one batch per prompt shape), and only when some fail replays the same seeded search through ``@given``,
one prompt at a time (the batch's verdicts reused), so Hypothesis shrinks to the smallest failing prompt:
fewest boxes, then first objects and labels, then the earliest query position.

Hand-written tests use :func:`prompts` in ``@given`` and a property's ``check(example)``. Torch is imported
inside the functions that run models, so importing this module is cheap.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, Verbosity, given, seed as hypothesis_seed, settings
from hypothesis import strategies as st

from mechtest.errors import MechtestError
from mechtest.spec import KNOCKOUT_EDGES

KINDS = ("agrees_with:<model>", "circuit_agrees", "knockout_breaks", "knockout_keeps")
# edges fixed by the prompt alone (a random key would differ between a batch and a replayed single prompt)
EDGES = tuple(name for name, (_, to) in KNOCKOUT_EDGES.items() if to != "random")
_SESSIONS: list = []  # the plugin's Mechtest while a pytest session runs (bind), for prompts("name")


# ------------------------------------------------------------------------------------------ prompts

def bind(api) -> None:
    """Make ``api`` (the session's Mechtest) resolve model names given to :func:`prompts` (plugin hook)."""
    _SESSIONS.append(api)


def unbind(api) -> None:
    if api in _SESSIONS:
        _SESSIONS.remove(api)


def prompts(model, n_boxes=None, *, min_boxes: int = 2, max_boxes: int | None = None, api=None,
            objects=None, labels=None) -> st.SearchStrategy:
    """Single-prompt examples valid for ``model``'s tokenizer (a loaded model, a tokenizer, or a name).

    A name is resolved when the first example is drawn, through ``api`` or the running pytest session (an
    unconfigured model then skips the test), so ``@given(example=prompts("zoo-planted"))`` works at import
    time. ``n_boxes`` (an int or a strategy) wins over ``min_boxes``..``max_boxes`` (default: up to the
    model's box count for a name, else 7).
    """
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


# ---------------------------------------------------------------------------------- running prompts

@dataclass(frozen=True)
class Prediction:
    """The argmax token at the answer position, its probability, and the prompt's answer's probability."""

    token_id: int
    token: str
    prob: float
    answer_prob: float
    correct: bool


def run(model, examples, *, edits_for_batch=None, batch_size: int = 256) -> list[Prediction]:
    """Predictions of ``model`` on ``examples`` (a dataset or a list of one-prompt examples), batched by shape."""
    from mechtest.forward import dataset_logits

    return _by_shape(examples, batch_size, lambda batch: _predictions(model, batch, dataset_logits(
        model, batch, batch_size=len(batch),
        edits_for_batch=None if edits_for_batch is None else edits_for_batch(batch))))


def run_circuit(model, circuit, examples, means, *, batch_size: int = 256) -> list[Prediction]:
    """Predictions with every head outside ``circuit`` mean-ablated (spec 5.1); ``means`` is a tensor for the
    examples' layout or a callable n_boxes -> tensor (:func:`reference_means`)."""
    from mechtest.methods.evaluation import ablation_edits

    def edits(batch):
        m = means(batch.n_boxes) if callable(means) else means
        return ablation_edits(model, batch, m, keep=circuit)

    return run(model, examples, edits_for_batch=edits, batch_size=batch_size)


def run_knockout(model, examples, edge: str, layer: int = 0, *, batch_size: int = 256) -> list[Prediction]:
    """Predictions with attention ``edge`` blocked in every head of every layer >= ``layer`` (spec 8)."""
    from mechtest.forward import dataset_logits
    from mechtest.methods.knockout import edge_positions, knocked_out

    if edge not in EDGES:
        raise MechtestError(f"unknown property edge {edge!r}; use one of {', '.join(EDGES)}")

    def one(batch):
        src, dst = edge_positions(batch, edge)
        with knocked_out(model, src, dst, range(layer, model.n_layers)):
            return _predictions(model, batch, dataset_logits(model, batch, batch_size=len(batch)))

    return _by_shape(examples, batch_size, one)


def reference_means(model, *, n: int = 100, seed: int = 0, cache=None) -> Callable[[int], object]:
    """Mean-ablation means per box count (``mean_ablation_set`` of ``n`` prompts), computed once each."""
    from mechtest.methods.evaluation import ablation_means
    from mechtest.tasks.entity_tracking import mean_ablation_set

    memo: dict[int, object] = {}

    def for_boxes(n_boxes: int):
        if n_boxes not in memo:
            ref = mean_ablation_set(model.tokenizer, n, n_boxes=n_boxes, seed=seed)
            memo[n_boxes] = ablation_means(model, ref, cache=cache)
        return memo[n_boxes]

    return for_boxes


def session_means(api, model, *, n: int | None = None, seed: int = 0) -> Callable[[int], object]:
    """:func:`reference_means` through the session's memo and on-disk cache (the circuit metrics' means)."""
    return lambda n_boxes: api._means(api.model(model), n, n_boxes, seed)


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
        return _by_shape(examples, 256, self.evaluate)


def agrees_with(base, candidate) -> Property:
    """On every prompt ``base`` answers correctly, ``candidate`` does too."""
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
    circuit.check(model)

    def evaluate(batch):
        full, circ = run(model, batch), run_circuit(model, circuit, batch, means)
        return [_verdict(batch, i, c.token_id == f.token_id, repr(f.token), f.prob, c.token, c.prob)
                for i, (f, c) in enumerate(zip(full, circ))]

    return Property("circuit_agrees", evaluate)


def knockout_breaks(model, edge: str, layer: int = 0) -> Property:
    """Blocking ``edge`` in every layer >= ``layer`` makes ``model`` miss the answer."""
    def evaluate(batch):
        ko, full = run_knockout(model, batch, edge, layer), run(model, batch)
        return [_verdict(batch, i, not k.correct, f"not {_answer(batch, i)!r}", f.answer_prob, k.token, k.prob)
                for i, (k, f) in enumerate(zip(ko, full))]

    return Property("knockout_breaks", evaluate)


def knockout_keeps(model, edge: str, layer: int = 0) -> Property:
    """Blocking ``edge`` in every layer >= ``layer`` leaves ``model``'s answer as it was."""
    def evaluate(batch):
        ko, full = run_knockout(model, batch, edge, layer), run(model, batch)
        return [_verdict(batch, i, k.token_id == f.token_id, repr(f.token), f.prob, k.token, k.prob)
                for i, (k, f) in enumerate(zip(ko, full))]

    return Property("knockout_keeps", evaluate)


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
        head = (f"property {self.name} holds on {self.n_examples - self.n_failures} of {self.n_examples} "
                f"generated prompts (seed {self.seed})")
        if self.minimal is None:
            return head
        how = "minimal failing prompt (shrunk by Hypothesis)" if self.shrunk else "first failing prompt"
        return f"{head}; {how}:\n" + self.minimal.explain() + \
            f"\nreproduce: check_property(..., max_examples={self.n_examples}, seed={self.seed})"

    def to_details(self) -> dict:
        return {"property": self.name, "holds": self.holds, "n_examples": self.n_examples,
                "n_failures": self.n_failures, "seed": self.seed, "shrunk": self.shrunk,
                "minimal": None if self.minimal is None else dataclasses.asdict(self.minimal),
                "n_forwards": self.n_forwards, "n_shrink_forwards": self.n_shrink_forwards}


def check_property(prop: Property, examples: st.SearchStrategy, *, max_examples: int = 200, seed: int = 0,
                   batch_size: int = 256, shrink: bool = True) -> PropertyResult:
    """Evaluate ``prop`` on ``max_examples`` prompts drawn from ``examples`` with ``seed``, batched; when some
    fail, replay the seeded search one prompt at a time so Hypothesis shrinks to the minimal failure."""
    if max_examples < 1:
        raise MechtestError(f"max_examples must be >= 1, got {max_examples}")
    drawn = _draw(examples, max_examples, seed)
    memo: dict[str, Verdict] = {}
    groups = _shapes(drawn, batch_size)
    for group in groups:
        batch = _stack(group)
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


def _settings(max_examples: int, phases) -> settings:
    # every setting that changes which prompts are drawn is fixed here, whatever profile is loaded
    return settings(max_examples=max_examples, phases=phases, database=None, deadline=None, derandomize=False,
                    verbosity=Verbosity.quiet, report_multiple_bugs=False, print_blob=False,
                    suppress_health_check=list(HealthCheck))


def _draw(strategy, n: int, seed: int) -> list:
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

def _shapes(examples: Sequence, batch_size: int) -> list[list]:
    """One-prompt examples grouped by layout (box count, length), in chunks of ``batch_size``."""
    groups: dict[tuple, list] = {}
    for ex in examples:
        groups.setdefault((ex.n_boxes, tuple(ex.input_ids.shape)), []).append(ex)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def _by_shape(examples, batch_size: int, fn) -> list:
    """Apply ``fn`` (batch -> one result per row) to a dataset or list of examples, in the input order."""
    if not isinstance(examples, (list, tuple)):
        return list(fn(examples)) if len(examples) <= batch_size else \
            [r for s in range(0, len(examples), batch_size) for r in fn(examples[s:s + batch_size])]
    rows = [ex[i] for ex in examples for i in range(len(ex))] if any(len(ex) > 1 for ex in examples) \
        else list(examples)
    order = {id(r): k for k, r in enumerate(rows)}
    out: list = [None] * len(rows)
    for group in _shapes(rows, batch_size):
        for r, res in zip(group, fn(_stack(group))):
            out[order[id(r)]] = res
    return out


def _stack(rows: list):
    """One dataset from one-prompt examples of the same layout."""
    import torch

    if len(rows) == 1:
        return rows[0]
    first = rows[0]
    tensors = {f.name: torch.cat([getattr(r, f.name) for r in rows]) for f in dataclasses.fields(first)
               if isinstance(getattr(first, f.name), torch.Tensor)}
    tuples = {name: sum((getattr(r, name) for r in rows), ()) for name in ("prompts", "objects", "labels",
                                                                           "query_labels")}
    return dataclasses.replace(first, **tensors, **tuples)


def _predictions(model, batch, logits) -> list[Prediction]:
    import torch

    probs = torch.softmax(logits, -1)
    top, ids = probs.max(-1)
    rows = torch.arange(len(batch))
    answer = probs[rows, batch.answer_ids]
    return [Prediction(int(ids[i]), model.tokenizer.decode([int(ids[i])]).strip(), float(top[i]), float(answer[i]),
                       int(ids[i]) == int(batch.answer_ids[i])) for i in range(len(batch))]


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
