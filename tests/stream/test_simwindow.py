"""The reconstruction's test windows (btomo.stream.simwindow): Brownian orientations, lattice
frames, acquisition indices and times."""
import csv
import math

import numpy as np
import pytest
import zarr
from ase.io import read

from btomo.kernels.crystal import equivalent_diameter_A
from btomo.kernels.rotation import quat_to_matrix
from btomo.stream.simwindow import brownian_orientations, shows_fringes, simulate_window
from helpers import small_config


def test_brownian_orientations_decorrelate_at_the_set_constant():
    """Unit vectors decorrelate as <u(t).u(0)> = exp(-2 D_r t), like the simulator's particles."""
    d_r, fps = 2.0, 400.0
    lags = (20, 80, 200)
    dots = {lag: [] for lag in lags}
    for seed in range(12):
        q, frames = brownian_orientations(np.random.default_rng(seed), 1600, d_r, fps)
        assert np.array_equal(frames, np.arange(1600))
        r = quat_to_matrix(q)
        for lag in lags:
            dots[lag].append(np.einsum("fij,fij->f", r[lag:], r[:-lag]).mean() / 3.0)
    for lag in lags:
        assert np.mean(dots[lag]) == pytest.approx(math.exp(-2 * d_r * lag / fps), abs=0.04), f"lag {lag}"


def test_brownian_lattice_frames_keep_their_acquisition_indices():
    d = equivalent_diameter_A(289)
    keep = lambda q: shows_fringes(q, d)  # noqa: E731
    q, frames = brownian_orientations(np.random.default_rng(3), 300, 2.0, 400.0, keep=keep)
    assert len(q) == 300 and np.all(np.diff(frames) >= 1)
    assert shows_fringes(q, d).all()
    assert frames[-1] + 1 > 300  # some frames in between showed no lattice and were skipped
    with pytest.raises(RuntimeError, match="show fringes"):
        brownian_orientations(np.random.default_rng(3), 10, 2.0, 400.0, keep=lambda q: np.zeros(len(q), bool),
                              max_frames=500)
    with pytest.raises(ValueError, match="D_r > 0"):
        brownian_orientations(np.random.default_rng(3), 10, 0.0, 400.0)


def test_brownian_window_writes_times_and_truth(tmp_path):
    cfg = small_config(**{"frames.box_px": 64, "sample.diameter_nm": 1.2})
    sw = simulate_window(cfg, tmp_path, 24, seed=4, rot_diffusion_rad2_s=2.0)
    g = zarr.open_group(str(sw.store), mode="r")[sw.name]
    frame = np.asarray(g["frame"][:])
    t = np.asarray(g["t_s"][:])
    assert len(frame) == 24 and np.all(np.diff(frame) >= 1)
    np.testing.assert_allclose(t, frame / 400.0)
    rows = list(csv.DictReader(open(tmp_path / "truth" / "frames.csv")))
    assert [int(r["frame"]) for r in rows] == frame.tolist()
    assert len(read(tmp_path / "truth" / "removed_sites.xyz")) == 0 and sw.removed_A.shape == (0, 3)
    q = np.array([[float(r[k]) for k in ("qw", "qx", "qy", "qz")] for r in rows])
    np.testing.assert_allclose(q, sw.quaternions, atol=1e-8)
    # consecutive lattice frames are close in orientation (a few degrees per frame at 2 rad^2/s)
    r = quat_to_matrix(q)
    cosang = (np.einsum("fij,fij->f", r[1:], r[:-1]) - 1) / 2
    gap = np.diff(frame)
    assert np.degrees(np.arccos(np.clip(cosang, -1, 1)))[gap == 1].max() < 40
