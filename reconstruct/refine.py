"""The reconstruction of one window: the refinement loop of PRIME / SINGLE (paper, Methods).

``reconstruct_images`` runs, on pre-processed crops (:mod:`~btomo.reconstruct.preprocess`):

1. **Initial model**: a spherical FCC Pt particle of the measured diameter, its potential
   (Kirkland) low-passed at the reconstruction's limit (:func:`~btomo.reconstruct.atoms.model_map`).
2. Each round:

   a. **orientations** by projection matching against the reference
      (:class:`~btomo.reconstruct.search.OrientationSearch`: 2500 directions, local refinement
      within 10 deg, every in-plane angle by FFT), the images shifted by the last round's shifts;
   b. **shifts**: each image's cross-correlation with the reference's projection in its new
      orientation, low-passed, peak within ``shift_px`` (sub-pixel parabola);
   c. **map** by Fourier insertion (:class:`~btomo.reconstruct.insertion.FourierInserter`) of
      the centred images, even and odd frames into two half maps, their **FSC**;
   d. **atoms** in the (masked) map (:func:`~btomo.reconstruct.atoms.find_atoms`);
   e. the atoms' simulated map is the next **reference**.

   The convergence is logged per round: the median change of orientations (deg), the mean
   score, the atoms and how many match the last round's within 1 A.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from btomo.kernels.crystal import fcc_cluster
from btomo.kernels.rotation import quat_from_matrix

from .atoms import AtomResult, find_atoms, model_map
from .config import ReconstructConfig
from .insertion import FourierInserter, fsc, fsc_resolution
from .preprocess import Prepared, soft_disc
from .projection import Projector
from .search import OrientationSearch, angle_between, image_polar

log = logging.getLogger(__name__)

__all__ = ["RoundLog", "Reconstruction", "shift_images", "find_shifts", "initial_model", "reconstruct_images"]


@dataclass
class RoundLog:
    """Convergence of one refinement round."""

    round: int
    median_change_deg: float
    mean_score: float
    median_shift_px: float
    atoms: int
    atoms_kept: int
    atom_rms_change_A: float
    fsc_resolution_A: float
    model_correlation: float
    seconds: float


@dataclass
class Reconstruction:
    """The result of :func:`reconstruct_images` (maps ``[z, y, x]``, origin at ``box // 2``)."""

    map: np.ndarray
    half_maps: tuple[np.ndarray, np.ndarray]
    voxel_A: float
    rotations: np.ndarray  # (n, 3, 3) particle -> lab, of the frames used
    shifts_A: np.ndarray  # (n, 2) x, y of the particle in its crop, A
    scores: np.ndarray  # (n,)
    used: np.ndarray  # (n_frames,) bool: frames reconstructed (finite)
    atoms: AtomResult
    fsc_freq_per_A: np.ndarray
    fsc: np.ndarray
    resolution_A: float
    rounds: list[RoundLog] = field(default_factory=list)
    prepared: Prepared | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def quaternions(self) -> np.ndarray:
        return quat_from_matrix(self.rotations)


def shift_images(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Images ``(n, b, b)`` moved by ``-shifts`` ``(n, 2)`` (x, y, px; a Fourier phase ramp): an
    image whose particle sits at ``+s`` comes out centred."""
    n, b = images.shape[0], images.shape[1]
    f = np.fft.fftfreq(b)
    sx, sy = shifts[:, 0, None, None], shifts[:, 1, None, None]
    ph = np.exp(2j * math.pi * (sx * f[None, None, :] + sy * f[None, :, None]))
    return np.fft.ifft2(np.fft.fft2(images) * ph).real.astype(np.float32)


def find_shifts(images: np.ndarray, projections: np.ndarray, max_shift_px: float, k_max: float) -> np.ndarray:
    """Where each image's particle sits relative to its projection: the peak of their
    cross-correlation (low-passed at ``k_max`` cycles/px) within ``max_shift_px``, to sub-pixel
    accuracy. Returns ``(n, 2)`` x, y in px."""
    n, b = images.shape[0], images.shape[1]
    f = np.fft.fftfreq(b)
    lp = ((f[None, :] ** 2 + f[:, None] ** 2) <= k_max ** 2).astype(np.float32)
    c = np.fft.ifft2(np.fft.fft2(images) * np.conj(np.fft.fft2(projections)) * lp).real
    c = np.fft.fftshift(c, axes=(1, 2))
    y, x = np.indices((b, b)) - b // 2
    outside = (x * x + y * y) > max_shift_px ** 2
    c[:, outside] = -np.inf
    flat = np.argmax(c.reshape(n, -1), axis=1)
    iy, ix = flat // b, flat % b
    out = np.zeros((n, 2))
    rows = np.arange(n)
    for axis in (0, 1):  # 0: x (columns), 1: y (rows)
        if axis == 0:
            cm, c0, cp = c[rows, iy, (ix - 1) % b], c[rows, iy, ix], c[rows, iy, (ix + 1) % b]
        else:
            cm, c0, cp = c[rows, (iy - 1) % b, ix], c[rows, iy, ix], c[rows, (iy + 1) % b, ix]
        ok = np.isfinite(cm) & np.isfinite(cp)
        den = np.where(ok, cm - 2 * c0 + cp, 0.0)
        frac = np.where(den < 0, 0.5 * (cm - cp) / np.where(den < 0, den, -1.0), 0.0)
        out[:, axis] = np.clip(frac, -0.5, 0.5)
    out[:, 0] += ix - b // 2
    out[:, 1] += iy - b // 2
    return out


def initial_model(diameter_A: float, box: int, voxel_A: float, lowpass_A: float) -> np.ndarray:
    """A spherical FCC Pt particle of ``diameter_A``, its potential low-passed (paper, Methods)."""
    atoms = fcc_cluster(diameter_A / 10.0, "sphere")
    return model_map(atoms - atoms.mean(axis=0), box, voxel_A, lowpass_A)


def _match_count(a: np.ndarray, b: np.ndarray, within_A: float = 1.0) -> tuple[int, float]:
    """Atoms of ``a`` with one of ``b`` within ``within_A``, and their RMS distance (A)."""
    if len(a) == 0 or len(b) == 0:
        return 0, float("nan")
    from scipy.spatial import cKDTree  # noqa: PLC0415

    d, _ = cKDTree(b).query(a)
    ok = d <= within_A
    return int(ok.sum()), float(np.sqrt((d[ok] ** 2).mean())) if ok.any() else float("nan")


def reconstruct_images(prep: Prepared, cfg: ReconstructConfig, *, xp: Any = np,
                       on_round: Callable[[RoundLog], None] | None = None) -> Reconstruction:
    """Run the refinement loop on pre-processed crops (see the module).

    Parameters
    ----------
    prep : Prepared
        From :func:`~btomo.reconstruct.preprocess.prepare`.
    cfg : ReconstructConfig
    xp : module
        ``numpy`` or ``cupy`` for the orientation search.
    on_round : callable, optional
        Called with each round's :class:`RoundLog` (progress).
    """
    cfg.validate()
    t_all = time.perf_counter()
    images = prep.images[prep.finite]
    n, box, voxel = images.shape[0], prep.box, prep.voxel_A
    if n < 2:
        raise ValueError(f"need at least 2 usable frames to reconstruct, got {n}")
    k_max = min(0.5, voxel / cfg.lowpass_A)
    k_min = max(2.0 / box, voxel / cfg.band_low_A)
    search = OrientationSearch(box, k_min, k_max, directions=cfg.directions, local_deg=cfg.local_search_deg,
                               peaks=cfg.peaks, xp=xp)
    max_shift = cfg.shift_px / prep.bin
    ref = initial_model(prep.diameter_A, box, voxel, cfg.lowpass_A)
    mask = soft_disc(box, min(prep.mask_radius_px, box / 2 - 2), edge=max(2.0, 0.1 * box))
    ball = _ball(box, min(prep.mask_radius_px, box / 2 - 2), max(2.0, 0.1 * box))
    shifts = np.zeros((n, 2))
    rot_prev = None
    atoms_prev = np.zeros((0, 3))
    rounds: list[RoundLog] = []
    seconds = {"search": 0.0, "shifts": 0.0, "insertion": 0.0, "atoms": 0.0}
    result = None
    for r in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        q = image_polar(xp.asarray(images), search.grid, shifts=xp.asarray(shifts))
        projector = Projector(ref)  # one transform of the reference per round: search and shifts
        found = search.search(q, projector)
        t1 = time.perf_counter()
        seconds["search"] += t1 - t0
        rot = found.rotations
        proj = projector.project(rot)
        shifts = find_shifts(images * mask[None], proj * mask[None], max_shift, k_max)
        t2 = time.perf_counter()
        seconds["shifts"] += t2 - t1
        centred = shift_images(images, shifts)
        halves = []
        for parity in (0, 1):
            ins = FourierInserter(box, max_frequency=k_max, kernel_width=cfg.kernel_width)
            ins.insert(centred[parity::2], rot[parity::2])
            halves.append(ins)
        whole = halves[0].merged(halves[1])
        vol = whole.reconstruct() * ball
        h1, h2 = halves[0].reconstruct() * ball, halves[1].reconstruct() * ball
        freq, curve = fsc(h1, h2)
        res_A = fsc_resolution(freq, curve, voxel, first=False)
        t3 = time.perf_counter()
        seconds["insertion"] += t3 - t2
        atoms = find_atoms(vol, voxel, lowpass_A=cfg.lowpass_A, min_separation_A=cfg.atom_min_separation_A,
                           mask_radius_A=prep.mask_radius_px * voxel)
        seconds["atoms"] += time.perf_counter() - t3
        change = _median_change(rot, rot_prev)
        kept, rms = _match_count(atoms.positions_A, atoms_prev)
        entry = RoundLog(r, change, float(np.mean(found.score)), float(np.median(np.hypot(*shifts.T))),
                         len(atoms.positions_A), kept, rms, res_A, atoms.model_correlation, time.perf_counter() - t0)
        rounds.append(entry)
        log.info("round %d: orientations changed %.2f deg (median), score %.4f, shift %.2f px, %d atoms (%d kept, "
                 "%.2f A RMS), FSC 0.143 at %.2f A, map-model %.3f, %.1f s", r, entry.median_change_deg,
                 entry.mean_score, entry.median_shift_px, entry.atoms, kept, rms, res_A, atoms.model_correlation,
                 entry.seconds)
        if on_round is not None:
            on_round(entry)
        result = Reconstruction(vol, (h1, h2), voxel, rot, shifts * voxel, found.score, prep.finite.copy(), atoms,
                                freq / voxel, curve, res_A)
        rot_prev, atoms_prev = rot, atoms.positions_A
        if len(atoms.positions_A) == 0:
            log.warning("round %d found no atoms: the map is kept as the next reference", r)
            ref = vol
        else:
            ref = model_map(atoms.positions_A, box, voxel, cfg.lowpass_A)
    assert result is not None
    result.rounds = rounds
    result.prepared = prep
    seconds["total"] = time.perf_counter() - t_all
    result.seconds = seconds
    return result


def _median_change(rot: np.ndarray, prev: np.ndarray | None) -> float:
    """Median angle (deg) between two rounds' orientations, the smallest over the cube's 24
    symmetry mates (the initial model is cubic: until the map breaks its symmetry, a frame may
    move to an equivalent mate without changing anything)."""
    if prev is None:
        return float("nan")
    from btomo.kernels.coverage import cubic_rotations  # noqa: PLC0415

    return float(np.median(np.min([angle_between(rot, prev @ s) for s in cubic_rotations()], axis=0)))


def _ball(box: int, radius: float, edge: float) -> np.ndarray:
    """A soft 3D ball (raised-cosine edge) about ``box // 2``."""
    g = np.arange(box) - box // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    t = np.clip((np.sqrt(x * x + y * y + z * z) - radius) / max(edge, 1e-9), 0.0, 1.0)
    return 0.5 + 0.5 * np.cos(np.pi * t)
