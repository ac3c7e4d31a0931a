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
    "quat_from_matrix",
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


def quat_from_matrix(m: np.ndarray) -> np.ndarray:
    """Unit quaternion(s) ``(..., 4)`` (canonical sign) of rotation matrices ``(..., 3, 3)``.

    Shepperd's method: the largest of ``w, x, y, z`` is computed from the diagonal first, the
    others from it, so that no branch divides by a small number."""
    m = np.asarray(m, dtype=np.float64)
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = np.stack([tr, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], axis=-1)
    k = np.argmax(cands, axis=-1)
    q = np.empty(m.shape[:-2] + (4,))
    w2 = [1 + tr, 1 + 2 * m[..., 0, 0] - tr, 1 + 2 * m[..., 1, 1] - tr, 1 + 2 * m[..., 2, 2] - tr]
    d = {  # the off-diagonal combinations: 4 w x, 4 w y, ... (m[i, j] - m[j, i] etc.)
        "wx": m[..., 2, 1] - m[..., 1, 2], "wy": m[..., 0, 2] - m[..., 2, 0], "wz": m[..., 1, 0] - m[..., 0, 1],
        "xy": m[..., 0, 1] + m[..., 1, 0], "xz": m[..., 0, 2] + m[..., 2, 0], "yz": m[..., 1, 2] + m[..., 2, 1],
    }
    for case, (a, b, c) in enumerate([("wx", "wy", "wz"), ("wx", "xy", "xz"), ("wy", "xy", "yz"),
                                      ("wz", "xz", "yz")]):
        sel = k == case
        if not np.any(sel):
            continue
        s = 2.0 * np.sqrt(np.maximum(w2[case][sel], 1e-300))
        big = 0.25 * s
        others = [d[a][sel] / s, d[b][sel] / s, d[c][sel] / s]
        if case == 0:
            q[sel] = np.stack([big, *others], axis=-1)
        elif case == 1:
            q[sel] = np.stack([others[0], big, others[1], others[2]], axis=-1)
        elif case == 2:
            q[sel] = np.stack([others[0], others[1], big, others[2]], axis=-1)
        else:
            q[sel] = np.stack([others[0], others[1], others[2], big], axis=-1)
    return quat_normalize(q)


def random_quaternion(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Uniformly distributed random unit quaternion(s) (normalised 4D Gaussian)."""
    q = rng.standard_normal((4,) if n is None else (n, 4))
    return quat_normalize(q)
