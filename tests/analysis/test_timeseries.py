"""Across a run: moving average, the lattice trace from frames.csv, the disorder fit."""
import csv

import numpy as np
import pytest

from btomo.analysis.timeseries import LatticeTrace, fit_disorder, moving_average, read_frames_csv


def test_moving_average_is_centred_and_skips_nan():
    v = np.arange(10, dtype=float)
    assert np.allclose(moving_average(v, 3)[1:-1], v[1:-1])
    assert moving_average(v, 3)[0] == pytest.approx(0.5)  # the end averages what there is
    w = v.copy()
    w[4] = np.nan
    assert moving_average(w, 3)[4] == pytest.approx(4.0)
    assert np.isnan(moving_average(np.full(5, np.nan), 3)).all()
    with pytest.raises(ValueError, match="window"):
        moving_average(v, 0)


def test_disorder_fit_recovers_its_parameters():
    a, d_c, n = 0.55, 1.3, -0.8  # n < 0: complete disorder at d_c
    d = np.array([1.36, 1.5, 1.7, 1.83, 1.85, 1.97, 2.2])
    f = 1 - a * (d - d_c) ** (-n)
    fit = fit_disorder(d, f)
    assert fit.A == pytest.approx(a, rel=1e-3)
    assert fit.d_c_nm == pytest.approx(d_c, abs=1e-3)
    assert fit.n == pytest.approx(n, abs=1e-3)
    assert fit.complete_disorder_nm == pytest.approx(d_c, abs=1e-3)
    assert np.allclose(fit(d), f, atol=1e-6)
    with pytest.raises(ValueError, match="at least 3"):
        fit_disorder([1.5, 2.0], [0.4, 0.2])


def test_lattice_trace_from_frames_csv(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "frames.csv"
    n = 600
    lattice = (np.arange(n) // 100) % 2 == 0
    peak = np.where(lattice, 5.0, 1.0) + rng.normal(0, 0.1, n)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "t_s", "particle", "x_px", "y_px", "fft_peak", "lattice", "diameter_nm", "window"])
        for i in range(n):
            w.writerow([i, i / 400, 0, 10, 10, f"{peak[i]:.4f}", int(lattice[i]),
                        f"{2.0 - i / 1000:.3f}" if lattice[i] else "", "p0_w0000" if lattice[i] else ""])
    cols = read_frames_csv(path)
    tr = LatticeTrace.from_columns(cols, 0, window=100)
    assert len(tr.t_s) == n and tr.lattice.sum() == lattice.sum()
    assert tr.threshold == pytest.approx(peak[lattice].min(), abs=1e-4)
    assert tr.fft_peak_avg[50] == pytest.approx(np.mean(peak[:100]), abs=0.02)
    s = tr.summary()
    assert s["lattice_fraction"] == pytest.approx(0.5)
    assert 1.9 < s["diameter_first_nm"] <= 2.0 and s["diameter_last_nm"] < 1.6
    with pytest.raises(ValueError, match="particle 3"):
        LatticeTrace.from_columns(cols, 3)
    bad = tmp_path / "bad.csv"
    bad.write_text("frame,t_s\n0,0\n")
    with pytest.raises(ValueError, match="missing"):
        read_frames_csv(bad)
