"""Rolling windows of lattice frames in the run's ``windows.zarr`` (Zarr v3).

Layout (``../shared/contracts.md``): one subgroup per window, named ``p<particle>_w<number>``,
holding ``frames`` (N x box x box, float32: the denoised crops, or the fallback's), the
per-frame arrays ``frame`` (int64), ``t_s`` (float64), ``x_px``, ``y_px``, ``fft_peak``
(float64), and the attributes ``particle``, ``t_start_s``, ``t_end_s``, ``pixel_size_A``,
``coverage``, ``complete`` and ``diameter_nm``. ``complete`` becomes true only after every byte
of the window is on disk (files and directories fsynced): a crash leaves earlier windows whole,
and the torn one readable by any Zarr v3 reader and marked incomplete.

Writes go through :class:`WindowWriter`: a thread behind a bounded queue of whole chunks
(reference.md: appending frame by frame to a Zarr array runs at ~90 frames/s, whole chunks at
thousands). Queue policy: **block** (the producer waits for the disk; nothing accepted is ever
dropped; the waits are counted). ``frames`` is compressed with Blosc (lz4, bitshuffle).
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["META_ARRAYS", "WindowWriter", "window_name", "fsync_tree"]

#: per-frame metadata arrays of a window and their dtypes
META_ARRAYS: dict[str, str] = {"frame": "int64", "t_s": "float64", "x_px": "float64", "y_px": "float64",
                               "fft_peak": "float64"}


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
    chunk_frames : int
        Crops per chunk of ``frames`` (every append but a window's last is a whole chunk).
    queue_chunks : int
        Operations (chunks) waiting for the disk at most; beyond, the producer blocks.
    """

    def __init__(self, path: Path, *, box: int, pixel_size_A: float, chunk_frames: int = 64, queue_chunks: int = 8):
        import zarr  # noqa: PLC0415

        self.path = Path(path)
        self.box = box
        self.pixel_size_A = pixel_size_A
        self.chunk_frames = chunk_frames
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
        """Append crops ``(k, box, box)`` and their per-frame metadata (arrays of length ``k``)."""
        crops = np.ascontiguousarray(crops, dtype=np.float32)
        if crops.ndim != 3 or crops.shape[1:] != (self.box, self.box):
            raise ValueError(f"window {name}: expected (k, {self.box}, {self.box}) crops, got {crops.shape}")
        missing = set(META_ARRAYS) - set(meta)
        if missing:
            raise ValueError(f"window {name}: metadata arrays missing: {sorted(missing)}")
        for key in META_ARRAYS:
            if len(meta[key]) != len(crops):
                raise ValueError(f"window {name}: {key} has {len(meta[key])} values for {len(crops)} crops")
        self._put(("append", name, crops, {k: np.asarray(meta[k], dtype=META_ARRAYS[k]) for k in META_ARRAYS}))

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
        from zarr.codecs import BloscCodec  # noqa: PLC0415

        if name in self.root:
            raise FileExistsError(f"window {name} exists in {self.path}")
        g = self.root.create_group(name)
        g.attrs.update({"pixel_size_A": self.pixel_size_A, "coverage": 0.0, **attrs, "complete": False})
        b = self.box
        g.create_array("frames", shape=(0, b, b), chunks=(self.chunk_frames, b, b), dtype="float32",
                       compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")])
        for key, dtype in META_ARRAYS.items():
            g.create_array(key, shape=(0,), chunks=(4096,), dtype=dtype)
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
            arr.resize((n + k,))
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
