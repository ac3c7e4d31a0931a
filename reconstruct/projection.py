"""Projections of a 3D map by central-slice extraction (the forward model of the orientation search).

The map is padded ``pad`` times and transformed once; a projection along the lab z axis of the
particle in orientation ``R`` (particle -> lab) is the slice of that transform through
``R^T e_x``, ``R^T e_y`` (projection-slice theorem), read by trilinear interpolation, inverse
transformed and cropped. The oversampling keeps the interpolation error small, and the map is divided beforehand by the
trilinear kernel's real-space profile (``sinc^2`` per axis: the gridding correction). Conventions as in
:mod:`btomo.reconstruct.insertion` (``[z, y, x]``, origin at ``box // 2``, a projection is the
plain z-sum of the voxels). One code path for NumPy and CuPy.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from btomo.kernels.xp import array_namespace

__all__ = ["Projector"]


class Projector:
    """Project a map in many orientations (see the module).

    Parameters
    ----------
    volume : (box, box, box)
        The map, ``[z, y, x]``.
    pad : int
        Oversampling of its transform.
    """

    def __init__(self, volume, *, pad: int = 2):
        xp = array_namespace(volume)
        vol = xp.asarray(volume, dtype=xp.float64)
        if vol.ndim != 3 or len(set(vol.shape)) != 1 or vol.shape[0] % 2:
            raise ValueError(f"expected a cubic map of even side, got shape {tuple(vol.shape)}")
        self.xp: Any = xp
        self.box = vol.shape[0]
        self.m = self.box * pad
        padded = xp.zeros((self.m,) * 3, dtype=xp.float64)
        lo = self.m // 2 - self.box // 2
        # pre-compensate the trilinear interpolation of the transform, which multiplies the
        # projection by sinc^2 along each axis (the gridding correction)
        c = (xp.arange(self.box) - self.box // 2) / self.m
        s2 = xp.sinc(c) ** 2
        padded[lo:lo + self.box, lo:lo + self.box, lo:lo + self.box] = vol / (
            s2[:, None, None] * s2[None, :, None] * s2[None, None, :])
        # the transform with its origin at index m // 2 (fftshift), in single precision, extended
        # periodically by two planes on the high side: a sample within Nyquist (|k| <= m / 2 grid
        # units) then has its eight neighbours at flat offsets from its corner, no wrap-around
        ft = xp.fft.fftshift(xp.fft.fftn(xp.fft.ifftshift(padded))).astype(xp.complex64)
        self.ft = xp.pad(ft, (0, 2), mode="wrap").ravel()
        e = self.m + 2
        self._corner = [(dz * e + dy) * e + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]
        f = xp.fft.fftfreq(self.m) * self.m  # grid units
        ky, kx = xp.meshgrid(f, f, indexing="ij")
        # a projection's transform within Nyquist (the corners beyond it are left zero)
        self._inside = (kx * kx + ky * ky).ravel() <= (self.m / 2) ** 2
        self._kx, self._ky = kx.ravel()[self._inside], ky.ravel()[self._inside]

    def project(self, rotations, batch: int = 64):
        """Projections ``(n, box, box)`` for rotations ``(n, 3, 3)`` (particle -> lab)."""
        xp = self.xp
        rot = xp.asarray(rotations, dtype=xp.float64)
        if rot.ndim != 3 or rot.shape[1:] != (3, 3):
            raise ValueError(f"expected rotations (n, 3, 3), got {tuple(rot.shape)}")
        out = xp.empty((rot.shape[0], self.box, self.box), dtype=xp.float64)
        for i in range(0, rot.shape[0], batch):
            out[i:i + batch] = self._project(rot[i:i + batch])
        return out

    def sample(self, rotations, points):
        """The map's transform on the central sections of ``rotations`` ``(n, 3, 3)`` at 2D points
        ``(s, 2)`` (kx, ky in cycles/voxel): ``(n, s)`` complex, trilinear from the oversampled grid
        (the same values a projection's DFT takes there, ``exp(-2 pi i k.x)``, origin at ``box // 2``)."""
        xp = self.xp
        rot = xp.asarray(rotations, dtype=xp.float64)
        pts = xp.asarray(points, dtype=xp.float64) * self.m
        return self._interpolate(rot, pts[:, 0], pts[:, 1])

    def _project(self, rot):
        xp, m = self.xp, self.m
        vals = xp.zeros((rot.shape[0], m * m), dtype=xp.complex64)
        vals[:, self._inside] = self._interpolate(rot, self._kx, self._ky)
        img = xp.fft.fftshift(xp.fft.ifft2(vals.reshape(-1, m, m), axes=(1, 2)), axes=(1, 2)).real
        lo = m // 2 - self.box // 2
        return img[:, lo:lo + self.box, lo:lo + self.box]

    def _interpolate(self, rot, kx, ky):
        """Trilinear reads of the padded transform at ``kx R^T e_x + ky R^T e_y`` (grid units)."""
        xp, m, e = self.xp, self.m, self.m + 2
        r = rot.astype(xp.float32)
        kx, ky = kx.astype(xp.float32), ky.astype(xp.float32)
        pos = kx[None, :, None] * r[:, None, 0, :] + ky[None, :, None] * r[:, None, 1, :] + (m // 2)
        g0 = xp.floor(pos)
        t = pos - g0
        g0 = g0.astype(xp.int64)
        base = (g0[..., 2] * e + g0[..., 1]) * e + g0[..., 0]
        tx, ty, tz = t[..., 0], t[..., 1], t[..., 2]
        ux, uy, uz = 1.0 - tx, 1.0 - ty, 1.0 - tz
        ft = self.ft
        c = self._corner
        # the x pairs, then y, then z (fewer multiplications than eight weights)
        v00 = ft[base + c[0]] * ux + ft[base + c[1]] * tx
        v01 = ft[base + c[2]] * ux + ft[base + c[3]] * tx
        v10 = ft[base + c[4]] * ux + ft[base + c[5]] * tx
        v11 = ft[base + c[6]] * ux + ft[base + c[7]] * tx
        return (v00 * uy + v01 * ty) * uz + (v10 * uy + v11 * ty) * tz
