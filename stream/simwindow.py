"""A simulated window of one static particle, with its truth (for reconstruction tests).

The full chain (simulate -> track -> denoise -> windows) makes windows whose every error is
mixed with the others'. To measure the reconstruction alone, :func:`simulate_window` writes a
window of the contracted layout (``windows.zarr/p0_w0000``, :class:`~btomo.stream.windows.WindowWriter`)
straight from the simulator's image formation (:meth:`~btomo.stream.simulator.FrameRenderer.intensity`:
Kirkland potential, phase object, the objective's aberrations and partial coherence, the water
layer, detector blur, Poisson counts at the configured dose) for a particle that does not
change:

* orientations drawn uniformly and kept when the crop would show lattice fringes (some {111},
  {200} or {220} plane edge-on within the simulator's visibility angle), like the lattice frames
  a window holds; or, with ``rot_diffusion_rad2_s`` > 0, a Brownian rotation sampled at ``fps``
  (the simulator's model: per-axis variance ``2 D_r dt`` per frame) of which the frames that
  show fringes are kept, with their acquisition indices and times: a window as the microscope
  gives it, where consecutive lattice frames are close in orientation;
* the particle off the crop's centre by a tracking error (Gaussian, ``tracking_error_A`` RMS per
  axis) and off the focal plane by ``z_sigma_A`` (its defocus changes);
* counts divided by the vacuum dose (the crops' scale is arbitrary, as after a denoiser).

The truth goes to ``OUT/truth/``: ``atoms.xyz`` (the particle, A, centroid at the origin),
``removed_sites.xyz`` (the lattice sites of the surface atoms taken away, same frame; no atoms
when none were) and ``frames.csv`` (frame, quaternion particle -> lab, the particle's offset in
the crop in A, its height).
"""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from btomo.kernels.coverage import Coverage, view_directions
from btomo.kernels.crystal import (coordination_numbers, d_spacing, equivalent_diameter_A, fcc_cluster, plane_normals,
                                   projected_diameter_A)
from btomo.kernels.rotation import quat_from_rotvec, quat_multiply, quat_to_matrix, random_quaternion

from .config import RunConfig
from .simulator import SHAPE_HALF_MAX, FrameRenderer, simulate_trajectories
from .windows import WindowWriter

__all__ = ["SimulatedWindow", "simulate_window", "lattice_orientations", "shows_fringes", "brownian_orientations"]


@dataclass
class SimulatedWindow:
    """Where :func:`simulate_window` wrote, and the truth it used."""

    store: Path
    name: str
    atoms_A: np.ndarray  # (n, 3) x, y, z, centroid at the origin
    removed_A: np.ndarray  # (k, 3) the sites of the surface atoms taken away, same frame
    quaternions: np.ndarray  # (frames, 4)
    offsets_A: np.ndarray  # (frames, 2) x, y of the particle's centroid from the crop centre
    z_A: np.ndarray  # (frames,)

    @property
    def path(self) -> Path:
        return self.store / self.name


def shows_fringes(quats: np.ndarray, diameter_A: float, lattice_A: float = 3.92,
                  visibility_deg: float = 0.0) -> np.ndarray:
    """Whether orientations ``(n, 4)`` show fringes: some {111}, {200} or {220} plane edge-on
    within the visibility angle (the simulator's: ``0.64 d / D`` rad, or ``visibility_deg``)."""
    beam = quat_to_matrix(np.asarray(quats, dtype=np.float64).reshape(-1, 4))[:, 2, :]
    ok = np.zeros(len(beam), dtype=bool)
    for hkl in ((1, 1, 1), (2, 0, 0), (2, 2, 0)):
        tol = (math.radians(visibility_deg) if visibility_deg > 0
               else SHAPE_HALF_MAX * d_spacing(hkl, lattice_A) / diameter_A)
        ok |= np.abs(beam @ plane_normals(hkl).T).min(axis=1) < math.sin(tol)
    return ok


def lattice_orientations(rng: np.random.Generator, n: int, diameter_A: float, lattice_A: float = 3.92,
                         visibility_deg: float = 0.0) -> np.ndarray:
    """``n`` uniformly drawn orientations that show fringes (:func:`shows_fringes`)."""
    out = []
    while sum(len(o) for o in out) < n:
        q = random_quaternion(rng, 4 * n)
        out.append(q[shows_fringes(q, diameter_A, lattice_A, visibility_deg)])
    return np.concatenate(out)[:n]


def brownian_orientations(rng: np.random.Generator, n: int, rot_diffusion_rad2_s: float, fps: float, *,
                          keep: Callable[[np.ndarray], np.ndarray] | None = None,
                          max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A Brownian rotation from a uniform start, one orientation per frame at ``fps``, and the
    first ``n`` frames that ``keep`` accepts (all without it).

    Each frame turns the particle by a rotation vector with per-axis variance
    ``2 D_r / fps`` rad^2 (unit vectors then decorrelate as ``exp(-2 D_r t)``, the simulator's
    model).

    Returns
    -------
    quats : (n, 4)
    frames : (n,) int
        Their acquisition indices.

    Raises
    ------
    RuntimeError
        If fewer than ``n`` are accepted within ``max_frames`` (default ``1000 n``).
    """
    if rot_diffusion_rad2_s <= 0 or fps <= 0:
        raise ValueError(f"expected D_r > 0 and fps > 0, got {rot_diffusion_rad2_s} rad^2/s and {fps} fps")
    sd = math.sqrt(2.0 * rot_diffusion_rad2_s / fps)
    limit = max_frames or 1000 * n
    q = random_quaternion(rng)
    quats, frames, start, accepted = [], [], 0, 0
    while accepted < n and start < limit:
        block = min(max(64, 2 * (n - accepted)), limit - start)
        steps = quat_from_rotvec(rng.normal(0.0, sd, (block, 3)))
        qs = np.empty((block, 4))
        for k in range(block):
            q = quat_multiply(steps[k], q)
            q /= np.linalg.norm(q)
            qs[k] = q
        ok = np.ones(block, dtype=bool) if keep is None else keep(qs)
        quats.append(qs[ok])
        frames.append(start + np.flatnonzero(ok))
        accepted += int(ok.sum())
        start += block
    qa, fa = np.concatenate(quats)[:n], np.concatenate(frames)[:n]
    if len(fa) < n:
        raise RuntimeError(f"only {len(fa)} of {n} frames show fringes within {limit} frames")
    return qa, fa


def simulate_window(cfg: RunConfig, out: str | Path, frames: int, *, seed: int = 0, tracking_error_A: float = 0.5,
                    z_sigma_A: float = 20.0, lattice_only: bool = True, shape: str | None = None,
                    remove_surface: int = 0, fps: float = 400.0, rot_diffusion_rad2_s: float = 0.0) -> SimulatedWindow:
    """Write a window of ``frames`` crops of one static particle and its truth under ``out`` (see
    the module). The particle is ``cfg.sample``'s (diameter, ``shape`` or its morphology) with
    ``remove_surface`` random surface atoms (coordination < 12) taken away, so that it differs
    from the spherical initial model and has no symmetry; the optics, dose and liquid are
    ``cfg``'s; the crop side is ``cfg.frames.box_px``. With ``rot_diffusion_rad2_s`` > 0 the
    orientations are a Brownian rotation at ``fps`` (the module)."""
    out = Path(out)
    rng = np.random.default_rng([seed, 71])
    s = cfg.sample
    atoms = fcc_cluster(s.diameter_nm, shape or s.morphology, s.lattice_A, seed=seed)
    removed = np.zeros((0, 3))
    if remove_surface > 0:
        surface = np.flatnonzero(coordination_numbers(atoms) < 12)
        gone = rng.choice(surface, size=min(remove_surface, len(surface)), replace=False)
        removed = atoms[gone]
        atoms = np.delete(atoms, gone, axis=0)
    removed = removed - atoms.mean(axis=0)
    atoms = atoms - atoms.mean(axis=0)
    diam = equivalent_diameter_A(len(atoms), s.lattice_A)
    acq = np.arange(frames)
    if rot_diffusion_rad2_s > 0:
        keep = (lambda q: shows_fringes(q, diam, s.lattice_A, s.visibility_angle_deg)) if lattice_only else None
        quats, acq = brownian_orientations(rng, frames, rot_diffusion_rad2_s, fps, keep=keep)
    elif lattice_only:
        quats = lattice_orientations(rng, frames, diam, s.lattice_A, s.visibility_angle_deg)
    else:
        quats = random_quaternion(rng, frames)
    offsets = rng.normal(0.0, tracking_error_A, (frames, 2))
    z = rng.normal(0.0, z_sigma_A, frames)
    box, pix = cfg.frames.box_px, cfg.acquisition.pixel_size_A
    renderer = FrameRenderer(cfg, simulate_trajectories(cfg, n_frames=1))
    lam0 = cfg.acquisition.dose_e_per_A2 * pix * pix
    thickness = 10.0 * s.liquid_thickness_nm
    crops = np.empty((frames, box, box), dtype=np.float32)
    projected = np.empty(frames)  # A, what the pipeline measures per lattice frame
    for i in range(frames):
        lab = atoms @ quat_to_matrix(quats[i]).T
        projected[i] = projected_diameter_A(lab[:, :2])
        # centroid at the crop centre (pixel box // 2) plus the tracking error
        yx = np.stack([box // 2 * pix + offsets[i, 1] + lab[:, 1], box // 2 * pix + offsets[i, 0] + lab[:, 0]], axis=1)
        inten = renderer.intensity((box, box), yx, thickness, cfg.microscope.defocus_A + z[i],
                                   np.random.default_rng([seed, 72, i]))
        counts = np.random.default_rng([seed, 73, i]).poisson(np.clip(inten, 0, None) * lam0)
        crops[i] = counts / lam0
    name = "p0_w0000"
    store = out / "windows.zarr"
    w = WindowWriter(store, box=box, pixel_size_A=pix, optics=asdict(cfg.microscope))
    t = acq / fps
    w.open_window(name, {"particle": 0, "t_start_s": 0.0, "pixel_size_A": pix})
    centre = np.full(frames, box / 2.0)
    meta = {"frame": acq, "t_s": t, "x_px": centre, "y_px": centre,
            "fft_peak": np.ones(frames)}
    for i in range(0, frames, w.chunk_frames):
        w.append(name, crops[i:i + w.chunk_frames], {k: v[i:i + w.chunk_frames] for k, v in meta.items()})
    cov = Coverage()
    cov.add(view_directions(quats))
    # the window's size as the pipeline reports it: the mean projected diameter of its frames
    w.close_window(name, {"t_end_s": float(t[-1]), "coverage": float(cov.fraction),
                          "diameter_nm": float(projected.mean()) / 10.0,
                          "source": "btomo.stream.simwindow"})
    w.close()
    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    from ase import Atoms  # noqa: PLC0415
    from ase.io import write as ase_write  # noqa: PLC0415

    ase_write(truth / "atoms.xyz", Atoms("Pt" * len(atoms), positions=atoms), format="xyz")
    # the lattice sites of the surface atoms taken away (empty when none): the only features that
    # tell a cube-symmetric shape's mates apart
    ase_write(truth / "removed_sites.xyz", Atoms("Pt" * len(removed), positions=removed), format="xyz")
    with open(truth / "frames.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["frame", "qw", "qx", "qy", "qz", "dx_A", "dy_A", "z_A"])
        for i in range(frames):
            wr.writerow([int(acq[i]), *(f"{v:.9f}" for v in quats[i]), f"{offsets[i, 0]:.4f}", f"{offsets[i, 1]:.4f}",
                         f"{z[i]:.2f}"])
    return SimulatedWindow(store, name, atoms, removed, quats, offsets, z)
