"""Electron optics of a TEM: wavelength, interaction constant, contrast transfer.

Conventions follow Kirkland, *Advanced Computing in Electron Microscopy* (2nd ed., 2010):
spatial frequency ``k`` is 1/d in 1/A (no 2 pi), and the aberration phase is

    chi(k) = pi * lambda * k^2 * (0.5 * Cs * lambda^2 * k^2 - df)        (Kirkland eq. 3.42)

with ``df > 0`` meaning underfocus. The image wave is ``ifft(fft(psi) * exp(-i chi) * E)``.
With a negative Cs (an aberration-corrected microscope, Cs = -11 um in the paper) and a slight
overfocus (``df < 0``, the paper's "slight positive focus"), chi > 0 over the whole lattice band,
so atom columns appear bright ("white-atom" contrast). ``reference.md`` writes the defocus term
as ``+pi*lambda*df*k^2``, i.e. with the opposite sign of ``df``; the test of white-atom contrast
is the arbiter and pins the convention used here.
"""
from __future__ import annotations

import math

import numpy as np

from .xp import array_namespace

__all__ = [
    "electron_wavelength",
    "interaction_constant",
    "aberration_phase",
    "spatial_envelope",
    "temporal_envelope",
    "frequency_grid",
    "transfer_function",
    "ObjectiveLens",
    "scherzer_defocus",
    "phase_contrast_transfer",
]

#: electron rest energy m0 c^2 in keV
_M0C2_KEV = 510.99895


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in A for an accelerating voltage in kV.

    ``lambda = h / sqrt(2 m0 e V (1 + e V / (2 m0 c^2)))``; 300 kV gives 0.019687 A.
    """
    if voltage_kv <= 0:
        raise ValueError(f"expected a positive voltage in kV, got {voltage_kv}")
    v = voltage_kv * 1e3
    return 12.26426 / math.sqrt(v * (1.0 + 0.97848e-6 * v))


def interaction_constant(voltage_kv: float) -> float:
    """Interaction constant sigma in rad/(V A) (Kirkland eq. 5.6); 300 kV gives 6.5262e-4."""
    lam = electron_wavelength(voltage_kv)
    v = voltage_kv * 1e3
    return (2.0 * math.pi / (lam * v)) * (_M0C2_KEV + voltage_kv) / (2.0 * _M0C2_KEV + voltage_kv)


def scherzer_defocus(cs_A: float, wavelength_A: float) -> float:
    """Defocus (A, Kirkland sign) that balances Cs: ``sign(Cs) * sqrt(1.5 |Cs| lambda)``.

    For Cs < 0 this is an overfocus (negative ``df``), which gives white-atom contrast.
    """
    return math.copysign(math.sqrt(1.5 * abs(cs_A) * wavelength_A), cs_A)


def aberration_phase(k, wavelength_A: float, defocus_A, cs_A: float):
    """Aberration phase chi(k) in rad for spatial frequency magnitude ``k`` in 1/A."""
    k2 = k * k
    return math.pi * wavelength_A * k2 * (0.5 * cs_A * wavelength_A**2 * k2 - defocus_A)


def spatial_envelope(k, wavelength_A: float, defocus_A, cs_A: float, convergence_rad: float):
    """Partial spatial coherence envelope (Kirkland eq. 3.53, quasi-coherent approximation).

    ``E_s(k) = exp(-(pi alpha / lambda)^2 (Cs lambda^3 k^3 - df lambda k)^2)``. It is what makes
    the lattice fade when the particle drifts away from the focal plane: the defocus term grows
    with the distance along the beam.
    """
    xp = array_namespace(k)
    grad = cs_A * wavelength_A**3 * k**3 - defocus_A * wavelength_A * k
    return xp.exp(-((math.pi * convergence_rad / wavelength_A) ** 2) * grad * grad)


def temporal_envelope(k, wavelength_A: float, focal_spread_A: float):
    """Partial temporal coherence envelope ``exp(-0.5 (pi lambda Delta)^2 k^4)`` (Kirkland eq. 3.50)."""
    xp = array_namespace(k)
    return xp.exp(-0.5 * (math.pi * wavelength_A * focal_spread_A) ** 2 * k**4)


def frequency_grid(shape: tuple[int, int], pixel_size_A: float, xp=np):
    """Return ``(ky, kx, k)`` spatial-frequency grids in 1/A for an FFT of ``shape``."""
    ny, nx = shape
    ky = xp.fft.fftfreq(ny, d=pixel_size_A).astype(xp.float32)[:, None]
    kx = xp.fft.fftfreq(nx, d=pixel_size_A).astype(xp.float32)[None, :]
    return ky, kx, xp.sqrt(ky * ky + kx * kx)


class ObjectiveLens:
    """Objective transfer ``exp(-i chi) E_s E_t A`` on one FFT grid, for any defocus.

    The defocus-independent parts of chi and of the envelopes (Kirkland eqs. 3.42, 3.50, 3.53)
    are computed once per grid, so that a simulator asking for a new defocus every frame pays
    only a few elementwise operations; the transfer at ``cache_defocus_A`` is kept whole.

    Parameters
    ----------
    shape : (ny, nx)
        Grid shape in pixels.
    pixel_size_A : float
        Sampling in A/px.
    wavelength_A, cs_A : float
        Electron wavelength and spherical aberration, A.
    convergence_rad : float
        Illumination semi-angle in rad (spatial coherence).
    focal_spread_A : float
        Focal spread in A (temporal coherence).
    aperture_inv_A : float, optional
        Objective aperture radius in 1/A; ``None`` for no aperture.
    cache_defocus_A : float, optional
        A defocus asked for often (the nominal one): its transfer is computed once.
    """

    def __init__(self, shape: tuple[int, int], pixel_size_A: float, *, wavelength_A: float, cs_A: float,
                 convergence_rad: float = 0.0, focal_spread_A: float = 0.0,
                 aperture_inv_A: float | None = None, cache_defocus_A: float | None = None, xp=np):
        self.xp = xp
        _, _, k = frequency_grid(shape, pixel_size_A, xp)
        k2 = k * k
        lam = wavelength_A
        self._chi_cs = math.pi * lam * k2 * 0.5 * cs_A * lam**2 * k2
        self._chi_df = math.pi * lam * k2
        self._g_cs = cs_A * lam**3 * k**3
        self._g_df = lam * k
        self._a = (math.pi * convergence_rad / lam) ** 2
        fixed = xp.ones_like(k)
        if focal_spread_A > 0:
            fixed = fixed * temporal_envelope(k, lam, focal_spread_A)
        if aperture_inv_A is not None:
            fixed = fixed * (k <= aperture_inv_A)
        self._fixed = fixed
        self._cache_defocus = cache_defocus_A
        self._cached = None

    def transfer(self, defocus_A: float):
        """The transfer function at ``defocus_A`` (Kirkland sign, > 0 underfocus), complex64."""
        if defocus_A == self._cache_defocus:
            if self._cached is None:
                self._cached = self._transfer(defocus_A)
            return self._cached
        return self._transfer(defocus_A)

    def _transfer(self, defocus_A: float):
        xp = self.xp
        chi = self._chi_cs - self._chi_df * defocus_A  # aberration_phase, with its parts cached
        env = self._fixed
        if self._a > 0:
            grad = self._g_cs - self._g_df * defocus_A  # the argument of spatial_envelope
            env = env * xp.exp(-self._a * grad * grad)
        return (xp.exp(-1j * chi) * env).astype(xp.complex64)


def transfer_function(
    shape: tuple[int, int],
    pixel_size_A: float,
    *,
    wavelength_A: float,
    defocus_A: float,
    cs_A: float,
    convergence_rad: float = 0.0,
    focal_spread_A: float = 0.0,
    aperture_inv_A: float | None = None,
    xp=np,
):
    """Objective-lens transfer function ``exp(-i chi) E_s E_t A`` on an FFT grid (complex64).

    Parameters
    ----------
    shape : (ny, nx)
        Grid shape in pixels.
    pixel_size_A : float
        Sampling in A/px.
    wavelength_A, defocus_A, cs_A : float
        Electron wavelength, defocus (Kirkland sign, > 0 underfocus) and spherical aberration, A.
    convergence_rad : float
        Illumination semi-angle in rad (spatial coherence).
    focal_spread_A : float
        Focal spread in A (temporal coherence).
    aperture_inv_A : float, optional
        Objective aperture radius in 1/A; ``None`` for no aperture.
    """
    lens = ObjectiveLens(shape, pixel_size_A, wavelength_A=wavelength_A, cs_A=cs_A,
                         convergence_rad=convergence_rad, focal_spread_A=focal_spread_A,
                         aperture_inv_A=aperture_inv_A, xp=xp)
    return lens.transfer(defocus_A)


def phase_contrast_transfer(k, *, wavelength_A: float, defocus_A: float, cs_A: float, convergence_rad: float = 0.0,
                            focal_spread_A: float = 0.0):
    """Contrast transfer of a weak phase object: ``2 sin(chi(k)) E_s(k) E_t(k)``.

    To first order in the object's phase ``phi = sigma v_z`` the image intensity (vacuum 1) is
    ``1 + ifft(fft(phi) * ctf)``, with ``ctf`` this function: what a projection of the potential
    looks like in the image, frequency by frequency. Derived from :class:`ObjectiveLens`'s
    transfer ``H = exp(-i chi) E``: the first-order term of ``|ifft(fft(1 + i phi) H)|^2`` is
    ``-2 Im(H) = 2 sin(chi) E``. Positive over the lattice band for the paper's white-atom
    condition (Cs < 0, slight overfocus), near zero at low frequencies (an in-focus phase object
    shows no outline).

    Parameters
    ----------
    k : array
        Spatial frequency magnitude, 1/A.
    wavelength_A, defocus_A, cs_A : float
        Electron wavelength, defocus (Kirkland sign, > 0 underfocus) and spherical aberration, A.
    convergence_rad : float
        Illumination semi-angle, rad (spatial coherence).
    focal_spread_A : float
        Focal spread, A (temporal coherence).
    """
    xp = array_namespace(k)
    k = xp.asarray(k, dtype=xp.float64)
    chi = aberration_phase(k, wavelength_A, defocus_A, cs_A)
    env = xp.ones_like(k)
    if convergence_rad > 0:
        env = env * spatial_envelope(k, wavelength_A, defocus_A, cs_A, convergence_rad)
    if focal_spread_A > 0:
        env = env * temporal_envelope(k, wavelength_A, focal_spread_A)
    return 2.0 * xp.sin(chi) * env
