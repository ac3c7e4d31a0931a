"""Orientation search by projection matching, as dense linear algebra (polar Fourier correlation).

Every image is compared with central sections of the reference's 3D transform over a discrete set
of projection directions, every in-plane angle at once:

* **Polar transforms.** An image's 2D transform is sampled exactly (a DFT, as two matrix
  products) on a polar grid of ``R`` rings between ``k_min`` and ``k_max`` (cycles/voxel) and
  ``A`` angles; a reference direction's central section is read on the same grid from the
  reference's oversampled 3D transform (:class:`~btomo.reconstruct.projection.Projector`).
  Both are then Fourier transformed along the angle: ``Q[r, m]``.
* **In-plane angle by FFT.** Rotating a view in its plane by ``psi`` shifts its polar samples
  along the angle, so the correlation of image ``i`` with direction ``d`` at every in-plane angle
  is ``C_id(psi_k) = irfft_m( sum_r w_r Q_i[r, m] conj(Q_d[r, m]) )[k]``. Because the images and
  the map are real, ``Q[r, -m] = (-1)^m conj(Q[r, m])`` and ``m = 0 ... A/2`` suffice.
* **Batched matrix products.** For each angular frequency ``m`` the sum over rings is one matrix
  product ``(images x R) @ (R x directions)``: a batched complex GEMM that runs at BLAS speed on
  the CPU and through cuBLAS with CuPy (the same code, ``xp``).

The best few (``peaks``) directions of the coarse search are refined on a grid four times finer
within ``local_deg``; the in-plane angle of the best match is refined by a parabola through its
three correlation samples. Scores are normalised cross-correlations over the band.

Orientation convention (:mod:`btomo.kernels.rotation`): ``R`` rotates particle coordinates into
the lab, the beam is lab z, and the search's orientation is ``R = Rz(psi) R_d`` with ``R_d`` the
direction's rotation (its third row is the view direction, the beam in particle coordinates).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from btomo.kernels.coverage import fibonacci_sphere
from btomo.kernels.xp import array_namespace, to_numpy

from .projection import Projector

__all__ = ["PolarGrid", "direction_rotations", "rot_z", "image_polar", "image_polar_samples", "shift_trials",
           "reference_polar", "SearchResult", "OrientationSearch", "angle_between"]


LOCAL_BATCH = 8  # images per local-pass step: their (angles, candidates, shifts) scores stay ~50 MB


def rot_z(psi):
    """Rotations ``(n, 3, 3)`` by angles ``psi`` (rad) about lab z."""
    psi = np.asarray(psi, dtype=np.float64)
    c, s = np.cos(psi), np.sin(psi)
    o, z = np.ones_like(psi), np.zeros_like(psi)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def direction_rotations(directions: np.ndarray) -> np.ndarray:
    """A rotation ``R_d`` (particle -> lab) per unit direction ``n`` with ``R_d^T e_z = n`` (rows
    ``u, v, n``, ``u`` perpendicular to ``n`` and as close to particle x as can be)."""
    n = np.asarray(directions, dtype=np.float64)
    n = n / np.linalg.norm(n, axis=1, keepdims=True)
    ref = np.where(np.abs(n[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    u = ref - (ref * n).sum(1, keepdims=True) * n
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(n, u)
    return np.stack([u, v, n], axis=1)


def angle_between(ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """Rotation angle (deg) of ``ra rb^T`` for stacks of rotations ``(..., 3, 3)`` (broadcast)."""
    tr = np.einsum("...ij,...ij->...", ra, rb)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


@dataclass(frozen=True)
class PolarGrid:
    """Rings ``k_min ... k_max`` (cycles/voxel, spaced 1/box) and ``angles`` (even) on a box.

    Attributes
    ----------
    radii : ndarray (R,)
        Ring radii, cycles/voxel.
    angles : int
        Samples per ring, over 0 ... 2 pi.
    """

    box: int
    radii: np.ndarray
    angles: int

    @classmethod
    def for_band(cls, box: int, k_min: float, k_max: float) -> "PolarGrid":
        """Rings every ``1/box`` from ``k_min`` to ``k_max`` (cycles/voxel, at most 0.5), and
        enough angles (a multiple of 8) to sample the outer ring at least as finely."""
        k_max = min(float(k_max), 0.5)
        if not 0 < k_min < k_max:
            raise ValueError(f"expected 0 < k_min < k_max <= 0.5 cycles/voxel, got {k_min}, {k_max}")
        radii = np.arange(k_min, k_max + 1e-9, 1.0 / box)
        angles = 8 * math.ceil(2 * math.pi * k_max * box / 8)
        return cls(box, radii, angles)

    @property
    def points(self) -> np.ndarray:
        """(R A/2, 2) sample positions (kx, ky), cycles/voxel, ring-major, over the half circle
        ``0 <= theta < pi`` (the other half is their complex conjugate: real images and maps)."""
        th = 2 * math.pi * np.arange(self.angles // 2) / self.angles
        kx = self.radii[:, None] * np.cos(th)[None, :]
        ky = self.radii[:, None] * np.sin(th)[None, :]
        return np.stack([kx.ravel(), ky.ravel()], axis=1)

    @property
    def harmonics(self) -> int:
        return self.angles // 2 + 1


def _to_harmonics(p, grid: PolarGrid, xp):
    """(n, R A/2) polar samples over the half circle -> (n, R, A/2+1) complex64 angular harmonics
    of the whole circle (``P(theta + pi) = conj P(theta)``)."""
    half = p.reshape(p.shape[0], len(grid.radii), grid.angles // 2)
    q = xp.fft.fft(xp.concatenate([half, xp.conj(half)], axis=2), axis=2)[:, :, :grid.harmonics]
    return q.astype(xp.complex64)


def image_polar(images, grid: PolarGrid, shifts=None, batch: int = 64):
    """Angular harmonics ``(n, R, A/2+1)`` of images ``(n, box, box)`` (origin at ``box // 2``);
    :func:`image_polar_samples` then the Fourier transform along the angle."""
    xp = array_namespace(images)
    return _to_harmonics(image_polar_samples(images, grid, shifts, batch), grid, xp)


def image_polar_samples(images, grid: PolarGrid, shifts=None, batch: int = 64):
    """Images' 2D transforms ``(n, R A/2)`` on the polar points (:attr:`PolarGrid.points`).

    The transform is exact on the polar points: ``F(k) = sum_x img(x) exp(-2 pi i k.x)`` as two
    matrix products (over columns, then over rows). ``shifts`` ``(n, 2)`` (x, y, voxels) are
    undone: an image whose particle sits at ``+s`` is compared as if centred.
    """
    xp = array_namespace(images)
    n, b = images.shape[0], grid.box
    if images.shape[1:] != (b, b):
        raise ValueError(f"expected images (n, {b}, {b}), got {tuple(images.shape)}")
    pts = xp.asarray(grid.points)
    x = xp.arange(b, dtype=xp.float64) - b // 2
    ex = xp.exp(-2j * math.pi * x[:, None] * pts[None, :, 0]).astype(xp.complex64)  # (box_x, RA)
    ey = xp.exp(-2j * math.pi * x[:, None] * pts[None, :, 1]).astype(xp.complex64)  # (box_y, RA)
    out = xp.empty((n, pts.shape[0]), dtype=xp.complex64)
    for i in range(0, n, batch):
        im = xp.asarray(images[i:i + batch], dtype=xp.float32).astype(xp.complex64)
        t = im @ ex  # (nb, box_y, RA): sum over columns
        p = (t * ey[None]).sum(axis=1)  # sum over rows
        if shifts is not None:
            p = p * _shift_phase(xp.asarray(shifts[i:i + batch], dtype=xp.float64), pts, xp)
        out[i:i + batch] = p
    return out


def _shift_phase(shifts, pts, xp):
    """``exp(2 pi i k.s)`` ``(n, RA)`` complex64: multiplies the samples of an image whose
    particle sits at ``+s`` (x, y, voxels) into those of the centred one."""
    return xp.exp(2j * math.pi * (shifts[:, 0:1] * pts[None, :, 0] + shifts[:, 1:2] * pts[None, :, 1])).astype(
        xp.complex64)


def shift_trials(step: float, reach: int) -> np.ndarray:
    """The ``(2 reach + 1)^2`` trial shifts ``(T, 2)`` (x, y, voxels) of a square grid of
    ``step`` about zero, zero first."""
    g = step * np.arange(-reach, reach + 1)
    t = np.stack(np.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    return t[np.argsort(np.hypot(t[:, 0], t[:, 1]), kind="stable")]


def reference_polar(projector: Projector, rotations, grid: PolarGrid, batch: int = 256):
    """Angular harmonics ``(d, R, A/2+1)`` of the reference's central sections for rotations
    ``(d, 3, 3)`` (particle -> lab), read from the projector's oversampled transform."""
    xp = projector.xp
    rot = xp.asarray(rotations, dtype=xp.float64)
    pts = xp.asarray(grid.points)
    out = xp.empty((rot.shape[0], len(grid.radii), grid.harmonics), dtype=xp.complex64)
    for i in range(0, rot.shape[0], batch):
        out[i:i + batch] = _to_harmonics(projector.sample(rot[i:i + batch], pts), grid, xp)
    return out


def _ring_power(q, xp):
    """Mean power per ring ``(R,)`` over a stack of harmonics ``(n, R, M)``."""
    return (xp.abs(q) ** 2).astype(xp.float64).sum(axis=2).mean(axis=0)


def _norms(q, weights, xp):
    """Weighted norms ``sqrt(sum_r w_r sum_a |P[r, a]|^2)`` from harmonics (Parseval; the half
    spectrum counts twice except m = 0 and A/2)."""
    mult = xp.full(q.shape[2], 2.0, dtype=xp.float32)
    mult[0] = 1.0
    mult[-1] = 1.0
    e = (xp.abs(q) ** 2 * mult[None, None, :]).sum(axis=2)  # (n, R)
    return xp.sqrt(xp.maximum((e * weights[None, :]).sum(axis=1), 1e-30))


@dataclass
class SearchResult:
    """Per image: the best orientation and its score.

    Attributes
    ----------
    rotations : (n, 3, 3)
        ``Rz(psi) R_d`` (particle -> lab).
    direction : (n,) int
        Index of the best fine direction.
    psi_rad : (n,)
        In-plane angle, rad.
    score : (n,)
        Normalised cross-correlation of the best match.
    shift : (n, 2)
        The trial shift (x, y, voxels) of the best match, on top of the shifts the images were
        given (zero without trials).
    candidate_scores : (n, 2 g) or None
        With ``candidates`` (and ``mates``): each image's score at each mate ``R S_g`` of its
        best orientation ``R`` and at the same turned by 180 deg in the image plane,
        ``Rz(pi) R S_g``, exactly those rotations, the best over the trial shifts (the labels of
        :func:`btomo.reconstruct.continuity.candidates`).
    """

    rotations: np.ndarray
    direction: np.ndarray
    psi_rad: np.ndarray
    score: np.ndarray
    shift: np.ndarray
    candidate_scores: np.ndarray | None = None


class OrientationSearch:
    """Projection matching of images against a reference map (see the module).

    Parameters
    ----------
    box : int
        Image and map side, voxels.
    k_min, k_max : float
        Band of the comparison, cycles/voxel.
    directions : int
        Coarse search directions (Fibonacci sphere); the local search uses four times as many.
    local_deg : float
        Half-width of the local search around each coarse peak, deg.
    peaks : int
        Coarse peaks refined locally.
    ring_filter : callable, optional
        The images' contrast transfer as a function of spatial frequency (cycles/voxel, an
        array): the reference's sections are multiplied by it ring by ring (it depends on
        ``|k|`` only, so it commutes with the in-plane angle), so that they are compared with
        what the microscope shows of the reference, not with its bare projection
        (:mod:`~btomo.reconstruct.ctf`). ``None``: no transfer (1).
    xp : module
        ``numpy`` or ``cupy``.
    """

    def __init__(self, box: int, k_min: float, k_max: float, *, directions: int = 2500, local_deg: float = 10.0,
                 peaks: int = 3, ring_filter: Any = None, xp: Any = np):
        self.grid = PolarGrid.for_band(box, k_min, k_max)
        self.xp = xp
        self.peaks = max(1, int(peaks))
        self.coarse_dirs = fibonacci_sphere(int(directions))
        self.fine_dirs = fibonacci_sphere(4 * int(directions))
        self.coarse_rot = direction_rotations(self.coarse_dirs)
        self.fine_rot = direction_rotations(self.fine_dirs)
        # fine directions within local_deg of each coarse one (fixed lists, padded with -1)
        from scipy.spatial import cKDTree  # noqa: PLC0415

        chord = 2 * math.sin(math.radians(local_deg) / 2)
        lists = cKDTree(self.fine_dirs).query_ball_point(self.coarse_dirs, chord)
        width = max(len(v) for v in lists)
        self.neighbours = np.full((len(lists), width), -1, dtype=np.int64)
        for i, v in enumerate(lists):
            self.neighbours[i, :len(v)] = v
        self.weights = xp.ones(len(self.grid.radii), dtype=xp.float32)
        ring = np.ones(len(self.grid.radii)) if ring_filter is None else np.asarray(ring_filter(self.grid.radii))
        if ring.shape != (len(self.grid.radii),) or not np.isfinite(ring).all():
            raise ValueError(f"ring_filter must give a finite factor per ring, shape ({len(self.grid.radii)},), got "
                             f"shape {ring.shape}")
        self.ring = xp.asarray(ring, dtype=xp.float32)
        self.flops = 0.0  # complex multiply-adds x 8 of the matrix products (benchmarks)
        # central sections of the last reference, kept for the next search against it (the
        # significance test searches the null images against the same reference)
        self._proj: Projector | None = None
        self._coarse = None
        self._fine = None
        self._have = np.zeros(len(self.fine_dirs), dtype=bool)

    def _sections(self, proj: Projector, fine: np.ndarray | None = None):
        """Harmonics of ``proj``'s central sections: the coarse directions', or those of the fine
        directions ``fine`` (indices); each is computed once per reference."""
        xp = self.xp
        if proj is not self._proj:
            self._proj, self._coarse, self._fine = proj, None, None
            self._have[:] = False
        if fine is None:
            if self._coarse is None:
                self._coarse = reference_polar(proj, self.coarse_rot, self.grid)
            return self._coarse
        if self._fine is None:
            self._fine = xp.empty((len(self.fine_dirs), len(self.grid.radii), self.grid.harmonics), dtype=xp.complex64)
        todo = fine[~self._have[fine]]
        if len(todo):
            self._fine[xp.asarray(todo)] = reference_polar(proj, self.fine_rot[todo], self.grid)
            self._have[todo] = True
        return self._fine[xp.asarray(fine)]

    def search(self, images_q, reference, batch: int = 32, *, samples=None, trials=None, mates=None,
               candidates: bool = False) -> SearchResult:
        """Best orientation of each image (harmonics from :func:`image_polar`) against
        ``reference`` (a map, or its :class:`~btomo.reconstruct.projection.Projector`).

        With ``samples`` (the same images' :func:`image_polar_samples`) and ``trials`` ``(T, 2)``
        (voxels, from :func:`shift_trials`), the local pass also tries every trial shift of each
        image, so that orientation and shift are found together: at the lattice's periods a
        third of an angstrom off centre costs more correlation than a few degrees off.

        The score is the cross-correlation weighted ring by ring by the inverse of the images'
        mean power in that ring (the noise-weighted correlation of a Gaussian likelihood, where
        the images' power is mostly noise), normalised by the weighted norms: with clean images
        this whitens, so that the few low rings that carry the particle's outline do not outweigh
        the lattice rings that tell orientations apart; with noisy ones it weights rings by their
        signal-to-noise ratio. Two passes: the coarse directions for every image, then the fine directions near
        each image's coarse peaks (only the fine sections some image needs are computed; they are kept, with
        the coarse ones, for the next search against the same ``Projector``). ``batch`` images go through
        the coarse pass together, :data:`LOCAL_BATCH` through the local one.

        With ``mates`` ``(g, 3, 3)`` (the rotations of the reference's lattice onto itself, in the
        map's frame: the cube's 24), a third pass scores each image at every mate ``R S_g`` of
        its best orientation ``R`` (exactly, every in-plane angle and shift) and keeps the best:
        the coarse peaks are a few of the mates at best (they score alike on the fringes), so
        without it a frame's mate is whichever the coarse noise put first, and a reference that
        has broken the cube's symmetry cannot pull the frames onto their mates. (Searching the
        fine grid near each mate instead picks the mate whose grid point happens to lie closest
        to its symmetric orientation: the grid's error outweighs the shape's.)
        ``SearchResult.direction`` is then -1. With ``candidates`` the same pass also reads each
        image's ``SearchResult.candidate_scores`` from those correlations (the best orientation's
        mates look along the same view directions)."""
        xp = self.xp
        proj = reference if isinstance(reference, Projector) else Projector(xp.asarray(reference))
        white = (1.0 / xp.sqrt(xp.maximum(_ring_power(images_q, xp), 1e-30))).astype(xp.float32)
        ref_c = self._sections(proj) * (white * self.ring)[None, :, None]
        w = self.weights
        nc_c = _norms(ref_c, w, xp)
        ref_cm = xp.ascontiguousarray(xp.conj(ref_c * w[None, :, None]).transpose(2, 1, 0))  # (M, R, d)
        n, a = images_q.shape[0], self.grid.angles
        tops = np.empty((n, self.peaks), dtype=np.int64)
        for i in range(0, n, batch):  # coarse: (M, nb, R) @ (M, R, d)
            q = xp.asarray(images_q[i:i + batch]) * white[None, :, None]
            nb = q.shape[0]
            c = xp.matmul(xp.ascontiguousarray(q.transpose(2, 0, 1)), ref_cm)  # (M, nb, d)
            self.flops += 8.0 * c.shape[0] * nb * q.shape[1] * ref_cm.shape[2]
            cc = xp.fft.irfft(c.transpose(1, 2, 0), n=a, axis=2)  # (nb, d, A)
            score = cc.max(axis=2) / nc_c[None, :]  # the image's norm is common to a row
            tops[i:i + nb] = to_numpy(xp.argsort(-score, axis=1)[:, :self.peaks])
        # fine sections near the peaks only
        cand = self.neighbours[tops].reshape(n, -1)  # (n, peaks * width), -1 padded
        best_dir, best_psi, best_score, best_trial = self._local(images_q, samples, trials, proj, white, cand)
        rot = rot_z(best_psi) @ self.fine_rot[best_dir]
        cand_scores = None
        if mates is not None:
            rot, best_psi, best_score, best_trial, cand_scores = self._mates(
                images_q, samples, trials, proj, white, rot, np.asarray(mates, dtype=np.float64), candidates)
            best_dir = np.full(n, -1, dtype=np.int64)
        shift = np.zeros((n, 2)) if trials is None else np.asarray(trials, dtype=np.float64)[best_trial]
        return SearchResult(rot, best_dir, best_psi, best_score, shift, cand_scores)

    def _mates(self, images_q, samples, trials, proj: Projector, white, rot: np.ndarray, mates: np.ndarray,
               candidates: bool = False):
        """Each image at the exact mates ``rot_i S_g`` of its orientation: the reference's section
        along each mate's view direction (not the nearest grid direction, so that every mate is
        scored as finely as the others and only the particle's shape, not the grid, tells them
        apart), every in-plane angle and trial shift. Returns the best rotation, in-plane angle,
        score and trial of each image, and with ``candidates`` the scores at the best rotation's
        48 candidates (``SearchResult.candidate_scores``), else ``None``."""
        xp = self.xp
        n, g = images_q.shape[0], mates.shape[0]
        w = self.weights
        out_rot = np.empty((n, 3, 3))
        out_psi = np.empty(n)
        out_score = np.empty(n)
        out_trial = np.zeros(n, dtype=np.int64)
        out_cand = np.empty((n, 2 * g)) if candidates else None
        for i, nb, q, c2, rd in self._mate_correlations(images_q, samples, trials, proj, white, rot, mates):
            norms = _norms(q, w, xp)
            psi, score, gi, ti = self._best_in_plane(c2, norms)
            out_rot[i:i + nb] = rot_z(psi) @ rd[np.arange(nb) * g + gi]
            out_psi[i:i + nb] = psi
            out_score[i:i + nb] = score
            out_trial[i:i + nb] = ti
            if candidates:  # the same correlations, read at the best rotation's candidates
                cc2 = xp.fft.irfft(c2, n=self.grid.angles, axis=1)
                out_cand[i:i + nb] = self._read_candidates(cc2, norms, rd.reshape(nb, g, 3, 3),
                                                           out_rot[i:i + nb, None] @ mates[None])
        return out_rot, out_psi, out_score, out_trial, out_cand

    def _read_candidates(self, cc2, norms, rd: np.ndarray, exact: np.ndarray) -> np.ndarray:
        """Scores (nb, 2 G) at the rotations ``exact`` (nb, G, 3, 3) and at the same turned by
        180 deg in the image plane, from the angular correlations ``cc2`` (nb, A, g, T) with the
        sections ``rd`` (nb, g, 3, 3): each rotation is read from the section with its view
        direction, at its in-plane angle (linear between the two nearest samples), the best
        over the shifts."""
        a = self.grid.angles
        cc = to_numpy(cc2.max(axis=3) * (a / norms)[:, None, None])  # (nb, A, g)
        nb, big_g = exact.shape[:2]
        section = np.argmax(np.einsum("nkc,ngc->nkg", exact[:, :, 2, :], rd[:, :, 2, :]), axis=2)  # (nb, G)
        rows = np.arange(nb)[:, None]
        turn = exact @ rd[rows, section].transpose(0, 1, 3, 2)  # Rz(psi) = exact rd^T
        psi = np.arctan2(turn[..., 1, 0], turn[..., 0, 0])
        out = np.empty((nb, 2 * big_g))
        for half in (0, 1):
            pos = ((psi + half * math.pi) % (2 * math.pi)) * (a / (2 * math.pi))
            k0 = np.floor(pos).astype(np.int64)
            frac = pos - k0
            out[:, half * big_g:(half + 1) * big_g] = ((1 - frac) * cc[rows, k0 % a, section]
                                                       + frac * cc[rows, (k0 + 1) % a, section])
        return out

    def _mate_correlations(self, images_q, samples, trials, proj: Projector, white, rot: np.ndarray,
                           mates: np.ndarray):
        """Per batch of images: ``(start, nb, q, c2, rd)``, the whitened harmonics ``q``, the
        angular harmonics ``c2`` (nb, M, g, T) of their correlations with the reference's
        sections along the view directions of the mates ``rot_i S_g``, and those sections'
        rotations ``rd`` (nb g, 3, 3)."""
        xp = self.xp
        g = mates.shape[0]
        w = self.weights
        phase = None if trials is None else _shift_phase(xp.asarray(trials, dtype=xp.float64),
                                                         xp.asarray(self.grid.points), xp)  # (T, RA)
        for i in range(0, images_q.shape[0], LOCAL_BATCH):
            q = xp.asarray(images_q[i:i + LOCAL_BATCH]) * white[None, :, None]
            nb = q.shape[0]
            views = np.einsum("nb,gbc->ngc", rot[i:i + nb, 2, :], mates).reshape(-1, 3)
            rd = direction_rotations(views / np.linalg.norm(views, axis=1, keepdims=True))  # (nb g, 3, 3)
            ref = reference_polar(proj, rd, self.grid) * (white * self.ring)[None, :, None]
            ref = xp.conj(ref * w[None, :, None]) / _norms(ref, w, xp)[:, None, None]
            ref = ref.reshape(nb, g, *ref.shape[1:]).transpose(0, 3, 1, 2)  # (nb, M, g, R)
            qt = self._shifted(q, samples, i, phase, white)
            c2 = xp.matmul(xp.ascontiguousarray(ref), xp.ascontiguousarray(qt.transpose(0, 3, 2, 1)))  # (nb, M, g, T)
            self.flops += 8.0 * c2.size * q.shape[1]
            yield i, nb, q, c2, rd

    def _local(self, images_q, samples, trials, proj: Projector, white, cand: np.ndarray):
        """The local pass: every image against its candidate fine directions ``cand`` (n, C)
        (-1 padded), every in-plane angle and trial shift; the best of each image."""
        xp = self.xp
        n = images_q.shape[0]
        w = self.weights
        cand = np.where(cand < 0, cand.max(axis=1, keepdims=True), cand)
        needed = np.unique(cand)
        slot = np.full(len(self.fine_dirs), -1, dtype=np.int64)
        slot[needed] = np.arange(len(needed))
        ref_f = self._sections(proj, needed) * (white * self.ring)[None, :, None]
        nc_f = _norms(ref_f, w, xp)
        # conjugated, weighted, divided by their norms, as (d, M, R): a gather of candidates is
        # then a stack of (C, R) matrices with unit stride, ready for BLAS
        ref_f = xp.ascontiguousarray((xp.conj(ref_f * w[None, :, None]) / nc_f[:, None, None]).transpose(0, 2, 1))
        best_dir = np.empty(n, dtype=np.int64)
        best_psi = np.empty(n)
        best_score = np.empty(n)
        best_trial = np.zeros(n, dtype=np.int64)
        phase = None if trials is None else _shift_phase(xp.asarray(trials, dtype=xp.float64),
                                                         xp.asarray(self.grid.points), xp)  # (T, RA)
        for i in range(0, n, LOCAL_BATCH):
            q = xp.asarray(images_q[i:i + LOCAL_BATCH]) * white[None, :, None]
            nb = q.shape[0]
            qt = self._shifted(q, samples, i, phase, white)
            cb = cand[i:i + nb]
            cx = xp.asarray(slot[cb])
            # (nb, M, C, R) @ (nb, M, R, T): a batched product per image and harmonic
            refs = ref_f[cx].transpose(0, 2, 1, 3)  # (nb, M, C, R)
            c2 = xp.matmul(refs, xp.ascontiguousarray(qt.transpose(0, 3, 2, 1)))  # (nb, M, C, T)
            self.flops += 8.0 * c2.size * q.shape[1]
            psi, score, ci, ti = self._best_in_plane(c2, _norms(q, w, xp))
            best_dir[i:i + nb] = cb[np.arange(nb), ci]
            best_psi[i:i + nb] = psi
            best_score[i:i + nb] = score
            best_trial[i:i + nb] = ti
        return best_dir, best_psi, best_score, best_trial

    def _shifted(self, q, samples, start: int, phase, white):
        """The whitened harmonics ``q`` (nb, R, M) of images ``start..start + nb`` at every trial
        shift, (nb, T, R, M): the particle at +t more than given is the images' polar samples times
        ``exp(2 pi i k.t)`` (``phase``, (T, RA)); ``(nb, 1, R, M)`` without trials."""
        if phase is None:
            return q[:, None]
        xp = self.xp
        nb = q.shape[0]
        p = xp.asarray(samples[start:start + nb])[:, None, :] * phase[None]  # (nb, T, RA)
        qt = _to_harmonics(p.reshape(-1, p.shape[2]), self.grid, xp).reshape(nb, phase.shape[0], *q.shape[1:])
        return qt * white[None, None, :, None]

    def _best_in_plane(self, c2, norms):
        """The best in-plane angle of each image from its correlations' angular harmonics ``c2``
        (nb, M, C, T) against C references at T shifts, divided by the images' ``norms``: the
        inverse FFT over the harmonics, the maximum over angles, references and shifts, and a
        parabola through it and its two angular neighbours. Returns (NumPy) the angle (rad), the
        score, and the reference and shift indices of each image."""
        xp = self.xp
        a = self.grid.angles
        cc2 = xp.fft.irfft(c2, n=a, axis=1)  # (nb, A, C, T), times 1 / a
        nb = cc2.shape[0]
        flat = xp.argmax(cc2.reshape(nb, -1), axis=1)
        ct = cc2.shape[2] * cc2.shape[3]
        k, rest = flat // ct, flat % ct
        ci, ti = rest // cc2.shape[3], rest % cc2.shape[3]
        rows = xp.arange(nb)
        scale = a / norms
        s0 = cc2[rows, k, ci, ti] * scale
        sm = cc2[rows, (k - 1) % a, ci, ti] * scale
        sp = cc2[rows, (k + 1) % a, ci, ti] * scale
        den = sm - 2 * s0 + sp
        frac = xp.clip(xp.where(den < 0, 0.5 * (sm - sp) / xp.where(den < 0, den, -1.0), 0.0), -0.5, 0.5)
        return to_numpy((k + frac) * (2 * math.pi / a)), to_numpy(s0), to_numpy(ci), to_numpy(ti)
