"""The reconstruction job of one window: what a Dask worker runs when a window closes.

:func:`run_window_job` reads the window (checked, :func:`~btomo.reconstruct.window.read_window`),
runs the reconstruction that is built, writes ``job.json`` into the window's output directory
(``recon/<window>/``) and returns the same record. **The 3D reconstruction itself is not built
yet** (issue 7): until it is, a job checks and summarises the window and says, in its record and
its log, that no map was made (``"map": null``, ``"reconstruction": "not built"``). It never
writes a map it did not compute.

The job reports ``running`` when it starts through the Dask event log (topic
:data:`EVENT_TOPIC`), so the live pipeline can tell a queued job from a running one.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .window import read_window

log = logging.getLogger(__name__)

__all__ = ["EVENT_TOPIC", "run_window_job"]

#: Dask event-log topic of job state changes (``{"window": ..., "state": "running", ...}``)
EVENT_TOPIC = "btomo-jobs"


def _event(msg: dict[str, Any]) -> None:
    """Post ``msg`` to the Dask event log when running on a worker (else nothing)."""
    try:
        from distributed import get_worker  # noqa: PLC0415

        worker = get_worker()
    except (ImportError, ValueError):
        return
    worker.log_event(EVENT_TOPIC, msg)


def run_window_job(store: str, window: str, out_dir: str) -> dict[str, Any]:
    """Reconstruct window ``window`` of ``store`` into ``out_dir`` (see the module).

    Parameters
    ----------
    store : str
        Path of the ``windows.zarr`` store (as the worker sees it).
    window : str
        The window's subgroup.
    out_dir : str
        Output directory (``recon/<window>/``), created.

    Returns
    -------
    dict
        The job record (also ``out_dir/job.json``): window, frames, time span, coverage,
        ``reconstruction`` ("not built" / "done"), ``map`` (path or None), seconds, host, pid.

    Raises
    ------
    WindowError
        The window is missing, incomplete or not of the contracted layout (the job fails with
        this reason).
    """
    t0 = time.perf_counter()
    _event({"window": window, "state": "running", "pid": os.getpid()})
    w = read_window(store, window)
    if w.n == 0:
        raise ValueError(f"window {window} holds no frames")
    finite = float(np.isfinite(w.frames).mean())
    record: dict[str, Any] = {
        "window": window, "store": str(store), "frames": w.n, "box_px": int(w.frames.shape[1]),
        "pixel_size_A": w.pixel_size_A, "t_start_s": float(w.attrs["t_start_s"]),
        "t_end_s": float(w.attrs["t_end_s"]), "coverage": float(w.attrs["coverage"]),
        "finite_fraction": finite, "mean": float(np.nanmean(w.frames)), "std": float(np.nanstd(w.frames)),
    }
    record.update({"reconstruction": "not built", "map": None,
                   "note": "3D reconstruction is not built yet (issue 7): the window was read, checked and "
                           "summarised; no map was made"})
    log.info("window %s: %s", window, record["note"])
    record.update({"seconds": time.perf_counter() - t0, "host": os.uname().nodename, "pid": os.getpid()})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "job.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(out / "job.json")
    return record
