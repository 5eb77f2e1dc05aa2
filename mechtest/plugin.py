"""pytest11 entry point of mechtest: options, claim-file collection, fixtures, reports.

Thin on purpose (syrupy's structure): hooks delegate to the façade :class:`~mechtest.api.Mechtest` and a
:class:`~mechtest.report.RunLog`, both kept in ``config.stash``; claims are measured by
:func:`~mechtest.runner.run_claim`; xdist support is a separate object registered only when xdist is
active, which merges the workers' claim results on the controller. Nothing heavy is imported here: torch, transformers and
matplotlib load only inside the fixtures and items that need them.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from pathlib import Path

import pytest

from mechtest.api import Mechtest
from mechtest.claims import Claim, load_claims
from mechtest.errors import ClaimError, MechtestError, TokenizerError
from mechtest.metrics import get_metric
from mechtest.options import add_options, settings_from_config
from mechtest.report import ClaimResult, RunLog, json_report, provenance, summary_lines, write_json
from mechtest.tasks.base import DEFAULT_TASK

SESSION_KEY = pytest.StashKey[Mechtest]()
LOG_KEY = pytest.StashKey[RunLog]()


# ------------------------------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "mechtest_models(*names, all=False): parametrize the test's mechtest_model argument over these "
                   "configured models (all=True: every configured model); absent models are skipped")
    config.addinivalue_line("markers", "mechtest_claim: an item collected from a mechtest claim file")
    config.stash[SESSION_KEY] = Mechtest(settings_from_config(config), rootdir=config.rootpath)
    from mechtest import properties
    properties.bind(config.stash[SESSION_KEY])  # prompts("name") in @given resolves through this session
    config.stash[LOG_KEY] = RunLog()
    if _is_controller(config) and config.getoption("mechtest_clear_cache"):
        from mechtest.cache import ActivationCache

        ActivationCache(config.stash[SESSION_KEY].settings.cache_dir).clear()
    if config.pluginmanager.hasplugin("xdist") and _is_controller(config):
        config.pluginmanager.register(_XdistController(config.stash[LOG_KEY]), "mechtest-xdist")


def pytest_unconfigure(config: pytest.Config) -> None:
    from mechtest import progress, properties
    properties.unbind(config.stash.get(SESSION_KEY, None))
    progress.configure()


def _progress_reporter(config: pytest.Config):
    """The terminal reporter when per-claim progress should show (a terminal, not CI, not xdist), else None."""
    choice = config.getoption("mechtest_progress")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or choice == "no" or not _is_controller(config) or \
            getattr(config.option, "numprocesses", None) not in (None, 0):
        return None
    if choice == "yes" or (reporter.isatty and not os.environ.get("CI")):
        return reporter
    return None


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


# ------------------------------------------------------------------------------------------- collection


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix == ".toml" and any(fnmatch.fnmatch(file_path.name, pattern)
                                           for pattern in parent.config.getini("mechtest_claim_files")):
        return ClaimFile.from_parent(parent, path=file_path)
    return None


class ClaimFile(pytest.File):
    """A TOML file of ``[[claim]]`` tables: one item per claim x model; a malformed claim fails collection, and
    so does any other failure to read the file (a collection error naming the file and the cause)."""

    def collect(self):
        dirs = tuple(self.config.rootpath / d for d in self.config.getini("mechtest_circuit_dirs"))
        try:
            claims = load_claims(self.path, rootdir=self.config.rootpath, circuit_dirs=dirs)
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except ClaimError:
            raise
        except Exception as e:  # noqa: BLE001  (any cause becomes one collection error naming the file)
            raise ClaimError(f"{self.path}: cannot be read as a claim file: {type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else repr(e)}") from None
        self._check_vocabularies(claims)
        for claim in claims:
            pattern = re.compile(rf"""^\s*id\s*=\s*["']{re.escape(claim.id)}["']""")
            lineno = next((i for i, line in enumerate(lines) if pattern.match(line)), 0)
            for model in claim.models:
                yield ClaimItem.from_parent(self, name=f"{claim.id}[{model}]", claim=claim, model_name=model,
                                            lineno=lineno)

    def _check_vocabularies(self, claims) -> None:
        """A task word that is not one known token for a configured model fails collection (naming the task,
        slot and word); a model whose tokenizer cannot be read here is left to the run to report."""
        api = self.config.stash[SESSION_KEY]
        for claim in claims:
            for model in claim.models if claim.task != DEFAULT_TASK else ():
                try:
                    if api.is_configured(model):
                        api.check_vocabulary(claim.task, model)
                except TokenizerError as e:
                    raise ClaimError(f"{claim.where()}: field 'task': on model {model!r}: {e}") from None
                except MechtestError:
                    continue

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, ClaimError):
            return f"ClaimError: {excinfo.value}"
        return super().repr_failure(excinfo)


class ClaimFailed(Exception):
    def __init__(self, result: ClaimResult) -> None:
        super().__init__(result.failure_text())
        self.result = result


class ClaimItem(pytest.Item):
    """One claim on one model."""

    def __init__(self, *, claim: Claim, model_name: str, lineno: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.claim = claim
        self.model_name = model_name
        self.lineno = lineno
        self.add_marker(pytest.mark.mechtest_claim)
        self.keywords[claim.metric] = True

    def setup(self) -> None:
        api, log = self.config.stash[SESSION_KEY], self.config.stash[LOG_KEY]
        for name in [self.model_name, *get_metric(self.claim.metric).models_needed(self.claim.params)]:
            if not api.is_configured(name):
                reason = api.models.skip_reason(name)
                log.record_skip(self.claim, self.model_name, self.nodeid, reason)
                raise pytest.skip.Exception(reason, _use_item_location=True)

    def runtest(self) -> None:
        from mechtest.runner import run_claim

        started = time.perf_counter()
        reporter = _progress_reporter(self.config)
        if reporter is not None:
            from mechtest.plan import plan_rows, row_summary

            row = plan_rows(self.config.stash[SESSION_KEY], [self])[0]
            reporter.write_line(f"mechtest: {self.claim.id}[{self.model_name}]: {row_summary(row)}")
        result, raised = run_claim(self.config.stash[SESSION_KEY], self.claim, self.model_name, self.nodeid)
        if reporter is not None:
            reporter.write_line(f"mechtest: {self.claim.id}[{self.model_name}]: {result.outcome} in "
                                f"{time.perf_counter() - started:.1f} s")
        self.config.stash[LOG_KEY].results.append(result)
        self.user_properties.extend(result.properties())
        if raised is not None:
            raise raised
        if result.outcome == "INCONCLUSIVE" and not result.passed and (
                self.config.getoption("mechtest_inconclusive") or self.claim.inconclusive) == "xfail":
            pytest.xfail(result.failure_text())
        if not result.passed:
            raise ClaimFailed(result)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ClaimFailed):
            return str(excinfo.value)
        if isinstance(excinfo.value, MechtestError):
            return f"{type(excinfo.value).__name__}: {excinfo.value}"
        if self.config.getoption("tbstyle", "auto") == "long" or self.config.getoption("fulltrace", False) \
                or not isinstance(excinfo.value, Exception):
            return super().repr_failure(excinfo, style)
        from mechtest.report.failure import claim_error_text

        return claim_error_text(self.claim, self.model_name, excinfo.value)

    def reportinfo(self):
        return self.path, self.lineno, f"{self.claim.id} [{self.model_name}] ({self.claim.metric})"


# ------------------------------------------------------------------------------------------- Python API


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("mechtest_models")
    if marker is None or "mechtest_model" not in metafunc.fixturenames:
        return
    session = metafunc.config.stash[SESSION_KEY]
    names = list(marker.args)
    if marker.kwargs.get("all"):
        names = names + [n for n in session.model_names if n not in names]
    if not names:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.mechtest_models needs model names "
                                "or all=True")
    metafunc.parametrize("mechtest_model", names, indirect=True, ids=names)


@pytest.fixture(scope="session")
def mechtest(request: pytest.FixtureRequest) -> Mechtest:
    """Models, datasets, circuits and method results by name, memoised for the session."""
    return request.config.stash[SESSION_KEY]


@pytest.fixture
def mechtest_model(request: pytest.FixtureRequest, mechtest: Mechtest):
    """The loaded model a ``@pytest.mark.mechtest_models(...)`` parameter names (skipped if not configured)."""
    name = getattr(request, "param", None)
    if name is None:
        pytest.fail("the mechtest_model fixture needs @pytest.mark.mechtest_models('name', ...) on the test",
                    pytrace=False)
    return mechtest.model(name)


@pytest.fixture
def head_snapshot(snapshot):
    """syrupy's ``snapshot`` with mechtest's head-level extension (rounded JSON, rtol/atol comparison)."""
    from mechtest.snapshots import HeadSnapshotExtension

    return snapshot.use_extension(HeadSnapshotExtension)


# ------------------------------------------------------------------------------------------- reports


def pytest_collection_finish(session: pytest.Session) -> None:
    """Remember the claims this run is to run (an interrupted run lists those it never reached); with
    --snapshot-update, check every snapshot folder it will write into before any work."""
    items = [i for i in session.items if isinstance(i, ClaimItem)]
    session.config.stash[LOG_KEY].collected += [i.nodeid for i in items]
    if session.config.stash[SESSION_KEY].settings.update_snapshots:
        from mechtest.metrics.path_patching import snapshot_path
        from mechtest.preflight import check_snapshot_dirs

        try:
            check_snapshot_dirs(snapshot_path(i.claim, i.model_name).parent for i in items
                                if i.claim.metric == "path_patching")
        except MechtestError as e:
            raise pytest.UsageError(str(e)) from None


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session):
    """With --mechtest-plan: print the cost plan of the collected claims and run nothing. Otherwise, before a
    serial run, one line with the forward passes the claims will take."""
    config = session.config
    from mechtest import progress
    shown = _progress_reporter(config)  # long steps' lines: through the reporter past the capture, or nowhere
    progress.configure("yes" if shown else "no", sink=shown and progress.pytest_sink(config, shown),
                       tty=bool(shown and shown.isatty))
    items = [i for i in session.items if isinstance(i, ClaimItem)]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if not items or reporter is None or not _is_controller(config) or getattr(config.option, "collectonly", False):
        return None
    from mechtest.plan import plan_lines, plan_rows, plan_summary

    if config.getoption("mechtest_plan"):
        reporter.section("mechtest plan")
        for line in plan_lines(plan_rows(config.stash[SESSION_KEY], items, loads=True)):
            reporter.write_line(line)
        return True
    if getattr(config.option, "numprocesses", None) in (None, 0):
        rows = plan_rows(config.stash[SESSION_KEY], items, timed=False)
        reporter.write_line(plan_summary(rows, estimate=False) + " (--mechtest-plan for a time estimate)")
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    config = session.config
    api, log = config.stash.get(SESSION_KEY, None), config.stash.get(LOG_KEY, None)
    if api is None or log is None:
        return
    log.absorb(api)
    log.interrupted = exitstatus == pytest.ExitCode.INTERRUPTED or bool(session.shouldstop or session.shouldfail)
    if not _is_controller(config):
        config.workeroutput["mechtest"] = log.to_worker_output()
        return
    path = config.getoption("mechtest_json")
    if path:
        data = json_report(log.results, log.skipped, provenance(
            rootdir=config.rootpath, models=log.models, seeds=log.seeds, cache_stats=log.cache_stats(),
            options={"prompts": api.settings.prompts, "device": api.settings.device, "dtype": api.settings.dtype,
                     "cache_dir": str(api.settings.cache_dir)}), interrupted=log.interrupted, not_run=log.not_run())
        write_json(Path(path), data)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    log = config.stash.get(LOG_KEY, None)
    if log is None or not _is_controller(config) or config.getoption("mechtest_plan") or \
            getattr(config.option, "collectonly", False) or not (log.results or log.skipped or log.not_run()):
        return
    terminalreporter.section("mechtest claims")
    for line in summary_lines(log.results, log.skipped, interrupted=log.interrupted, not_run=log.not_run()):
        terminalreporter.write_line(line)
    path = config.getoption("mechtest_json")
    if path:
        terminalreporter.write_line(f"JSON report: {os.path.abspath(path)}")
    maps = sorted(r.heatmap for r in log.results if r.heatmap and r.heatmap.endswith(".png"))
    if maps:
        terminalreporter.write_line(f"heat maps: {len(maps)} in {config.stash[SESSION_KEY].settings.report_dir}")


class _XdistController:
    """Registered on the xdist controller only: merges each worker's claim results when it finishes."""

    def __init__(self, log: RunLog) -> None:
        self.log = log

    @pytest.hookimpl
    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        """The claims the workers collected (the controller collects nothing itself)."""
        patterns = node.config.getini("mechtest_claim_files")
        claims = [i for i in ids if any(fnmatch.fnmatch(Path(i.split("::")[0]).name, p) for p in patterns)]
        self.log.collected = sorted(set(self.log.collected) | set(claims))

    @pytest.hookimpl
    def pytest_testnodedown(self, node, error) -> None:
        output = getattr(node, "workeroutput", {}).get("mechtest")
        if output:
            self.log.merge_worker_output(output)
