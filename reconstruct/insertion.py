"""3D reconstruction by direct Fourier insertion with gridding, and the FSC.

Projection-slice theorem: the 2D Fourier transform of a projection along the lab z axis of a
particle in orientation ``R`` (particle -> lab) is the central slice of the particle's 3D
transform through the plane spanned by ``R^T e_x`` and ``R^T e_y``. :class:`FourierInserter`
puts every image's transform onto that slice of an **oversampled** 3D grid (the box padded
``pad`` times, so that interpolation errors stay small) with a separable **Kaiser-Bessel**
kernel (width ``kernel_width`` grid points, Beatty et al. 2005's beta for the oversampling),
accumulating the kernel-weighted data and the weights. The map is their ratio (normalised
convolution: the weights are the **density compensation** of the non-uniform samples, with a
small Wiener-like floor where few samples fall), inverse transformed and cropped. Even and odd
images go into two half maps; :func:`fsc` compares them shell by shell.

Conventions: volumes are ``[z, y, x]``, images ``[y, x]``, the origin at index ``n // 2``; a
projection is the plain sum along z of the voxels (unit spacing), so an image and a slice of the
volume's DFT agree exactly. One code path for NumPy and CuPy (``xp``).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from btomo.kernels.xp import array_namespace, to_numpy

__all__ = ["kaiser_bessel", "FourierInserter", "fsc", "fsc_resolution"]


def kaiser_bessel(d, width: float, beta: float, xp: Any = np):
    """Kaiser-Bessel window ``I0(beta sqrt(1 - (2d/width)^2)) / I0(beta)`` (0 outside |d| <= width/2)."""
    t = 1.0 - (2.0 * d / width) ** 2
    inside = t >= 0
    arg = beta * xp.sqrt(xp.clip(t, 0.0, None))
    return xp.where(inside, xp.i0(arg) / float(np.i0(beta)), 0.0)


class FourierInserter:
    """Accumulate projections into a 3D Fourier grid and reconstruct (see the module).

    Parameters
    ----------
    box : int
        Side of the (cubic) volume and of the square images, voxels.
    pad : int
        Oversampling of the Fourier grid (2: the box padded to ``2 box``).
    kernel_width : int
        Kaiser-Bessel width in oversampled grid points (3: 27 neighbours per sample).
    max_frequency : float
        Largest spatial frequency inserted, cycles/voxel (0.5: Nyquist); a low-pass limit.
    wiener : float
        Floor added to the weights before dividing, relative to their median where sampled.
    xp : module
        ``numpy`` or ``cupy``.
    """

    BATCH = 32  # images inserted together
    KB_TABLE = 8193  # samples of the tabulated kernel over its width

    def __init__(self, box: int, *, pad: int = 2, kernel_width: int = 3, max_frequency: float = 0.5,
                 wiener: float = 1e-3, xp: Any = np):
        if box < 4 or box % 2:
            raise ValueError(f"box must be even and >= 4 voxels, got {box}")
        if kernel_width not in (2, 3, 4):
            raise ValueError(f"kernel_width must be 2, 3 or 4 grid points, got {kernel_width}")
        self.box, self.pad, self.width = box, pad, kernel_width
        self.m = box * pad
        self.max_frequency = min(float(max_frequency), 0.5)
        self.wiener = wiener
        self.xp = xp
        a = float(pad)
        # Beatty, Nishimura & Pauly (2005), eq. 5: the beta that minimises aliasing for oversampling a
        self.beta = math.pi * math.sqrt(max((kernel_width / a) ** 2 * (a - 0.5) ** 2 - 0.8, 1e-3))
        # the kernel tabulated for linear interpolation (Bessel calls are slow), zero beyond its width
        self._kb_step = kernel_width / (self.KB_TABLE - 1)
        grid = xp.linspace(-0.5 * kernel_width, 0.5 * kernel_width, self.KB_TABLE)
        self._kb_v = xp.concatenate([kaiser_bessel(grid, kernel_width, self.beta, xp), xp.zeros(2)])
        self.data_re = xp.zeros(self.m ** 3, dtype=xp.float64)  # (bincount is real: two sums, no temporaries)
        self.data_im = xp.zeros(self.m ** 3, dtype=xp.float64)
        self.weights = xp.zeros(self.m ** 3, dtype=xp.float64)
        self.images = 0
        # the 2D sample positions of a padded image (cycles/voxel) within the frequency limit
        f = xp.fft.fftfreq(self.m)
        ky, kx = xp.meshgrid(f, f, indexing="ij")
        keep = (kx * kx + ky * ky) <= self.max_frequency ** 2
        self._keep = keep.ravel()
        self._k2 = xp.stack([kx.ravel()[self._keep], ky.ravel()[self._keep]], axis=1)  # (s, 2) x, y
        self._offsets = [o - (kernel_width - 1) // 2 for o in range(kernel_width)]

    def _kernel(self, d):
        """The Kaiser-Bessel window at distances ``d`` (grid units), from the table (error < 1e-6)."""
        xp = self.xp
        u = xp.clip((d + 0.5 * self.width) / self._kb_step, 0.0, self.KB_TABLE)
        i = u.astype(xp.int64)
        f = u - i
        v = self._kb_v[i] * (1.0 - f) + self._kb_v[i + 1] * f
        return xp.where((d >= -0.5 * self.width) & (d <= 0.5 * self.width), v, 0.0)

    def _image_ft(self, images):
        """(n, box, box) real images -> (n, s) Fourier samples on the padded grid."""
        xp = self.xp
        n, b = images.shape[0], self.box
        padded = xp.zeros((n, self.m, self.m), dtype=xp.float64)
        lo = self.m // 2 - b // 2
        padded[:, lo:lo + b, lo:lo + b] = images
        ft = xp.fft.fft2(xp.fft.ifftshift(padded, axes=(1, 2)), axes=(1, 2))
        return ft.reshape(n, -1)[:, self._keep]

    def insert(self, images, rotations, weights=None) -> None:
        """Insert images ``(n, box, box)`` seen in orientations ``rotations`` ``(n, 3, 3)``
        (particle -> lab); ``weights`` ``(n,)`` scale each image's contribution (default 1)."""
        xp = self.xp
        images = xp.asarray(images, dtype=xp.float64)
        rot = xp.asarray(rotations, dtype=xp.float64)
        if images.ndim != 3 or images.shape[1:] != (self.box, self.box):
            raise ValueError(f"expected images (n, {self.box}, {self.box}), got {tuple(images.shape)}")
        if rot.shape != (images.shape[0], 3, 3):
            raise ValueError(f"expected rotations ({images.shape[0]}, 3, 3), got {tuple(rot.shape)}")
        w_img = xp.ones(images.shape[0]) if weights is None else xp.asarray(weights, dtype=xp.float64)
        for i in range(0, images.shape[0], self.BATCH):  # bounded temporaries: ~30 MB per image
            self._insert(images[i:i + self.BATCH], rot[i:i + self.BATCH], w_img[i:i + self.BATCH])
        self.images += images.shape[0]

    def _insert(self, images, rot, w_img) -> None:
        xp = self.xp
        ft = self._image_ft(images)  # (n, s)
        # 3D positions in body coordinates: k3 = kx R^T e_x + ky R^T e_y (rows 0 and 1 of R)
        pos = (self._k2[None, :, 0:1] * rot[:, None, 0, :] + self._k2[None, :, 1:2] * rot[:, None, 1, :]) * self.m
        pos = pos.reshape(-1, 3)  # (n s, 3) as x, y, z in grid units
        vals = (ft * w_img[:, None]).reshape(-1)
        # the nearest grid point (odd widths) or the one below (even), then the kernel's offsets
        base = xp.floor(pos + (0.5 if self.width % 2 else 0.0)).astype(xp.int64)
        w_rep = xp.repeat(w_img, len(self._k2))
        m = self.m
        # the kernel is separable: its 1D weights and wrapped grid indices per axis and offset, once
        axis_w = [[self._kernel(base[:, a] + o - pos[:, a]) for o in self._offsets] for a in range(3)]
        axis_g = [[(base[:, a] + o) % m for o in self._offsets] for a in range(3)]
        # every (x, y, z) offset's grid index and weight, summed into the grid by one bincount each
        idx = xp.concatenate([(gz * m + gy) * m + gx for gx in axis_g[0] for gy in axis_g[1] for gz in axis_g[2]])
        w = xp.concatenate([wx * wy * wz for wx in axis_w[0] for wy in axis_w[1] for wz in axis_w[2]])
        k = self.width ** 3
        self.weights += xp.bincount(idx, weights=w * xp.tile(w_rep, k), minlength=m ** 3)
        self.data_re += xp.bincount(idx, weights=w * xp.tile(vals.real, k), minlength=m ** 3)
        self.data_im += xp.bincount(idx, weights=w * xp.tile(vals.imag, k), minlength=m ** 3)

    def merged(self, other: "FourierInserter") -> "FourierInserter":
        """A new inserter holding the sums of this one and ``other`` (two half sets -> the whole)."""
        if (other.box, other.pad, other.width, other.max_frequency) != (self.box, self.pad, self.width,
                                                                         self.max_frequency):
            raise ValueError("can only merge inserters of the same box, padding, kernel and frequency limit")
        out = FourierInserter(self.box, pad=self.pad, kernel_width=self.width, max_frequency=self.max_frequency,
                              wiener=self.wiener, xp=self.xp)
        out.data_re = self.data_re + other.data_re
        out.data_im = self.data_im + other.data_im
        out.weights = self.weights + other.weights
        out.images = self.images + other.images
        return out

    def reconstruct(self):
        """The map ``(box, box, box)`` (float64, ``[z, y, x]``, origin at ``box // 2``)."""
        xp = self.xp
        if self.images == 0:
            raise ValueError("no images inserted")
        sampled = self.weights > 0
        floor = self.wiener * float(xp.median(self.weights[sampled])) if bool(sampled.any()) else 1.0
        data = self.data_re + 1j * self.data_im
        ft = xp.where(sampled, data / (self.weights + floor), 0.0).reshape(self.m, self.m, self.m)
        # keep the data within the frequency limit only (the kernel spreads a little beyond)
        f = xp.fft.fftfreq(self.m)
        kk = f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2
        ft = xp.where(kk <= self.max_frequency ** 2, ft, 0.0)
        vol = xp.fft.fftshift(xp.fft.ifftn(ft)).real
        lo = self.m // 2 - self.box // 2
        return vol[lo:lo + self.box, lo:lo + self.box, lo:lo + self.box]


def fsc(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two maps of the same cubic box.

    Returns
    -------
    freq : ndarray
        Shell centres, cycles/voxel (0 ... 0.5).
    fsc : ndarray
        The correlation per shell.
    """
    xp = array_namespace(a, b)
    if a.shape != b.shape or a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"fsc needs two maps of one cubic box, got {a.shape} and {b.shape}")
    n = a.shape[0]
    fa, fb = xp.fft.fftn(a), xp.fft.fftn(b)
    f = xp.fft.fftfreq(n)
    r = xp.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    shell = xp.round(r * n).astype(xp.int64).ravel()
    nsh = n // 2 + 1
    shell = xp.minimum(shell, nsh)  # beyond Nyquist (corners): one bin, dropped below
    num = xp.bincount(shell, weights=(fa * xp.conj(fb)).real.ravel(), minlength=nsh + 1)
    da = xp.bincount(shell, weights=(xp.abs(fa) ** 2).ravel(), minlength=nsh + 1)
    db = xp.bincount(shell, weights=(xp.abs(fb) ** 2).ravel(), minlength=nsh + 1)
    c = num / xp.sqrt(xp.maximum(da * db, 1e-300))
    return np.arange(nsh) / n, to_numpy(c[:nsh])


def fsc_resolution(freq: np.ndarray, curve: np.ndarray, voxel_A: float, threshold: float = 0.143, *,
                   first: bool = True) -> float:
    """Resolution (A) where the FSC falls below ``threshold`` (0.143: half maps), linearly
    interpolated; the Nyquist limit if it never does.

    ``first``: the first crossing from low frequencies (the usual reading). Otherwise the last
    one: the highest frequency up to which the FSC is above the threshold, for maps whose
    images transfer some low frequencies poorly (phase contrast near focus leaves a dip at
    5-10 A that is no limit of the resolution)."""
    below = np.flatnonzero(curve[1:] < threshold) + 1
    if len(below) == 0:
        return 2.0 * voxel_A
    if first:
        i = below[0]
    else:
        above = np.flatnonzero(curve[1:] >= threshold) + 1
        if len(above) == 0:
            i = below[0]
        elif above[-1] == len(curve) - 1:
            return 2.0 * voxel_A
        else:
            i = above[-1] + 1
    f0, f1, c0, c1 = freq[i - 1], freq[i], curve[i - 1], curve[i]
    f = f0 + (c0 - threshold) * (f1 - f0) / (c0 - c1) if c0 != c1 else f1
    return voxel_A / max(f, 1e-9)
