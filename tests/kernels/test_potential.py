"""Kirkland potentials: the check values of reference.md and the exactness of the rendering."""
import math

import numpy as np
import pytest

from btomo.kernels.potential import POTENTIAL_CONSTANT, projected_potential, scattering_factor, structure_factor


@pytest.mark.parametrize("q, f", [(0.0, 10.807), (0.5, 5.995), (1.0, 3.034), (2.0, 1.199)])
def test_pt_scattering_factor_check_values(q, f):
    assert float(scattering_factor(np.array(q))) == pytest.approx(f, abs=1e-3)


def test_unknown_element_is_rejected():
    with pytest.raises(ValueError, match="expected an element"):
        scattering_factor(np.array(0.1), "Xx")


def test_projected_potential_integrates_to_f0():
    """The integral of v_z over the plane is K f(0) (its Fourier transform at k = 0)."""
    pix = 0.25
    vz = projected_potential(np.array([[16.0, 16.0]]), (128, 128), pix)
    assert vz.sum() * pix * pix == pytest.approx(POTENTIAL_CONSTANT * 10.807, rel=1e-4)
    # peaked at the atom, radially symmetric
    iy, ix = np.unravel_index(np.argmax(vz), vz.shape)
    assert (iy, ix) == (64, 64)
    assert vz[64, 60] == pytest.approx(vz[60, 64], rel=1e-4)


@pytest.mark.parametrize("shape", [(12, 10), (11, 9), (12, 9)])
def test_structure_factor_matches_brute_force(shape):
    """sum_j exp(-2 pi i k.r_j), with the Nyquist terms (even sizes) the mean of +k_N and -k_N."""
    rng = np.random.default_rng(1)
    pos = rng.uniform(0, 10, (7, 2))
    s = structure_factor(pos, shape, 0.5)
    ky = np.fft.fftfreq(shape[0], 0.5)[:, None]
    kx = np.fft.fftfreq(shape[1], 0.5)[None, :]

    def term(y, x, sy, sx):
        return np.exp(-2j * math.pi * (sy * ky * y + sx * kx * x))

    nyq_y = np.zeros(shape, bool)
    nyq_x = np.zeros(shape, bool)
    if shape[0] % 2 == 0:
        nyq_y[shape[0] // 2, :] = True
    if shape[1] % 2 == 0:
        nyq_x[:, shape[1] // 2] = True
    ref = np.zeros(shape, complex)
    for y, x in pos:
        # average over the sign of k at the Nyquist row / column, plain elsewhere
        fy = np.where(nyq_y, 0.5, 1.0)
        fx = np.where(nyq_x, 0.5, 1.0)
        ref += fy * fx * term(y, x, 1, 1)
        ref += np.where(nyq_y, fy * fx * term(y, x, -1, 1), 0)
        ref += np.where(nyq_x, fy * fx * term(y, x, 1, -1), 0)
        ref += np.where(nyq_y & nyq_x, fy * fx * term(y, x, -1, -1), 0)
    np.testing.assert_allclose(s, ref, atol=1e-4)
    # Hermitian: S(-k) = conj(S(k)), so the inverse transform is real
    flipped = np.roll(np.flip(s, (0, 1)), 1, axis=(0, 1))
    np.testing.assert_allclose(flipped, np.conj(s), atol=1e-4)


def test_bad_positions_shape_is_rejected():
    with pytest.raises(ValueError, match=r"expected positions of shape \(n, 2\)"):
        structure_factor(np.zeros((3, 3)), (8, 8), 1.0)


def test_half_structure_factor_is_the_rfft_half():
    pos = np.random.default_rng(2).uniform(0, 8, (5, 2))
    full = structure_factor(pos, (10, 12), 0.5)
    half = structure_factor(pos, (10, 12), 0.5, half=True)
    np.testing.assert_allclose(half, full[:, :7], atol=1e-5)
    assert half.shape == (10, 7)


@pytest.mark.parametrize("shape", [(96, 96), (64, 33), (128, 130), (97, 95)])
def test_projected_potential_equals_the_full_plane_transform(shape):
    """The half-plane (irfft2) rendering equals ifft2 of the full structure factor, off-grid atoms."""
    from btomo.kernels.potential import scattering_factor as f_of

    pos = np.random.default_rng(3).uniform(3, 20, (12, 2))
    pix = 0.3
    got = projected_potential(pos, shape, pix, b_factor_A2=0.5)
    ky = np.fft.fftfreq(shape[0], pix)[:, None]
    kx = np.fft.fftfreq(shape[1], pix)[None, :]
    k = np.hypot(ky, kx)
    fk = POTENTIAL_CONSTANT * f_of(k) * np.exp(-0.5 * k * k / 4)
    full = np.fft.ifft2(structure_factor(pos, shape, pix).astype(complex) * fk)
    assert np.abs(full.imag).max() < 1e-3 * np.abs(full.real).max()  # Hermitian: real
    np.testing.assert_allclose(got, full.real / pix**2, atol=2e-5 * float(np.abs(got).max()))


def test_projected_potential_of_odd_grids_is_consistent():
    pos = np.array([[10.0, 11.0]])
    even = projected_potential(pos, (96, 96), 0.25)
    odd = projected_potential(pos, (97, 95), 0.25)
    assert odd.shape == (97, 95)
    assert odd.max() == pytest.approx(even.max(), rel=1e-3)
