"""Progress reporting: the core never prints (house style, after LiberTEM ``common/progress``).

Long-running work takes a :class:`Reporter` and calls ``start`` / ``update`` / ``end``. The CLI
passes a rich progress bar, tests pass :class:`NullReporter` (or a recording one), and a plain
log-line reporter serves non-interactive runs.
"""
from __future__ import annotations

import logging
import time
from typing import Protocol

__all__ = ["Reporter", "NullReporter", "LogReporter", "RichReporter"]


class Reporter(Protocol):
    def start(self, total: int, description: str) -> None: ...
    def update(self, advance: int = 1, **state: object) -> None: ...
    def end(self) -> None: ...


class NullReporter:
    """Reports nothing."""

    def start(self, total: int, description: str) -> None:
        pass

    def update(self, advance: int = 1, **state: object) -> None:
        pass

    def end(self) -> None:
        pass


class LogReporter:
    """A log line every ``every_s`` seconds (for ``--no-dashboard`` and non-TTY output)."""

    def __init__(self, logger: logging.Logger | None = None, every_s: float = 5.0):
        self.log = logger or logging.getLogger("btomo")
        self.every_s = every_s

    def start(self, total: int, description: str) -> None:
        self.total, self.done, self.desc = total, 0, description
        self.t0 = self._last = time.monotonic()

    def update(self, advance: int = 1, **state: object) -> None:
        self.done += advance
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            rate = self.done / max(now - self.t0, 1e-9)
            info = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in state.items())
            self.log.info("%s: %d/%s (%.1f/s) %s", self.desc, self.done, self.total or "?", rate, info)

    def retotal(self, total: int) -> None:
        self.total = total

    def end(self) -> None:
        dt = time.monotonic() - self.t0
        self.log.info("%s: %d/%s done in %.1f s", self.desc, self.done, self.total or "?", dt)


class RichReporter:
    """A rich progress bar with rate and ETA (written to stderr)."""

    def __init__(self, console=None, unit: str = "frames"):
        self.unit = unit
        from rich.progress import (  # noqa: PLC0415 - rich only where a bar is shown
            BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
            TimeElapsedColumn, TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
        )

    def start(self, total: int | None, description: str) -> None:
        self._t0 = time.monotonic()
        self._done = 0
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, rate="", info="")

    def update(self, advance: int = 1, **state: object) -> None:
        self._done += advance
        rate = self._done / max(time.monotonic() - self._t0, 1e-9)
        info = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in state.items())
        self._progress.update(self._task, advance=advance, rate=f"{rate:6.1f} {self.unit}/s", info=info)

    def retotal(self, total: int) -> None:
        """The work turned out to be ``total`` items (e.g. a time limit shortened it)."""
        self._progress.update(self._task, total=total)

    def end(self) -> None:
        self._progress.stop()
