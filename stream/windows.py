"""Rolling windows of lattice frames in the run's ``windows.zarr`` (Zarr v3).

Layout (``../shared/contracts.md``): one subgroup per window, named ``p<particle>_w<number>``,
holding ``frames`` (N x box x box, float32: the denoised crops, or the raw ones,
``windows.crops``; the attribute ``crops`` says which), the
per-frame arrays ``frame`` (int64), ``t_s`` (float64), ``x_px``, ``y_px``, ``fft_peak``
(float64), and the attributes ``particle``, ``t_start_s``, ``t_end_s``, ``pixel_size_A``,
``coverage``, ``complete``, ``diameter_nm`` and ``optics`` (the run's ``microscope`` settings,
whose contrast transfer the reconstruction applies). ``complete`` becomes true only after every byte
of the window is on disk (files and directories fsynced): a crash leaves earlier windows whole,
and the torn one readable by any Zarr v3 reader and marked incomplete.

Writes go through :class:`WindowWriter`: a thread behind a bounded queue of whole chunks
(reference.md: appending frame by frame to a Zarr array runs at ~90 frames/s, whole chunks at
thousands). Queue policy: **block** (the producer waits for the disk; nothing accepted is ever
dropped; the waits are counted). ``frames`` is compressed with Blosc (lz4, bitshuffle).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from btomo.kernels.coverage import Coverage, view_directions
from btomo.kernels.frames import band_radii, soft_disc
from btomo.kernels.orientation import OrientationFilter, fcc_reflections, lattice_peaks, peak_match_score

log = logging.getLogger(__name__)

#: a filter view counts for coverage only once a neighbouring update agrees with it: the next (or
#: previous) view of the particle within CONFIRM_DEG deg and two orientation updates
#: (``2 x windows.orientation_every_frames`` frames). An isolated jump of the report (a noise
#: frame's false peaks, a hop of symmetry branch) is not confirmed, while one such view would add
#: a fresh 15 deg cap (3 % of the sphere with its antipode). Measured: docs/windows.md.
CONFIRM_DEG = 12.0

__all__ = ["META_ARRAYS", "EXTRA_ARRAYS", "WindowWriter", "WindowStage", "window_name", "fsync_tree",
           "fill_window_column"]

#: per-frame metadata arrays of a window and their dtypes (contracts.md)
META_ARRAYS: dict[str, str] = {"frame": "int64", "t_s": "float64", "x_px": "float64", "y_px": "float64",
                               "fft_peak": "float64"}
#: btomo's own per-frame arrays: ``orientation``, the coarse orientation of the frames the
#: orientation filter updated on (unit quaternion w, x, y, z, particle -> lab, right up to one
#: rotation of the cubic group per window; NaN for the frames in between) and ``coverage``, the
#: window's coverage once the frame had joined it
EXTRA_ARRAYS: dict[str, tuple[str, tuple[int, ...]]] = {"orientation": ("float32", (4,)), "coverage": ("float32", ())}


def window_name(particle: int, number: int) -> str:
    """The subgroup name of a particle's ``number``-th window (never from the wire)."""
    return f"p{int(particle)}_w{int(number):04d}"


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (and ``root`` itself)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class WindowWriter:
    """Write windows into a Zarr v3 store from one thread (see the module).

    Parameters
    ----------
    path : path
        The store (``run_dir/windows.zarr``); created if missing, existing windows are kept.
    box : int
        Crop side, px.
    pixel_size_A : float
    optics : dict, optional
        The microscope's optics (the run's ``microscope`` settings), written into every window
        as the attribute ``optics``: the reconstruction applies their contrast transfer.
    chunk_frames : int
        Crops per chunk of ``frames`` (every append but a window's last is a whole chunk).
    queue_chunks : int
        Operations (chunks) waiting for the disk at most; beyond, the producer blocks.
    on_complete : callable, optional
        Called with a window's name (in the writer thread) once it is durable and ``complete``.
    """

    def __init__(self, path: Path, *, box: int, pixel_size_A: float, optics: dict[str, float] | None = None,
                 chunk_frames: int = 64, queue_chunks: int = 8, on_complete: Any = None):
        import zarr  # noqa: PLC0415

        self.path = Path(path)
        self.box = box
        self.pixel_size_A = pixel_size_A
        self.optics = None if optics is None else {k: float(v) for k, v in optics.items()}
        self.chunk_frames = chunk_frames
        self.on_complete = on_complete
        self.root = zarr.open_group(str(self.path), mode="a", zarr_format=3)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_chunks)
        self._windows: dict[str, Any] = {}
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()
        self.counters = {"windows_opened": 0, "windows_complete": 0, "windows_failed": 0, "chunks": 0,
                         "crops": 0, "bytes": 0, "write_seconds": 0.0, "producer_waits": 0,
                         "producer_wait_seconds": 0.0}
        self._thread = threading.Thread(target=self._run, name="btomo-windows", daemon=True)
        self._thread.start()

    # -- producer side ----------------------------------------------------------------------
    def _put(self, op: tuple) -> None:
        try:
            self._queue.put_nowait(op)
        except queue.Full:
            t0 = time.perf_counter()
            self._queue.put(op)  # block: the policy (nothing accepted is dropped)
            with self._lock:
                self.counters["producer_waits"] += 1
                self.counters["producer_wait_seconds"] += time.perf_counter() - t0

    def open_window(self, name: str, attrs: dict[str, Any]) -> None:
        """Create window ``name`` with its first attributes (``complete`` false)."""
        self._put(("open", name, dict(attrs)))

    def append(self, name: str, crops: np.ndarray, meta: dict[str, np.ndarray]) -> None:
        """Append crops ``(k, box, box)`` and their per-frame metadata (arrays of length ``k``:
        every one of :data:`META_ARRAYS`, optionally those of :data:`EXTRA_ARRAYS`)."""
        crops = np.ascontiguousarray(crops, dtype=np.float32)
        if crops.ndim != 3 or crops.shape[1:] != (self.box, self.box):
            raise ValueError(f"window {name}: expected (k, {self.box}, {self.box}) crops, got {crops.shape}")
        missing = set(META_ARRAYS) - set(meta)
        if missing:
            raise ValueError(f"window {name}: metadata arrays missing: {sorted(missing)}")
        for key in META_ARRAYS:
            if len(meta[key]) != len(crops):
                raise ValueError(f"window {name}: {key} has {len(meta[key])} values for {len(crops)} crops")
        arrays = {k: np.asarray(meta[k], dtype=META_ARRAYS[k]) for k in META_ARRAYS}
        for key, (dtype, tail) in EXTRA_ARRAYS.items():  # optional: NaN when not given
            a = np.asarray(meta[key], dtype=dtype) if key in meta else np.full((len(crops), *tail), np.nan, dtype)
            if a.shape != (len(crops), *tail):
                raise ValueError(f"window {name}: {key} must have shape {(len(crops), *tail)}, got {a.shape}")
            arrays[key] = a
        self._put(("append", name, crops, arrays))

    def close_window(self, name: str, attrs: dict[str, Any]) -> None:
        """Final attributes; once the window is durable ``complete`` is set true."""
        self._put(("close", name, dict(attrs)))

    def close(self) -> dict[str, Any]:
        """Write everything queued, stop the thread; returns the counters."""
        self._queue.put(("stop",))
        self._thread.join()
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self.counters)
        out["queue"] = self._queue.qsize()
        out["failed"] = dict(self._failed)
        return out

    # -- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            op = self._queue.get()
            if op[0] == "stop":
                return
            name = op[1]
            if name in self._failed:
                continue
            t0 = time.perf_counter()
            try:
                getattr(self, "_do_" + op[0])(*op[1:])
            except Exception as exc:  # noqa: BLE001 - a failed window is reported, the run goes on
                self._failed[name] = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.counters["windows_failed"] += 1
                log.error("window %s could not be written (%s); it stays incomplete", name, self._failed[name])
            with self._lock:
                self.counters["write_seconds"] += time.perf_counter() - t0

    def _do_open(self, name: str, attrs: dict[str, Any]) -> None:
        from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec  # noqa: PLC0415

        if name in self.root:
            raise FileExistsError(f"window {name} exists in {self.path}")
        g = self.root.create_group(name)
        first = {"pixel_size_A": self.pixel_size_A, "coverage": 0.0}
        if self.optics is not None:
            first["optics"] = self.optics
        g.attrs.update({**first, **attrs, "complete": False})
        b = self.box
        g.create_array("frames", shape=(0, b, b), chunks=(self.chunk_frames, b, b), dtype="float32",
                       compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), Crc32cCodec()])
        # every chunk carries a CRC-32C that Zarr checks on read: damage is an error, not data
        for key, dtype in META_ARRAYS.items():
            g.create_array(key, shape=(0,), chunks=(4096,), dtype=dtype, compressors=[ZstdCodec(), Crc32cCodec()])
        for key, (dtype, tail) in EXTRA_ARRAYS.items():
            g.create_array(key, shape=(0, *tail), chunks=(4096, *tail), dtype=dtype, fill_value=float("nan"),
                           compressors=[ZstdCodec(), Crc32cCodec()])
        self._windows[name] = g
        with self._lock:
            self.counters["windows_opened"] += 1

    def _do_append(self, name: str, crops: np.ndarray, meta: dict[str, np.ndarray]) -> None:
        g = self._windows[name]
        frames = g["frames"]
        n, k = frames.shape[0], len(crops)
        frames.resize((n + k, self.box, self.box))
        frames[n:n + k] = crops
        for key, values in meta.items():
            arr = g[key]
            arr.resize((n + k, *arr.shape[1:]))
            arr[n:n + k] = values
        with self._lock:
            self.counters["chunks"] += 1
            self.counters["crops"] += k
            self.counters["bytes"] += crops.nbytes

    def _do_close(self, name: str, attrs: dict[str, Any]) -> None:
        g = self._windows.pop(name)
        g.attrs.update({**attrs, "complete": False})
        fsync_tree(self.path / name)  # every chunk and array description on disk ...
        g.attrs["complete"] = True  # ... before the window says so
        fsync_tree(self.path / name)
        with self._lock:
            self.counters["windows_complete"] += 1
        if self.on_complete is not None:
            try:
                self.on_complete(name)
            except Exception:  # noqa: BLE001 - the window is written; its consumer's failure is its own
                log.exception("window %s: the consumer of complete windows failed", name)


# -- the live stage ----------------------------------------------------------------------------
_NO_ORIENTATION = np.full(4, np.nan, np.float32)


class _Open:
    """A particle's window being filled."""

    def __init__(self, name: str, t_start: float, cov: Any, overlap: int):
        self.name = name
        self.t_start = t_start
        self.t_end = t_start
        self.coverage = cov
        self.frames = 0
        self.crops: list[np.ndarray] = []
        self.meta: dict[str, list] = {k: [] for k in (*META_ARRAYS, *EXTRA_ARRAYS)}
        self.members: list[int] = []
        self.diameters: list[float] = []
        self.diameter_open = math.nan
        #: the last ``overlap`` frames (crop, metadata, view, diameter): they open the next window
        self.tail: deque = deque(maxlen=max(overlap, 1))
        #: the last view seen (frame, direction, counted for coverage yet): see CONFIRM_DEG
        self.pending: tuple[int, np.ndarray, bool] | None = None


class WindowStage:
    """Rolling windows of each particle's lattice frames, and their hand-off to reconstruction.

    Fed by :class:`~btomo.stream.denoise.DenoiseStage` (its ``sink``: every denoised crop with its
    ``frames.csv`` row, in the denoiser's worker thread, so the frame loop never waits for it).
    For each lattice crop: the lattice peaks of its power spectrum update the particle's
    :class:`~btomo.kernels.orientation.OrientationFilter`; the reported view direction updates the
    window's :class:`~btomo.kernels.coverage.Coverage`; the crop joins the window (written in whole
    chunks by :class:`WindowWriter`). A window closes when its coverage reaches
    ``coverage_threshold`` with at least ``min_frames`` lattice frames (``closed_by = coverage``),
    when it has lasted ``max_seconds`` (``under_covered``), when the projected diameter has moved by
    more than ``max_diameter_change_nm`` since it opened (``diameter_change``), or at the end of
    the run (``end_of_run``, flagged ``under_covered`` if short of the threshold). With
    ``overlap_frames`` the last frames of a window closed on coverage or time also open the next
    one (with their views). Once a window is durable it becomes a reconstruction job
    (:class:`~btomo.stream.jobs.ReconstructionJobs`). At the end of the run the ``window`` column
    of ``frames.csv`` is filled from the windows' members (ids joined by ``;`` where windows
    overlap).
    """

    name = "windows"

    def __init__(self, cfg: Any, run_dir: Path, denoise: Any):
        from .jobs import ReconstructionJobs  # noqa: PLC0415

        self.cfg, self.w = cfg, cfg.windows
        self.box = cfg.frames.box_px
        self.pix = cfg.acquisition.pixel_size_A
        self.writer: WindowWriter | None = None
        self.run_dir = Path(run_dir)
        self.jobs = ReconstructionJobs(cfg.jobs, self.run_dir / "windows.zarr", self.run_dir / "recon",
                                       cfg.reconstruct)
        self._open: dict[int, _Open] = {}
        self._numbers: dict[int, int] = {}
        self._filters: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.closed: list[dict[str, Any]] = []
        self._members: list[tuple[str, int, np.ndarray]] = []
        self.lattice_crops = 0
        self.orientation_updates = 0
        self.orientation_seconds = 0.0
        self.seconds = 0.0
        self._set_band(self.pix)
        self._discs: dict[float, np.ndarray] = {}
        self._reflections = fcc_reflections(cfg.sample.lattice_A)
        #: what the windows' frames hold: "raw" or the denoiser's method ("network", "fallback", ...)
        method = getattr(denoise, "method", "denoised")
        raw = self.w.crops == "raw" or (self.w.crops == "auto" and method == "fallback")
        self.crops = "raw" if raw else method
        prev = denoise.sink
        denoise.sink = lambda row, crop, raw_crop=None, _prev=prev: (
            _prev(row, crop, raw_crop) if _prev else None, self.add(row, crop, raw_crop))

    def _set_band(self, pix: float) -> None:
        self.pix = pix
        k = np.hypot(*np.meshgrid(np.fft.fftfreq(self.box) * self.box, np.fft.fftfreq(self.box) * self.box))
        r_in, r_out = band_radii(self.box, pix)
        self._band = (k >= r_in) & (k <= r_out)

    def prepare(self, series: Any) -> None:
        if series.pixel_size_A and series.pixel_size_A != self.pix:
            self._set_band(series.pixel_size_A)

    def process(self, frame: Any) -> None:
        pass  # fed by the denoiser's sink

    def _ensure_writer(self) -> WindowWriter:
        if self.writer is None:
            self.writer = WindowWriter(self.run_dir / "windows.zarr", box=self.box, pixel_size_A=self.pix,
                                       optics=dataclasses.asdict(self.cfg.microscope),
                                       chunk_frames=self.w.chunk_frames, on_complete=self._window_complete)
        return self.writer

    def _window_complete(self, name: str) -> None:
        info = next((c for c in reversed(self.closed) if c["window"] == name), {})
        self.jobs.submit(name, {k: info[k] for k in ("particle", "lattice_frames", "coverage") if k in info})

    def _orient(self, particle: int, row: dict[str, Any], crop: np.ndarray) -> np.ndarray | None:
        """The particle's orientation filter updated on this crop: its reported quaternion (None
        when the crop shows no lattice peak)."""
        d_nm = row.get("diameter_nm")
        diameter_A = 10.0 * (d_nm if d_nm and math.isfinite(d_nm) else self.cfg.frames.particle_diameter_nm)
        radius = round(diameter_A / self.pix / 2 + 6.0, 1)
        disc = self._discs.get(radius)
        if disc is None:
            disc = self._discs[radius] = soft_disc(self.box, radius, 6.0, np)
        p = np.abs(np.fft.fft2((crop - crop.mean()) * disc)) ** 2
        peaks, weights = lattice_peaks(p, self._band)  # ring-wise noise: the crop is filtered
        if len(peaks) == 0:
            return None
        f = self._filters.get(particle)
        if f is None:
            f = self._filters[particle] = OrientationFilter(
                rot_diffusion_rad2_s=self.w.rot_diffusion_rad2_s, fps=self.cfg.acquisition.fps,
                particles=self.w.orientation_particles, seed=particle, fold=True)
        return f.update(int(row["frame"]), lambda r: peak_match_score(
            r, self._reflections, peaks, weights, box=self.box, pixel_size_A=self.pix, diameter_A=diameter_A))

    def _new_window(self, particle: int, t_start: float) -> _Open:
        number = self._numbers.get(particle, 0)
        self._numbers[particle] = number + 1
        win = self._open[particle] = _Open(window_name(particle, number), t_start, Coverage(
            self.w.directions, self.w.coverage_angle_deg, self.w.symmetry), self.w.overlap_frames)
        self._ensure_writer().open_window(win.name, {"particle": particle, "t_start_s": t_start})
        self.jobs.start()  # the cluster comes up while the window fills
        return win

    def add(self, row: dict[str, Any], crop: np.ndarray, raw_crop: np.ndarray | None = None) -> None:
        """One denoised crop, the raw one at the same centre, and their row (the denoiser's
        worker thread). The orientation filter reads the denoised crop; the window keeps the one
        ``windows.crops`` chose (the denoised one where no raw crop comes)."""
        if not row.get("lattice"):
            return
        if self.crops == "raw" and raw_crop is None:  # counted and logged by the denoiser as a sink error
            raise ValueError(f"frame {row.get('frame')}: windows.crops keeps raw crops, but no raw crop came")
        keep = raw_crop if self.crops == "raw" else crop
        t0 = time.perf_counter()
        with self._lock:
            particle = int(row["particle"])
            win = self._open.get(particle)
            if win is not None and float(row["t_s"]) - win.t_start > self.w.max_seconds:
                self._close(particle, "max_seconds")  # it ran out of time while no lattice frame came
                win = self._open.get(particle)  # (the overlap's window, if any)
            if win is None:
                win = self._new_window(particle, float(row["t_s"]))
            f = self._filters.get(particle)
            q = None
            if f is None or f.last_frame is None or row["frame"] - f.last_frame >= self.w.orientation_every_frames:
                t1 = time.perf_counter()
                q = self._orient(particle, row, np.asarray(crop, np.float32))
                self.orientation_updates += 1
                self.orientation_seconds += time.perf_counter() - t1
            d = row.get("diameter_nm")
            meta = {k: row[k] for k in META_ARRAYS}
            meta["orientation"] = q if q is not None else _NO_ORIENTATION
            self._append(win, np.asarray(keep, np.float32), meta, None if q is None else view_directions(q),
                         float(d) if d is not None and math.isfinite(d) else None)
            self.lattice_crops += 1
            reason = self._close_reason(win)
            if reason:
                self._close(particle, reason)
            self.seconds += time.perf_counter() - t0

    def _append(self, win: _Open, crop: np.ndarray, meta: dict[str, Any], view: np.ndarray | None,
                diameter: float | None) -> None:
        if view is not None:
            self._confirm(win, int(meta["frame"]), view)
        meta["coverage"] = win.coverage.fraction
        win.crops.append(crop)
        for k in win.meta:
            win.meta[k].append(meta[k])
        win.members.append(int(meta["frame"]))
        if diameter is not None:
            win.diameters.append(diameter)
            if not math.isfinite(win.diameter_open) and len(win.diameters) >= self.w.diameter_frames:
                win.diameter_open = float(np.median(win.diameters))
        win.frames += 1
        win.t_end = float(meta["t_s"])
        if self.w.overlap_frames:
            win.tail.append((crop, meta, view, diameter))
        if len(win.crops) >= self.w.chunk_frames:
            self._flush(win)

    def _confirm(self, win: _Open, frame: int, view: np.ndarray) -> None:
        """Count ``view`` (and the pending one) for coverage when the two agree (see CONFIRM_DEG)."""
        prev = win.pending
        counted = False
        if prev is not None and frame - prev[0] <= 2 * self.w.orientation_every_frames and \
                float(np.dot(prev[1], view)) >= math.cos(math.radians(CONFIRM_DEG)):
            win.coverage.add(view if prev[2] else np.stack([prev[1], view]))
            counted = True
        win.pending = (frame, view, counted)

    def _close_reason(self, win: _Open) -> str | None:
        if win.coverage.fraction >= self.w.coverage_threshold and win.frames >= self.w.min_frames:
            return "coverage"
        if win.t_end - win.t_start >= self.w.max_seconds:
            return "max_seconds"
        n = self.w.diameter_frames
        if math.isfinite(win.diameter_open) and len(win.diameters) >= 2 * n:
            now = float(np.median(win.diameters[-n:]))
            if abs(now - win.diameter_open) > self.w.max_diameter_change_nm:
                return "diameter_change"
        return None

    def _flush(self, win: _Open) -> None:
        if win.crops:
            self._ensure_writer().append(win.name, np.stack(win.crops), {k: np.asarray(v) for k, v in win.meta.items()})
            win.crops = []
            win.meta = {k: [] for k in win.meta}

    def _close(self, particle: int, reason: str) -> None:
        win = self._open.pop(particle)
        self._flush(win)
        if win.coverage.views == 0 and win.pending is not None:
            win.coverage.add(win.pending[1])  # no view confirmed (a short window): its last view, unconfirmed
        cov = win.coverage.fraction
        attrs = {"t_end_s": win.t_end, "coverage": cov, "lattice_frames": win.frames, "closed_by": reason,
                 "under_covered": bool(cov < self.w.coverage_threshold),
                 "coverage_symmetry": self.w.symmetry, "coverage_angle_deg": self.w.coverage_angle_deg,
                 "overlap_frames": self.w.overlap_frames, "crops": self.crops}
        if win.diameters:
            attrs["diameter_nm"] = float(np.mean(win.diameters))
        # the record first: the writer's completion callback (another thread) looks it up
        self.closed.append({"window": win.name, "particle": particle, **attrs, "t_start_s": win.t_start})
        self._members.append((win.name, particle, np.asarray(win.members, dtype=np.int64)))
        self._ensure_writer().close_window(win.name, attrs)
        log.info("window %s closed (%s): %d lattice frames, %.2f-%.2f s, coverage %.2f", win.name, reason,
                 win.frames, win.t_start, win.t_end, cov)
        if self.w.overlap_frames and reason in ("coverage", "max_seconds") and win.tail:
            carried = list(win.tail)
            nxt = self._new_window(particle, float(carried[0][1]["t_s"]))
            for crop, meta, view, diameter in carried:
                self._append(nxt, crop, meta, view, diameter)

    def status(self) -> dict[str, Any]:
        """A few numbers for the live display."""
        with self._lock:
            cov = " ".join(f"{w.name} {w.coverage.fraction:.2f}" for w in self._open.values()) or "-"
        jobs = self.jobs.counts()
        return {"windows": len(self.closed), "coverage": cov,
                "jobs": " ".join(f"{v} {k}" for k, v in jobs.items() if v) or "none"}

    def view(self, map_rows: int = 9, map_cols: int = 36) -> dict[str, Any]:
        """The open windows (name, particle, lattice frames, coverage, a coverage map from
        :meth:`~btomo.kernels.coverage.Coverage.map`) for the dashboard."""
        with self._lock:
            open_ = [{"name": w.name, "particle": int(p), "frames": w.frames, "coverage": w.coverage.fraction,
                      "map": w.coverage.map(map_rows, map_cols)} for p, w in self._open.items()]
            return {"open": open_, "closed": len(self.closed), "target": self.cfg.windows.coverage_threshold}

    def counters(self) -> dict[str, Any]:
        with self._lock:
            open_ = {w.name: {"frames": w.frames, "coverage": w.coverage.fraction} for w in self._open.values()}
            return {"lattice_crops": self.lattice_crops, "windows_closed": len(self.closed), "open": open_,
                    "closed": list(self.closed), "ms_per_crop": 1e3 * self.seconds / self.lattice_crops
                    if self.lattice_crops else None,
                    "orientation_updates": self.orientation_updates,
                    "ms_per_orientation_update": 1e3 * self.orientation_seconds / self.orientation_updates
                    if self.orientation_updates else None,
                    "writer": self.writer.snapshot() if self.writer else None}

    def finish(self) -> dict[str, Any]:
        """Close the open windows (``end_of_run``), make the store durable, wait for the jobs
        (``jobs.wait_seconds``) and fill the ``window`` column of ``frames.csv``. Runs after the
        denoiser's finish (which has drained its worker) and the per-frame stage's (which has
        closed ``frames.csv``)."""
        with self._lock:
            for particle in list(self._open):
                self._close(particle, "end_of_run")
        if self.writer is not None:
            self.writer.close()
        jobs = self.jobs.finish()
        table = self.run_dir / "frames.csv"
        if self._members and table.exists():
            try:
                fill_window_column(table, self._members)
            except (OSError, ValueError) as exc:
                log.error("frames.csv: could not fill the window column (%s); windows.zarr lists the frames", exc)
        out = self.counters()
        out["jobs"] = jobs
        return out


def fill_window_column(table: Path, members: list[tuple[str, int, np.ndarray]]) -> int:
    """Write each window's id into the ``window`` column of ``frames.csv`` for its frames (ids of
    overlapping windows joined by ``;``); the file is rewritten and replaced atomically.

    Parameters
    ----------
    table : path
        ``frames.csv``.
    members : list of (window id, particle, frame indices)

    Returns
    -------
    int
        Rows that got a window.
    """
    import csv  # noqa: PLC0415

    lookup: dict[tuple[int, int], list[str]] = {}
    for name, particle, frames in members:
        for f in frames.tolist():
            lookup.setdefault((particle, f), []).append(name)
    tmp = table.with_suffix(".csv.tmp")
    filled = 0
    with open(table, newline="", encoding="utf-8") as src, open(tmp, "w", newline="", encoding="utf-8") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        header = next(reader)
        try:
            i_frame, i_particle, i_window = (header.index(c) for c in ("frame", "particle", "window"))
        except ValueError:
            raise ValueError(f"{table}: expected columns frame, particle, window; got {header}") from None
        writer.writerow(header)
        for row in reader:
            try:
                names = lookup.get((int(row[i_particle]), int(row[i_frame])))
            except (ValueError, IndexError):
                names = None
            if names:
                row[i_window] = ";".join(names)
                filled += 1
            writer.writerow(row)
    tmp.replace(table)
    return filled
