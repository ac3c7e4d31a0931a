"""Projection directions on the sphere and how well a set of views covers them.

A *view direction* is the beam direction expressed in the particle's own (body) coordinates: for
an orientation ``q`` (body -> lab, :mod:`btomo.kernels.rotation`) and the beam along lab z it is
``R(q)^T z``. Tomography needs views from all round: the **coverage** of a set of view directions
is the fraction of a uniform grid of directions (default 2500, Fibonacci lattice) that lie within
``angle_deg`` of at least one view. A projection and its opposite view carry the same
information to first order (Friedel), so a view covers its antipode too unless ``antipodal`` is
off. With the cubic point group (24 rotations of O), a view also covers its symmetry mates: a
cubic particle looks the same from them.
"""
from __future__ import annotations

import math

import numpy as np

from .rotation import quat_to_matrix

__all__ = ["fibonacci_sphere", "cubic_rotations", "view_directions", "Coverage", "cap_fraction"]


def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors (Fibonacci lattice), shape (n, 3)."""
    if n < 1:
        raise ValueError(f"need at least one direction, got {n}")
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def cubic_rotations() -> np.ndarray:
    """The 24 proper rotations of the cube (point group O) as (24, 3, 3) matrices: the signed
    permutation matrices of determinant +1."""
    import itertools  # noqa: PLC0415

    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            for row, (col, s) in enumerate(zip(perm, signs)):
                m[row, col] = s
            if np.linalg.det(m) > 0:
                out.append(m)
    return np.array(out)


def view_directions(quaternions: np.ndarray) -> np.ndarray:
    """Beam direction in body coordinates, ``R(q)^T z``, for orientation(s) ``q`` (..., 4)."""
    r = quat_to_matrix(np.asarray(quaternions, dtype=np.float64))
    return r[..., 2, :]  # the third row of R is R^T z


def cap_fraction(angle_deg: float) -> float:
    """Fraction of the sphere within ``angle_deg`` of one direction: ``(1 - cos a) / 2``."""
    return 0.5 * (1.0 - math.cos(math.radians(angle_deg)))


class Coverage:
    """Running coverage of the direction grid by the views added so far.

    Parameters
    ----------
    directions : int
        Size of the grid (Fibonacci sphere).
    angle_deg : float
        A grid direction is covered within this angle of a view, deg.
    symmetry : {"none", "cubic"}
        With ``"cubic"`` each view also covers its 23 symmetry mates.
    antipodal : bool
        A view also covers its opposite direction (Friedel).
    """

    def __init__(self, directions: int = 2500, angle_deg: float = 15.0, symmetry: str = "none",
                 antipodal: bool = True):
        if symmetry not in ("none", "cubic"):
            raise ValueError(f"symmetry must be 'none' or 'cubic', got {symmetry!r}")
        if not 0 < angle_deg <= 180:
            raise ValueError(f"angle_deg must be in (0, 180], got {angle_deg}")
        self.grid = fibonacci_sphere(directions)
        self.cos_angle = math.cos(math.radians(angle_deg))
        self.angle_deg = angle_deg
        self.symmetry = symmetry
        self.antipodal = antipodal
        self.ops = cubic_rotations() if symmetry == "cubic" else np.eye(3)[None]
        self.covered = np.zeros(len(self.grid), dtype=bool)
        self.views = 0

    def _mates(self, v: np.ndarray) -> np.ndarray:
        mates = np.einsum("sij,nj->sni", self.ops, v).reshape(-1, 3)
        return np.concatenate([mates, -mates]) if self.antipodal else mates

    def add(self, directions: np.ndarray) -> None:
        """Add view direction(s) (3,) or (n, 3) (normalised here)."""
        v = np.atleast_2d(np.asarray(directions, dtype=np.float64))
        if v.shape[1] != 3:
            raise ValueError(f"expected direction vectors of 3 components, got shape {v.shape}")
        norm = np.linalg.norm(v, axis=1, keepdims=True)
        ok = np.isfinite(norm[:, 0]) & (norm[:, 0] > 0)
        v = v[ok] / norm[ok]
        if len(v) == 0:
            return
        near = (self._mates(v) @ self.grid.T) >= self.cos_angle
        self.covered |= near.any(axis=0)
        self.views += len(v)

    @property
    def fraction(self) -> float:
        """Covered fraction of the grid (0-1)."""
        return float(self.covered.mean())

    def map(self, rows: int = 9, cols: int = 18) -> np.ndarray:
        """A small (rows, cols) map of covered directions (latitude x longitude, fraction of grid
        points covered per cell; NaN where a cell holds none): for the dashboard."""
        lat = np.degrees(np.arcsin(np.clip(self.grid[:, 2], -1, 1)))
        lon = np.degrees(np.arctan2(self.grid[:, 1], self.grid[:, 0]))
        r = np.clip(((lat + 90.0) / 180.0 * rows).astype(int), 0, rows - 1)
        c = np.clip(((lon + 180.0) / 360.0 * cols).astype(int), 0, cols - 1)
        total = np.zeros((rows, cols))
        hit = np.zeros((rows, cols))
        np.add.at(total, (r, c), 1)
        np.add.at(hit, (r, c), self.covered)
        with np.errstate(invalid="ignore"):
            return np.where(total > 0, hit / np.where(total > 0, total, 1), np.nan)
