"""The reconstruction job of one window: what a Dask worker runs when a window closes.

:func:`run_window_job` reads the window (checked, :func:`~btomo.reconstruct.window.read_window`),
reconstructs it (:func:`~btomo.reconstruct.run.reconstruct_window`: map, half maps, atoms,
orientations, FSC, report) into the window's output directory (``recon/<window>/``), writes
``job.json`` there and returns the same record. A window that cannot be reconstructed (missing,
torn, too few usable frames, crops too small for the particle) raises with the reason, and the
job fails with it; no map is ever written that was not computed.

**Seeding.** A job may be given the output directories of the same particle's earlier windows
(``seed_dirs``, most recent first). It starts from the atoms of the first of them whose
reconstruction is done and good (:func:`choose_seed`: FSC 0.143 at ``seed_max_resolution_A`` or
better, at least ``seed_min_in_map`` of its frames significant) instead of the spherical FCC
model, and says which in ``job.json`` (``initial_model``, ``seed_reason``). Started from the
right atoms, the refinement keeps them at the paper's dose (docs/accuracy.md: 0.98 / 0.97 on the
truncated octahedron, 0.955 / 0.958 on an irregular crystal), while from the cubic spherical
model it settles on the cube-symmetrised particle. A seeded window is also reconstructed in its
seed's frame (up to the seed's centroid, which goes to the box centre): along an unbroken chain
of seeds a particle's maps come out aligned. With several workers consecutive windows may run
at once and find no finished seed; those start again from the spherical model. A seed that
is not done when the job starts (jobs run in parallel), failed, is poor or does not fit the box
is passed over, with the reason. **Seeding biases the result toward the seed** (docs/accuracy.md:
seeded with the true atoms plus 20 on the surface, the paper-dose refinement kept 14 of them;
with 20 missing, it put back 10), so the live pipeline seeds only when asked
(``jobs.seed_from_previous``).

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

__all__ = ["EVENT_TOPIC", "choose_seed", "run_window_job"]

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


def choose_seed(seed_dirs: list[str], max_resolution_A: float, min_in_map: float) -> tuple[Any, str, str]:
    """The atoms of the first good reconstruction among ``seed_dirs`` (see the module).

    Returns
    -------
    atoms : (n, 3) array or None
        A; None when no directory qualifies.
    label : str
        ``"window W (N atoms)"`` or ``"spherical FCC"``.
    reason : str
        Why each directory passed over was passed over (``"; "``-joined), or ``""``.
    """
    import math  # noqa: PLC0415

    from btomo.analysis.run import AnalysisError, load_atoms  # noqa: PLC0415

    why = []
    for d in seed_dirs:
        path = Path(d)
        try:
            rec = json.loads((path / "job.json").read_text())
        except (OSError, ValueError):
            why.append(f"{path.name}: not done")
            continue
        if not isinstance(rec, dict):
            why.append(f"{path.name}: job.json is not a job record")
            continue

        def number(key: str) -> float:
            v = rec.get(key)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan

        res, used, in_map = number("resolution_A"), number("frames_used"), number("frames_in_map")
        if not (math.isfinite(res) and res <= max_resolution_A):
            why.append(f"{path.name}: FSC 0.143 at {rec.get('resolution_A')} A, expected <= {max_resolution_A} A")
            continue
        if not (used > 0 and in_map / used >= min_in_map):
            why.append(f"{path.name}: {in_map} of {used} frames significant, expected >= {min_in_map:.0%}")
            continue
        try:
            atoms = load_atoms(path / "atoms.xyz")
        except AnalysisError as exc:  # an unreadable file is a reason, never a failed job
            why.append(f"{path.name}: {exc}")
            continue
        return atoms, f"window {rec.get('window', path.name)} ({len(atoms)} atoms)", "; ".join(why)
    return None, "spherical FCC", "; ".join(why)


def run_window_job(store: str, window: str, out_dir: str, settings: dict[str, Any] | None = None, *,
                   nice: int = 0, seed_dirs: list[str] | None = None, seed_max_resolution_A: float = 2.5,
                   seed_min_in_map: float = 0.25) -> dict[str, Any]:
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
    seed_dirs : list of str, optional
        Output directories of the particle's earlier windows, most recent first (see the module).
    seed_max_resolution_A : float
        Poorest FSC 0.143 resolution of a seed, A.
    seed_min_in_map : float
        Smallest fraction of a seed's usable frames that were significant.

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
    from .refine import InitialModelError  # noqa: PLC0415

    cfg = ReconstructConfig(**(settings or {}))
    out = Path(out_dir)
    seed, label, reason = choose_seed(list(seed_dirs or []), seed_max_resolution_A, seed_min_in_map)
    try:
        s = reconstruct_window(store, window, out, cfg, initial_atoms_A=seed, initial_label=label)
    except InitialModelError as exc:  # a seed too large for this window's box: start as if there were none
        reason = "; ".join(filter(None, [reason, f"{label}: {exc}"]))
        log.warning("window %s: seed %s not used (%s)", window, label, exc)
        s = reconstruct_window(store, window, out, cfg)
    if reason:
        log.info("window %s: initial model %s (passed over: %s)", window, s["initial_model"], reason)
    record: dict[str, Any] = {
        **{k: s[k] for k in ("window", "store", "frames", "frames_used", "frames_in_map", "box_px", "pixel_size_A",
                             "t_start_s", "t_end_s", "coverage", "initial_model")},
        "seed_reason": reason,
        "reconstruction": "done", "map": str(out / "map.mrc"), "atoms": s["atoms"],
        "resolution_A": s["resolution_A"], "map_model_correlation": s["map_model_correlation"],
        "cube_symmetric_atoms": s["cube_symmetric_atoms"],
    }
    log.info("window %s: reconstructed, %d atoms, FSC 0.143 at %.2f A", window, s["atoms"], s["resolution_A"])
    record.update({"seconds": time.perf_counter() - t0, "host": os.uname().nodename, "pid": os.getpid(),
                   "nice": os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None})
    tmp = out / "job.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(out / "job.json")
    return record
