"""One updating terminal line for every long step (loading, path patching, CMAP, evaluation), even under pytest.

A step shows nothing for its first ``delay`` seconds (short steps stay silent), then one line with its
count, elapsed time and an estimate of what is left. Where it goes is set once per run: ``configure(mode,
sink=)``; the pytest plugin passes a sink that writes through the terminal reporter with capture suspended.
``auto`` writes to the terminal's stderr only when it is a TTY and ``CI`` is unset; ``yes`` always; ``no`` never.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator

DELAY_ENV = "MECHTEST_PROGRESS_DELAY"  # seconds a step runs before its line shows (default 2)
_state: dict = {"mode": "auto", "sink": None, "tty": None, "beating": None}


def configure(mode: str = "auto", *, sink: Callable[[str], None] | None = None, tty: bool | None = None) -> None:
    """``mode``: auto | yes | no; ``sink``: writes text (default: the terminal's stderr); ``tty``: whether the
    sink is a terminal (lines are rewritten in place there, printed whole elsewhere)."""
    if mode not in ("auto", "yes", "no"):
        raise ValueError(f"progress mode must be auto, yes or no, got {mode!r}")
    _state.update(mode=mode, sink=sink, tty=tty)


def pytest_sink(config, reporter) -> Callable[[str], None]:
    """Writes through pytest's terminal reporter with output capture suspended, so it shows during a test."""
    capman = config.pluginmanager.getplugin("capturemanager")

    def write(text: str) -> None:
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            reporter.ensure_newline()
            reporter.write(text, flush=True)
    return write


def _delay() -> float:
    try:
        return float(os.environ.get(DELAY_ENV, 2.0))
    except ValueError:
        return 2.0


def _writer() -> tuple[Callable[[str], None], bool] | None:
    stream = sys.__stderr__
    tty = _state["tty"] if _state["tty"] is not None else bool(stream is not None and stream.isatty())
    if _state["mode"] == "no" or _state["mode"] == "auto" and (not tty or os.environ.get("CI")):
        return None
    sink = _state["sink"]
    if sink is None:
        if stream is None:
            return None

        def sink(text: str) -> None:
            stream.write(text)
            stream.flush()
    return sink, tty


class Line:
    """The line of one step: shown once the step has run ``delay`` seconds, rewritten at most twice a second."""

    def __init__(self, desc: str, total: int | None = None) -> None:
        self.desc, self.total, self.done = desc, total, 0
        self.start, self._last = time.perf_counter(), float("-inf")
        self.shown = False
        self._out = _writer()

    def update(self, done: int | None = None) -> None:
        self.done = self.done + 1 if done is None else done
        now = time.perf_counter()
        if self._out is None or now - self.start < _delay() or now - self._last < (0.5 if self._out[1]
                                                                                          else 10.0):
            return
        self._last = now
        self._emit(self.text(now - self.start))

    def text(self, elapsed: float) -> str:
        count = f" {self.done}/{self.total}" if self.total else ""
        left = ""
        if self.total and 0 < self.done < self.total:
            left = f", ~{duration(elapsed / self.done * (self.total - self.done))} left"
        return f"mechtest: {self.desc}{count} {duration(elapsed)}{left}"

    def close(self) -> None:
        if self.shown:
            elapsed = time.perf_counter() - self.start
            self._emit(f"mechtest: {self.desc} done in {duration(elapsed)}", end=True)

    def _emit(self, text: str, end: bool = False) -> None:
        sink, tty = self._out
        self.shown = True
        sink(f"\r{text}\x1b[K" + ("\n" if end else "") if tty else text + "\n")


def steps(iterable: Iterable, desc: str, total: int | None = None) -> Iterator:
    """Iterate, with a progress line for ``desc`` counting items of ``total``."""
    line = Line(desc, total)
    try:
        for i, item in enumerate(iterable):
            yield item
            line.update(i + 1)
    finally:
        line.close()


@contextlib.contextmanager
def heartbeat(desc: str, every: float = 1.0):
    """A line with the elapsed time while a step of unknown length runs (e.g. dequantising a GGUF); inside
    another heartbeat, that one's line names this step instead of a second line."""
    outer = _state.get("beating")
    if outer is not None:
        before, outer.desc = outer.desc, f"{outer.desc}: {desc}"
        try:
            yield outer
        finally:
            outer.desc = before
        return
    line = Line(desc)
    line.update(0)  # shows at once only when the delay is 0
    _state["beating"] = line
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            line.update(0)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield line
    finally:
        stop.set()
        thread.join()
        _state["beating"] = None
        line.close()


def duration(seconds: float) -> str:
    """Seconds for people: "0.4 s", "42 s", "3 min 05 s", "1.5 h"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds / 3600:.1f} h"
