"""The per-frame kernels (kernels/frames.py) on inputs whose answer is known exactly."""
import math

import numpy as np
import pytest

from btomo.kernels.frames import (
    band_radii,
    bilateral_filter,
    bin_frame,
    crop_box,
    fringe_modulation,
    fringe_truth,
    lattice_parameter,
    lattice_peak,
    masked_correlation,
    otsu_threshold,
    soft_disc,
)


def test_band_radii_match_reference():
    # reference.md: {111} at 25.3 px and {200} at 29.2 px in a 160 px box at 0.358 A/px
    r_in, r_out = band_radii(160, 0.358, margin=0.0)
    assert r_in == pytest.approx(25.3, abs=0.05)
    assert 160 * 0.358 / 1.960 == pytest.approx(29.2, abs=0.05)
    assert r_out == pytest.approx(160 * 0.358 / 1.386, rel=1e-3)
    with pytest.raises(ValueError, match="positive"):
        band_radii(0, 0.358)


def test_bin_frame_means_blocks():
    a = np.arange(36, dtype=np.uint16).reshape(6, 6)
    b = bin_frame(a, 2)
    assert b.dtype == np.float32 and b.shape == (3, 3)
    assert b[0, 0] == pytest.approx((0 + 1 + 6 + 7) / 4)
    assert bin_frame(np.ones((7, 9)), 4).shape == (1, 2)  # trailing rows/columns dropped
    with pytest.raises(ValueError, match="smaller than one"):
        bin_frame(np.ones((3, 3)), 4)


def test_crop_box_centre_and_edge_padding():
    f = np.arange(100 * 120, dtype=np.float32).reshape(100, 120)
    c, (x0, y0), inside = crop_box(f, 50.4, 40.6, 20)
    assert c.shape == (20, 20) and inside == 1.0
    assert c[10, 10] == f[41, 50] and (x0, y0) == (40, 31)
    # at the corner: the outside is the mean of the inside part, not a mirror of the particle
    c, (x0, y0), inside = crop_box(f, 2.0, 3.0, 20)
    assert (x0, y0) == (-8, -7) and inside == pytest.approx(12 * 13 / 400)
    part = f[0:13, 0:12]
    np.testing.assert_array_equal(c[7:, 8:], part)
    assert c[0, 0] == pytest.approx(part.mean())
    with pytest.raises(ValueError, match="outside"):
        crop_box(f, -50, -50, 20)


def _fringes(box=160, pix=0.358, d=2.263, angle_deg=30.0, m=0.2, radius=28.0, i0=50.0, offset=(0.0, 0.0)):
    yy, xx = np.mgrid[:box, :box].astype(float)
    yy -= box // 2 + offset[1]
    xx -= box // 2 + offset[0]
    g = 1.0 / (d / pix)  # cycles per px
    th = math.radians(angle_deg)
    phase = 2 * math.pi * g * (xx * math.cos(th) + yy * math.sin(th))
    inside = np.hypot(xx, yy) <= radius
    return i0 * (1.0 + m * np.cos(phase) * inside), inside.sum()


def test_lattice_peak_finds_spacing_angle_and_modulation():
    img, area = _fringes(angle_deg=30.0, m=0.2)
    c = img - img.mean()
    power = np.abs(np.fft.fft2(c)) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(160) * 160, np.fft.fftfreq(160) * 160))
    r_in, r_out = band_radii(160, 0.358)
    lp = lattice_peak(power, (k >= r_in) & (k <= r_out))
    a, hkl = lattice_parameter(lp.radius(), 160, 0.358)
    assert hkl == (1, 1, 1) and a == pytest.approx(3.92, abs=0.03)
    assert math.degrees(math.atan2(lp.ky, lp.kx)) % 180 == pytest.approx(30.0, abs=1.0)
    m = fringe_modulation(lp.energy, img.mean(), 160 * 160, area)
    assert 0.14 < m < 0.22  # 3x3 bins hold most of the peak's energy
    assert lp.ratio > 1e3


def test_fringe_truth_on_a_noise_free_particle_image():
    img, area = _fringes(angle_deg=120.0, m=0.25, i0=1.0, d=1.960)
    m, ang, d = fringe_truth(img[16:-16, 16:-16], 160, 0.358, area)  # a smaller square, zero-padded
    assert ang == pytest.approx(120.0, abs=1.0) and d == pytest.approx(1.960, abs=0.02)
    assert 0.17 < m < 0.27
    m0, _, _ = fringe_truth(np.ones((128, 128)), 160, 0.358, area)
    assert m0 == 0.0


def test_otsu_on_two_modes_and_one():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(-2, 0.2, 700), rng.normal(-0.8, 0.2, 300)])
    t, eta = otsu_threshold(v)
    assert -1.7 < t < -1.1 and eta > 0.8
    _, eta1 = otsu_threshold(rng.normal(0, 1, 1000))
    assert eta1 < 0.8
    with pytest.raises(ValueError, match="at least 2"):
        otsu_threshold(np.array([np.nan, 1.0]))


def test_bilateral_filter_keeps_edges_and_smooths_flat_parts():
    rng = np.random.default_rng(1)
    step = np.zeros((64, 64), np.float32)
    step[:, 32:] = 10.0
    noisy = step + rng.normal(0, 0.5, step.shape).astype(np.float32)
    out = bilateral_filter(noisy, 2.0, 2.0, 3)
    assert out[:, 5:27].std() < 0.5 * noisy[:, 5:27].std()
    assert out[:, 33:60].mean() - out[:, 4:30].mean() == pytest.approx(10.0, abs=0.3)  # the edge stays


def test_masked_correlation_and_soft_disc():
    d = soft_disc(64, 20.0, 6.0)
    assert d[32, 32] == 1.0 and d[0, 0] == 0.0
    rng = np.random.default_rng(2)
    a = rng.normal(size=(64, 64))
    assert masked_correlation(a, a, d) == pytest.approx(1.0)
    assert masked_correlation(a, -a, d) == pytest.approx(-1.0)
    assert abs(masked_correlation(a, rng.normal(size=(64, 64)), d)) < 0.1
    assert math.isnan(masked_correlation(np.ones((64, 64)), a, d))


def test_noise_floor_is_the_mean_noise_power_not_the_median():
    from btomo.kernels.frames import noise_floor

    rng = np.random.default_rng(4)
    img = rng.normal(0.0, 3.0, (160, 160)).astype(np.float32)
    power = np.abs(np.fft.fft2(img)) ** 2
    r_in, r_out = band_radii(160, 0.358)
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(160) * 160, np.fft.fftfreq(160) * 160))
    band = (k >= r_in) & (k <= r_out)
    expected = 160 * 160 * 9.0  # N sigma^2 per bin for white noise
    assert noise_floor(power, band) == pytest.approx(expected, rel=0.06)
    assert np.median(power[band]) < 0.75 * expected  # the plain median is 31 % low
