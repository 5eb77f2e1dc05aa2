"""The session object behind the ``mechtest`` fixture and every claim item.

One ``MechtestSession`` lives in ``config.stash`` for the whole pytest run (one per xdist worker). It knows the
configured models by name, loads each at most once, memoises datasets, circuits and method results, sends
activations through the on-disk :class:`~mechtest.cache.ActivationCache`, evaluates claims and keeps their
results for the reports. Heavy modules (torch, transformers, the methods) are imported inside the methods that
need them, so creating a session costs nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechtest.claims import Claim
from mechtest.errors import MechtestError
from mechtest.report import ClaimResult, safe_name

DEFAULT_API_PROMPTS = 100
DEFAULT_DISCOVERY_PROMPTS = 300
DEFAULT_N_BOXES = 7


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    source: str  # "--mechtest-model", "ini mechtest_models"


@dataclass
class Settings:
    models: dict[str, ModelSpec] = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    cache_dir: Path = Path(".mechtest_cache")
    prompts: int | None = None
    report_dir: Path | None = None
    update_snapshots: bool = False


def parse_model_option(text: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (name, path); ValueError with the expected form otherwise."""
    name, sep, path = text.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise ValueError(f"expected NAME=PATH, got {text!r}")
    return name, path


class MechtestSession:
    """Models, data, circuits and method results by name, memoised for one pytest session."""

    def __init__(self, settings: Settings, *, rootdir: Path | None = None) -> None:
        self.settings = settings
        self.rootdir = Path(rootdir or Path.cwd())
        self.results: list[ClaimResult] = []
        self.skipped: list[dict] = []
        self.fingerprints: dict[str, dict] = {}
        self.seeds: set[int] = set()
        self._models: dict[str, Any] = {}
        self._memo: dict[tuple, Any] = {}
        self._cache = None
        self.worker_cache_stats: list[dict] = []

    # ------------------------------------------------------------------------------------------ models

    @property
    def model_names(self) -> list[str]:
        return sorted(self.settings.models)

    def is_configured(self, name: str) -> bool:
        return name in self.settings.models

    def skip_reason(self, name: str) -> str:
        return f"model {name!r} is not configured: pass --mechtest-model {name}=PATH"

    def model(self, model):
        """The loaded model called ``name`` (loaded once); a test asking for an absent model is skipped."""
        if not isinstance(model, str):
            return model
        name = model
        if name not in self._models:
            spec = self.settings.models.get(name)
            if spec is None:
                _skip(self.skip_reason(name))
            from mechtest.model import load_model

            loaded = load_model(spec.path, dtype=self.settings.dtype, device=self.settings.device, name=name)
            self._models[name] = loaded
            self.fingerprints[name] = {"path": spec.path, "source": spec.source,
                                       "fingerprint": loaded.fingerprint, "dtype": str(loaded.dtype),
                                       "shape": list(loaded.shape)}
        return self._models[name]

    def n_boxes(self, model) -> int:
        """The box count a model is evaluated on: ``n_boxes`` of its ``mechtest.json``, else 7."""
        name = model if isinstance(model, str) else model.name
        spec = self.settings.models.get(name)
        if spec is not None:
            card = Path(spec.path) / "mechtest.json"
            if card.is_file():
                try:
                    value = json.loads(card.read_text()).get("n_boxes")
                except (json.JSONDecodeError, AttributeError):
                    value = None
                if isinstance(value, int) and value >= 2:
                    return value
        return DEFAULT_N_BOXES

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

    def _n(self, n: int | None, default: int = DEFAULT_API_PROMPTS) -> int:
        """``--mechtest-prompts`` overrides every sample size; otherwise ``n`` or the default."""
        if self.settings.prompts is not None:
            return self.settings.prompts
        return default if n is None else n

    def _memoised(self, key: tuple, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def dataset(self, model, *, n: int | None = None, n_boxes: int | None = None, seed: int = 0):
        """Entity-tracking evaluation prompts for the model's tokenizer (``make_dataset``)."""
        model = self.model(model)
        n, n_boxes = self._n(n), n_boxes or self.n_boxes(model)
        self.seeds.add(seed)

        def compute():
            from mechtest.tasks.entity_tracking import make_dataset

            return make_dataset(model.tokenizer, n, n_boxes=n_boxes, seed=seed)

        return self._memoised(("dataset", model.name, n, n_boxes, seed), compute)

    def reference(self, model, *, n: int | None = None, n_boxes: int | None = None, seed: int = 0):
        """Mean-ablation reference prompts (``mean_ablation_set``, the same contexts' seed)."""
        model = self.model(model)
        n, n_boxes = self._n(n), n_boxes or self.n_boxes(model)

        def compute():
            from mechtest.tasks.entity_tracking import mean_ablation_set

            return mean_ablation_set(model.tokenizer, n, n_boxes=n_boxes, seed=seed)

        return self._memoised(("reference", model.name, n, n_boxes, seed), compute)

    def circuit(self, spec, *, n: int | None = None, seed: int = 0):
        """``paper:llama|goat|float``, a JSON file (relative paths: the rootdir), ``discovered:<model>``, or a
        Circuit."""
        if not isinstance(spec, str):
            from mechtest.methods.circuits import load_circuit

            return load_circuit(spec)
        if spec.startswith("discovered:"):
            return self.discover(spec.split(":", 1)[1], n=n, seed=seed).circuit
        from mechtest.methods.circuits import load_circuit

        if not spec.startswith("paper:") and not Path(spec).is_absolute():
            spec = str(self.rootdir / spec)
        return self._memoised(("circuit", spec), lambda: load_circuit(spec))

    def discover(self, model, *, n: int | None = None, seed: int = 0, n_boxes: int | None = None):
        """Circuit discovery (path patching + candidate selection) on ``model``, with the paper's sizes scaled
        to its head count."""
        model = self.model(model)
        n, n_boxes = self._n(n, DEFAULT_DISCOVERY_PROMPTS), n_boxes or self.n_boxes(model)
        self.seeds.add(seed)

        def compute():
            try:
                from mechtest.methods.discovery import Discovery, candidate_circuit, scaled, PAPER_CANDIDATES
            except ImportError as e:
                raise MechtestError(f"circuit discovery is not available in this installation ({e})") from None
            from mechtest.methods.circuits import Circuit

            total = model.n_layers * model.n_heads
            sizes = scaled(PAPER_CANDIDATES, total)
            scores = self.path_patching(model, n=n, seed=seed, n_boxes=n_boxes)
            found = candidate_circuit(scores.steps, sizes)
            return Discovery(Circuit(found.groups, f"discovered:{model.name}"), scores, sizes,
                             self._receivers(model), n, seed)

        return self._memoised(("discover", model.name, n, n_boxes, seed), compute)

    # ---------------------------------------------------------------------------------------- methods

    def _receivers(self, model, receivers: dict | None = None) -> dict[str, int]:
        from mechtest.methods.discovery import PAPER_RECEIVERS, scaled

        return {**scaled(PAPER_RECEIVERS, model.n_layers * model.n_heads), **(receivers or {})}

    def accuracy(self, model, *, circuit=None, n: int | None = None, seed: int = 0, n_boxes: int | None = None):
        """Task accuracy of the full model, or of ``circuit`` with every other head mean-ablated."""
        model = self.model(model)
        data = self.dataset(model, n=n, n_boxes=n_boxes, seed=seed)
        if circuit is None:
            def compute():
                from mechtest.methods.evaluation import accuracy

                return accuracy(model, data, seed=seed)

            return self._memoised(("accuracy", model.name, len(data), data.n_boxes, seed), compute)
        circ = self.circuit(circuit)

        def circuit_accuracy():
            import numpy as np

            from mechtest.methods.evaluation import circuit_correct
            from mechtest.measure import proportion

            means = self._means(model, n, n_boxes, seed)
            return proportion("circuit_accuracy", circuit_correct(model, circ, data, means), seed=seed,
                              circuit=circ.name)

        return self._memoised(("circuit_accuracy", model.name, _circuit_key(circ), len(data), data.n_boxes, seed),
                              circuit_accuracy)

    def _means(self, model, n, n_boxes, seed):
        from mechtest.methods.evaluation import ablation_means

        ref = self.reference(model, n=n, n_boxes=n_boxes, seed=seed)
        return self._memoised(("means", model.name, len(ref), ref.n_boxes, seed),
                              lambda: ablation_means(model, ref, cache=self.cache))

    def _circuit_inputs(self, model, circuit, n, n_boxes, seed):
        """The loaded model, the circuit, the prompts and the mean-ablation prompts a circuit metric needs."""
        model = self.model(model)
        return (model, self.circuit(circuit), self.dataset(model, n=n, n_boxes=n_boxes, seed=seed),
                self.reference(model, n=n, n_boxes=n_boxes, seed=seed))

    def faithfulness(self, model, *, circuit, n: int | None = None, seed: int = 0, n_boxes: int | None = None):
        """Circuit accuracy / model accuracy under mean ablation, with a bootstrap interval."""
        model, circ, data, ref = self._circuit_inputs(model, circuit, n, n_boxes, seed)

        def compute():
            from mechtest.methods.evaluation import faithfulness

            return faithfulness(model, circ, data, ref, seed=seed, cache=self.cache)

        return self._memoised(("faithfulness", model.name, _circuit_key(circ), len(data), data.n_boxes, seed),
                              compute)

    def random_circuit_faithfulness(self, model, *, circuit, n_draws: int = 10, n: int | None = None,
                                    seed: int = 0, n_boxes: int | None = None):
        """Mean faithfulness of random circuits with the circuit's group sizes."""
        model, circ, data, ref = self._circuit_inputs(model, circuit, n, n_boxes, seed)

        def compute():
            from mechtest.methods.evaluation import random_circuit_faithfulness

            return random_circuit_faithfulness(model, circ, data, ref, n_draws=n_draws, seed=seed,
                                               cache=self.cache)

        return self._memoised(("random", model.name, _circuit_key(circ), n_draws, len(data), data.n_boxes, seed),
                              compute)

    def completeness(self, model, *, circuit, mode: str = "random", n_draws: int = 10, n: int | None = None,
                     seed: int = 0, n_boxes: int | None = None):
        model, circ, data, ref = self._circuit_inputs(model, circuit, n, n_boxes, seed)

        def compute():
            from mechtest.methods.evaluation import completeness

            return completeness(model, circ, data, ref, mode=mode, n_draws=n_draws, seed=seed, cache=self.cache)

        return self._memoised(("completeness", model.name, _circuit_key(circ), mode, n_draws, len(data),
                               data.n_boxes, seed), compute)

    def path_patching(self, model, *, n: int | None = None, seed: int = 0, n_boxes: int | None = None,
                      receivers: dict[str, int] | None = None):
        """The four path-patching steps (scores of every head), stored in the activation cache."""
        model = self.model(model)
        base = self.dataset(model, n=n, n_boxes=n_boxes, seed=seed)
        recv = self._receivers(model, receivers)

        def compute():
            from mechtest.methods.path_patching import PathPatchingResult, Step, StepResult, path_patching
            from mechtest.tasks.entity_tracking import path_patching_corruption

            def run():
                corrupt = path_patching_corruption(base, model.tokenizer, seed=seed + 1)
                result = path_patching(model, base, corrupt, receivers=recv, seed=seed, progress=False)
                return {g: s.scores.float().cpu() for g, s in result.steps.items()}

            key = self.cache.key(fingerprint=model.fingerprint, inputs=base.input_ids, site="path_patching",
                                 dtype=model.dtype, extra={"receivers": recv, "seed": seed})
            scores = self.cache.get_or_compute(key, run)
            result = PathPatchingResult()
            plan = {"value_fetcher": ("last", None, None), "pos_transmitter": ("last", "value_fetcher", "q"),
                    "pos_detector": ("query_label", "pos_transmitter", "v"),
                    "struct_reader": ("query_context", "pos_detector", "v")}
            for group, (position, previous, site) in plan.items():
                if group not in scores:
                    continue
                recv_heads = tuple(result.steps[previous].top(recv[group])) if previous else ()
                result.steps[group] = StepResult(Step(group, position, recv_heads, site), scores[group],
                                                 len(base), seed)
            return result

        return self._memoised(("path_patching", model.name, len(base), base.n_boxes, seed,
                               tuple(sorted(recv.items()))), compute)

    def compare(self, base, candidate, *, n: int | None = None, seed: int = 0,
                n_boxes: int | None = None):
        """Does ``candidate`` keep ``base``'s mechanism? (``mechtest.methods.compare``)."""
        try:
            from mechtest.methods import compare as compare_module
        except ImportError as e:
            raise MechtestError(
                "base-vs-candidate comparison (mechtest.methods.compare) is not available in this installation "
                f"yet ({e}); verdict claims cannot run") from None
        import inspect

        base_model, cand_model = self.model(base), self.model(candidate)
        fn = compare_module.compare
        params = inspect.signature(fn).parameters
        offered = {"n_prompts": self._n(n), "seed": seed, "n_boxes": n_boxes or self.n_boxes(base_model),
                   "cache": self.cache, "progress": False}
        kwargs = {k: v for k, v in offered.items() if k in params}
        key = ("compare", base_model.name, cand_model.name,
               tuple(sorted((k, v) for k, v in kwargs.items() if k != "cache")))
        self.seeds.add(seed)
        return self._memoised(key, lambda: fn(base_model, cand_model, **kwargs))

    def dcm(self, model, *, circuit, group: str, desideratum: str, n: int | None = None, seed: int = 0,
            n_boxes: int | None = None):
        """Desiderata-based masking: which heads of ``circuit``'s ``group`` carry ``desideratum``.

        ``n`` training pairs, ``n // 2`` validation and test pairs."""
        model = self.model(model)
        circ = self.circuit(circuit)
        n, n_boxes = self._n(n), n_boxes or self.n_boxes(model)
        dcm_module = self._optional_method("dcm", "DCM")
        self.seeds.add(seed)
        return self._memoised(
            ("dcm", model.name, _circuit_key(circ), group, desideratum, n, n_boxes, seed),
            lambda: dcm_module.dcm(model, circ, group, desideratum, n_boxes=n_boxes, n_train=n,
                                   n_val=max(1, n // 2), n_test=max(1, n // 2), seed=seed, progress=False))

    def cmap(self, model, *, source, circuit=None, group: str | None = None, n: int | None = None, seed: int = 0,
             n_boxes: int | None = None):
        """Cross-model activation patching: ``model``'s accuracy with ``source``'s head outputs patched in
        (every head, or ``circuit``'s nodes, or one ``group`` of them)."""
        model, donor = self.model(model), self.model(source)
        circ = None if circuit is None else self.circuit(circuit)
        data = self.dataset(model, n=n, n_boxes=n_boxes, seed=seed)
        cmap_module = self._optional_method("cmap", "CMAP")
        return self._memoised(
            ("cmap", model.name, donor.name, None if circ is None else _circuit_key(circ), group, len(data),
             data.n_boxes, seed),
            lambda: cmap_module.cmap(model, donor, data, circuit=circ, group=group, seed=seed, progress=False))

    def knockout(self, model, *, edge: str = "last->object", layers=None, n: int | None = None, seed: int = 0,
                 n_boxes: int | None = None):
        """Attention knockout: accuracy with ``edge`` blocked from each start layer on (a ``KnockoutCurve``)."""
        model = self.model(model)
        data = self.dataset(model, n=n, n_boxes=n_boxes, seed=seed)
        knockout_module = self._optional_method("knockout", "attention knockout")
        layers = None if layers is None else tuple(layers)
        return self._memoised(
            ("knockout", model.name, edge, layers, len(data), data.n_boxes, seed),
            lambda: knockout_module.attention_knockout(model, data, edge, start_layers=layers, seed=seed,
                                                       progress=False))

    def _optional_method(self, module: str, what: str):
        import importlib

        try:
            return importlib.import_module(f"mechtest.methods.{module}")
        except ImportError as e:
            raise MechtestError(f"{what} (mechtest.methods.{module}) is not available in this installation yet "
                                f"({e})") from None

    # ----------------------------------------------------------------------------------------- claims

    def evaluate(self, claim: Claim, model_name: str, nodeid: str = "") -> ClaimResult:
        """Measure a claim on one model and check its expectation (never raises for a failed claim)."""
        n = self._n(claim.n_prompts)
        seed = claim.seed
        self.seeds.add(seed)
        result = ClaimResult(id=claim.id, model=model_name, metric=claim.metric, value=None, ci_low=None,
                             ci_high=None, expect=str(claim.expect), passed=False, nodeid=nodeid,
                             n_prompts=n, seed=seed)
        circuit_for_map = None
        try:
            model = self.model(model_name)
            n_boxes = claim.n_boxes or self.n_boxes(model)
            result.n_boxes = n_boxes
            if claim.get("circuit") is not None and not claim.get("circuit").startswith("discovered:"):
                circuit_for_map = self.circuit(claim.get("circuit"))
            value, measurement = self._measure(claim, model, n=n, seed=seed, n_boxes=n_boxes, result=result)
            if measurement is not None:
                result.value, result.ci_low, result.ci_high = (measurement.value, measurement.ci_low,
                                                               measurement.ci_high)
                result.n_prompts = measurement.n_prompts
                result.extra = {k: v for k, v in measurement.details.items()
                                if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
            else:
                result.value = value
            circuit_for_map = circuit_for_map or getattr(result, "_map_circuit", None)
            if claim.metric != "path_patching":
                result.passed = claim.expect.check(result.value)
        except MechtestError as e:
            result.error = f"{type(e).__name__}: {e}"
            result.passed = False
        if self.settings.report_dir is not None and (claim.metric == "path_patching" or not result.passed):
            result.heatmap = self._heatmap(claim, model_name, circuit_for_map, n, seed, result)
        self.results.append(result)
        return result

    def _measure(self, claim: Claim, model, *, n, seed, n_boxes, result: ClaimResult):
        metric, circuit = claim.metric, claim.get("circuit")
        common = {"n": n, "seed": seed, "n_boxes": n_boxes}
        if circuit is not None and circuit.startswith("discovered:"):
            circuit = self.circuit(circuit, n=n, seed=seed)  # discovered with the claim's sample
        if metric == "accuracy":
            return None, self.accuracy(model, circuit=circuit, **common)
        if metric == "faithfulness":
            return None, self.faithfulness(model, circuit=circuit, **common)
        if metric == "random_circuit_faithfulness":
            return None, self.random_circuit_faithfulness(model, circuit=circuit,
                                                          n_draws=claim.get("n_draws", 10), **common)
        if metric == "completeness":
            return None, self.completeness(model, circuit=circuit, mode=claim.get("mode", "random"),
                                           n_draws=claim.get("n_draws", 10), **common)
        if metric == "path_patching":
            return self._snapshot_claim(claim, model, result, **common), None
        if metric == "verdict":
            comparison = self.compare(claim.get("base"), model, **common)
            verdict = str(getattr(comparison, "verdict", comparison))
            result._map_circuit = getattr(comparison, "base_circuit", None)  # outlined on the heat map
            explain = getattr(comparison, "explain", None)
            result.detail = explain() if callable(explain) else ""
            as_dict = getattr(comparison, "to_dict", None)
            if callable(as_dict):
                result.extra = {k: v for k, v in as_dict().items() if isinstance(v, (int, float, str, bool))}
            return verdict, None
        if metric == "dcm":
            found = self.dcm(model, circuit=circuit, group=claim.get("group"), desideratum=claim.get("desideratum"),
                             **common)
            result.detail = found.explain()
            if claim.get("quantity", "accuracy") == "selected_fraction":
                return len(found.selected) / max(1, len(found.heads)), None
            return None, found.test
        if metric == "cmap_accuracy":
            group = claim.get("group")
            return None, self.cmap(model, source=claim.get("source"), circuit=circuit,
                                   group=None if group == "full" else group, **common)
        if metric == "knockout_accuracy":
            curve = self.knockout(model, edge=claim.get("edge", "last->object"), layers=(claim.get("layer", 0),),
                                  **common)
            result.detail = curve.explain()
            return None, curve.at(claim.get("layer", 0))
        raise MechtestError(f"metric {metric!r} has no evaluator")  # unreachable: claims validate metrics

    def _snapshot_claim(self, claim: Claim, model, result: ClaimResult, *, n, seed, n_boxes) -> str:
        """Compare the path-patching scores with the claim's snapshot file (or write it on --snapshot-update)."""
        from mechtest.snapshots import ATOL, RTOL, compare_text, dumps, to_payload

        scores = self.path_patching(model, n=n, seed=seed, n_boxes=n_boxes, receivers=claim.get("receivers"))
        payload = to_payload(scores)
        if claim.get("group"):
            payload["steps"] = {claim.get("group"): payload["steps"][claim.get("group")]}
        payload["n_boxes"] = n_boxes
        text = dumps(payload)
        path = snapshot_path(claim, model.name)
        rtol = claim.get("rtol", RTOL)
        atol = claim.get("atol", claim.get("tolerance", ATOL))
        result.extra = {"snapshot": str(path)}
        if self.settings.update_snapshots:
            if not path.is_file() or compare_text(text, path.read_text(), rtol=rtol, atol=atol) is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                result.detail = f"snapshot written: {path}"
            result.passed = True
            return "updated"
        if not path.is_file():
            obtained = path.with_suffix(".obtained.json")
            obtained.parent.mkdir(parents=True, exist_ok=True)
            obtained.write_text(text)
            result.detail = (f"no snapshot at {path}; the obtained scores were written to {obtained}. "
                             "Run with --snapshot-update to accept them.")
            return "no snapshot"
        expected = path.read_text()
        try:
            recorded = json.loads(expected)
        except json.JSONDecodeError:
            recorded = {}
        if recorded.get("n_prompts") not in (None, n) or recorded.get("seed") not in (None, seed):
            _skip(f"snapshot {path.name} was recorded with n_prompts={recorded.get('n_prompts')}, "
                  f"seed={recorded.get('seed')}; this run uses n_prompts={n}, seed={seed} "
                  "(--mechtest-prompts): not comparable")
        mismatch = compare_text(text, expected, rtol=rtol, atol=atol)
        if mismatch is None:
            result.passed = True
            return "matches"
        obtained = path.with_suffix(".obtained.json")
        obtained.write_text(text)
        result.detail = f"snapshot {path}:\n" + "\n".join(mismatch.lines()) + \
            f"\nobtained scores: {obtained} (--snapshot-update accepts them)"
        return "differs"

    def _heatmap(self, claim: Claim, model_name: str, circuit, n: int, seed: int, result: ClaimResult):
        from mechtest.report import heatmap

        try:
            model = self.model(model_name)
            scores = self.path_patching(model, n=n, seed=seed, n_boxes=result.n_boxes,
                                        receivers=claim.get("receivers"))
            path = self.settings.report_dir / f"{safe_name(claim.id)}[{safe_name(model_name)}].png"
            heatmap({g: s.scores.numpy() for g, s in scores.steps.items()}, path,
                    title=f"{claim.id} on {model_name}: path-patching scores (n={n}, seed={seed})",
                    circuit=circuit)
            return str(path)
        except (MechtestError, ImportError, OSError) as e:
            return f"not written ({type(e).__name__}: {e})"

    def record_skip(self, claim: Claim, model_name: str, nodeid: str, reason: str) -> None:
        self.skipped.append({"id": claim.id, "model": model_name, "nodeid": nodeid, "reason": reason})

    # ----------------------------------------------------------------------------------------- xdist

    def to_worker_output(self) -> str:
        return json.dumps({"results": [r.to_dict() for r in self.results], "skipped": self.skipped,
                           "models": self.fingerprints, "seeds": sorted(self.seeds),
                           "cache": self.cache_stats()})

    def merge_worker_output(self, text: str) -> None:
        data = json.loads(text)
        self.results += [ClaimResult.from_dict(d) for d in data["results"]]
        self.skipped += data["skipped"]
        self.fingerprints.update(data["models"])
        self.seeds.update(data["seeds"])
        self.worker_cache_stats.append(data["cache"])

    def total_cache_stats(self) -> dict:
        total = self.cache_stats()
        for stats in self.worker_cache_stats:
            for k, v in stats.items():
                total[k] = total.get(k, 0) + v
        return total


def snapshot_path(claim: Claim, model_name: str) -> Path:
    """``<claim file dir>/__snapshots__/<claim file stem>/<claim id>[<model>].json`` (syrupy's layout)."""
    stem = claim.path.name.removesuffix(".toml")
    return claim.path.parent / "__snapshots__" / stem / f"{safe_name(claim.id)}[{safe_name(model_name)}].json"


def _circuit_key(circuit) -> tuple:
    return (circuit.name, tuple((g, tuple(circuit.heads(g))) for g in sorted(circuit.groups)))


def _skip(reason: str):
    import pytest

    raise pytest.skip.Exception(reason, _use_item_location=True)
