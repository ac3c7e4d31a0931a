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


def test_structure_factor_matches_brute_force():
    rng = np.random.default_rng(1)
    pos = rng.uniform(0, 10, (7, 2))
    s = structure_factor(pos, (12, 10), 0.5)
    ky = np.fft.fftfreq(12, 0.5)[:, None]
    kx = np.fft.fftfreq(10, 0.5)[None, :]
    ref = sum(np.exp(-2j * math.pi * (ky * y + kx * x)) for y, x in pos)
    np.testing.assert_allclose(s, ref, atol=1e-4)


def test_bad_positions_shape_is_rejected():
    with pytest.raises(ValueError, match=r"expected positions of shape \(n, 2\)"):
        structure_factor(np.zeros((3, 3)), (8, 8), 1.0)


def test_half_structure_factor_is_the_rfft_half():
    pos = np.random.default_rng(2).uniform(0, 8, (5, 2))
    full = structure_factor(pos, (10, 12), 0.5)
    half = structure_factor(pos, (10, 12), 0.5, half=True)
    # the Nyquist column (index 6) is +k_N in the rfft layout and -k_N in the fft one
    np.testing.assert_allclose(half[:, :6], full[:, :6], atol=1e-5)
    assert half.shape == (10, 7)


def test_projected_potential_of_odd_grids_is_consistent():
    pos = np.array([[10.0, 11.0]])
    even = projected_potential(pos, (96, 96), 0.25)
    odd = projected_potential(pos, (97, 95), 0.25)
    assert odd.shape == (97, 95)
    assert odd.max() == pytest.approx(even.max(), rel=1e-3)
