"""Between consecutive structures: rigid alignment of maps and atom sets, atom correspondence,
displacements, etch rate and the local cross-correlation of aligned maps (paper, Methods
"Time-series analysis"; Figs. 2 and 3).

Maps are ``[z, y, x]`` arrays with the origin at voxel ``box // 2`` and a voxel size in A; atoms
are ``(n, 3)`` (x, y, z) in A about that origin, as ``btomo reconstruct`` writes them. Every
reconstruction fixes its own frame only up to the cube's symmetry and, since one window cannot
tell the particle's hand, an inversion: the alignments therefore start from the 48 signed axis
permutations (the "lattice-equivalent orientations") and polish the best.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from btomo.kernels.superpose import Superposition, match_atoms, signed_permutations, superpose

from .structure import _Computed, check_positions, fit_fcc_lattice

log = logging.getLogger(__name__)

__all__ = ["MapAlignment", "align_maps", "transform_map", "align_atoms", "Correspondence", "local_correlation",
           "etch_rate_atoms_per_s"]


def _check_map(vol, what: str) -> np.ndarray:
    v = np.asarray(vol, dtype=np.float64)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"expected {what} as a cubic 3D map, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"expected a finite {what}, got {int(np.sum(~np.isfinite(v)))} NaN/inf voxels")
    return v


def _zyx(matrix_xyz: np.ndarray) -> np.ndarray:
    """The same linear map acting on ``[z, y, x]`` index vectors."""
    return matrix_xyz[::-1, ::-1]


def transform_map(vol, matrix: np.ndarray, translation_A, voxel_A: float, *, order: int = 3,
                  prefiltered: bool = False) -> np.ndarray:
    """The map moved rigidly: a feature at x (A, about the centre) goes to ``matrix @ x + t``.

    Parameters
    ----------
    vol : (box, box, box)
        ``[z, y, x]``; with ``prefiltered`` the spline coefficients of ``order``
        (``scipy.ndimage.spline_filter``).
    matrix : (3, 3)
        Rotation or rotoinversion acting on (x, y, z).
    translation_A : (3,)
        (x, y, z), A.
    """
    box = vol.shape[0]
    c = np.full(3, box // 2, dtype=np.float64)
    inv = _zyx(np.linalg.inv(matrix))
    t = np.asarray(translation_A, dtype=np.float64)[::-1] / voxel_A
    # output index o reads input index inv (o - c - t) + c
    offset = c - inv @ (c + t)
    return ndimage.affine_transform(vol, inv, offset=offset, order=order, mode="constant", cval=0.0,
                                    prefilter=not prefiltered)


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _fft_shift(fixed: np.ndarray, moved: np.ndarray, max_vox: float) -> tuple[np.ndarray, float]:
    """Integer-voxel translation (x, y, z) of ``moved`` that best correlates with ``fixed``,
    within ``max_vox`` per axis."""
    f = np.fft.rfftn(fixed - fixed.mean())
    m = np.fft.rfftn(moved - moved.mean())
    cc = np.fft.irfftn(f * np.conj(m), s=fixed.shape, axes=(0, 1, 2))
    box = fixed.shape[0]
    g = np.fft.fftfreq(box) * box
    beyond = np.abs(g) > max_vox
    far = beyond[:, None, None] | beyond[None, :, None] | beyond[None, None, :]
    cc[far] = -np.inf
    k = np.unravel_index(int(np.argmax(cc)), cc.shape)
    return np.array([g[k[2]], g[k[1]], g[k[0]]]), float(cc[k])


@dataclass
class MapAlignment:
    """``moving`` aligned onto ``fixed``: a feature of ``moving`` at x (A, about the box centre)
    sits at ``matrix @ x + translation_A`` in ``fixed``.

    Attributes
    ----------
    matrix : (3, 3)
    translation_A : (3,)
    inverted : bool
        ``matrix`` includes an inversion (the two maps have opposite hands).
    correlation : float
        Pearson correlation of the aligned maps (within the mask if one was given).
    start_correlations : (48,)
        Correlation after the translation search from each signed permutation, before polishing.
    """

    matrix: np.ndarray
    translation_A: np.ndarray
    inverted: bool
    correlation: float
    start_correlations: np.ndarray

    def apply_to_atoms(self, atoms_A: np.ndarray) -> np.ndarray:
        """``moving``'s atoms in ``fixed``'s frame."""
        return np.asarray(atoms_A, dtype=np.float64).reshape(-1, 3) @ self.matrix.T + self.translation_A

    @property
    def rotation_deg(self) -> float:
        """Angle of the proper part of ``matrix``, deg."""
        m = self.matrix * (-1.0 if self.inverted else 1.0)
        return float(np.degrees(Rotation.from_matrix(m).magnitude()))


def align_maps(fixed, moving, voxel_A: float, *, allow_inversion: bool = True, max_shift_A: float = 5.0,
               polish: int = 4, coarse_A: float = 1.5, mask_radius_A: float | None = None) -> MapAlignment:
    """Rigid-body alignment of ``moving`` on ``fixed`` maximising their cross-correlation.

    The 48 (or 24 without inversion) signed axis permutations are each followed by an FFT search
    for the translation (within ``max_shift_A``) on both maps blurred by a Gaussian of
    ``coarse_A`` (the particle's shape decides among lattice-equivalent orientations; at full
    resolution a voxel of misregistration scrambles the ranking); the best ``polish`` starts are
    refined by a local optimisation (Powell) of the rotation vector and the translation on the
    blurred maps (trilinear), and the best of those once more on the maps themselves (cubic splines), as
    ChimeraX's "fit in map" does. With ``mask_radius_A`` only voxels within that radius of the
    centre count.
    """
    f = _check_map(fixed, "fixed map")
    m = _check_map(moving, "moving map")
    if f.shape != m.shape:
        raise ValueError(f"expected maps of the same shape, got {f.shape} and {m.shape}")
    if voxel_A <= 0:
        raise ValueError(f"expected a positive voxel size in A, got {voxel_A}")
    box = f.shape[0]
    if mask_radius_A is None:
        mask = np.ones_like(f, dtype=bool)
    else:
        g = (np.arange(box) - box // 2) * voxel_A
        mask = (g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) <= mask_radius_A ** 2
    sigma = coarse_A / voxel_A
    f_lo = ndimage.gaussian_filter(f, sigma, mode="constant")
    m_lo = ndimage.gaussian_filter(m, sigma, mode="constant")
    starts = signed_permutations(proper_only=not allow_inversion)
    found = []
    for s in starts:
        moved = transform_map(m_lo, s, np.zeros(3), voxel_A, order=1)
        t_vox, _ = _fft_shift(f_lo, moved, max_shift_A / voxel_A)
        found.append((_cc(f_lo[mask], ndimage.shift(moved, t_vox[::-1], order=1)[mask]), s, t_vox * voxel_A))

    def fit(target, source, order, s, x0, xtol):
        def cost(x):
            rot = Rotation.from_rotvec(np.radians(x[:3])).as_matrix()
            moved = transform_map(source, rot @ s, x[3:], voxel_A, order=order, prefiltered=order > 1)
            return -_cc(target[mask], moved[mask])

        return optimize.minimize(cost, x0, method="Powell", options={"xtol": xtol, "ftol": 1e-9, "maxfev": 1500})

    best = None
    for k in np.argsort([-c for c, _, _ in found])[:max(1, polish)]:
        _, s, t0 = found[k]
        res = fit(f_lo, m_lo, 1, s, np.concatenate([np.zeros(3), t0]), 1e-2)
        if best is None or res.fun < best[0]:
            best = (res.fun, s, res.x)
    _, s, x = best
    res = fit(f, ndimage.spline_filter(m, order=3), 3, s, x, 1e-3)
    log.debug("map alignment: %d evaluations in the last polish, correlation %.4f", res.nfev, -res.fun)
    rot = Rotation.from_rotvec(np.radians(res.x[:3])).as_matrix()
    start_cc = np.array([c for c, _, _ in found])
    return MapAlignment(rot @ s, res.x[3:].copy(), bool(np.linalg.det(s) < 0), -float(res.fun), start_cc)


def align_atoms(fixed, moving, *, allow_inversion: bool = True, within_A: float = 1.0,
                random_starts: int = 24, seed: int = 0) -> Superposition:
    """Rigid superposition of ``moving``'s atoms on ``fixed``'s by iterative closest points
    (:func:`btomo.kernels.superpose.superpose`) from the 48 signed axis permutations, the same
    48 taken between the two structures' fitted FCC lattices (so that two crystals in arbitrary
    frames start within a few degrees), and ``random_starts`` random rotations (for disordered
    structures)."""
    f = check_positions(fixed, "fixed atoms")
    m = check_positions(moving, "moving atoms")
    starts: list[np.ndarray] = []
    try:
        ra, _, _ = fit_fcc_lattice(f)
        rb, _, _ = fit_fcc_lattice(m)
        starts += [ra @ s @ rb.T for s in signed_permutations(proper_only=not allow_inversion)]
    except ValueError as exc:  # too few atoms or no bonds: no lattice to start from
        log.debug("atom alignment without lattice starts: %s", exc)
    if random_starts > 0:
        starts += list(Rotation.random(random_starts, random_state=seed).as_matrix())
    return superpose(m, f, allow_inversion=allow_inversion, within_A=within_A, starts=starts)


class Correspondence(_Computed):
    """Which atoms of two aligned consecutive structures are the same atom.

    Atoms are paired one to one by an optimal assignment (Hungarian, summed distance) among
    pairs closer than ``cutoff_A``; the paper pairs closest atoms and checks by hand, with all
    displacements below the 2.77 A nearest-neighbour distance.

    Parameters
    ----------
    cutoff_A : float
        Largest displacement of a persistent atom, A.

    Results
    -------
    pairs : (i_before, i_after)
        Persistent atoms.
    removed : indices into ``before`` without a partner (lost: etched).
    rearranged : indices into ``after`` without a partner (appeared: re-adsorbed or moved far).
    displacements_A : (n_pairs, 3)
    """

    def __init__(self, *, cutoff_A: float = 2.0):
        if cutoff_A <= 0:
            raise ValueError(f"expected a positive cutoff in A, got {cutoff_A}")
        self.cutoff_A = float(cutoff_A)

    def compute(self, before, after) -> "Correspondence":
        b = check_positions(before, "atoms before")
        a = check_positions(after, "atoms after")
        i, j = match_atoms(b, a, self.cutoff_A)
        order = np.argsort(i)
        i, j = i[order], j[order]
        self._pairs = (i, j)
        self._removed = np.setdiff1d(np.arange(len(b)), i)
        self._rearranged = np.setdiff1d(np.arange(len(a)), j)
        self._disp = a[j] - b[i]
        self._n = (len(b), len(a))
        self._done = True
        return self

    @property
    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        self._need()
        return self._pairs

    @property
    def removed(self) -> np.ndarray:
        self._need()
        return self._removed

    @property
    def rearranged(self) -> np.ndarray:
        self._need()
        return self._rearranged

    @property
    def displacements_A(self) -> np.ndarray:
        self._need()
        return self._disp

    @property
    def displacement_lengths_A(self) -> np.ndarray:
        self._need()
        return np.linalg.norm(self._disp, axis=1)

    def summary(self) -> dict:
        """Counts and displacement statistics (A)."""
        self._need()
        d = self.displacement_lengths_A
        return {"atoms_before": self._n[0], "atoms_after": self._n[1], "persistent": len(self._pairs[0]),
                "removed": len(self._removed), "rearranged": len(self._rearranged),
                "displacement_mean_A": float(d.mean()) if len(d) else math.nan,
                "displacement_median_A": float(np.median(d)) if len(d) else math.nan,
                "displacement_max_A": float(d.max()) if len(d) else math.nan}


def local_correlation(a, b, voxel_A: float, *, sigma_A: float = 1.5) -> np.ndarray:
    """Local Pearson correlation of two aligned maps in a Gaussian window of ``sigma_A``
    (paper Fig. 2c, g, k): near 1 where the maps agree, low where atoms left or moved."""
    x = _check_map(a, "first map")
    y = _check_map(b, "second map")
    if x.shape != y.shape:
        raise ValueError(f"expected maps of the same shape, got {x.shape} and {y.shape}")
    s = sigma_A / voxel_A

    def blur(v):
        return ndimage.gaussian_filter(v, s, mode="constant")

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    den = np.sqrt(np.clip(vx, 0, None) * np.clip(vy, 0, None))
    floor = 1e-6 * float(den.max()) if den.size and den.max() > 0 else 1e-30
    return np.where(den > floor, cov / np.maximum(den, floor), 0.0)


def etch_rate_atoms_per_s(n_before: int, n_after: int, t_before_s: tuple[float, float],
                          t_after_s: tuple[float, float]) -> float:
    """Net atoms lost per second between two structures, from the midpoints of their windows'
    time spans (s)."""
    dt = 0.5 * (t_after_s[0] + t_after_s[1]) - 0.5 * (t_before_s[0] + t_before_s[1])
    if not dt > 0:
        raise ValueError(f"expected the second window after the first, got midpoints {dt:+.3f} s apart")
    return (n_before - n_after) / dt
