"""The reconstruction job of one window: what a Dask worker runs when a window closes.

:func:`run_window_job` reads the window (checked, :func:`~btomo.reconstruct.window.read_window`),
reconstructs it (:func:`~btomo.reconstruct.run.reconstruct_window`: map, half maps, atoms,
orientations, FSC, report) into the window's output directory (``recon/<window>/``), writes
``job.json`` there and returns the same record. A window that cannot be reconstructed (missing,
torn, too few usable frames, crops too small for the particle) raises with the reason, and the
job fails with it; no map is ever written that was not computed.

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


def lower_priority(nice: int) -> None:
    """Set the niceness of every thread of this process to ``nice`` (Linux keeps it per thread:
    the BLAS pool started at import included). Refused or not Unix: nothing."""
    try:
        import psutil  # noqa: PLC0415

        for t in psutil.Process().threads():
            os.setpriority(os.PRIO_PROCESS, t.id, nice)
    except Exception as exc:  # noqa: BLE001 - not Unix, not allowed, a thread gone: never fail a job for this
        log.debug("niceness %d not set: %s", nice, exc)


def run_window_job(store: str, window: str, out_dir: str, settings: dict[str, Any] | None = None, *,
                   nice: int = 0) -> dict[str, Any]:
    """Reconstruct window ``window`` of ``store`` into ``out_dir`` (see the module).

    Parameters
    ----------
    store : str
        Path of the ``windows.zarr`` store (as the worker sees it).
    window : str
        The window's subgroup.
    out_dir : str
        Output directory (``recon/<window>/``), created.
    settings : dict, optional
        :class:`~btomo.reconstruct.config.ReconstructConfig` fields (plain values: they travel to
        the worker).
    nice : int
        Niceness the worker process takes before it starts (``jobs.worker_nice``; 0 = unchanged):
        the reconstruction yields the CPU to the live path on the same machine.

    Returns
    -------
    dict
        The job record (also ``out_dir/job.json``): window, frames, time span, coverage,
        ``reconstruction`` ("done"), ``map`` (path), atoms, resolution, seconds, host, pid.

    Raises
    ------
    WindowError
        The window is missing, incomplete or not of the contracted layout.
    ValueError
        The window cannot be reconstructed (the reason says why).
    """
    from .config import ReconstructConfig  # noqa: PLC0415
    from .run import reconstruct_window  # noqa: PLC0415

    t0 = time.perf_counter()
    if nice:
        lower_priority(nice)
    _event({"window": window, "state": "running", "pid": os.getpid()})
    cfg = ReconstructConfig(**(settings or {}))
    out = Path(out_dir)
    s = reconstruct_window(store, window, out, cfg)
    record: dict[str, Any] = {
        **{k: s[k] for k in ("window", "store", "frames", "frames_used", "frames_in_map", "box_px", "pixel_size_A",
                             "t_start_s", "t_end_s", "coverage")},
        "reconstruction": "done", "map": str(out / "map.mrc"), "atoms": s["atoms"],
        "resolution_A": s["resolution_A"], "map_model_correlation": s["map_model_correlation"],
    }
    log.info("window %s: reconstructed, %d atoms, FSC 0.143 at %.2f A", window, s["atoms"], s["resolution_A"])
    record.update({"seconds": time.perf_counter() - t0, "host": os.uname().nodename, "pid": os.getpid(),
                   "nice": os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None})
    tmp = out / "job.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(out / "job.json")
    return record
