"""``btomo reconstruct WINDOW``: one window in, a map, its atoms and a report out.

:func:`reconstruct_window` reads and checks the window (:func:`~btomo.reconstruct.window.read_window`),
pre-processes its crops, runs the refinement loop (:func:`~btomo.reconstruct.refine.reconstruct_images`)
and writes into ``out_dir`` (``../shared/contracts.md``, ``recon/<window>/``):

================== ==========================================================================
``map.mrc``        the map (float32, ``[z, y, x]``), voxel size in the header
``half_1.mrc``,    the half maps (alternate frames of those in the map)
``half_2.mrc``
``atoms.xyz``      the atoms, ``Pt x y z`` in A about the box centre (readable by ASE)
``orientations.csv`` per frame: index, acquisition frame, time, quaternion (particle -> lab),
                   the particle's shift in its crop (A), the match score, oriented (0/1: a
                   finite crop), in_map (0/1: passed the last round's significance test)
``fsc.csv``        the half maps' Fourier shell correlation per shell (1/A, A, FSC)
``rounds.csv``     the convergence per round
``report.png``     central slices of the map with the atoms, and the FSC curve
``reconstruction.json`` the summary (also returned), with the settings used
``reconstruct.toml`` the settings used (typed, reloadable)
================== ==========================================================================

Files are written under temporary names and renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from btomo.analysis.structure import cube_symmetric_fraction

from .config import ReconstructConfig
from .ctf import Optics
from .preprocess import prepare
from .refine import Reconstruction, RoundLog, reconstruct_images
from .window import read_window

log = logging.getLogger(__name__)

#: ``cube_symmetric_atoms`` from which the summary warns that the atoms are the cube's shape
SYMMETRIC_WARNING = 0.95

__all__ = ["reconstruct_window", "window_optics", "write_outputs", "default_out_dir"]


def default_out_dir(store: Path, window: str) -> Path:
    """``<run dir>/recon/<window>`` for ``<run dir>/windows.zarr``: the contract's place."""
    return Path(store).parent / "recon" / window


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_mrc(path: Path, vol: np.ndarray, voxel_A: float) -> None:
    import mrcfile  # noqa: PLC0415

    def w(tmp: Path) -> None:
        with mrcfile.new(str(tmp), overwrite=True) as m:
            m.set_data(np.ascontiguousarray(vol, dtype=np.float32))
            m.voxel_size = voxel_A
            m.update_header_stats()
    _atomic_write(path, w)


def write_outputs(res: Reconstruction, out_dir: Path, *, frame_index: np.ndarray, t_s: np.ndarray,
                  summary: dict[str, Any], cfg: ReconstructConfig) -> None:
    """Write every output of a reconstruction into ``out_dir`` (see the module)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_mrc(out / "map.mrc", res.map, res.voxel_A)
    _write_mrc(out / "half_1.mrc", res.half_maps[0], res.voxel_A)
    _write_mrc(out / "half_2.mrc", res.half_maps[1], res.voxel_A)
    atoms = res.atoms.positions_A

    def xyz(tmp: Path) -> None:
        with open(tmp, "w") as fh:
            fh.write(f"{len(atoms)}\n")
            fh.write(f'Properties=species:S:1:pos:R:3 window="{summary.get("window", "")}" '
                     f'units=Angstrom origin="box centre"\n')
            for x, y, z in atoms:
                fh.write(f"Pt {x:.4f} {y:.4f} {z:.4f}\n")
    _atomic_write(out / "atoms.xyz", xyz)

    quats = res.quaternions

    def orient(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "frame", "t_s", "qw", "qx", "qy", "qz", "shift_x_A", "shift_y_A", "score",
                        "oriented", "in_map"])
            k = 0
            for i in range(len(res.used)):
                if res.used[i]:
                    q, s = quats[k], res.shifts_A[k]
                    w.writerow([i, int(frame_index[i]), f"{t_s[i]:.6f}", *(f"{v:.7f}" for v in q),
                                f"{s[0]:.3f}", f"{s[1]:.3f}", f"{res.scores[k]:.5f}", 1,
                                int(res.in_map[k])])
                    k += 1
                else:
                    w.writerow([i, int(frame_index[i]), f"{t_s[i]:.6f}", "", "", "", "", "", "", "", 0, 0])
    _atomic_write(out / "orientations.csv", orient)

    def fsc_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["shell", "freq_per_A", "resolution_A", "fsc"])
            for i, (f, c) in enumerate(zip(res.fsc_freq_per_A, res.fsc)):
                w.writerow([i, f"{f:.5f}", f"{1 / f:.3f}" if f > 0 else "inf", f"{c:.5f}"])
    _atomic_write(out / "fsc.csv", fsc_csv)

    def rounds_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            names = [f.name for f in dataclasses.fields(RoundLog)]
            w.writerow(names)
            for r in res.rounds:
                w.writerow([getattr(r, n) for n in names])
    _atomic_write(out / "rounds.csv", rounds_csv)

    import tomli_w  # noqa: PLC0415

    _atomic_write(out / "reconstruct.toml",
                  lambda tmp: tmp.write_text(tomli_w.dumps({"reconstruct": dataclasses.asdict(cfg)})))
    _atomic_write(out / "report.png", lambda tmp: _report_png(res, tmp))
    _atomic_write(out / "reconstruction.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))


def _report_png(res: Reconstruction, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    box, v = res.map.shape[0], res.voxel_A
    ext = [-box // 2 * v, (box - box // 2) * v] * 2
    fig, ax = plt.subplots(1, 4, figsize=(14, 3.6))
    atoms = res.atoms.positions_A
    for k, (name, sl, (i, j), dep) in enumerate([("xy (z = 0)", np.s_[box // 2, :, :], (0, 1), 2),
                                                 ("xz (y = 0)", np.s_[:, box // 2, :], (0, 2), 1),
                                                 ("yz (x = 0)", np.s_[:, :, box // 2], (1, 2), 0)]):
        ax[k].imshow(res.map[sl], cmap="gray", origin="lower", extent=ext)
        near = np.abs(atoms[:, dep]) < 1.0 if len(atoms) else np.zeros(0, bool)
        ax[k].scatter(atoms[near, i], atoms[near, j], s=12, facecolors="none", edgecolors="tab:orange")
        ax[k].set_title(f"central slice {name}")
        ax[k].set_xlabel("A")
    ax[3].plot(res.fsc_freq_per_A[1:], res.fsc[1:], "-o", ms=2)
    ax[3].axhline(0.143, color="grey", lw=0.8, ls="--")
    ax[3].set_xlabel("spatial frequency (1/A)")
    ax[3].set_ylabel("half-map FSC")
    ax[3].set_title(f"FSC 0.143: {res.resolution_A:.2f} A; {len(atoms)} atoms")
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def window_optics(attrs: dict[str, Any], cfg: ReconstructConfig, window: str) -> Optics | None:
    """The optics the reconstruction applies to window ``window`` (:mod:`~btomo.reconstruct.ctf`):
    its ``optics`` attribute under ``cfg.ctf = "auto"``, else none. A window without optics is
    reconstructed without a transfer (a warning); malformed optics are a ``ValueError`` that says
    which value is wrong (``reconstruct.ctf = "none"`` reconstructs such a window regardless)."""
    if cfg.ctf == "none":
        return None
    raw = attrs.get("optics")
    if raw is None:
        log.warning("window %s records no optics (attribute 'optics'): its frames are taken as projections, "
                    "without the microscope's contrast transfer", window)
        return None
    try:
        return Optics.from_attrs(raw)
    except ValueError as exc:
        raise ValueError(f"window {window}: {exc} (reconstruct.ctf = 'none' ignores the optics)") from None


def reconstruct_window(store: str | Path, window: str, out_dir: str | Path | None = None,
                       cfg: ReconstructConfig | None = None, *, xp: Any = np,
                       on_round: Callable[[RoundLog], None] | None = None,
                       initial_atoms_A: np.ndarray | None = None, initial_label: str | None = None) -> dict[str, Any]:
    """Reconstruct window ``window`` of ``store`` into ``out_dir`` (default: the run's
    ``recon/<window>``) and return the summary (see the module). ``initial_atoms_A`` (n, 3), A:
    start from these atoms' map instead of a spherical FCC particle
    (:func:`~btomo.reconstruct.refine.initial_model`); ``initial_label`` says where they come from
    in ``reconstruction.json`` (default: "N given atoms").

    Raises
    ------
    WindowError
        The window is missing, incomplete or not of the contracted layout.
    ValueError
        The window cannot be reconstructed (too few usable frames, no size).
    """
    cfg = cfg or ReconstructConfig()
    cfg.validate()
    t0 = time.perf_counter()
    store = Path(store)
    out = Path(out_dir) if out_dir is not None else default_out_dir(store, window)
    w = read_window(store, window)
    if w.n < 2:
        raise ValueError(f"window {window} holds {w.n} frame(s): at least 2 are needed")
    d_nm = w.attrs.get("diameter_nm")
    d_A = 10.0 * float(d_nm) if isinstance(d_nm, (int, float)) and math.isfinite(d_nm) and d_nm > 0 else None
    prep = prepare(w.frames, w.pixel_size_A, lowpass_A=cfg.lowpass_A, diameter_A=d_A, shift_px=cfg.shift_px)
    bad = int((~prep.finite).sum())
    if bad:
        log.warning("window %s: %d of %d crops hold NaN or infinite values and are left out", window, bad, w.n)
    optics = window_optics(w.attrs, cfg, window)
    res = reconstruct_images(prep, cfg, xp=xp, on_round=on_round, initial_atoms_A=initial_atoms_A, optics=optics,
                             frame_index=w.meta["frame"])
    last = res.rounds[-1]
    symmetric = cube_symmetric_fraction(res.atoms.positions_A)
    if symmetric >= SYMMETRIC_WARNING:
        log.warning("window %s: %.2f of the %d atoms have all 24 cube mates among the atoms: the shape is the "
                    "cube's, which a particle's own rarely is; the frames may not have told the lattice's symmetry "
                    "mates apart, and the surface may be the particle averaged over them (docs/reconstruct.md)",
                    window, symmetric, len(res.atoms.positions_A))
    summary = {
        "window": window, "store": str(store), "out": str(out), "frames": w.n, "frames_used": int(prep.finite.sum()),
        "frames_in_map": int(res.in_map.sum()),
        "frames_rejected_nonfinite": bad, "box_px": int(w.frames.shape[1]), "pixel_size_A": w.pixel_size_A,
        "bin": prep.bin, "voxel_A": res.voxel_A,
        "box": prep.box, "diameter_A": prep.diameter_A, "diameter_source": prep.diameter_source,
        "t_start_s": float(w.attrs["t_start_s"]), "t_end_s": float(w.attrs["t_end_s"]),
        "coverage": float(w.attrs["coverage"]), "atoms": len(res.atoms.positions_A),
        "initial_model": "spherical FCC" if initial_atoms_A is None else (initial_label
                                                                          or f"{len(initial_atoms_A)} given atoms"),
        "optics": None if optics is None else optics.as_dict(),
        "resolution_A": res.resolution_A, "mean_score": last.mean_score,
        "map_model_correlation": res.atoms.model_correlation,
        "cube_symmetric_atoms": symmetric if math.isfinite(symmetric) else None,
        "rounds": [dataclasses.asdict(r) for r in res.rounds], "seconds": dict(res.seconds),
        "settings": dataclasses.asdict(cfg),
        "files": ["map.mrc", "half_1.mrc", "half_2.mrc", "atoms.xyz", "orientations.csv", "fsc.csv", "rounds.csv",
                  "report.png", "reconstruction.json", "reconstruct.toml"],
    }
    write_outputs(res, out, frame_index=w.meta["frame"], t_s=w.meta["t_s"], summary=summary, cfg=cfg)
    summary["seconds"]["with_io"] = time.perf_counter() - t0
    log.info("window %s: %d atoms, FSC 0.143 at %.2f A, %.1f s -> %s", window, summary["atoms"], res.resolution_A,
             summary["seconds"]["with_io"], out)
    return summary
