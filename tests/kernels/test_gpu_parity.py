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


def test_frame_kernels_parity(cp):
    from btomo.kernels.frames import bilateral_filter, bin_frame, crop_box, lattice_peak, otsu_threshold
    from btomo.stream.frames import CropAnalyzer

    rng = np.random.default_rng(7)
    frame = rng.poisson(2.0, (400, 384)).astype(np.uint16)
    np.testing.assert_allclose(to_numpy(bin_frame(cp.asarray(frame), 8)), bin_frame(frame, 8), rtol=1e-6)
    c_np, o_np, _ = crop_box(frame, 5.0, 200.0, 160)
    c_cp, o_cp, _ = crop_box(cp.asarray(frame), 5.0, 200.0, 160)
    np.testing.assert_allclose(to_numpy(c_cp), c_np, rtol=1e-6)
    assert o_np == o_cp
    img = rng.normal(size=(96, 96)).astype(np.float32)
    np.testing.assert_allclose(to_numpy(bilateral_filter(cp.asarray(img))), bilateral_filter(img), rtol=1e-4, atol=1e-5)
    v = rng.normal(size=5000)
    assert otsu_threshold(cp.asarray(v))[0] == pytest.approx(otsu_threshold(v)[0], rel=1e-6)
    power = rng.exponential(size=(160, 160))
    band = np.hypot(*np.meshgrid(np.arange(160) - 80, np.arange(160) - 80)) < 40
    a, b = lattice_peak(power, band), lattice_peak(cp.asarray(power), cp.asarray(band))
    assert (a.iy, a.ix) == (b.iy, b.ix) and a.energy == pytest.approx(b.energy, rel=1e-6)
    crop = rng.poisson(2.0, (160, 160)).astype(np.float32)
    r_np, _ = CropAnalyzer(160, 0.358, 2.3, np).analyse(crop, (0, 0), 28.0, 0.0)
    r_cp, _ = CropAnalyzer(160, 0.358, 2.3, cp).analyse(cp.asarray(crop), (0, 0), 28.0, 0.0)
    assert r_cp.m == pytest.approx(r_np.m, rel=1e-3) and r_cp.x_meas == pytest.approx(r_np.x_meas, abs=0.05)
