"""Complex spherical harmonics of bond directions and Wigner 3j symbols.

Pure NumPy, no I/O; used by the bond-orientational order of ``btomo.analysis`` (Steinhardt et
al. 1983, paper eqs. 5-10). The harmonics follow the usual physics convention (Condon-Shortley
phase, orthonormal on the sphere, ``Y_l^{-m} = (-1)^m conj(Y_l^m)``), the same as
``scipy.special.sph_harm_y``; they are evaluated from Cartesian unit vectors by recurrences,
with no trigonometric call per bond, because a 100,000-atom structure has over a million bonds.
"""
from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["spherical_harmonics", "wigner_3j", "wigner_3j_table"]


def spherical_harmonics(l: int, vectors: np.ndarray) -> np.ndarray:  # noqa: E741 - l is the degree
    """``Y_l^m`` of the directions of ``vectors`` for m = -l..l.

    Parameters
    ----------
    l : int
        Degree, >= 0.
    vectors : (n, 3) array
        Bond vectors (any length > 0; only the direction counts), x, y, z.

    Returns
    -------
    (n, 2l+1) complex128 array, column ``m + l`` holding ``Y_l^m(theta, phi)`` with theta the
    polar angle from +z and phi the azimuth from +x.
    """
    if l < 0:
        raise ValueError(f"expected a degree l >= 0, got {l}")
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"expected bond vectors of shape (n, 3), got {v.shape}")
    r = np.linalg.norm(v, axis=1)
    if np.any(r == 0):
        raise ValueError("a bond vector has zero length (two atoms at the same place)")
    x, y, z = (v / r[:, None]).T
    out = np.empty((len(v), 2 * l + 1), dtype=np.complex128)
    # e^{i m phi} sin^m(theta) = (x + i y)^m; the rest of P_l^m is a polynomial in z = cos(theta).
    # Normalised recurrences on \bar P_l^m(z) = P_l^m(z) / sin^m(theta) keep everything finite at the poles.
    xy = x + 1j * y
    pmm = np.ones_like(z)  # \bar P_m^m / sin^m, with Condon-Shortley phase, times the norm, by m
    power = np.ones_like(xy)
    for m in range(l + 1):
        if m > 0:
            pmm = pmm * (-math.sqrt((2 * m + 1) / (2 * m)))
            power = power * xy
        else:
            pmm = np.full_like(z, math.sqrt(1.0 / (4.0 * math.pi)))
        # climb from degree m to l at fixed order m (fully normalised associated Legendre recurrence)
        p_prev, p = np.zeros_like(z), pmm
        for ll in range(m + 1, l + 1):
            a = math.sqrt((4 * ll * ll - 1) / (ll * ll - m * m))
            b = math.sqrt(((ll - 1) ** 2 - m * m) / (4 * (ll - 1) ** 2 - 1))
            p_prev, p = p, a * (z * p - b * p_prev)
        ylm = p * power
        out[:, l + m] = ylm
        if m > 0:
            out[:, l - m] = (-1) ** m * np.conj(ylm)
    return out


@functools.lru_cache(maxsize=64)
def wigner_3j(j1: int, j2: int, j3: int, m1: int, m2: int, m3: int) -> float:
    """Wigner 3j symbol (j1 j2 j3; m1 m2 m3) for integer arguments, by Racah's formula."""
    if m1 + m2 + m3 != 0 or not abs(j1 - j2) <= j3 <= j1 + j2:
        return 0.0
    if abs(m1) > j1 or abs(m2) > j2 or abs(m3) > j3:
        return 0.0
    f = math.factorial
    tri = f(j1 + j2 - j3) * f(j1 - j2 + j3) * f(-j1 + j2 + j3) / f(j1 + j2 + j3 + 1)
    pref = math.sqrt(tri * f(j1 + m1) * f(j1 - m1) * f(j2 + m2) * f(j2 - m2) * f(j3 + m3) * f(j3 - m3))
    k_lo = max(0, j2 - j3 - m1, j1 - j3 + m2)
    k_hi = min(j1 + j2 - j3, j1 - m1, j2 + m2)
    total = 0
    for k in range(k_lo, k_hi + 1):
        den = (f(k) * f(j1 + j2 - j3 - k) * f(j1 - m1 - k) * f(j2 + m2 - k) * f(j3 - j2 + m1 + k)
               * f(j3 - j1 - m2 + k))
        total += (-1) ** k / den
    return float((-1) ** (j1 - j2 - m3) * pref * total)


@functools.lru_cache(maxsize=16)
def wigner_3j_table(l: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # noqa: E741
    """The non-zero (l l l; m1 m2 m3) with m1 + m2 + m3 = 0 as index arrays into m = -l..l.

    Returns
    -------
    i1, i2, i3 : int arrays
        Column indices ``m + l`` of the three factors.
    w : float array
        The symbols.
    """
    rows = [(m1 + l, m2 + l, -m1 - m2 + l, wigner_3j(l, l, l, m1, m2, -m1 - m2))
            for m1 in range(-l, l + 1) for m2 in range(-l, l + 1) if abs(m1 + m2) <= l]
    rows = [r for r in rows if r[3] != 0.0]
    i1, i2, i3, w = (np.array(c) for c in zip(*rows))
    return i1.astype(np.intp), i2.astype(np.intp), i3.astype(np.intp), w.astype(np.float64)
