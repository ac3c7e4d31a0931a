"""Unit quaternions for particle orientations.

Convention: ``q = (w, x, y, z)``, scalar first; ``q`` rotates particle (body) coordinates into
the lab frame, ``r_lab = R(q) r_body``, with lab z along the beam.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "quat_multiply",
    "quat_from_rotvec",
    "quat_to_matrix",
    "quat_normalize",
    "random_quaternion",
]


def quat_normalize(q: np.ndarray) -> np.ndarray:
    """Return ``q`` scaled to unit norm with a non-negative scalar part (canonical sign)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` (apply ``b`` first, then ``a``)."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def quat_from_rotvec(v: np.ndarray) -> np.ndarray:
    """Quaternion of the rotation by angle ``|v|`` (rad) about axis ``v / |v|``."""
    v = np.asarray(v, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1, keepdims=True)
    half = 0.5 * theta
    # sin(x/2)/x without 0/0: its series near zero
    scale = np.where(theta > 1e-8, np.sin(half) / np.where(theta > 1e-8, theta, 1.0), 0.5 - theta**2 / 48.0)
    return np.concatenate([np.cos(half), v * scale], axis=-1)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix (or a stack of them) of unit quaternion(s) ``q``."""
    w, x, y, z = np.moveaxis(np.asarray(q, dtype=np.float64), -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def random_quaternion(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Uniformly distributed random unit quaternion(s) (normalised 4D Gaussian)."""
    q = rng.standard_normal((4,) if n is None else (n, 4))
    return quat_normalize(q)
