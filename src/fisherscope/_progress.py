"""Progress of long stages: opt-in, one module for the whole library.

Library calls are silent unless asked. Inside ``with show_progress():`` (the command line
turns it on; a Python user opts in the same way) every stage that reports through
:func:`stage` or :func:`track` shows

- a rich progress bar on stderr when stderr is a terminal (nested stages as extra rows;
  finished top-level stages leave one line with their time),
- plain log lines otherwise (logger ``fisherscope.progress`` at INFO: when a stage starts,
  at most every :data:`LOG_EVERY_S` seconds while it runs, and when it ends), so CI logs
  and redirected runs still say what is happening,
- nothing with ``show_progress(False)`` (``--quiet``, ``Context(progress=False)``).

Stages advance per batch or per unit of work (an attack, a cell, a figure), never per
sample: the cost is one function call per batch while off, one bar update while on.

Examples
--------
>>> with show_progress(False):
...     total = sum(1 for _ in track(range(3), "counting"))
>>> total
3
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["LOG_EVERY_S", "MIN_LOG_S", "Stage", "progress_enabled", "show_progress", "stage", "track"]

log = logging.getLogger("fisherscope.progress")

#: seconds between two log lines of a running stage when stderr is not a terminal
LOG_EVERY_S = 10.0
#: nested stages shorter than this leave no log line
MIN_LOG_S = 1.0

T = TypeVar("T")


@dataclass
class _Display:
    """What ``show_progress`` switched on: a rich console (terminal) or log lines."""

    console: Any | None  # rich.console.Console when bars are drawn, else None (log lines)
    bars: Any | None = None  # the live rich.progress.Progress while a stage is open
    depth: int = 0


_DISPLAY: contextvars.ContextVar[_Display | None] = contextvars.ContextVar("fisherscope_progress", default=None)


def progress_enabled() -> bool:
    """Whether stages report now (inside ``show_progress(True)``)."""
    return _DISPLAY.get() is not None


@contextmanager
def show_progress(enabled: bool = True, *, console: Any | None = None) -> Iterator[None]:
    """Report the progress of the stages run inside the block.

    Parameters
    ----------
    enabled : bool
        ``False`` silences every stage inside (also those of an enclosing ``show_progress``);
        ``True`` inside an enclosing ``show_progress(True)`` joins its display.
    console : rich.console.Console, optional
        Where bars are drawn (default: a console on stderr). Bars are drawn when
        ``console.is_terminal``; otherwise stages write log lines to the
        ``fisherscope.progress`` logger at INFO (its level is lowered to INFO for the block
        when it would drop them).
    """
    if not enabled:
        token = _DISPLAY.set(None)
        try:
            yield
        finally:
            _DISPLAY.reset(token)
        return
    if _DISPLAY.get() is not None:  # already shown: the inner block joins the same display
        yield
        return
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    terminal = bool(console.is_terminal)
    token = _DISPLAY.set(_Display(console if terminal else None))
    old_level = log.level
    if not terminal and not log.isEnabledFor(logging.INFO):
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.setLevel(old_level)
        _DISPLAY.reset(token)


def _bars(display: _Display) -> Any:
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Count(ProgressColumn):  # "3/10"; nothing for a stage of unknown length (not "3/?")
        def render(self, task: Any) -> Text:
            return Text("" if task.total is None else f"{int(task.completed)}/{int(task.total)}",
                        style="progress.download")

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    Count(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=display.console, transient=True)


@dataclass
class Stage:
    """An open stage: call :meth:`advance` after each unit of work (a batch, a cell)."""

    description: str
    total: int | None = None
    completed: int = 0
    _display: _Display | None = field(default=None, repr=False)
    _task: Any = field(default=None, repr=False)
    _t0: float = field(default_factory=time.perf_counter, repr=False)
    _last_log: float = field(default_factory=time.perf_counter, repr=False)

    def advance(self, n: int = 1, *, description: str | None = None) -> None:
        """Count ``n`` more units done (and optionally rename the stage)."""
        self.completed += n
        if description is not None:
            self.description = description
        d = self._display
        if d is None:
            return
        if d.bars is not None:
            d.bars.update(self._task, advance=n, description=self.description)
            return
        now = time.perf_counter()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.info("%s: %s (%.1f s)", self.description, self._count(), now - self._t0)

    def _count(self) -> str:
        if self.total:
            return f"{self.completed}/{self.total} ({100 * self.completed / self.total:.0f}%)"
        return f"{self.completed} done"

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._t0


@contextmanager
def stage(description: str, total: int | None = None, *, keep: bool | None = None) -> Iterator[Stage]:
    """A named stage of ``total`` units (None: unknown), reported while progress is shown.

    Outside :func:`show_progress` the stage only counts (nothing is drawn or logged).
    ``keep``: a stage that matters on its own (a run, a cell): on a terminal it leaves a
    line with its time when its bar goes; in log lines its start and end are always
    logged. Default: only for stages not nested in another one. Other stages log their
    end only when they took :data:`MIN_LOG_S` or more (and, like every stage, a line
    every :data:`LOG_EVERY_S` while they run), so quick steps do not flood a log.
    """
    display = _DISPLAY.get()
    st = Stage(description, total, _display=display)
    if display is None:
        yield st
        return
    keep = display.depth == 0 if keep is None else keep
    if display.console is not None:
        if display.bars is None:
            display.bars = _bars(display)
            display.bars.start()
        st._task = display.bars.add_task(description, total=total)
    elif keep:
        log.info("%s: started%s", description, f" ({total} steps)" if total else "")
    display.depth += 1
    ok = False
    try:
        yield st
        ok = True
    finally:
        display.depth -= 1
        end = "done" if ok else "stopped"
        if display.bars is not None:
            display.bars.remove_task(st._task)
            if keep:
                display.bars.console.print(f"[dim]{end}[/] {st.description} ({st.elapsed_s:.1f} s)",
                                      highlight=False)
            if display.depth == 0:
                display.bars.stop()
                display.bars = None
        elif keep or not ok or st.elapsed_s >= MIN_LOG_S:
            count = f", {st.completed}/{total}" if total else (f", {st.completed} steps" if st.completed else "")
            log.info("%s: %s%s in %.1f s", st.description, end, count, st.elapsed_s)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` inside a :func:`stage`, one step per item (batches, not samples).

    ``total`` defaults to ``len(items)`` when it has one.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if _DISPLAY.get() is None:  # off: no stage bookkeeping at all
        yield from items
        return
    with stage(description, total) as st:
        for item in items:
            yield item
            st.advance()
