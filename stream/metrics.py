"""``metrics.jsonl``: what a long ``btomo live`` session looks like over time.

Every ``stream.metrics_every_s`` seconds a thread appends one JSON line to ``metrics.jsonl`` in
the run directory: the ingest counters, the queue, latency percentiles over that interval only
(acquisition -> processed, read off the difference of two histograms), the process's resident
memory, threads, open file descriptors and CPU time, the memory of its child processes (the
Dask workers), and the reconstruction jobs per state. It reads counters under their locks and
never touches the frame loop. A line is ~0.6 kB: ~200 kB an hour at the default 10 s.
``tools/soak.py`` judges memory growth, leaks and latency stability from it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

log = logging.getLogger(__name__)

__all__ = ["process_stats", "MetricsWriter", "read_metrics"]


def process_stats(proc: psutil.Process | None = None) -> dict[str, Any]:
    """Resident memory (MiB), OS threads, open file descriptors and CPU time (user + system, s)
    of ``proc`` (this process by default), and the resident memory of all its descendants (MiB)."""
    proc = proc or psutil.Process()
    with proc.oneshot():
        cpu = proc.cpu_times()
        out = {"rss_mb": proc.memory_info().rss / 2**20, "threads": proc.num_threads(),
               "fds": proc.num_fds() if hasattr(proc, "num_fds") else None, "cpu_s": cpu.user + cpu.system}
    children = 0.0
    for child in proc.children(recursive=True):
        try:
            children += child.memory_info().rss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # gone between listing and reading
            pass
    out["children_rss_mb"] = children
    return out


class MetricsWriter:
    """A daemon thread appending a line to ``path`` every ``every_s`` seconds until :meth:`close`
    (which writes a last line).

    Parameters
    ----------
    path : Path
        The ``metrics.jsonl`` file (appended to).
    every_s : float
        Interval, s.
    counters : IngestCounters
        The live ingest counters.
    jobs : callable, optional
        Returns the reconstruction jobs per state (or None when there are none).
    """

    def __init__(self, path: Path, every_s: float, counters: Any, jobs: Callable[[], Any] | None = None):
        self.path, self.every_s, self.counters, self.jobs = path, every_s, counters, jobs
        self._t0 = time.monotonic()
        self._latency = None  # histogram counts at the previous line
        self._prev_processed = 0
        self._prev_t = self._t0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="btomo-metrics", daemon=True)

    def start(self) -> "MetricsWriter":
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.write()
        self.write()

    def line(self) -> dict[str, Any]:
        """The next line's numbers (and the state that the one after is measured from)."""
        c = self.counters
        now = time.monotonic()
        snap = c.snapshot()
        lat, self._latency = c.latency_since(self._latency)
        interval = lat.summary()
        rate = (snap["frames_processed"] - self._prev_processed) / max(now - self._prev_t, 1e-9)
        self._prev_processed, self._prev_t = snap["frames_processed"], now
        out = {"t_s": round(now - self._t0, 3), "wall_time": time.time(),
               "frames_accepted": snap["frames_accepted"], "frames_processed": snap["frames_processed"],
               "fps": round(rate, 2), "frames_dropped": snap["frames_dropped"], "frame_gaps": snap["frame_gaps"],
               "messages_malformed": snap["messages_malformed"], "queue_depth": snap["queue_depth"],
               "queue_high_water": snap["queue_high_water"],
               "latency_ms": {k: interval[k] for k in ("count", "p50_ms", "p99_ms", "max_ms") if k in interval},
               **process_stats(), "py_threads": threading.active_count()}
        if self.jobs is not None:
            try:
                out["jobs"] = self.jobs()
            except Exception:  # noqa: BLE001 - metrics never stop the run
                log.debug("metrics: jobs unavailable", exc_info=True)
        return out

    def write(self) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(self.line()) + "\n")
        except Exception:  # noqa: BLE001 - a full disk or a bug here must not stop the stream
            log.warning("metrics: could not write %s", self.path, exc_info=True)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` (a torn last line, from a crash, is skipped)."""
    out = []
    for raw in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(raw))
        except json.JSONDecodeError:
            log.warning("%s: skipped a torn line", path)
    return out
