"""Graceful stops and crashes of ``btomo live`` as real processes fed over tcp (issue 10, items 2-3).

* SIGTERM mid-stream: every accepted frame is processed, the open windows are closed and
  complete, ``summary.json`` is written, exit 130.
* A second signal stops at once (here while the run waits for its reconstruction jobs) and
  still writes ``summary.json`` (``finished`` false).
* kill -9 at random points while windows are being written: every window the store calls
  complete is bit-identical to the same window of an uninterrupted run of the same frames; the
  torn ones say so when read; a new run beside the old one starts and finishes cleanly.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from btomo.reconstruct.window import WindowError, read_window
from btomo.stream.config import load_config
from btomo.stream.replay import replay
from btomo.stream.sources import open_source
from helpers import free_address

pytestmark = pytest.mark.timeout(240)

# windows that close within a second of this session's frames (many small windows: many writes)
WINDOW_FLAGS = ("--set", "windows.min_frames=20", "--set", "windows.coverage_threshold=0.3",
                "--set", "windows.max_seconds=0.3", "--set", "windows.orientation_particles=500",
                "--set", "denoiser.backlog=4000")


def _btomo(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "btomo.stream", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _live(run: Path, address: str, *extra: str) -> subprocess.Popen:
    return _btomo("live", "--source", address, "--run-dir", str(run), "--no-dashboard",
                  "--set", "stream.side_channel=", *WINDOW_FLAGS, *extra)


class _Sender:
    """``btomo replay`` of a recording in a thread, at ``rate`` x acquisition speed, stoppable."""

    def __init__(self, rec: Path, address: str, rate: float | None):
        cfg = load_config(None, {"stream.source": address, "stream.linger_s": 1.0})
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=lambda: replay(open_source(rec), cfg.stream, to=address, rate=rate, stop=self.stop), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def _windows(run: Path) -> list[str]:
    store = run / "windows.zarr"
    return sorted(p.parent.name for p in store.glob("*/zarr.json")) if store.exists() else []


def _wait_for(cond, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _log(run: Path) -> str:
    p = run / "btomo.log"
    return p.read_text() if p.exists() else ""


def _kill_9_after(proc: subprocess.Popen, lattice_rec: Path, address: str, ready, delay: float) -> None:
    """Stream the recording at 1/4 speed to ``proc``; once ``ready()`` wait ``delay`` s, kill -9 it."""
    sender = _Sender(lattice_rec, address, rate=0.25)
    try:
        _wait_for(lambda: ready() or proc.poll() is not None, what="the process to start writing")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        sender.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def reference(lattice_rec, tmp_path_factory):
    """The same frames, uninterrupted (``btomo process``): the windows a live run must match."""
    run = tmp_path_factory.mktemp("reference") / "run"
    p = _btomo("process", str(lattice_rec), "--run-dir", str(run), "--no-progress", "--set", "jobs.enabled=false",
               *WINDOW_FLAGS)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert len(_windows(run)) >= 3
    return run


def _same_window(a: Path, b: Path, name: str) -> None:
    ga = zarr.open_group(str(a / "windows.zarr"), mode="r")[name]
    gb = zarr.open_group(str(b / "windows.zarr"), mode="r")[name]
    assert dict(ga.attrs) == dict(gb.attrs), name
    assert sorted(ga.array_keys()) == sorted(gb.array_keys())
    for key in ga.array_keys():
        x, y = ga[key][...], gb[key][...]
        assert x.dtype == y.dtype and x.shape == y.shape, (name, key)
        assert x.tobytes() == y.tobytes(), f"{name}/{key} differs"


def test_sigterm_mid_stream_flushes_windows_and_writes_the_summary(lattice_rec, tmp_path):
    address, run = free_address(), tmp_path / "run"
    live = _live(run, address, "--set", "jobs.enabled=false")
    sender = _Sender(lattice_rec, address, rate=0.25)  # 400 frames over 4 s
    try:
        _wait_for(lambda: len(_windows(run)) >= 1 or live.poll() is not None, what="a window")
        live.send_signal(signal.SIGTERM)
        out, err = live.communicate(timeout=60)
    finally:
        sender.close()
    assert live.returncode == 130, err
    assert "interrupted; what was written so far is kept" in err
    s = json.loads((run / "summary.json").read_text())
    assert s["stop_reason"] == "interrupted" and s["finished"] is True
    assert 0 < s["frames_processed"] == s["ingest"]["frames_accepted"] < 400
    # the sender goes on after the signal: a frame that arrives once the stop is set is not accepted, and
    # counted as such (nothing else may be dropped); seen once on a loaded machine (2 test workers)
    assert set(s["frames_dropped"]) <= {"after_stop"}, s["frames_dropped"]
    names = _windows(run)
    assert names and s["windows_closed"] == len(names)
    for name in names:  # the open window was closed and written, like every other
        w = read_window(run / "windows.zarr", name)
        assert w.attrs["complete"] is True and w.frames.shape[0] == w.attrs["lattice_frames"]
    assert "SIGTERM: stopping; writing everything accepted" in _log(run)


def test_a_second_signal_stops_at_once(lattice_rec, tmp_path):
    """Ctrl-C mid-stream: the run drains and closes its windows, then waits for their
    reconstructions; a second Ctrl-C abandons them at once instead of waiting minutes."""
    address, run = free_address(), tmp_path / "run"
    live = _live(run, address, "--set", "jobs.wait_seconds=600")
    sender = _Sender(lattice_rec, address, rate=0.25)
    try:
        _wait_for(lambda: "window p0_w0000 closed" in _log(run) or live.poll() is not None, what="a closed window")
        live.send_signal(signal.SIGINT)
        _wait_for(lambda: "finishing: closing windows" in _log(run) or live.poll() is not None, what="finishing")
        time.sleep(0.5)
        assert live.poll() is None, "the jobs finished too soon for this test"
        live.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        out, err = live.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        sender.close()
    assert live.returncode == 130, err
    assert took < 15, took
    s = json.loads((run / "summary.json").read_text())
    assert s["stop_reason"] == "stopped at once" and s["finished"] is False
    assert 0 < s["ingest"]["frames_accepted"] < 400
    log = _log(run)
    assert "SIGINT: stopping; writing everything accepted" in log
    assert "stopped at once: open windows stay incomplete, jobs are abandoned" in log


def test_kill_9_during_window_writes_keeps_every_complete_window(lattice_rec, reference, tmp_path):
    rng = np.random.default_rng(10)
    kept = torn = 0
    delays = rng.uniform(0.2, 3.5, size=3)
    for k, delay in enumerate(delays):  # random points in a 4 s stream
        address, run = free_address(), tmp_path / f"killed{k}"
        live = _live(run, address, "--set", "jobs.enabled=false")
        _kill_9_after(live, lattice_rec, address, (run / "windows.zarr").exists, delay)
        assert not (run / "summary.json").exists()
        for name in _windows(run):
            g = zarr.open_group(str(run / "windows.zarr"), mode="r")[name]
            if g.attrs.get("complete"):
                _same_window(run, reference, name)
                kept += 1
            else:  # the torn window is detected, not read as data
                with pytest.raises(WindowError, match=f"window {name} is not complete"):
                    read_window(run / "windows.zarr", name)
                torn += 1
    print(f"kill -9 at {np.round(delays, 2)} s: {kept} complete windows identical, {torn} torn ones detected")
    assert kept >= 1, "no kill landed after a window was complete"
    # a new run beside the killed ones starts cleanly and gives the uninterrupted run's windows
    address, run = free_address(), tmp_path / "again"
    live = _live(run, address, "--set", "jobs.enabled=false", "--max-frames", "400")
    sender = _Sender(lattice_rec, address, rate=None)
    try:
        out, err = live.communicate(timeout=120)
    finally:
        sender.close()
    assert live.returncode == 0, err
    assert _windows(run) == _windows(reference)
    for name in _windows(run):
        _same_window(run, reference, name)


def test_kill_9_during_recording_at_random_points(lattice_rec, tmp_path, caplog):
    """``btomo record`` killed at random points (blocks of 8 frames, 1.5 MB each): whole blocks
    only, bit-identical to what was sent; a torn tail is found and reported when there is one."""
    from btomo.stream.recording import Recording  # noqa: PLC0415

    rng = np.random.default_rng(11)
    delays = rng.uniform(0.3, 3.0, size=3)
    torn = 0
    with Recording(lattice_rec) as ref:
        for k, delay in enumerate(delays):
            address, out = free_address(), tmp_path / f"rec{k}"
            rec = _btomo("record", str(out), "--source", address, "--no-progress", "--set", "stream.side_channel=",
                         "--set", "stream.record_block_frames=8", "--set", "stream.record_codec=raw")
            _kill_9_after(rec, lattice_rec, address, (out / "frames.bin").exists, delay)
            caplog.clear()
            with Recording(out) as r:
                assert len(r) % 8 == 0 and len(r) < 400 and not r.complete
                np.testing.assert_array_equal(r.frame_index, ref.frame_index[:len(r)])
                for i in range(len(r)):
                    assert r.read(i).tobytes() == ref.read(i).tobytes()
                if r.torn_tail_bytes:
                    torn += 1
                    assert "torn tail of" in caplog.text
            print(f"kill -9 at {delay:.2f} s: {len(r)} frames kept, torn tail {r.torn_tail_bytes} bytes")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_btomo_replay_into_live_and_q_in_the_dashboard_quits_cleanly(lattice_rec, tmp_path):
    """``btomo replay REC --to A`` | ``btomo live --source A`` with its dashboard in an 80x24 tmux
    pane, as at the microscope; q stops it: the windows are flushed, ``summary.json`` says
    "quit", exit 0."""
    address, run = free_address(), tmp_path / "run"
    session = f"btomo-q-{os.getpid()}"
    cmd = " ".join([sys.executable, "-m", "btomo.stream", "live", "--source", address, "--run-dir", str(run),
                    "--set", "stream.side_channel=", "--set", "jobs.enabled=false", *WINDOW_FLAGS])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                    f"{cmd}; echo LIVE-EXIT $?; sleep 60"], check=True)
    sender = _btomo("replay", str(lattice_rec), "--to", address, "--rate", "0.2", "--no-progress")

    def pane() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-J", "-t", session], capture_output=True,
                              text=True).stdout

    try:
        _wait_for(lambda: re.search(r"p0_w\d+: \d+ lattice frames, coverage", pane()) is not None, what="a window")
        screen = pane()
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        _wait_for(lambda: "LIVE-EXIT" in pane(), what="live to exit")
        final = pane()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        sender.kill()
        sender.communicate(timeout=30)
    assert re.search(r"frames \d+ .*rate \d+/s", screen)
    assert re.search(r"queue \d+/256 (max \d+ block|backpressure)", screen)
    assert "LIVE-EXIT 0" in final, final
    s = json.loads((run / "summary.json").read_text())
    assert s["stop_reason"] == "quit" and s["finished"] is True
    assert 0 < s["frames_processed"] == s["ingest"]["frames_accepted"] < 400
    # the sender goes on after q: a frame that arrives once the stop is set is not accepted, and
    # counted as such (nothing else may be dropped)
    assert set(s["frames_dropped"]) <= {"after_stop"}, s["frames_dropped"]
    names = _windows(run)
    assert names and s["windows_closed"] == len(names)
    assert all(zarr.open_group(str(run / "windows.zarr"), mode="r")[n].attrs["complete"] for n in names)
    assert "dashboard: q pressed, stopping cleanly" in _log(run)


def test_process_stops_after_the_current_frame_on_sigint(lattice_rec, tmp_path):
    """``btomo process`` (in-process here): the first SIGINT ends the reading after the frame in
    hand, the windows are closed and complete, the summary says "interrupted"."""
    from btomo.stream.pipeline import run_process  # noqa: PLC0415

    cfg = load_config(lattice_rec / "config.toml", overrides={
        "jobs.enabled": False, **{WINDOW_FLAGS[i + 1].split("=")[0]: WINDOW_FLAGS[i + 1].split("=")[1]
                                  for i in range(0, len(WINDOW_FLAGS), 2)}})

    class Interrupting:  # the recording, with a Ctrl-C after its 250th frame
        def __init__(self, src):
            self.src = src

        def __getattr__(self, name):
            return getattr(self.src, name)

        def __len__(self):
            return len(self.src)

        def __iter__(self):
            for i, item in enumerate(self.src):
                if i == 250:
                    os.kill(os.getpid(), signal.SIGINT)
                yield item

    with open_source(lattice_rec) as src:
        s = run_process(cfg, Interrupting(src), tmp_path / "run")
    assert s["stop_reason"] == "interrupted" and s["finished"] is True and s["frames_processed"] == 251
    names = _windows(tmp_path / "run")
    assert names and all(zarr.open_group(str(tmp_path / "run" / "windows.zarr"), mode="r")[n].attrs["complete"]
                         for n in names)
