"""NumPy and CuPy give the same results for the kernels that take their module from the data.

Marked ``gpu``: skipped without a CUDA device (CI never has one).
"""
import numpy as np
import pytest

from btomo.kernels.optics import transfer_function
from btomo.kernels.potential import projected_potential, scattering_factor
from btomo.kernels.xp import array_namespace, to_numpy

pytestmark = pytest.mark.gpu


@pytest.fixture
def cp():
    return pytest.importorskip("cupy")


def test_array_namespace_follows_the_data(cp):
    assert array_namespace(cp.zeros(3)) is cp
    assert array_namespace(np.zeros(3)) is np
    with pytest.raises(TypeError):
        array_namespace(cp.zeros(3), np.zeros(3))


def test_scattering_factor_parity(cp):
    q = np.random.default_rng(0).uniform(0, 3, 1000)
    np.testing.assert_allclose(to_numpy(scattering_factor(cp.asarray(q))), scattering_factor(q), rtol=1e-10)


def test_projected_potential_parity(cp):
    pos = np.random.default_rng(1).uniform(5, 40, (200, 2))
    ref = projected_potential(pos, (128, 128), 0.358, b_factor_A2=0.5)
    got = to_numpy(projected_potential(cp.asarray(pos), (128, 128), 0.358, b_factor_A2=0.5))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3 * float(np.abs(ref).max()))


def test_transfer_function_parity(cp):
    kw = dict(wavelength_A=0.019687, defocus_A=-57.0, cs_A=-11e4, convergence_rad=4e-3, focal_spread_A=20.0)
    ref = transfer_function((96, 80), 0.179, **kw)
    got = to_numpy(transfer_function((96, 80), 0.179, xp=cp, **kw))
    np.testing.assert_allclose(got, ref, atol=1e-5)
