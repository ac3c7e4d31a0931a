"""Orientation of a crystalline particle from the lattice peaks of one frame, and its tracking.

A lattice frame shows the fringes of the reflections ``g`` whose planes are nearly edge-on: in lab
coordinates ``R g`` has a small component along the beam (within the particle's shape transform,
about ``1 / D``), and its image-plane part is where the peak sits in the crop's FFT. So an
orientation ``R`` (body -> lab) predicts the peak pattern, and :func:`peak_match_score` says how
well it explains the observed peaks (:func:`lattice_peaks`). The FCC lattice has the cubic
point group, so symmetry mates score the same: one frame places the particle modulo 24
rotations. :class:`OrientationFilter` tracks the full orientation through a series with a
particle filter: Brownian rotation between frames (the rotational diffusion), the peak score
as the likelihood; because full orientations of symmetry mates are at least 90 deg apart, a
filter that moves a few degrees per frame stays on one branch, and the views it reports form a
trajectory that is right up to one global rotation (which leaves coverage unchanged).

Status: validated against the simulator's truth in ``tools/proto_orientation_filter.py`` and
docs/windows.md; the window stage that uses it is the next step of issue 6.
"""
from __future__ import annotations

import math

import numpy as np

from .frames import box_sum
from .rotation import quat_from_rotvec, quat_multiply, quat_normalize, quat_to_matrix, random_quaternion
from .xp import array_namespace, to_numpy

__all__ = ["fcc_reflections", "lattice_peaks", "peak_match_score", "cubic_quaternions", "OrientationFilter"]


def fcc_reflections(lattice_A: float = 3.92, planes: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (2, 0, 0), (2, 2, 0))
                    ) -> np.ndarray:
    """Reciprocal vectors (1/A, body frame) of the FCC reflections of the families ``planes``
    (all signs and permutations; FCC: h, k, l all odd or all even), shape (n, 3)."""
    wanted = {sum(c * c for c in p) for p in planes}
    out = [(h, k, l) for h in range(-4, 5) for k in range(-4, 5) for l in range(-4, 5)
           if (h, k, l) != (0, 0, 0) and len({h % 2, k % 2, l % 2}) == 1 and h * h + k * k + l * l in wanted]
    return np.array(out, dtype=np.float64) / lattice_A


def lattice_peaks(power, band, floor: float | None = None, min_ratio: float = 6.0, max_peaks: int = 12
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Lattice peaks of a crop's power spectrum (full FFT layout).

    Local maxima of the 3x3-summed ``power`` inside ``band`` that stand ``min_ratio`` times above
    the noise expected in 3x3 bins. The noise per bin is ``floor`` when given, else estimated
    ring by ring (the median / ln 2 of each 1-bin-wide ring of the band): a denoised or
    detector-filtered crop has a background that falls with frequency. At most ``max_peaks``, the
    strongest. Returns positions ``(m, 2)`` as signed FFT bins ``(kx, ky)`` (x = column) and
    weights ``(m,)``: the ratio minus 1.
    """
    xp = array_namespace(power)
    n0, n1 = power.shape
    s = box_sum(power, 1)
    if floor is None:
        fy = xp.fft.fftfreq(n0)[:, None] * n0
        fx = xp.fft.fftfreq(n1)[None, :] * n1
        ring = xp.round(xp.sqrt(fy * fy + fx * fx)).astype(int)
        rings = to_numpy(ring[band])
        vals = to_numpy(power[band])
        noise = np.zeros(int(rings.max()) + 2)
        for r in np.unique(rings):
            noise[r] = float(np.median(vals[rings == r])) / math.log(2.0)
        noise_map = xp.asarray(noise)[xp.clip(ring, 0, len(noise) - 1)]
    else:
        noise_map = xp.full(power.shape, float(floor))
    ratio = xp.where(band, s / (9.0 * xp.maximum(noise_map, 1e-30)), 0.0)
    loc = ratio > min_ratio
    for axis in (0, 1):
        loc &= (ratio >= xp.roll(ratio, 1, axis)) & (ratio >= xp.roll(ratio, -1, axis))
    iy, ix = (to_numpy(a) for a in xp.nonzero(loc))
    r = to_numpy(ratio[loc]).astype(np.float64)
    keep = np.argsort(-r)[:max_peaks]
    iy, ix, r = iy[keep], ix[keep], r[keep]
    ky = (iy + n0 // 2) % n0 - n0 // 2
    kx = (ix + n1 // 2) % n1 - n1 // 2
    return np.stack([kx, ky], axis=1).astype(np.float64), r - 1.0


def peak_match_score(rotations: np.ndarray, reflections: np.ndarray, peaks: np.ndarray, weights: np.ndarray, *,
                     box: int, pixel_size_A: float, diameter_A: float, sigma_bins: float = 1.5) -> np.ndarray:
    """How well each orientation explains the observed peaks (0-1).

    For each observed peak, the best-matching predicted reflection counts with its visibility
    ``exp(-(R g)_z^2 / (2 s_z^2))`` (``s_z = 1 / (1.5 D)``: the particle's shape transform) times a
    Gaussian of the distance in FFT bins; the peaks' weights average the result.

    Parameters
    ----------
    rotations : (n, 3, 3)
        Body -> lab rotation matrices.
    reflections : (g, 3)
        Body-frame reciprocal vectors, 1/A.
    peaks, weights : (m, 2), (m,)
        From :func:`lattice_peaks`.
    box : int
        Crop side, px.
    pixel_size_A, diameter_A : float
    sigma_bins : float
        Peak position tolerance, FFT bins.
    """
    if len(peaks) == 0:
        return np.zeros(len(rotations))
    k = np.einsum("nij,gj->ngi", rotations, reflections)
    s_z = 1.0 / (1.5 * diameter_A)
    vis = np.exp(-k[..., 2] ** 2 / (2.0 * s_z * s_z))
    kxy = k[..., :2] * (box * pixel_size_A)
    d2 = ((kxy[:, None, :, :] - peaks[None, :, None, :]) ** 2).sum(-1)
    match = (vis[:, None, :] * np.exp(-d2 / (2.0 * sigma_bins**2))).max(-1)
    return (match * weights[None, :]).sum(-1) / max(float(weights.sum()), 1e-12)


def cubic_quaternions() -> np.ndarray:
    """The 24 rotations of the cube (point group O) as unit quaternions ``(w, x, y, z)``, one sign
    each: the identity and the three 180 deg turns about the axes, the eight 120 deg turns about
    the body diagonals, and the twelve 90 deg / 180 deg turns of ``(1 +- e_a) / sqrt 2`` type."""
    out = [np.eye(4)[i] for i in range(4)]
    out += [np.array([1.0, sx, sy, sz]) / 2.0 for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)]
    for a in range(4):
        for b in range(a + 1, 4):
            for sb in (1.0, -1.0):
                q = np.zeros(4)
                q[a], q[b] = 1.0, sb
                out.append(q / math.sqrt(2.0))
    return np.array(out)


_CUBIC_Q = cubic_quaternions()


def fold_cubic(q: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Each orientation of ``q`` (n, 4) replaced by its cubic mate ``q s`` (``R -> R S``: the same
    FCC peaks) nearest ``ref`` (4,)."""
    mates = quat_multiply(q[:, None, :], _CUBIC_Q[None, :, :])  # (n, 24, 4)
    k = np.argmax(np.abs(mates @ ref), axis=1)
    return mates[np.arange(len(q)), k]


class OrientationFilter:
    """Particle filter on orientations (see the module).

    Parameters
    ----------
    rot_diffusion_rad2_s : float
        Rotational diffusion assumed between frames, rad^2/s.
    fps : float
    particles : int
        Orientations kept after resampling (the first update starts from ``8 x`` as many, uniform).
    sharpness : float
        Likelihood ``exp(sharpness x score)``.
    stick_deg : float
        The reported orientation is the heaviest particle within this angle of the previous report
        (when they hold at least ``min_weight`` of the posterior), so the report stays on a branch.
    floor_rad : float
        Extra random turn per update, rad (model error).
    seed : int
    mean_report : bool
        Report the posterior mean of the branch rather than its heaviest particle (default).
    fold : bool
        After weighting, replace every particle by its cubic mate nearest the previous report (the
        likelihood is invariant under ``R -> R S``), so the whole posterior lives on the reported
        branch: branch hops of the report, which inflate coverage, become rarer and the
        particles are not shared among 24 copies of the posterior.
    """

    def __init__(self, *, rot_diffusion_rad2_s: float, fps: float, particles: int = 3000, sharpness: float = 8.0,
                 stick_deg: float = 30.0, min_weight: float = 0.05, floor_rad: float = 0.02, seed: int = 0,
                 mean_report: bool = False, fold: bool = False):
        self.rng = np.random.default_rng(seed)
        self.d_r, self.fps = rot_diffusion_rad2_s, fps
        self.n, self.sharpness = particles, sharpness
        self.stick, self.min_weight, self.floor = stick_deg, min_weight, floor_rad
        self.mean_report = mean_report
        self.fold = fold
        self.q = random_quaternion(self.rng, 8 * particles)
        self.w = np.full(len(self.q), 1.0 / len(self.q))
        self.last_frame: int | None = None
        self.report: np.ndarray | None = None
        self.updates = 0

    def update(self, frame: int, score_fn) -> np.ndarray:
        """Advance to ``frame`` (diffusion since the last update) and weigh the particles by
        ``score_fn(rotation matrices (n, 3, 3)) -> (n,)``; returns the reported quaternion."""
        if self.last_frame is not None:
            gap = max(frame - self.last_frame, 1)
            s = math.sqrt(2.0 * self.d_r * gap / self.fps) + self.floor
            turn = quat_from_rotvec(self.rng.normal(0.0, s, (len(self.q), 3)))
            self.q = quat_normalize(quat_multiply(turn, self.q))
        self.last_frame = frame
        score = np.asarray(score_fn(quat_to_matrix(self.q)), dtype=np.float64)
        lw = np.log(self.w + 1e-300) + self.sharpness * score
        w = np.exp(lw - lw.max())
        w /= w.sum()
        best = int(np.argmax(w))
        if self.fold:
            self.q = fold_cubic(self.q, self.report if self.report is not None else self.q[best])
        branch = None
        if self.report is not None:
            ang = 2.0 * np.degrees(np.arccos(np.clip(np.abs(self.q @ self.report), 0.0, 1.0)))
            near = ang < self.stick
            if w[near].sum() > self.min_weight:
                best = int(np.flatnonzero(near)[np.argmax(w[near])])
                branch = near
        if self.mean_report:
            # the posterior mean on the reported branch: the weighted average of the particles
            # within stick_deg of the best one (the principal eigenvector of sum w q q^T)
            ang = 2.0 * np.degrees(np.arccos(np.clip(np.abs(self.q @ self.q[best]), 0.0, 1.0)))
            sel = ang < self.stick if branch is None else branch & (ang < self.stick)
            qs, ws = self.q[sel], w[sel]
            _, vecs = np.linalg.eigh((qs * ws[:, None]).T @ qs)
            self.report = quat_normalize(vecs[:, -1])
        else:
            self.report = self.q[best].copy()
        # systematic resampling to n particles
        u = (self.rng.random() + np.arange(self.n)) / self.n
        idx = np.minimum(np.searchsorted(np.cumsum(w), u), len(w) - 1)
        self.q, self.w = self.q[idx], np.full(self.n, 1.0 / self.n)
        self.updates += 1
        return self.report
