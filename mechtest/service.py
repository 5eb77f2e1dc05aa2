"""The service between claims and methods: models, prompts, circuits and the paper's methods by name, memoised.

One :class:`Service` lives for a pytest session (one per xdist worker); the ``mechtest`` fixture
(:class:`mechtest.api.Mechtest`) is one. Metrics, the claim runner, the cost plan and property claims receive
it and call down into :mod:`mechtest.methods` through it: each method result is memoised in memory for the
session (:meth:`Service.memoised`, public so that a user metric can memoise a method of its own), and the
expensive intermediate results (ablation means, path-patching scores) go through the on-disk activation
cache, so xdist workers and later runs share them. A claim and a hand-written test asking for the same thing
compute it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechtest.model_registry import ModelRegistry
from mechtest.settings import Settings
from mechtest.spec import DEFAULT_DRAWS
from mechtest.tasks.base import DEFAULT_TASK
from mechtest.tasks.registry import get_task

DEFAULT_API_PROMPTS = 100
DEFAULT_DISCOVERY_PROMPTS = 300


class Service:
    """Models, data, circuits and method results by name, memoised for one pytest session."""

    def __init__(self, settings: Settings | None = None, *, rootdir: Path | None = None) -> None:
        self.settings = settings or Settings()
        self.rootdir = Path(rootdir or Path.cwd())
        self.models = ModelRegistry(self.settings)
        self.seeds: set[int] = set()
        self.memo: dict[tuple, Any] = {}  # method results of this session, by key (memoised)
        self._cache = None

    # ------------------------------------------------------------------------------------------ models

    def is_configured(self, name: str) -> bool:
        return self.models.is_configured(name)

    def model(self, model):
        """The loaded model called ``model`` (loaded once); a test asking for an absent model is skipped."""
        return self.models.load(model) if isinstance(model, str) else model

    def check_vocabulary(self, task: str, model: str) -> None:
        """Raise the task's TokenizerError (naming the task, slot and word) if a word of ``task`` is not one
        known token for ``model``'s tokenizer; read without loading weights where possible (collection)."""
        tokenizer = self.memoised(("tokenizer", model), lambda: self.models.tokenizer(model))
        if tokenizer is not None:
            spec = get_task(task)
            self.memoised(("vocabulary", spec.identity(), model), lambda: spec.check_vocabulary(tokenizer))

    def n_boxes(self, model) -> int:
        """The box count a model is evaluated on: ``n_boxes`` of its ``mechtest.json``, else 7."""
        return self.models.n_boxes(model if isinstance(model, str) else model.name)

    @property
    def cache(self):
        if self._cache is None:
            from mechtest.cache import ActivationCache

            self._cache = ActivationCache(self.settings.cache_dir)
        return self._cache

    def cache_stats(self) -> dict:
        if self._cache is None:
            return {"hits": 0, "misses": 0, "computed": 0, "invalid": 0}
        s = self._cache.stats
        return {"hits": s.hits, "misses": s.misses, "computed": s.computed, "invalid": s.invalid}

    # -------------------------------------------------------------------------------------- data & circuits

    def n_prompts(self, n: int | None, default: int = DEFAULT_API_PROMPTS) -> int:
        """``--mechtest-prompts`` overrides every sample size; otherwise ``n`` or the default."""
        if self.settings.prompts is not None:
            return self.settings.prompts
        return default if n is None else n

    def memoised(self, key: tuple, compute):
        """``compute()``, once per session for ``key`` (a tuple naming the method and every input that changes
        its result, e.g. ``("logit_gap", model.name, n, seed)``); later calls return the same object."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def _sample(self, model, n, n_boxes, seed, default: int = DEFAULT_API_PROMPTS):
        model = self.model(model)
        self.seeds.add(seed)
        return model, self.n_prompts(n, default), n_boxes or self.n_boxes(model)

    def dataset(self, model, *, n: int | None = None, n_boxes: int | None = None, seed: int = 0,
                task: str = DEFAULT_TASK):
        """The task's evaluation prompts for the model's tokenizer (entity tracking: ``make_dataset``)."""
        model, n, n_boxes = self._sample(model, n, n_boxes, seed)
        spec = get_task(task)
        return self.memoised(_task_key(("dataset", model.name, n, n_boxes, seed), spec.name),
                             lambda: _fitted(model, spec.dataset(model.tokenizer, n, n_boxes=n_boxes, seed=seed)))

    def reference(self, model, *, n: int | None = None, n_boxes: int | None = None, seed: int = 0,
                  task: str = DEFAULT_TASK):
        """The task's mean-ablation reference prompts (entity tracking: ``mean_ablation_set``)."""
        model, n, n_boxes = self._sample(model, n, n_boxes, seed)
        spec = get_task(task)
        return self.memoised(_task_key(("reference", model.name, n, n_boxes, seed), spec.name),
                             lambda: _fitted(model, spec.reference(model.tokenizer, n, n_boxes=n_boxes, seed=seed)))

    def circuit(self, spec, *, n: int | None = None, seed: int = 0, task: str | None = None):
        """``paper:llama|goat|float``, a JSON file (relative paths: the rootdir), ``discovered:<model>`` (found on
        ``task``'s prompts), or a Circuit; with a ``task``, a circuit found on another task is a CircuitError."""
        from mechtest.methods.circuits import load_circuit

        if not isinstance(spec, str):
            circuit = load_circuit(spec)
        elif spec.startswith("discovered:"):
            circuit = self.discover(spec.split(":", 1)[1], n=n, seed=seed, task=task or DEFAULT_TASK).circuit
            circuit = circuit.require_heads(": path patching found no head that lowers the answer's probability")
        else:
            if not spec.startswith("paper:") and not Path(spec).is_absolute():
                spec = str(self.rootdir / spec)
            circuit = self.memoised(("circuit", spec), lambda: load_circuit(spec))
        return circuit if task is None else circuit.for_task(task)

    def path_patching(self, model, *, n: int | None = None, seed: int = 0, n_boxes: int | None = None,
                      receivers: dict[str, int] | None = None, task: str = DEFAULT_TASK):
        """The task's path-patching steps (scores of every head), stored in the activation cache."""
        from mechtest.methods.cached import cached_path_patching
        from mechtest.methods.discovery import default_receivers

        model = self.model(model)
        data = self.dataset(model, n=n, n_boxes=n_boxes, seed=seed, task=task)
        recv = default_receivers(model, receivers, task=task)
        return self.memoised(_task_key(("path_patching", model.name, len(data), data.n_boxes, seed,
                              tuple(sorted(recv.items()))), task),
                             lambda: cached_path_patching(model, data, recv, seed=seed, cache=self.cache))

    def discover(self, model, *, n: int | None = None, seed: int = 0, n_boxes: int | None = None,
                 triage: bool | None = None, minimal: bool = False, task: str = DEFAULT_TASK):
        """Circuit discovery on ``model`` (:func:`mechtest.methods.discovery.discover_circuit`, the one recipe)
        with the paper's sizes scaled to its head count; path-patching scores through the activation cache;
        ``triage=None``: triage where it was measured faster (:func:`mechtest.methods.discovery.triage_by_default`)."""
        from mechtest.methods.discovery import discover_circuit, triage_by_default

        model, n, n_boxes = self._sample(model, n, n_boxes, seed, DEFAULT_DISCOVERY_PROMPTS)
        triage = triage_by_default(model) if triage is None else triage
        return self.memoised(_task_key(("discover", model.name, n, n_boxes, seed, triage, minimal), task),
                             lambda: discover_circuit(model, n_prompts=n, n_boxes=n_boxes, seed=seed, triage=triage,
                                                      minimal=minimal, cache=self.cache, task=task))

    # ---------------------------------------------------------------------------------------- methods

    def ablation_means(self, model, n, n_boxes, seed, task: str = DEFAULT_TASK):
        """Mean head outputs over the mean-ablation reference prompts (the circuit metrics' ablation values)."""
        from mechtest.methods.evaluation import ablation_means

        ref = self.reference(model, n=n, n_boxes=n_boxes, seed=seed, task=task)
        return self.memoised(_task_key(("means", model.name, len(ref), ref.n_boxes, seed), task),
                             lambda: ablation_means(model, ref, cache=self.cache))

    def _circuit_sample(self, model, circuit, n, n_boxes, seed, task):
        """The loaded model, the circuit, the prompts and the mean-ablation prompts a circuit metric needs."""
        model = self.model(model)
        return (model, self.circuit(circuit, task=task), self.dataset(model, n=n, n_boxes=n_boxes, seed=seed, task=task),
                self.reference(model, n=n, n_boxes=n_boxes, seed=seed, task=task))

    def accuracy(self, model, *, circuit=None, n: int | None = None, seed: int = 0, n_boxes: int | None = None,
                 task: str = DEFAULT_TASK):
        """Task accuracy of the full model, or of ``circuit`` with every other head mean-ablated."""
        from mechtest.methods import evaluation

        model = self.model(model)
        data = self.dataset(model, n=n, n_boxes=n_boxes, seed=seed, task=task)
        if circuit is None:
            return self.memoised(_task_key(("accuracy", model.name, len(data), data.n_boxes, seed), task),
                                 lambda: evaluation.accuracy(model, data, seed=seed))
        circ = self.circuit(circuit, task=task)

        def compute():
            from mechtest.measure import proportion

            hits = evaluation.circuit_correct(model, circ, data, self.ablation_means(model, n, n_boxes, seed, task))
            return proportion("circuit_accuracy", hits, seed=seed, circuit=circ.name)

        key = ("circuit_accuracy", model.name, _circuit_key(circ), len(data), data.n_boxes, seed)
        return self.memoised(_task_key(key, task), compute)

    def faithfulness(self, model, *, circuit, n: int | None = None, seed: int = 0, n_boxes: int | None = None,
                     task: str = DEFAULT_TASK):
        """Circuit accuracy / model accuracy under mean ablation, with a bootstrap interval."""
        from mechtest.methods.evaluation import faithfulness

        model, circ, data, ref = self._circuit_sample(model, circuit, n, n_boxes, seed, task)
        key = ("faithfulness", model.name, _circuit_key(circ), len(data), data.n_boxes, seed)
        return self.memoised(_task_key(key, task),
                             lambda: faithfulness(model, circ, data, ref, seed=seed, cache=self.cache))

    def random_circuit_faithfulness(self, model, *, circuit, n_draws: int = DEFAULT_DRAWS, n: int | None = None,
                                    seed: int = 0, n_boxes: int | None = None, task: str = DEFAULT_TASK):
        """Mean faithfulness of random circuits with the circuit's group sizes."""
        from mechtest.methods.evaluation import random_circuit_faithfulness

        model, circ, data, ref = self._circuit_sample(model, circuit, n, n_boxes, seed, task)
        return self.memoised(
            _task_key(("random", model.name, _circuit_key(circ), n_draws, len(data), data.n_boxes, seed), task),
            lambda: random_circuit_faithfulness(model, circ, data, ref, n_draws=n_draws, seed=seed, cache=self.cache))

    def completeness(self, model, *, circuit, mode: str = "random", n_draws: int = DEFAULT_DRAWS, n: int | None = None,
                     seed: int = 0, n_boxes: int | None = None, task: str = DEFAULT_TASK):
        from mechtest.methods.evaluation import completeness

        model, circ, data, ref = self._circuit_sample(model, circuit, n, n_boxes, seed, task)
        return self.memoised(
            _task_key(("completeness", model.name, _circuit_key(circ), mode, n_draws, len(data), data.n_boxes, seed),
                      task),
            lambda: completeness(model, circ, data, ref, mode=mode, n_draws=n_draws, seed=seed, cache=self.cache))

    def compare(self, base, candidate, *, n: int | None = None, seed: int = 0, n_boxes: int | None = None,
                n_discover: int | None = None, thresholds=None, base_circuit=None, task: str = DEFAULT_TASK,
                share_prompts: int | None = None):
        """Does ``candidate`` keep ``base``'s mechanism? (``mechtest.methods.compare``).

        Both discoveries come from this session's memo and the on-disk cache, so a base is discovered once for
        any number of candidates, and a rerun reads the path-patching scores back. With ``base_circuit`` (a
        Circuit or a circuit reference) neither model is discovered."""
        from mechtest.methods.compare import Thresholds, compare

        base_model, cand_model = self.model(base), self.model(candidate)
        n, n_boxes = self.n_prompts(n), n_boxes or self.n_boxes(base_model)
        n_discover = self.n_prompts(n_discover or n)
        thresholds = thresholds or Thresholds()
        recorded = None if base_circuit is None else self.circuit(base_circuit, n=n_discover, seed=seed, task=task)
        self.seeds.add(seed)

        def compute():
            found = {} if recorded is not None else {
                m.name: self.discover(m, n=n_discover, seed=seed, n_boxes=n_boxes, task=task)
                for m in (base_model, cand_model)}
            return compare(base_model, cand_model, n_prompts=n, seed=seed, n_boxes=n_boxes, cache=self.cache, task=task,
                           base_discovery=found.get(base_model.name), candidate_discovery=found.get(cand_model.name),
                           base_circuit=recorded, thresholds=thresholds, share_prompts=share_prompts)

        key = ("compare", base_model.name, cand_model.name, n, n_discover, n_boxes, seed, thresholds,
               None if recorded is None else _circuit_key(recorded), share_prompts)
        return self.memoised(_task_key(key, task), compute)

    def dcm(self, model, *, circuit, group: str, desideratum: str, n: int | None = None, seed: int = 0,
            n_boxes: int | None = None):
        """Desiderata-based masking: which heads of ``circuit``'s ``group`` carry ``desideratum``.

        ``n`` training pairs, ``n // 2`` validation and test pairs."""
        from mechtest.methods.dcm import dcm

        model, n, n_boxes = self._sample(model, n, n_boxes, seed)
        circ = self.circuit(circuit)
        return self.memoised(
            ("dcm", model.name, _circuit_key(circ), group, desideratum, n, n_boxes, seed),
            lambda: dcm(model, circ, group, desideratum, n_boxes=n_boxes, n_train=n, n_val=max(1, n // 2),
                        n_test=max(1, n // 2), seed=seed))

    def cmap(self, model, *, source, circuit=None, group: str | None = None, n: int | None = None, seed: int = 0,
             n_boxes: int | None = None, task: str = DEFAULT_TASK):
        """Cross-model activation patching: ``model``'s accuracy with ``source``'s head outputs patched in
        (every head, or ``circuit``'s nodes, or one ``group`` of them)."""
        from mechtest.methods.cmap import cmap

        model, donor = self.model(model), self.model(source)
        circ = None if circuit is None else self.circuit(circuit, task=task)
        data = self.dataset(model, n=n, n_boxes=n_boxes, seed=seed, task=task)
        return self.memoised(
            _task_key(("cmap", model.name, donor.name, None if circ is None else _circuit_key(circ), group, len(data),
             data.n_boxes, seed), task),
            lambda: cmap(model, donor, data, circuit=circ, group=group, seed=seed))

    def knockout(self, model, *, edge: str = "last->object", layers=None, n: int | None = None, seed: int = 0,
                 n_boxes: int | None = None):
        """Attention knockout: accuracy with ``edge`` blocked from each start layer on (a ``KnockoutCurve``)."""
        from mechtest.methods.knockout import attention_knockout

        model = self.model(model)
        data = self.dataset(model, n=n, n_boxes=n_boxes, seed=seed)
        layers = None if layers is None else tuple(layers)
        return self.memoised(
            ("knockout", model.name, edge, layers, len(data), data.n_boxes, seed),
            lambda: attention_knockout(model, data, edge, start_layers=layers, seed=seed))


def _fitted(model, dataset):
    """The dataset, once checked to fit the model's context (an error before any forward otherwise)."""
    from mechtest.forward import check_fits

    check_fits(model, dataset)
    return dataset


def _task_key(key: tuple, task: str) -> tuple:
    """A memo key naming ``task``; entity tracking's keys are those it had before tasks existed."""
    return key if task == DEFAULT_TASK else (*key, ("task", task))


def _circuit_key(circuit) -> tuple:
    return (circuit.name, tuple((g, tuple(circuit.heads(g))) for g in sorted(circuit.groups)))


