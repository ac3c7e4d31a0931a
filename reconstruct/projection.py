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
        self.ft = xp.fft.fftn(xp.fft.ifftshift(padded)).ravel()
        f = xp.fft.fftfreq(self.m) * self.m  # grid units
        ky, kx = xp.meshgrid(f, f, indexing="ij")
        self._kx, self._ky = kx.ravel(), ky.ravel()

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

    def _project(self, rot):
        xp, m = self.xp, self.m
        pos = self._kx[None, :, None] * rot[:, None, 0, :] + self._ky[None, :, None] * rot[:, None, 1, :]
        g0 = xp.floor(pos).astype(xp.int64)
        t = pos - g0
        vals = xp.zeros(pos.shape[:2], dtype=xp.complex128)
        for dx in (0, 1):
            wx = t[..., 0] if dx else 1.0 - t[..., 0]
            for dy in (0, 1):
                wy = wx * (t[..., 1] if dy else 1.0 - t[..., 1])
                for dz in (0, 1):
                    w = wy * (t[..., 2] if dz else 1.0 - t[..., 2])
                    idx = (((g0[..., 2] + dz) % m) * m + ((g0[..., 1] + dy) % m)) * m + ((g0[..., 0] + dx) % m)
                    vals += w * self.ft[idx]
        img = xp.fft.fftshift(xp.fft.ifft2(vals.reshape(-1, m, m), axes=(1, 2)), axes=(1, 2)).real
        lo = m // 2 - self.box // 2
        return img[:, lo:lo + self.box, lo:lo + self.box]
