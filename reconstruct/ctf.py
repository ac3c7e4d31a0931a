"""The microscope's contrast transfer, as the reconstruction compares and inserts images.

A lattice frame is not a projection of the potential: the objective lens transfers each
spatial frequency of the particle's phase ``sigma v_z`` by the weak-phase contrast transfer
``2 sin(chi(k)) E_s(k) E_t(k)`` (:func:`~btomo.kernels.optics.phase_contrast_transfer`), and the
detector blurs it further. Under the paper's white-atom optics (Cs = -11 um, 57 A overfocus)
that transfer is positive over the lattice band but falls to nothing below ~1/5 A^-1: the
frames carry almost none of the particle's outline, which a bare projection of the reference
is full of. Measured on simulated windows (2026-11-25, docs/accuracy.md): the correlation of a
frame with the true atoms at the true orientation rises from 0.31 to 0.62 at 100x the paper's
dose (0.19 to 0.24 at the paper's dose) once the reference's projection goes through this
transfer; the full non-linear image (the phase object, ``|psi * h|^2``) adds nothing beyond it
at the reconstruction's 1.5 A.

The transfer depends only on ``|k|``: it commutes with in-plane rotation, so the orientation
search applies it as one factor per polar ring (:class:`~btomo.reconstruct.search.OrientationSearch`,
``ring_filter``). The map is inserted from the frames as they are (the potential seen through
the transfer); a Wiener-corrected insertion (frames times the transfer, weights times its
square) was tried and lost the atoms (the matched filter's template is the bare potential:
1000 frames at the paper's dose, 68 atoms found of 289), so it is not used.

The optics come from the window's ``optics`` attribute (written by the pipeline from the run's
``microscope`` settings: the instrument that recorded the frames). The defocus is the nominal
one: a particle some nm above or below the focal plane is compared at the focal plane's
transfer.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from btomo.kernels.optics import electron_wavelength, phase_contrast_transfer

__all__ = ["Optics", "OPTICS_KEYS"]

#: the keys of a window's ``optics`` attribute (the run's ``microscope`` settings)
OPTICS_KEYS = ("voltage_kv", "cs_um", "defocus_A", "convergence_mrad", "focal_spread_A", "detector_blur_px")


@dataclass(frozen=True)
class Optics:
    """Electron optics of the microscope that recorded a window.

    Attributes
    ----------
    voltage_kv : float
        Accelerating voltage, kV.
    cs_um : float
        Spherical aberration, um (negative: corrected).
    defocus_A : float
        Defocus of the focal plane, A, Kirkland's sign (> 0 underfocus).
    convergence_mrad : float
        Illumination semi-angle, mrad.
    focal_spread_A : float
        Focal spread, A.
    detector_blur_px : float
        Gaussian sigma of the detector's point spread, in the window's pixels.
    """

    voltage_kv: float
    cs_um: float
    defocus_A: float
    convergence_mrad: float = 0.0
    focal_spread_A: float = 0.0
    detector_blur_px: float = 0.0

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "Optics":
        """From a window's ``optics`` attribute (a mapping with :data:`OPTICS_KEYS`).

        Raises
        ------
        ValueError
            A key is missing or not a finite number, or the voltage is not positive.
        """
        if not isinstance(attrs, Mapping):
            raise ValueError(f"expected the window's optics as a mapping of {OPTICS_KEYS}, got {type(attrs).__name__}")
        values = {}
        for key in OPTICS_KEYS:
            if key not in attrs:
                raise ValueError(f"the window's optics lack {key!r}: expected keys {OPTICS_KEYS}, got {sorted(attrs)}")
            try:
                v = float(attrs[key])
            except (TypeError, ValueError):
                raise ValueError(f"the window's optics.{key} must be a number, got {attrs[key]!r}") from None
            if not math.isfinite(v):
                raise ValueError(f"the window's optics.{key} must be finite, got {v}")
            values[key] = v
        if values["voltage_kv"] <= 0:
            raise ValueError(f"the window's optics.voltage_kv must be > 0, got {values['voltage_kv']}")
        for key in ("convergence_mrad", "focal_spread_A", "detector_blur_px"):
            if values[key] < 0:
                raise ValueError(f"the window's optics.{key} must be >= 0, got {values[key]}")
        return cls(**values)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def transfer(self, k_inv_A, pixel_size_A: float):
        """Contrast transfer at spatial frequencies ``k_inv_A`` (1/A): the weak-phase transfer
        times the detector's MTF (its blur in pixels of ``pixel_size_A`` A, the window's)."""
        k = np.asarray(k_inv_A, dtype=np.float64)
        lam = electron_wavelength(self.voltage_kv)
        c = phase_contrast_transfer(k, wavelength_A=lam, defocus_A=self.defocus_A, cs_A=self.cs_um * 1e4,
                                    convergence_rad=self.convergence_mrad * 1e-3, focal_spread_A=self.focal_spread_A)
        if self.detector_blur_px > 0:
            s = self.detector_blur_px * pixel_size_A  # A
            c = c * np.exp(-2.0 * math.pi**2 * s * s * k * k)
        return c
