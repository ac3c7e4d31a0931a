"""Pre-processing: binning keeps Nyquist under the low-pass limit, the diameter is measured from
the frames when the window does not say, bad crops are left out and bad input says why."""
import numpy as np
import pytest

from btomo.reconstruct.preprocess import bin_factor, estimate_diameter_A, prepare


def _frames(n=80, box=96, radius_px=20.0, seed=0):
    """A disc whose inside varies from frame to frame (a turning lattice) on a steady background."""
    rng = np.random.default_rng(seed)
    y, x = np.indices((box, box)) - box // 2
    inside = np.hypot(x, y) <= radius_px
    out = rng.normal(0, 1.0, (n, box, box)).astype(np.float32)
    k = rng.uniform(0.2, 0.4, n)
    th = rng.uniform(0, np.pi, n)
    for i in range(n):
        out[i] += 3.0 * inside * np.cos(2 * np.pi * k[i] * (x * np.cos(th[i]) + y * np.sin(th[i])))
    return out


def test_bin_factor_keeps_nyquist_below_the_lowpass():
    assert bin_factor(0.358, 1.5) == 2 and bin_factor(0.358, 2.3) == 3 and bin_factor(1.0, 1.5) == 1
    for pix, lp in ((0.358, 1.5), (0.5, 3.1), (0.2, 1.0)):
        assert 2 * pix * bin_factor(pix, lp) <= lp


def test_diameter_from_the_frames_and_the_prepared_box():
    f = _frames()
    d = estimate_diameter_A(f, 0.358)
    assert abs(d - 40 * 0.358) < 3 * 0.358, d
    p = prepare(f, 0.358, lowpass_A=1.5)
    assert p.diameter_source == "frames" and p.bin == 2 and p.voxel_A == pytest.approx(0.716)
    assert p.box % 2 == 0 and p.box * p.voxel_A >= 1.6 * d
    assert np.isfinite(p.images).all() and p.finite.all()
    p = prepare(f, 0.358, diameter_A=20.0)
    assert p.diameter_source == "window" and p.diameter_A == 20.0


def test_nan_crops_are_left_out_and_bad_input_says_why():
    f = _frames(n=20)
    f[3, 5, 5] = np.nan
    f[7] = np.inf
    p = prepare(f, 0.358, diameter_A=15.0)
    assert (~p.finite).sum() == 2 and not p.finite[3] and np.isfinite(p.images).all()
    with pytest.raises(ValueError, match="expected crops"):
        prepare(f[0], 0.358, diameter_A=15.0)
    with pytest.raises(ValueError, match="pixel size"):
        prepare(f, float("nan"), diameter_A=15.0)
    with pytest.raises(ValueError, match="every crop"):
        prepare(np.full((3, 32, 32), np.nan), 0.358)
    with pytest.raises(ValueError, match="no diameter_nm"):
        prepare(np.random.default_rng(0).normal(size=(30, 64, 64)), 0.358)
