"""Electron optics against the values in reference.md and Kirkland's conventions."""
import math

import numpy as np
import pytest

from btomo.kernels.optics import (
    aberration_phase,
    electron_wavelength,
    interaction_constant,
    scherzer_defocus,
    spatial_envelope,
    transfer_function,
)


def test_wavelength_matches_reference():
    assert electron_wavelength(300) == pytest.approx(0.019687, abs=2e-6)
    assert electron_wavelength(200) == pytest.approx(0.025079, abs=2e-6)


def test_interaction_constant_matches_reference():
    assert interaction_constant(300) == pytest.approx(6.5262e-4, rel=2e-4)


def test_negative_voltage_is_rejected():
    with pytest.raises(ValueError, match="positive voltage"):
        electron_wavelength(-1)


def test_chi_is_kirkland_convention():
    lam, df, cs = 0.0197, 100.0, 1e7
    k = 0.5
    expected = math.pi * lam * k**2 * (0.5 * cs * lam**2 * k**2 - df)
    assert aberration_phase(k, lam, df, cs) == pytest.approx(expected)


def test_overfocus_balances_negative_cs_over_the_lattice_band():
    """With Cs = -11 um and the default overfocus chi > 0 (white atoms) from {111} to {220}."""
    lam = electron_wavelength(300)
    df = scherzer_defocus(-11e4, lam)
    assert df == pytest.approx(-57.0, abs=0.5)
    k = np.linspace(1 / 2.263, 1 / 1.386, 50)
    chi = aberration_phase(k, lam, df, -11e4)
    assert np.all(np.sin(chi) > 0.5)


def test_spatial_envelope_fades_with_defocus():
    lam = electron_wavelength(300)
    k = np.array([1 / 2.263])
    near = spatial_envelope(k, lam, -57.0, -11e4, 3e-3)[0]
    far = spatial_envelope(k, lam, -57.0 - 400.0, -11e4, 3e-3)[0]
    assert near > 0.9
    assert far < 0.05


def test_transfer_function_is_unit_modulus_without_envelopes():
    h = transfer_function((32, 32), 0.358, wavelength_A=0.0197, defocus_A=-57, cs_A=-11e4)
    assert h.dtype == np.complex64
    np.testing.assert_allclose(np.abs(h), 1.0, atol=1e-6)


def test_objective_lens_matches_the_separate_formulas():
    """The cached lens gives exp(-i chi) E_s E_t at any defocus, and the cached one unchanged."""
    from btomo.kernels.optics import ObjectiveLens, frequency_grid, temporal_envelope

    lam, cs, alpha, delta = 0.019687, -11e4, 4e-3, 20.0
    lens = ObjectiveLens((40, 36), 0.2, wavelength_A=lam, cs_A=cs, convergence_rad=alpha, focal_spread_A=delta,
                         cache_defocus_A=-57.0)
    _, _, k = frequency_grid((40, 36), 0.2)
    for df in (-57.0, 120.0, -57.0):
        ref = np.exp(-1j * aberration_phase(k, lam, df, cs)) * spatial_envelope(k, lam, df, cs, alpha) \
            * temporal_envelope(k, lam, delta)
        np.testing.assert_allclose(lens.transfer(df), ref, atol=2e-6)
    assert lens.transfer(-57.0) is lens.transfer(-57.0)  # computed once


def test_phase_contrast_transfer_is_the_first_order_image_of_a_weak_phase_object():
    """The image of a weak phase grating through the full lens (|ifft(fft(exp(i phi)) H)|^2)
    equals 1 + phi filtered by phase_contrast_transfer, frequency by frequency; it is positive
    over the lattice band for the paper's optics and vanishes towards zero frequency."""
    from btomo.kernels.optics import ObjectiveLens, phase_contrast_transfer

    lam, cs, df, pix, n = electron_wavelength(300), -11e4, -57.0, 0.2, 128
    lens = ObjectiveLens((n, n), pix, wavelength_A=lam, cs_A=cs, convergence_rad=4e-3, focal_spread_A=20.0)
    rng = np.random.default_rng(0)
    phi = 1e-3 * rng.standard_normal((n, n))  # weak: second order is 1e-6 of the first
    wave = np.fft.ifft2(np.fft.fft2(np.exp(1j * phi)) * lens.transfer(df))
    image = np.abs(wave) ** 2
    ky = np.fft.fftfreq(n, d=pix)[:, None]
    kx = np.fft.fftfreq(n, d=pix)[None, :]
    ctf = phase_contrast_transfer(np.hypot(ky, kx), wavelength_A=lam, defocus_A=df, cs_A=cs,
                                  convergence_rad=4e-3, focal_spread_A=20.0)
    first_order = 1.0 + np.fft.ifft2(np.fft.fft2(phi) * ctf).real
    assert np.abs(image - first_order).max() < 2e-3 * np.abs(first_order - 1).max()
    band = phase_contrast_transfer(np.array([1 / 2.27, 1 / 1.96, 1 / 1.5]), wavelength_A=lam, defocus_A=df, cs_A=cs)
    assert (band > 0.5).all(), band
    assert abs(phase_contrast_transfer(np.array([0.02]), wavelength_A=lam, defocus_A=df, cs_A=cs)[0]) < 0.01
