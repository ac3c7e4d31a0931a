"""The window store: whole-chunk writes from a thread into a Zarr v3 group, read back by zarr."""
import json

import numpy as np
import pytest
import zarr

from btomo.stream.windows import META_ARRAYS, WindowWriter, window_name


def _meta(start, k):
    f = np.arange(start, start + k)
    return {"frame": f, "t_s": f / 400.0, "x_px": f + 0.5, "y_px": f - 0.5, "fft_peak": np.full(k, 0.2)}


def test_windows_round_trip_and_complete_only_when_closed(tmp_path):
    rng = np.random.default_rng(0)
    w = WindowWriter(tmp_path / "windows.zarr", box=32, pixel_size_A=0.358, chunk_frames=16, queue_chunks=2)
    data = {}
    for p in (0, 1):
        name = window_name(p, 0)
        w.open_window(name, {"particle": p, "t_start_s": 0.0})
        crops = rng.normal(size=(40, 32, 32)).astype(np.float32)
        for i in range(0, 40, 16):  # two whole chunks and a last partial one
            w.append(name, crops[i:i + 16], _meta(i, len(crops[i:i + 16])))
        data[name] = crops
    w.close_window(window_name(0, 0), {"t_end_s": 0.1, "coverage": 0.93, "diameter_nm": 1.9})
    # window p1 is left open: the writer stops without closing it
    counters = w.close()
    assert counters["crops"] == 80 and counters["windows_complete"] == 1 and not counters["failed"]
    root = zarr.open_group(str(tmp_path / "windows.zarr"), mode="r")
    assert root.metadata.zarr_format == 3
    g0, g1 = root[window_name(0, 0)], root[window_name(1, 0)]
    np.testing.assert_array_equal(g0["frames"][:], data[window_name(0, 0)])
    np.testing.assert_array_equal(g1["frames"][:], data[window_name(1, 0)])
    assert g0.attrs["complete"] is True and g1.attrs["complete"] is False
    assert g0.attrs["coverage"] == 0.93 and g0.attrs["particle"] == 0 and g0.attrs["pixel_size_A"] == 0.358
    for key in META_ARRAYS:
        assert g0[key].shape == (40,)
    np.testing.assert_array_equal(g0["frame"][:], np.arange(40))
    assert g0["frames"].chunks == (16, 32, 32)


def test_bad_appends_are_refused_and_a_failed_window_does_not_stop_the_writer(tmp_path):
    w = WindowWriter(tmp_path / "w.zarr", box=8, pixel_size_A=0.358, chunk_frames=4)
    with pytest.raises(ValueError, match=r"expected \(k, 8, 8\) crops"):
        w.append("x", np.zeros((4, 8, 9)), _meta(0, 4))
    with pytest.raises(ValueError, match="metadata arrays missing"):
        w.append("x", np.zeros((4, 8, 8)), {"frame": np.arange(4)})
    w.open_window("a", {"particle": 0})
    w.open_window("a", {"particle": 0})  # exists: this operation fails, counted
    w.append("b", np.zeros((4, 8, 8)), _meta(0, 4))  # never opened: fails, counted
    w.open_window("c", {"particle": 1})
    w.append("c", np.ones((4, 8, 8)), _meta(0, 4))
    w.close_window("c", {})
    c = w.close()
    assert set(c["failed"]) == {"a", "b"} and c["windows_complete"] == 1
    assert zarr.open_group(str(tmp_path / "w.zarr"), mode="r")["c"].attrs["complete"] is True


def test_pipeline_writes_windows_of_lattice_frames_with_coverage(tmp_path):
    """A simulated session through process: per-frame -> denoiser (fallback) -> windows -> jobs on
    a LocalCluster. Small thresholds so that windows close by coverage and by time within 2.25 s
    of frames; consecutive windows overlap by 10 frames."""
    from btomo.stream.config import load_config
    from btomo.stream.pipeline import run_process
    from btomo.stream.simulator import simulate
    from btomo.kernels.frames import crop_box
    from btomo.stream.sources import open_source

    cfg = load_config(overrides={"acquisition.shape": "288x288", "simulate.frames": 900, "simulate.seed": 5,
                                 "simulate.workers": 2})
    simulate(cfg, tmp_path / "rec")
    cfg = load_config(tmp_path / "rec" / "config.toml", overrides={
        "windows.min_frames": 40, "windows.coverage_threshold": 0.3, "windows.max_seconds": 0.8,
        "windows.orientation_particles": 500, "windows.overlap_frames": 10,
        "reconstruct.rounds": 1, "reconstruct.directions": 100})
    with open_source(tmp_path / "rec") as src:
        summary = run_process(cfg, src, tmp_path / "run")
    win = summary["stage_results"]["windows"]
    den = summary["stage_results"]["denoise"]
    assert summary["windows_closed"] == win["windows_closed"] >= 2
    assert den["skipped"]["backlog_full"] == den["skipped"]["displaced"] == 0  # a file waits for the denoiser
    root = zarr.open_group(str(tmp_path / "run" / "windows.zarr"), mode="r")
    names = sorted(root.group_keys())
    assert names == sorted(c["window"] for c in win["closed"])
    total = 0
    members = {}
    for c in win["closed"]:
        g = root[c["window"]]
        n = g["frames"].shape[0]
        total += n
        assert g.attrs["complete"] is True and g.attrs["lattice_frames"] == n
        assert g.attrs["closed_by"] in ("coverage", "max_seconds", "diameter_change", "end_of_run")
        assert 0 < g.attrs["coverage"] <= 1 and g["frames"].shape[1:] == (cfg.frames.box_px,) * 2
        t = g["t_s"][:]
        members[c["window"]] = g["frame"][:]
        assert np.all(np.diff(g["frame"][:]) > 0) and g.attrs["t_start_s"] == t[0] and g.attrs["t_end_s"] == t[-1]
        assert np.isfinite(g["frames"][:]).all()
        # with the fallback denoiser the windows keep the raw frames, cut at the tracked centres
        assert g.attrs["crops"] == "raw"
        with open_source(tmp_path / "rec") as src:
            for i in (0, n - 1):
                want = crop_box(src.read(int(g["frame"][i])), float(g["x_px"][i]), float(g["y_px"][i]),
                                cfg.frames.box_px)[0]
                np.testing.assert_array_equal(g["frames"][i], want)
        if c["closed_by"] == "coverage":
            assert c["coverage"] >= 0.3 and n >= 40
    # every lattice crop that reached the stage is in a window; the overlaps are in two
    by_time = sorted(win["closed"], key=lambda c: c["t_start_s"])
    carried = sum(10 for prev in by_time[:-1] if prev["closed_by"] in ("coverage", "max_seconds"))
    assert carried >= 10 and total == win["lattice_crops"] + carried
    for prev, nxt in zip(by_time, by_time[1:]):
        if prev["closed_by"] in ("coverage", "max_seconds"):
            np.testing.assert_array_equal(members[prev["window"]][-10:], members[nxt["window"]][:10])
    # frames.csv names each frame's window(s), as windows.zarr holds them
    import csv

    rows = list(csv.DictReader(open(tmp_path / "run" / "frames.csv")))
    listed = {}
    for r in rows:
        for name in filter(None, r["window"].split(";")):
            listed.setdefault(name, []).append(int(r["frame"]))
            assert r["lattice"] == "1"
    assert {k: sorted(v) for k, v in listed.items()} == {k: sorted(v.tolist()) for k, v in members.items()}
    # every closed window became a job that ran on the LocalCluster: a map and atoms (one quick
    # round here) or a failure that says why (a window too short to reconstruct)
    jobs = win["jobs"]
    assert summary["jobs"]["done"] + summary["jobs"]["failed"] == len(names) and summary["jobs"]["done"] >= 1
    assert summary["reconstructions_done"] == summary["jobs"]["done"]
    assert jobs["scheduler"].startswith("tcp://127.0.0.1:") and jobs["error"] is None
    for j in jobs["jobs"]:
        assert j["started_at"] >= j["submitted_at"] >= j["queued_at"]
        if j["state"] == "failed":
            assert j["reason"], j
            continue
        assert j["state"] == "done" and j["reconstruction"] == "done"
        rec = json.loads((tmp_path / "run" / "recon" / j["window"] / "job.json").read_text())
        assert rec["frames"] == len(members[j["window"]]) and rec["map"].endswith("map.mrc")
        assert (tmp_path / "run" / "recon" / j["window"] / "atoms.xyz").exists()
