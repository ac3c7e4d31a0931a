"""The live dashboard at the microscope (``btomo live``, ``process``, ``demo``).

It answers at a glance: is the particle there, is the lattice showing, am I getting enough
directions, is the map coming. One screen, drawn by rich from its own refresh thread:

* **stream**: frames, ingest rate, latency (acquisition -> processed), queue depth, drops and
  malformed messages by reason, gaps;
* **particles**: per tracked particle its position, a sparkline of the lattice score (FFT peak)
  with the current threshold, the lattice fraction, the projected diameter and its trend, SNR;
* **window**: the selected particle's open window: lattice frames, coverage as a bar, and a map
  of the covered directions (latitude x longitude);
* **reconstruction jobs**: queued, running, done (atoms, FSC resolution), failed (reason);
* **analysis**: of the latest finished map: atoms, coordination, crystalline fraction, and the
  etch rate between the last two maps.

It never sits in the frame loop: the loop only counts (:meth:`Dashboard.update`) and the
per-frame stage hands each finished ``frames.csv`` row to :class:`ParticleHistory` (bounded
deques); everything else (ingest counters, the window stage, the jobs) is read when the screen is
drawn, about 4 times a second, whatever the frame rate. The display's own errors are logged and
never stop the pipeline.

Keys (when stdin is a terminal): ``q`` quits cleanly (the same path as Ctrl-C: the receiver
stops, the queue drains, windows and recordings are flushed), ``p`` pauses the display (the
pipeline goes on), ``n`` / ``tab`` and ``b`` switch between particles.
"""
from __future__ import annotations

import logging
import math
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["ParticleHistory", "Dashboard", "sparkline", "coverage_map_text"]

BLOCKS = " ▁▂▃▄▅▆▇█"
#: how long the queue line says "dropping oldest" after the last frame dropped for a full queue, s
DROP_SHOWN_S = 2.0


def sparkline(values: Any, width: int, lo: float | None = None, hi: float | None = None) -> str:
    """The last ``width`` values as block characters (NaN: a space), scaled to ``[lo, hi]``."""
    v = np.asarray(list(values)[-width:], dtype=np.float64)
    if len(v) == 0:
        return ""
    finite = v[np.isfinite(v)]
    if len(finite) == 0:
        return " " * len(v)
    lo = float(finite.min()) if lo is None else lo
    hi = float(finite.max()) if hi is None else hi
    span = hi - lo if hi > lo else 1.0
    idx = np.clip(np.round((v - lo) / span * (len(BLOCKS) - 2)) + 1, 1, len(BLOCKS) - 1)
    return "".join(BLOCKS[int(i)] if np.isfinite(x) else " " for i, x in zip(idx, v))


def coverage_map_text(cells: np.ndarray) -> list[str]:
    """Rows of a coverage map (fraction covered per cell, NaN where none), north at the top."""
    shades = " ░▒▓█"
    out = []
    for row in np.asarray(cells)[::-1]:
        out.append("".join("·" if not np.isfinite(c) else shades[int(np.clip(math.ceil(c * 4), 0, 4))] for c in row))
    return out


class ParticleHistory:
    """Bounded per-particle history of the ``frames.csv`` rows, for the display.

    Fed by the per-frame stage's ``sink`` (one call per row, O(1)); read by the display thread.
    At most ``max_particles`` particles are kept (the least recently seen is forgotten), each
    with its last ``length`` rows.
    """

    def __init__(self, length: int = 240, max_particles: int = 32):
        self.length = length
        self.max_particles = max_particles
        self._lock = threading.Lock()
        self._p: dict[int, dict[str, Any]] = {}

    def add(self, row: dict[str, Any]) -> None:
        p = int(row["particle"])
        with self._lock:
            h = self._p.get(p)
            if h is None:
                if len(self._p) >= self.max_particles:
                    del self._p[min(self._p, key=lambda k: self._p[k]["seen"])]
                h = self._p[p] = {k: deque(maxlen=self.length) for k in ("fft_peak", "lattice", "diameter_nm")}
                h.update(rows=0, lattice_rows=0)
            h["fft_peak"].append(float(row["fft_peak"]))
            h["lattice"].append(int(row["lattice"]))
            d = row.get("diameter_nm")
            h["diameter_nm"].append(float(d) if d not in (None, "") else math.nan)
            h["rows"] += 1
            h["lattice_rows"] += int(row["lattice"])
            h.update(seen=time.monotonic(), x=row.get("x_px"), y=row.get("y_px"), t=row.get("t_s"),
                     frame=row.get("frame"), threshold=row.get("lattice_threshold"), snr=row.get("snr_db"))

    def particles(self) -> list[int]:
        with self._lock:
            return sorted(self._p)

    def view(self, particle: int) -> dict[str, Any] | None:
        """A copy of one particle's history (lists), or None."""
        with self._lock:
            h = self._p.get(particle)
            if h is None:
                return None
            return {k: (list(v) if isinstance(v, deque) else v) for k, v in h.items()}


def _fmt(v: Any, spec: str = ".1f", none: str = "-") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return none
    return format(f, spec) if math.isfinite(f) else none


class Dashboard:
    """The live screen (a progress reporter: ``start``, ``update``, ``end``; see the module).

    Parameters
    ----------
    console : rich.console.Console, optional
        Where to draw (default: stderr).
    refresh_hz : float
        Redraws a second.
    keys : bool
        Read ``q`` / ``p`` / ``n`` / ``b`` from stdin when it is a terminal.
    """

    def __init__(self, console: Any = None, *, refresh_hz: float = 4.0, keys: bool = True):
        from rich.console import Console  # noqa: PLC0415

        self.console = console or Console(stderr=True)
        self.refresh_hz = refresh_hz
        self.keys = keys
        self.history = ParticleHistory()
        self.pipeline: Any = None
        self.counters: Any = None
        self.done = 0
        self.total: int | None = None
        self.description = ""
        self.paused = False
        self.quit_requested = False  # the run was ended by q (stop reason "quit", exit 0)
        self._queue_full_drops = 0  # drop-oldest: frames dropped as of the last screen
        self._queue_full_since = -math.inf  # monotonic time (s) that count last grew
        self.selected = 0
        self.phase = "receiving"
        self._frozen: Any = None
        self._live: Any = None
        self._t0 = time.monotonic()
        self._rate: deque = deque(maxlen=20)  # (t, done) for the recent rate
        self._stop = threading.Event()
        self._keys_thread: threading.Thread | None = None
        self._analysis: dict[str, dict[str, Any]] = {}  # reconstruction dir -> numbers

    # -- wiring ---------------------------------------------------------------------------
    def attach(self, *, pipeline: Any = None, counters: Any = None) -> None:
        """The pipeline (its stages are read) and the ingest counters, when there are any."""
        self.pipeline = pipeline
        self.counters = counters
        frames = self._stage("frames")
        if frames is not None:
            prev = frames.sink
            frames.sink = lambda row, _prev=prev: (_prev(row) if _prev else None, self._add_row(row))

    def _add_row(self, row: dict[str, Any]) -> None:
        try:
            self.history.add(row)
        except Exception:  # noqa: BLE001 - the display never stops the pipeline
            log.debug("dashboard: row not shown", exc_info=True)

    def _stage(self, name: str) -> Any:
        for s in getattr(self.pipeline, "stages", ()) or ():
            if getattr(s, "name", None) == name:
                return s
        return None

    # -- the reporter protocol --------------------------------------------------------------
    def start(self, total: int | None, description: str) -> None:
        from rich.live import Live  # noqa: PLC0415

        self.total, self.description = total, description
        self._t0 = time.monotonic()
        self._live = Live(get_renderable=self._renderable, console=self.console, auto_refresh=True,
                          refresh_per_second=self.refresh_hz, transient=False, redirect_stderr=False,
                          redirect_stdout=False)
        self._live.start()
        self._route_logs()
        if self.keys and sys.stdin.isatty():
            self._keys_thread = threading.Thread(target=self._read_keys, name="btomo-dashboard-keys", daemon=True)
            self._keys_thread.start()

    def update(self, advance: int = 1, **state: object) -> None:
        self.done += advance  # the frame loop's whole cost

    def retotal(self, total: int) -> None:
        self.total = total

    def finishing(self, what: str) -> None:
        """Say what the run is waiting for after the last frame (windows, jobs)."""
        self.phase = what

    def end(self) -> None:
        self._stop.set()
        if self._live is not None:
            self.paused = False
            self._live.refresh()
            self._live.stop()
            self._live = None
        self._restore_logs()
        if self._keys_thread is not None:
            self._keys_thread.join(1.0)

    def _route_logs(self) -> None:
        """Terminal log lines go through the console while the screen is live (printed above it,
        instead of tearing it); file handlers are left alone."""
        from rich.logging import RichHandler  # noqa: PLC0415

        root = logging.getLogger()
        self._swapped = [h for h in root.handlers if type(h) is logging.StreamHandler
                         and getattr(h, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)]
        if not self._swapped:
            return
        self._rich_handler = RichHandler(console=self.console, show_path=False, rich_tracebacks=False)
        self._rich_handler.setLevel(max(logging.WARNING, min(h.level for h in self._swapped)))
        for h in self._swapped:
            root.removeHandler(h)
        root.addHandler(self._rich_handler)

    def _restore_logs(self) -> None:
        swapped = getattr(self, "_swapped", [])
        if not swapped:
            return
        root = logging.getLogger()
        root.removeHandler(self._rich_handler)
        for h in swapped:
            root.addHandler(h)
        self._swapped = []

    # -- keys -------------------------------------------------------------------------------
    def _read_keys(self) -> None:
        import termios  # noqa: PLC0415
        import tty  # noqa: PLC0415

        fd = sys.stdin.fileno()
        try:
            old = termios.tcgetattr(fd)
        except termios.error:
            return
        try:
            tty.setcbreak(fd)
            while not self._stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    self.key(os.read(fd, 1).decode(errors="ignore"))
        except Exception:  # noqa: BLE001
            log.debug("dashboard: key reader stopped", exc_info=True)
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)

    def key(self, k: str) -> None:
        """Act on one key (see the module)."""
        if k in ("q", "Q"):  # a second q stops at once, as a second Ctrl-C
            log.info("dashboard: q pressed, %s", "stopping at once" if self.quit_requested else "stopping cleanly")
            self.quit_requested = True
            self.phase = "quitting: draining the queue, flushing windows (q again: at once)"
            os.kill(os.getpid(), signal.SIGINT)  # the pipeline's clean stop, as Ctrl-C
        elif k in ("p", "P"):
            self.paused = not self.paused
            self._frozen = None
        elif k in ("n", "\t", "b"):
            n = max(1, len(self.history.particles()))
            self.selected = (self.selected + (1 if k != "b" else -1)) % n

    # -- drawing ----------------------------------------------------------------------------
    def _renderable(self) -> Any:
        if self.paused and self._frozen is not None:
            return self._frozen
        try:
            out = self.render(self.console.size.width, self.console.size.height)
        except Exception as exc:  # noqa: BLE001 - the display never stops the pipeline
            log.debug("dashboard: draw failed", exc_info=True)
            from rich.text import Text  # noqa: PLC0415

            out = Text(f"btomo: display error ({type(exc).__name__}); the pipeline goes on")
        if self.paused:
            self._frozen = out
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything the screen shows, as plain numbers (also for tests and the plain log)."""
        now = time.monotonic()
        self._rate.append((now, self.done))
        t0, d0 = self._rate[0]
        snap: dict[str, Any] = {"frames": self.done, "total": self.total, "elapsed_s": now - self._t0,
                                "rate_fps": (self.done - d0) / (now - t0) if now > t0 else 0.0,
                                "phase": self.phase, "paused": self.paused}
        if self.counters is not None:
            snap["ingest"] = self.counters.snapshot()
        frames = self._stage("frames")
        if frames is not None:
            c = frames.counters()
            snap["lattice_fraction"] = c.get("lattice_fraction")
            snap["lattice_frames"] = c.get("lattice_frames")
            snap["threshold"] = (c.get("threshold") or {}).get("value")
        particles = self.history.particles()
        snap["particles"] = {p: self.history.view(p) for p in particles}
        windows = self._stage("windows")
        if windows is not None:
            snap["windows"] = windows.view()
            snap["jobs"] = windows.jobs.snapshot() if getattr(windows, "jobs", None) is not None else None
            snap["analysis"] = self._latest_analysis(snap["jobs"])
        return snap

    def _latest_analysis(self, jobs: dict[str, Any] | None) -> dict[str, Any] | None:
        """Numbers of the latest finished reconstructions' atoms (computed once per map)."""
        done = [j for j in (jobs or {}).get("jobs", []) if j.get("state") == "done" and j.get("map")]
        if not done:
            return None
        done.sort(key=lambda j: j.get("ended_at") or 0)
        rows = []
        for j in done[-2:]:
            key = str(Path(j["map"]).parent)
            if key not in self._analysis:
                self._analysis[key] = _atoms_numbers(Path(key), j)
            rows.append(self._analysis[key])
        out = dict(rows[-1])
        if len(rows) == 2 and rows[0].get("atoms") and rows[1].get("atoms"):
            dt = (rows[1].get("t_mid_s") or 0) - (rows[0].get("t_mid_s") or 0)
            if dt > 0:
                out["etch_rate_atoms_s"] = (rows[0]["atoms"] - rows[1]["atoms"]) / dt
        return out

    def render(self, width: int, height: int) -> Any:
        """The screen for a ``width`` x ``height`` terminal (80 x 24 and up)."""
        from rich.console import Group  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        s = self.snapshot()
        lines: list[Any] = []
        title = Text.assemble(("btomo ", "bold cyan"), (self.description, "bold"),
                              (f"  {s['phase']}", "yellow"), ("  [paused]" if self.paused else "", "bold red"))
        lines.append(title)
        lines.append(self._stream_line(s))
        spark_w = max(10, width - 57)
        plist = list(s["particles"])
        if plist:
            self.selected %= len(plist)
        lines.append(Text("  id " + "x,y px".ljust(12) + "lattice score".ljust(spark_w)
                          + f" {'thr':>6} {'latt%':>5} {'diam nm':>7}  {'SNR dB':>6}", style="bold"))
        shown = max(1, min(len(plist), (height - 14) // 1))
        start = max(0, min(self.selected - shown + 1, len(plist) - shown))
        for i, p in enumerate(plist[start:start + shown], start=start):
            lines.append(self._particle_line(p, s["particles"][p], spark_w, i == self.selected))
        if not plist:
            lines.append(Text("  no particle tracked yet", style="dim"))
        lines.extend(self._window_lines(s, plist[self.selected] if plist else None, width, height))
        lines.extend(self._jobs_lines(s, width))
        lines.append(Text("q quit  p pause  n/b next/previous particle", style="dim"))
        return Group(*lines)

    def _stream_line(self, s: dict[str, Any]) -> Any:
        from rich.text import Text  # noqa: PLC0415

        ing = s.get("ingest") or {}
        total = f"/{s['total']}" if s.get("total") else ""
        lat = (ing.get("latency") or {})
        drops = ing.get("frames_dropped") or {}
        bad = ing.get("messages_malformed") or {}
        gaps = ing.get("frame_gaps", 0)
        t = Text.assemble(("frames ", "bold"), f"{s['frames']}{total}", "  ",
                          ("rate ", "bold"), f"{s['rate_fps']:.0f}/s", "  ",
                          ("latency ", "bold"), f"{_fmt(lat.get('p50_ms'), '.0f')}/{_fmt(lat.get('p99_ms'), '.0f')}"
                                                " ms p50/p99", "  ",
                          ("gaps ", "bold"), (str(gaps), "red" if gaps else ""))
        t.append("\n")
        if ing:  # a stream (live); process reads a file
            t.append("queue ", style="bold")
            depth, limit = ing.get("queue_depth", 0), ing.get("queue_limit") or 0
            high = f" max {ing.get('queue_high_water', 0)}" if depth < limit else ""  # full: the limit says it
            t.append(f"{depth}/{limit or '?'}{high} ")
        policy = ing.get("queue_policy")
        if policy:  # what a full queue does now: hold the sender back, or drop the oldest frames
            if policy == "block":
                acting = bool(ing.get("queue_limit")) and ing.get("queue_depth", 0) >= ing["queue_limit"]
                label = "backpressure" if acting else policy
            else:
                # acting while frames were dropped in the last DROP_SHOWN_S, whoever rendered in
                # between (the refresh loop and a snapshot must not take the state from each other)
                full_drops = drops.get("queue_full", 0)
                if full_drops > self._queue_full_drops:
                    self._queue_full_drops, self._queue_full_since = full_drops, time.monotonic()
                acting = time.monotonic() - self._queue_full_since < DROP_SHOWN_S
                label = "dropping oldest" if acting else policy
            t.append(f"{label}  ", style="bold yellow" if acting else "dim")
        if ing.get("throttled_s"):
            t.append(f"throttled {ing['throttled_s']:.0f} s  ", style="yellow")
        t.append("dropped ", style="bold")
        t.append(", ".join(f"{k} {v}" for k, v in drops.items()) or "0", style="red" if drops else "")
        t.append("  malformed ", style="bold")
        t.append(", ".join(f"{k} {v}" for k, v in bad.items()) or "0", style="red" if bad else "")
        t.append("  lattice frames ", style="bold")
        t.append(f"{s.get('lattice_frames') or 0} ({_fmt(100 * (s.get('lattice_fraction') or 0), '.0f')} %)")
        return t

    @staticmethod
    def _particle_line(p: int, h: dict[str, Any] | None, spark_w: int, selected: bool) -> Any:
        from rich.text import Text  # noqa: PLC0415

        h = h or {}
        peaks = (h.get("fft_peak") or [])[-spark_w:]
        thr = h.get("threshold")
        thr = float(thr) if thr is not None and np.isfinite(float(thr)) else math.nan
        finite = [v for v in peaks if np.isfinite(v)]
        lo = min([*finite, thr]) if finite and np.isfinite(thr) else (min(finite) if finite else 0.0)
        hi = max([*finite, thr]) if finite and np.isfinite(thr) else (max(finite) if finite else 1.0)
        spark = sparkline(peaks, spark_w, lo, hi)
        frac = 100.0 * h["lattice_rows"] / h["rows"] if h.get("rows") else math.nan
        diam = [d for d in (h.get("diameter_nm") or []) if np.isfinite(d)]
        trend = ""
        if len(diam) >= 4:
            half = len(diam) // 2
            trend = "↓" if np.mean(diam[half:]) < np.mean(diam[:half]) - 0.02 else (
                "↑" if np.mean(diam[half:]) > np.mean(diam[:half]) + 0.02 else "→")
        line = Text(("> " if selected else "  ") + f"{p:<3d}", style="bold reverse" if selected else "bold")
        line.append(f"{_fmt(h.get('x'), '.0f'):>5},{_fmt(h.get('y'), '.0f'):<5} ")
        for ch, v in zip(spark, peaks):  # above the threshold: lattice
            line.append(ch, style="bold green" if np.isfinite(thr) and v >= thr else "cyan")
        line.append(" " * (spark_w - len(spark)))
        line.append(f" {_fmt(thr, '.3f'):>6} {_fmt(frac, '.0f'):>5} {_fmt(diam[-1] if diam else None, '.2f'):>7}"
                    f"{trend:1} {_fmt(h.get('snr'), '.1f'):>6}")
        return line

    @staticmethod
    def _window_lines(s: dict[str, Any], particle: int | None, width: int, height: int) -> list[Any]:
        from rich.text import Text  # noqa: PLC0415

        views = s.get("windows") or {}
        open_ = [w for w in views.get("open", []) if particle is None or w["particle"] == particle]
        out: list[Any] = [Text(f"windows: {views.get('closed', 0)} closed, {len(views.get('open', []))} open; "
                               f"coverage target {_fmt(views.get('target'), '.2f')}", style="bold")]
        if not open_:
            out.append(Text("  no open window for this particle", style="dim"))
            return out
        w = open_[0]
        head = f"  {w['name']}: {w['frames']} lattice frames, coverage "
        bar_w = max(10, min(40, width - len(head) - 7))
        filled = int(round(bar_w * min(1.0, w["coverage"] / max(views.get("target") or 1.0, 1e-9))))
        t = Text(head)
        t.append("█" * filled, style="green")
        t.append("░" * (bar_w - filled), style="dim")
        t.append(f" {w['coverage']:.2f}")
        out.append(t)
        rows = 3 if height < 30 else 6
        cells = w.get("map")
        if cells is not None:
            m = coverage_map_text(_rebin(cells, rows))
            for r in m:
                out.append(Text("  " + r, style="green"))
        return out

    @staticmethod
    def _jobs_lines(s: dict[str, Any], width: int) -> list[Any]:
        from rich.text import Text  # noqa: PLC0415

        jobs = s.get("jobs") or {}
        states = jobs.get("states") or {}
        t = Text("reconstruction jobs: ", style="bold")
        t.append(", ".join(f"{v} {k}" for k, v in states.items() if v) or "none yet")
        out: list[Any] = [t]
        items = sorted(jobs.get("jobs") or [], key=lambda j: j.get("submitted_at") or 0)
        for j in items[-2:]:
            state = j.get("state")
            if state == "done":
                msg = f"  {j.get('window')}: done, {j.get('atoms')} atoms, FSC {_fmt(j.get('resolution_A'), '.2f')} A"
                style = "green"
            elif state == "failed":
                msg = f"  {j.get('window')}: failed: {j.get('reason')}"
                style = "red"
            else:
                msg = f"  {j.get('window')}: {state}"
                style = "yellow"
            out.append(Text(msg[: width - 1], style=style))
        a = s.get("analysis")
        if a:
            t = Text("analysis: ", style="bold")
            t.append(f"{a.get('atoms')} atoms, mean CN {_fmt(a.get('mean_cn'), '.1f')}, crystalline "
                     f"{_fmt(100 * (a.get('crystalline') or 0), '.0f')} %")
            if a.get("etch_rate_atoms_s") is not None:
                t.append(f", etch rate {a['etch_rate_atoms_s']:.1f} atoms/s")
            out.append(t)
        return out


def _rebin(cells: np.ndarray, rows: int) -> np.ndarray:
    """A coverage map with ``rows`` rows (mean of the covered fractions; NaN where no cell)."""
    c = np.asarray(cells, dtype=np.float64)
    if c.shape[0] <= rows:
        return c
    edges = np.linspace(0, c.shape[0], rows + 1).astype(int)
    out = np.full((rows, c.shape[1]), np.nan)
    for i in range(rows):
        block = c[edges[i]:edges[i + 1]]
        ok = np.isfinite(block)
        with np.errstate(invalid="ignore"):
            out[i] = np.where(ok.any(axis=0), np.nansum(block, axis=0) / np.maximum(ok.sum(axis=0), 1), np.nan)
    return out


def _atoms_numbers(recon: Path, job: dict[str, Any]) -> dict[str, Any]:
    """Atoms, mean CN and crystalline fraction of one reconstruction's ``atoms.xyz``."""
    out: dict[str, Any] = {"reconstruction": str(recon), "atoms": job.get("atoms")}
    try:
        import json  # noqa: PLC0415

        from btomo.analysis.run import load_atoms  # noqa: PLC0415
        from btomo.analysis.structure import BondOrder, LocalGeometry  # noqa: PLC0415

        pos = load_atoms(recon / "atoms.xyz")
        out["atoms"] = len(pos)
        if len(pos) >= 2:
            out["mean_cn"] = float(np.mean(LocalGeometry().compute(pos).cn))
            out["crystalline"] = float(np.mean(BondOrder().compute(pos).crystalline))
        info = json.loads((recon / "reconstruction.json").read_text())
        out["t_mid_s"] = 0.5 * (float(info["t_start_s"]) + float(info["t_end_s"]))
    except Exception:  # noqa: BLE001 - shown as far as it goes
        log.debug("dashboard: analysis of %s incomplete", recon, exc_info=True)
    return out
