"""Atomic potentials from Kirkland's parameterisation, and rendering of projected potentials.

Kirkland (2010), Appendix C: the electron scattering factor of a neutral atom is

    f(q) = sum_i a_i / (q^2 + b_i) + sum_i c_i exp(-d_i q^2)          (q = 1/d in 1/A, f in A)

and the 3D Fourier transform of the atom's electrostatic potential is ``V(q) = K f(q)`` with
``K = h^2 / (2 pi m0 e) = 2 pi a0 e = 47.878 V A^2``. By the projection-slice theorem the 2D
Fourier transform of the projected potential ``v_z`` (V A) is ``V(qx, qy, 0)``, so a projected
potential is rendered here exactly in Fourier space: a structure factor times ``K f(q)``.
"""
from __future__ import annotations

import math

import numpy as np

from functools import lru_cache

from .xp import array_namespace, fft_module

__all__ = [
    "KIRKLAND",
    "POTENTIAL_CONSTANT",
    "scattering_factor",
    "structure_factor",
    "projected_potential",
    "potential_volume",
]

#: ``2 pi a0 e`` in V A^2 (a0 = 0.5292 A Bohr radius, e = 14.4 V A)
POTENTIAL_CONSTANT = 2.0 * math.pi * 0.529177 * 14.39964

#: Kirkland (2010) Table C.4 fit parameters: (a[3], b[3], c[3], d[3]).
KIRKLAND: dict[str, tuple[tuple[float, ...], ...]] = {
    "Pt": (
        (0.98469794, 2.73987079, 3.61696715),
        (0.160910839, 0.718971667, 12.9281016),
        (0.302885602, 0.278370726, 0.0152124129),
        (0.170134854, 1.49862703, 0.0283510822),
    ),
}


def scattering_factor(q, element: str = "Pt"):
    """Kirkland electron scattering factor f(q) in A for q = |k| in 1/A.

    Check values for Pt (``reference.md``): f(0) = 10.807, f(0.5) = 5.995, f(1) = 3.034,
    f(2) = 1.199 A.
    """
    try:
        a, b, c, d = KIRKLAND[element]
    except KeyError:
        raise ValueError(f"expected an element in {sorted(KIRKLAND)}, got {element!r}") from None
    xp = array_namespace(q)
    q = xp.asarray(q, dtype=xp.float64) if xp is np else q
    q2 = q * q
    f = sum(ai / (q2 + bi) for ai, bi in zip(a, b))
    return f + sum(ci * xp.exp(-di * q2) for ci, di in zip(c, d))


def structure_factor(positions_yx, shape: tuple[int, int], pixel_size_A: float, *, half: bool = False):
    """Exact structure factor ``S(k) = sum_j exp(-2 pi i k . r_j)`` on an FFT grid.

    The exponential separates in x and y, so ``S = E_y^T E_x``: one complex matrix product of
    (n_atoms x ny)^T by (n_atoms x nx), which runs at BLAS speed (and on a GPU through the same
    code). No interpolation, so no aliasing of atom positions.

    Parameters
    ----------
    positions_yx : (n, 2) array
        Atom positions (row, column) in A from the grid origin (pixel (0, 0) centre).
    shape : (ny, nx)
        Grid shape in pixels.
    pixel_size_A : float
        Sampling in A/px.
    half : bool
        Only the ``nx // 2 + 1`` non-negative x frequencies (the layout of ``rfft2``): enough for
        a real density, since ``S(-k) = conj(S(k))``; half the work. On even grids the Nyquist
        row and column hold the average of the +k_N and -k_N terms.
    """
    xp = array_namespace(positions_yx)
    pos = xp.asarray(positions_yx, dtype=xp.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"expected positions of shape (n, 2), got {tuple(pos.shape)}")
    ny, nx = shape
    ky = xp.fft.fftfreq(ny, d=pixel_size_A)
    kx = xp.fft.rfftfreq(nx, d=pixel_size_A) if half else xp.fft.fftfreq(nx, d=pixel_size_A)
    ey = xp.exp(-2j * math.pi * pos[:, 0:1] * ky[None, :]).astype(xp.complex64)
    ex = xp.exp(-2j * math.pi * pos[:, 1:2] * kx[None, :]).astype(xp.complex64)
    # On an even grid the Nyquist frequency stands for both +k_N and -k_N: average the two,
    # cos(2 pi k_N r), so that S is exactly Hermitian and its inverse transform exactly real
    # (the same result from irfft2 and ifft2, on NumPy and on cuFFT).
    if ny % 2 == 0:
        ey[:, ny // 2] = ey[:, ny // 2].real
    if nx % 2 == 0:
        col = -1 if half else nx // 2
        ex[:, col] = ex[:, col].real
    return ey.T @ ex


def projected_potential(
    positions_yx,
    shape: tuple[int, int],
    pixel_size_A: float,
    *,
    element: str = "Pt",
    b_factor_A2: float = 0.0,
):
    """Projected potential ``v_z`` in V A of point atoms, band-limited to the grid (float32).

    ``v_z = IFFT[K f(k) exp(-B k^2 / 4) S(k)] / pixel_size^2``; ``B`` is the Debye-Waller factor
    (``8 pi^2 <u^2>``) in A^2. The grid is periodic: keep atoms a few A away from its edges.
    """
    xp = array_namespace(positions_yx)
    fk = _form_factor(tuple(shape), float(pixel_size_A), element, float(b_factor_A2))
    if xp is not np:
        fk = xp.asarray(fk)
    s = structure_factor(positions_yx, shape, pixel_size_A, half=True)
    vz = fft_module(xp).irfft2(s * fk, s=tuple(shape)) / (pixel_size_A * pixel_size_A)
    return vz.astype(xp.float32)


@lru_cache(maxsize=16)
def _form_factor(shape: tuple[int, int], pixel_size_A: float, element: str, b_factor_A2: float) -> np.ndarray:
    """``K f(k) exp(-B k^2 / 4)`` on an ``rfft2`` grid (complex64, cached: the simulator asks for
    the same grid every frame). Read-only, so that no caller can change the cached copy."""
    ky = np.fft.fftfreq(shape[0], d=pixel_size_A)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=pixel_size_A)[None, :]
    k = np.sqrt(ky * ky + kx * kx)
    fk = POTENTIAL_CONSTANT * scattering_factor(k, element)
    if b_factor_A2 > 0:
        fk = fk * np.exp(-b_factor_A2 * k * k / 4.0)
    out = fk.astype(np.complex64)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=8)
def _volume_factor(box: int, voxel_A: float, element: str, b_factor_A2: float, lowpass_A: float) -> np.ndarray:
    """``K f(|k|) exp(-B |k|^2 / 4)`` on the 3D ``fftn`` grid, times the soft low-pass when
    ``lowpass_A`` > 0 (float64, cached and read-only: the refinement renders many models on one grid)."""
    k = np.fft.fftfreq(box, d=voxel_A)
    q = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    out = POTENTIAL_CONSTANT * scattering_factor(q, element) * np.exp(-b_factor_A2 * q * q / 4.0)
    if lowpass_A > 0:
        kc = 1.0 / lowpass_A
        out = out * 0.5 * (1.0 - np.tanh((q - kc) / (0.05 * kc)))
    out.flags.writeable = False
    return out


def potential_volume(positions_xyz_A, box: int, voxel_A: float, *, element: str = "Pt", b_factor_A2: float = 0.5,
                     lowpass_A: float | None = None):
    """The 3D electrostatic potential (V) of atoms on a cubic grid, rendered exactly in Fourier space.

    ``V(k) = K f(|k|) exp(-B |k|^2 / 4) sum_j exp(-2 pi i k . r_j)`` (Kirkland; ``K`` =
    :data:`POTENTIAL_CONSTANT`), divided by the voxel volume so that the inverse DFT gives the
    potential at the voxel centres; optionally cut at ``lowpass_A`` (a soft edge 1/20 of the
    cut-off wide).

    Parameters
    ----------
    positions_xyz_A : (n, 3)
        Atom positions (x, y, z), A, about the box centre (voxel index ``box // 2``).
    box : int
        Side of the grid, voxels.
    voxel_A : float
        Voxel size, A.
    element : str
    b_factor_A2 : float
        Debye-Waller factor, A^2.
    lowpass_A : float, optional
        Resolution limit, A.

    Returns
    -------
    ndarray (box, box, box)
        ``[z, y, x]``, V.
    """
    xp = array_namespace(positions_xyz_A)
    fft = fft_module(xp)
    pos = xp.asarray(positions_xyz_A, dtype=xp.float64).reshape(-1, 3)
    k = xp.fft.fftfreq(box, d=voxel_A)  # 1/A
    # separable phases: sum_j ez[j, z] (ey[j, y] ex[j, x]), one matrix product (BLAS) over atoms
    ph = [xp.exp(-2j * math.pi * pos[:, a, None] * k[None, :]) for a in range(3)]
    eyx = (ph[1][:, :, None] * ph[0][:, None, :]).reshape(len(pos), box * box)
    sf = (ph[2].T @ eyx).reshape(box, box, box)
    factor = _volume_factor(int(box), float(voxel_A), element, float(b_factor_A2), float(lowpass_A or 0.0))
    vk = sf * (factor if xp is np else xp.asarray(factor))
    vol = fft.ifftn(vk).real / voxel_A**3
    return xp.fft.fftshift(vol)
