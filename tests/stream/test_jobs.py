"""Reconstruction jobs on Dask: a real LocalCluster (btomo's own, or an existing one reached by
address), states queued -> running -> done / failed, the limits, and failures that never reach
the pipeline."""
import dataclasses
import json
import time

import numpy as np
import pytest

from btomo.reconstruct.config import ReconstructConfig
from btomo.reconstruct.window import WindowError, read_window
from btomo.stream.config import JobsConfig
from btomo.stream.jobs import ReconstructionJobs
from btomo.stream.windows import WindowWriter


def _sim_window(store_dir):
    """A small simulated window that reconstructs in seconds (stored as ``p0_w0000``)."""
    from btomo.stream.simwindow import simulate_window
    from helpers import small_config

    cfg = small_config(**{"frames.box_px": 64, "sample.diameter_nm": 1.2, "acquisition.dose_e_per_A2": 300.0})
    return simulate_window(cfg, store_dir, 40, seed=1)


QUICK = ReconstructConfig(rounds=1, directions=60)


def _window(store, name, n=12, box=16, close=True):
    w = WindowWriter(store, box=box, pixel_size_A=0.358, chunk_frames=8)
    w.open_window(name, {"particle": 0, "t_start_s": 0.0})
    f = np.arange(n)
    w.append(name, np.random.default_rng(0).normal(size=(n, box, box)),
             {"frame": f, "t_s": f / 400, "x_px": f * 1.0, "y_px": f * 1.0, "fft_peak": np.full(n, 0.3)})
    if close:
        w.close_window(name, {"t_end_s": (n - 1) / 400, "coverage": 0.5})
    w.close()


@pytest.mark.slow
def test_jobs_run_on_a_local_cluster_and_report_their_states(tmp_path):
    sw = _sim_window(tmp_path)
    store = sw.store
    _window(store, "p0_w0001", close=False)  # torn: complete stays false
    _window(store, "p0_w0002")  # 16 px of noise: nothing to reconstruct
    jobs = ReconstructionJobs(JobsConfig(seed_from_previous=True), store, tmp_path / "recon", QUICK)
    jobs.submit("p0_w0000", {"particle": 0})
    jobs.submit("p0_w0001", {"particle": 0})
    jobs.submit("p0_w0002", {"particle": 0})
    jobs.submit("p9_w0000")  # not in the store
    assert jobs.counts()["queued"] == 4
    out = jobs.finish()
    by = {j["window"]: j for j in out["jobs"]}
    assert out["states"] == {"queued": 0, "running": 0, "done": 1, "failed": 3, "skipped": 0, "left_running": 0}
    ok = by["p0_w0000"]
    assert ok["state"] == "done" and ok["reconstruction"] == "done" and ok["map"].endswith("map.mrc")
    assert ok["queued_at"] <= ok["submitted_at"] <= ok["started_at"] <= ok["ended_at"]  # "running" was seen
    # the particle's later windows are offered its earlier ones as seeds, the latest first
    assert "seed_windows" not in ok and ok["initial_model"] == "spherical FCC"
    assert by["p0_w0002"]["seed_windows"] == ["p0_w0001", "p0_w0000"] and "seed_windows" not in by["p9_w0000"]
    rec = json.loads((tmp_path / "recon" / "p0_w0000" / "job.json").read_text())
    assert rec["frames"] == 40 and rec["box_px"] == 64 and rec["atoms"] > 0
    made = json.loads((tmp_path / "recon" / "p0_w0000" / "reconstruction.json").read_text())
    assert rec["cube_symmetric_atoms"] == made["cube_symmetric_atoms"] and "cube_symmetric_atoms" in made
    assert rec["nice"] == JobsConfig().worker_nice == 10  # the reconstruction yields the CPU to the live path
    assert (tmp_path / "recon" / "p0_w0000" / "map.mrc").exists()
    assert "WindowError" in by["p0_w0001"]["reason"] and "not complete" in by["p0_w0001"]["reason"]
    assert "ValueError" in by["p0_w0002"]["reason"]
    assert "not in" in by["p9_w0000"]["reason"]
    assert out["reconstructions_done"] == 1 and out["scheduler"].startswith("tcp://127.0.0.1:")


@pytest.mark.slow
def test_an_existing_cluster_by_address_and_the_pending_limit(tmp_path):
    from distributed import Client, LocalCluster

    store = _sim_window(tmp_path).store
    for i in range(1, 3):
        _window(store, f"p0_w000{i}")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        jobs = ReconstructionJobs(JobsConfig(scheduler=cluster.scheduler_address, max_pending=1), store,
                                  tmp_path / "recon", QUICK)
        for i in range(3):
            jobs.submit(f"p0_w000{i}")  # the first is pending while the others arrive
        out = jobs.finish()
        assert out["scheduler"] == cluster.scheduler_address
        states = [j["state"] for j in out["jobs"]]
        assert states == ["done", "skipped", "skipped"], out["jobs"]
        assert "max_pending" in out["jobs"][1]["reason"]
        with Client(cluster, set_as_default=False) as c:  # btomo left the user's cluster running
            assert c.submit(sum, [1, 2]).result() == 3


def test_an_unreachable_scheduler_fails_jobs_with_the_reason_and_never_raises(tmp_path):
    jobs = ReconstructionJobs(JobsConfig(scheduler="tcp://127.0.0.1:9", connect_timeout_s=1.0),
                              tmp_path / "windows.zarr", tmp_path / "recon")
    jobs.submit("p0_w0000")
    t0 = time.monotonic()
    out = jobs.finish()
    assert time.monotonic() - t0 < 30
    assert out["states"]["failed"] == 1 and "no cluster" in out["jobs"][0]["reason"]
    assert out["error"]


def test_disabled_jobs_start_nothing(tmp_path):
    jobs = ReconstructionJobs(JobsConfig(enabled=False), tmp_path / "w.zarr", tmp_path / "r")
    jobs.submit("p0_w0000")
    assert jobs.finish()["jobs"] == [] and jobs._thread is None


@pytest.mark.slow
def test_jobs_still_pending_at_the_end_are_cancelled_with_the_reason(tmp_path):
    store = tmp_path / "windows.zarr"
    _window(store, "p0_w0000")
    jobs = ReconstructionJobs(JobsConfig(wait_seconds=0.0), store, tmp_path / "recon")
    jobs.submit("p0_w0000")
    out = jobs.finish()  # the cluster has only just started: the job cannot have run
    j = out["jobs"][0]
    assert j["state"] == "failed" and "jobs.wait_seconds" in j["reason"], j


def test_read_window_checks_the_layout(tmp_path):
    import zarr

    store = tmp_path / "w.zarr"
    _window(store, "a")
    w = read_window(store, "a")
    assert w.n == 12 and w.frames.dtype == np.float32 and w.pixel_size_A == 0.358
    root = zarr.open_group(str(store), mode="a")
    del root["a"]["fft_peak"]
    with pytest.raises(WindowError, match=r"arrays missing: \['fft_peak'\]"):
        read_window(store, "a")
    with pytest.raises(WindowError, match="no window store"):
        read_window(tmp_path / "nothing.zarr", "a")
    _window(store, "b", close=False)
    with pytest.raises(WindowError, match="not complete"):
        read_window(store, "b")
    assert read_window(store, "b", allow_incomplete=True).n == 12


@pytest.mark.slow
def test_a_job_starts_from_its_particles_earlier_good_reconstruction(tmp_path):
    """Seeding: the first done and good earlier window's atoms are the first reference; missing,
    poor or oversized seeds are passed over with the reason, never failing the job."""
    from ase import Atoms
    from ase.io import write as ase_write

    from btomo.reconstruct.job import choose_seed, run_window_job

    store = _sim_window(tmp_path).store
    settings = dataclasses.asdict(QUICK)
    first = run_window_job(str(store), "p0_w0000", str(tmp_path / "a"), settings)
    assert first["initial_model"] == "spherical FCC" and first["seed_reason"] == ""
    res, frac = first["resolution_A"], first["frames_in_map"] / first["frames_used"]
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "job.json").write_text("[]")
    seeds = [str(tmp_path / "missing"), str(odd), str(tmp_path / "a")]
    rec = run_window_job(str(store), "p0_w0000", str(tmp_path / "b"), settings, seed_dirs=seeds,
                         seed_max_resolution_A=res + 0.01, seed_min_in_map=frac)
    assert rec["initial_model"] == f"window p0_w0000 ({first['atoms']} atoms)", rec["initial_model"]
    assert rec["seed_reason"] == "missing: not done; odd: job.json is not a job record" and rec["atoms"] > 0
    assert json.loads((tmp_path / "b" / "reconstruction.json").read_text())["initial_model"] == rec["initial_model"]
    # too poor by either measure: the spherical model, and why
    rec = run_window_job(str(store), "p0_w0000", str(tmp_path / "c"), settings, seed_dirs=seeds[2:],
                         seed_max_resolution_A=res - 0.01)
    assert rec["initial_model"] == "spherical FCC" and "FSC 0.143" in rec["seed_reason"]
    rec = run_window_job(str(store), "p0_w0000", str(tmp_path / "c"), settings, seed_dirs=seeds[2:],
                         seed_max_resolution_A=99.0, seed_min_in_map=min(1.0, frac + 0.01))
    assert rec["initial_model"] == "spherical FCC" and "frames significant" in rec["seed_reason"]
    # a good record whose atoms do not fit this window's box: passed over at the start
    big = tmp_path / "big"
    big.mkdir()
    (big / "job.json").write_text(json.dumps({**first, "window": "p0_w0009"}))
    ase_write(big / "atoms.xyz", Atoms("Pt4", positions=[[0, 0, 0], [60, 0, 0], [0, 60, 0], [0, 0, 60]]))
    rec = run_window_job(str(store), "p0_w0000", str(tmp_path / "d"), settings, seed_dirs=[str(big)],
                         seed_max_resolution_A=99.0, seed_min_in_map=0.0)
    assert rec["initial_model"] == "spherical FCC" and "reaches" in rec["seed_reason"], rec["seed_reason"]
    # a good record whose atoms.xyz is empty: passed over with the reader's reason
    (big / "atoms.xyz").write_text("")
    atoms, label, reason = choose_seed([str(big)], 99.0, 0.0)
    assert atoms is None and label == "spherical FCC" and "the file is empty" in reason, reason
