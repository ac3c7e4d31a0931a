"""The window stage's rules on rows fed directly (no pipeline): closing on time when a late lattice
frame comes, on a change of diameter, at the end; the confirmation of views before they count."""
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from btomo.kernels.coverage import Coverage
from btomo.stream.config import load_config
from btomo.stream.windows import WindowStage


def _stage(tmp_path, **over):
    cfg = load_config(overrides={"jobs.enabled": False, "windows.max_seconds": 1.0, "windows.min_frames": 5,
                                 "windows.diameter_frames": 5, "windows.chunk_frames": 4, **over})
    feeder = SimpleNamespace(sink=None)  # the denoiser's hook: the stage chains itself onto it
    return WindowStage(cfg, tmp_path, feeder), feeder, cfg.frames.box_px


def _row(frame, t, d=2.0, lattice=1):
    return {"frame": frame, "t_s": t, "particle": 0, "x_px": 1.0, "y_px": 2.0, "fft_peak": 0.3,
            "lattice": lattice, "diameter_nm": d}


def test_late_frame_diameter_change_and_end_of_run(tmp_path):
    stage, feeder, box = _stage(tmp_path)
    crop = np.zeros((box, box), np.float32)
    for f in range(8):
        feeder.sink(_row(f, f * 0.0025), crop)
    feeder.sink(_row(8, 0.5, lattice=0), crop)  # not a lattice frame: ignored
    feeder.sink(_row(900, 2.25), crop)  # 2.25 s after the window opened: it closes first
    for f in range(901, 906):
        feeder.sink(_row(f, f * 0.0025, d=2.0), crop)
    for f in range(906, 917):  # the particle shrank by 0.5 nm: once the median of the last 5 says
        feeder.sink(_row(f, f * 0.0025, d=1.5), crop)  # so (frame 909; 10 frames in), the window closes
    out = stage.finish()
    closed = [(c["window"], c["closed_by"], c["lattice_frames"]) for c in out["closed"]]
    assert closed == [("p0_w0000", "max_seconds", 8), ("p0_w0001", "diameter_change", 10),
                      ("p0_w0002", "end_of_run", 7)]
    root = zarr.open_group(str(tmp_path / "windows.zarr"), mode="r")
    np.testing.assert_array_equal(root["p0_w0001"]["frame"][:], np.arange(900, 910))
    assert root["p0_w0000"].attrs["t_end_s"] == 7 * 0.0025 and root["p0_w0000"].attrs["under_covered"]
    assert all(root[n].attrs["complete"] for n in root.group_keys())
    # no crop showed lattice peaks: no orientation, no coverage; the arrays say so
    assert np.isnan(root["p0_w0000"]["orientation"][:]).all() and (root["p0_w0000"]["coverage"][:] == 0).all()


def test_a_view_counts_only_once_the_next_agrees(tmp_path):
    stage, _, _ = _stage(tmp_path)
    win = SimpleNamespace(pending=None, coverage=Coverage())
    z, x = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])
    tilt = np.array([0.0, np.sin(np.radians(8)), np.cos(np.radians(8))])
    stage._confirm(win, 0, z)
    assert win.coverage.views == 0  # alone: pending
    stage._confirm(win, 4, x)  # 90 deg away: neither counts
    assert win.coverage.views == 0
    stage._confirm(win, 8, x)  # agrees with the previous: both count (the same view twice)
    assert win.coverage.views == 2
    stage._confirm(win, 12, tilt)  # a jump of 82 deg: pending
    stage._confirm(win, 40, tilt)  # agrees, but 28 frames later (> 2 updates): not confirmed
    assert win.coverage.views == 2


@pytest.mark.parametrize("method, choice, want", [("fallback", "auto", "raw"), ("network", "auto", "network"),
                                                  ("fallback", "denoised", "fallback"), ("network", "raw", "raw")])
def test_windows_keep_the_raw_or_the_denoised_crops_as_configured(tmp_path, method, choice, want):
    """``windows.crops``: with the fallback denoiser the windows keep the raw crops by default
    (its 5-frame average blurs a moving particle for reconstruction); the attribute says which."""
    cfg = load_config(overrides={"windows.min_frames": 3, "windows.max_seconds": 100.0, "windows.chunk_frames": 2,
                                 "windows.crops": choice, "jobs.enabled": False})
    feeder = SimpleNamespace(sink=None, method=method)
    stage = WindowStage(cfg, tmp_path, feeder)
    box = cfg.frames.box_px
    denoised, raw = np.full((box, box), 1.0, np.float32), np.full((box, box), 7.0, np.float32)
    for f in range(5):
        feeder.sink(_row(f, f * 0.0025), denoised, raw)
    stage.finish()
    g = zarr.open_group(str(tmp_path / "windows.zarr"), mode="r")["p0_w0000"]
    assert g.attrs["crops"] == want
    assert np.all(g["frames"][:] == (7.0 if want == "raw" else 1.0))
    # the microscope's optics travel with the window, for the reconstruction's contrast transfer
    assert g.attrs["optics"] == {k: float(v) for k, v in dataclasses.asdict(cfg.microscope).items()}


def test_raw_crops_asked_for_but_not_given_is_an_error_not_a_silent_substitute(tmp_path):
    cfg = load_config(overrides={"windows.crops": "raw", "jobs.enabled": False})
    feeder = SimpleNamespace(sink=None, method="network")
    WindowStage(cfg, tmp_path, feeder)
    crop = np.zeros((cfg.frames.box_px,) * 2, np.float32)
    with pytest.raises(ValueError, match="no raw crop came"):
        feeder.sink(_row(0, 0.0), crop)
