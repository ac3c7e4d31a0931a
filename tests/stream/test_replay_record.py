"""``btomo replay`` -> ``btomo record`` / ``live`` as real processes over tcp on 127.0.0.1: lossless
round trips in every protocol, pacing, stacks, and a recorder killed or interrupted mid-stream."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tifffile

from btomo.stream.config import load_config
from btomo.stream.ingest import Ingest
from btomo.stream.messages import Frame
from btomo.stream.recording import Recording
from btomo.stream.replay import replay
from btomo.stream.simulator import simulate
from btomo.stream.sources import open_source
from helpers import consume, free_address, small_config, stream_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A simulated 48-frame recording (192x192) with its truth."""
    out = tmp_path_factory.mktemp("sim") / "rec"
    simulate(small_config(**{"simulate.frames": 48, "simulate.seed": 5}), out)
    return out


def _btomo(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "btomo.stream", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _same_recording(a, b):
    with Recording(a) as ra, Recording(b) as rb:
        assert len(ra) == len(rb)
        np.testing.assert_array_equal(ra.frame_index, rb.frame_index)
        np.testing.assert_array_equal(ra.t_ns, rb.t_ns)
        for i in range(len(ra)):
            np.testing.assert_array_equal(ra.read(i), rb.read(i))


@pytest.mark.parametrize("protocol", ["btomo", "dectris1", "dectris2"])
def test_replay_then_record_is_lossless(sim, tmp_path, protocol):
    address = free_address()
    rec = _btomo("record", str(tmp_path / "out"), "--source", address, "--protocol", protocol, "--idle-timeout", "3",
                 "--no-progress", "--set", f"stream.side_channel={free_address()}")
    rep = _btomo("replay", str(sim), "--to", address, "--protocol", protocol, "--rate", "max", "--no-progress")
    out, err = rep.communicate(timeout=60)
    assert rep.returncode == 0, err
    assert f"sent 48 frames" in out and f"as {protocol} on {address}" in out
    out, err = rec.communicate(timeout=60)
    assert rec.returncode == 0, err
    assert "recorded 48 frames" in out and "0 dropped, 0 missing (gaps), 0 malformed messages" in out
    if protocol == "btomo":
        _same_recording(sim, tmp_path / "out")  # indices and times too
    else:  # DECTRIS carries times from the series start
        with Recording(sim) as ra, Recording(tmp_path / "out") as rb:
            np.testing.assert_array_equal(ra.read_all(), rb.read_all())
            np.testing.assert_array_equal(ra.frame_index, rb.frame_index)
            np.testing.assert_array_equal(ra.t_ns - ra.t_ns[0], rb.t_ns)
    meta = json.loads((tmp_path / "out" / "recording.json").read_text())
    assert meta["complete"] and meta["protocol"] == protocol and meta["stop_reason"] == "idle timeout"
    assert meta["ingest"]["frames_accepted"] == 48 and meta["ingest"]["series_ended"] == 1
    assert meta["series_list"][0]["first_position"] == 0
    assert (tmp_path / "out" / "config.toml").exists()


def test_replay_paces_frames_by_their_acquisition_times(sim):
    cfg = stream_config(**{"stream.max_frames": 48})
    for rate, expected in ((1.0, 47 / 400), (0.5, 2 * 47 / 400)):
        ingest = Ingest(cfg).start()
        result = {}
        t = threading.Thread(target=lambda: result.update(r=replay(open_source(sim), cfg.stream,
                                                                    to=cfg.stream.source, rate=rate)))
        t.start()
        frames = [r for r in consume(ingest) if isinstance(r, Frame)]
        t.join(30)
        ingest.close()
        assert len(frames) == 48
        assert expected <= result["r"].seconds < expected + 0.25
        arrival = np.array([f.received_ns for f in frames]) * 1e-9
        assert arrival[-1] - arrival[0] == pytest.approx(expected, abs=0.1)


def test_replay_of_stacks_carries_their_pixel_size_and_rate(tmp_path):
    stack = np.random.default_rng(1).poisson(3, (10, 32, 40)).astype(np.uint16)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack, imagej=True, resolution=(1 / 0.05, 1 / 0.05),
                     metadata={"unit": "nm", "finterval": 0.01, "axes": "TYX"})
    cfg = stream_config(**{"stream.max_frames": 10})
    ingest = Ingest(cfg).start()
    t = threading.Thread(target=lambda: replay(open_source(path), cfg.stream, to=cfg.stream.source, rate=None))
    t.start()
    records = consume(ingest)
    t.join(30)
    ingest.close()
    frames = [r for r in records if isinstance(r, Frame)]
    np.testing.assert_array_equal(np.stack([f.data for f in frames]), stack)
    assert records[0].fps == pytest.approx(100) and frames[0].pixel_size_A == pytest.approx(0.5)
    assert [f.t_ns for f in frames] == [i * 10_000_000 for i in range(10)]


def test_record_killed_mid_stream_keeps_every_complete_block(sim, tmp_path):
    address = free_address()
    out = tmp_path / "killed"
    rec = _btomo("record", str(out), "--source", address, "--no-progress", "--set", "stream.record_block_frames=8",
                 "--set", "stream.side_channel=")
    cfg = load_config(None, {"stream.source": address})
    stop = threading.Event()
    # 48 frames at 1/20 of 400 frames/s: 2.4 s; killed once the first block is on disk
    t = threading.Thread(target=lambda: replay(open_source(sim), cfg.stream, to=address, rate=0.05, stop=stop))
    t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not ((out / "index.bin").exists() and (out / "index.bin").stat().st_size > 16):
        time.sleep(0.02)
    time.sleep(0.3)  # a few frames more, queued for the next block
    rec.send_signal(signal.SIGKILL)
    rec.wait(10)
    stop.set()
    t.join(30)
    with Recording(out) as r, Recording(sim) as ref:
        n = len(r)
        assert 8 <= n < 48 and n % 8 == 0  # killed mid-stream: whole blocks only
        assert not r.complete
        for i in range(n):
            np.testing.assert_array_equal(r.read(i), ref.read(i))
    # a new recording starts cleanly beside the old one
    rec2 = _btomo("record", str(tmp_path / "again"), "--source", address, "--idle-timeout", "2", "--no-progress",
                  "--set", "stream.side_channel=")
    rep = _btomo("replay", str(sim), "--to", address, "--rate", "max", "--no-progress")
    assert rep.wait(60) == 0 and rec2.wait(60) == 0
    _same_recording(sim, tmp_path / "again")


def test_interrupted_record_writes_everything_it_accepted(sim, tmp_path):
    """SIGINT mid-stream: the receiver stops, every accepted frame is written, exit 130."""
    address = free_address()
    out = tmp_path / "int"
    rec = _btomo("record", str(out), "--source", address, "--no-progress", "--set", "stream.side_channel=",
                 "--set", "stream.record_block_frames=8")
    cfg = load_config(None, {"stream.source": address, "stream.linger_s": 0.0})
    stop = threading.Event()
    t = threading.Thread(target=lambda: replay(open_source(sim), cfg.stream, to=address, rate=0.05, stop=stop))
    t.start()  # 48 frames over 2.4 s
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not ((out / "index.bin").exists() and (out / "index.bin").stat().st_size > 16):
        time.sleep(0.02)
    time.sleep(0.3)
    rec.send_signal(signal.SIGINT)
    _, err = rec.communicate(timeout=30)
    stop.set()
    t.join(30)
    assert rec.returncode == 130, err
    assert "interrupted; what was written so far is kept" in err
    meta = json.loads((out / "recording.json").read_text())
    assert meta["complete"] and meta["stop_reason"] == "interrupted"
    assert 8 <= meta["frames"] < 48 and meta["frames"] == meta["ingest"]["frames_accepted"]
    assert meta["ingest"]["frames_dropped"] == {}
    with Recording(out) as r, Recording(sim) as ref:
        assert len(r) == meta["frames"]  # including the last partial block
        for i in range(len(r)):
            np.testing.assert_array_equal(r.read(i), ref.read(i))


def test_live_and_process_write_a_run_directory(sim, tmp_path):
    address = free_address()
    # the fixture's particle is small (1.5 nm) in a small frame: tell the detector
    small = ("--set", "frames.particle_diameter_nm=1.5", "--set", "frames.detect_snr=4",
             "--set", "jobs.enabled=false")  # the stages and their tables here; jobs are tested elsewhere
    live = _btomo("live", "--source", address, "--run-dir", str(tmp_path / "live"), "--max-frames", "48",
                  "--no-dashboard", "--set", f"stream.side_channel={free_address()}", *small)
    # live stops at its 48th frame, maybe before the series end reached it: the replay need not
    # wait the default 60 s for a receiver to take it
    rep = _btomo("replay", str(sim), "--to", address, "--rate", "max", "--no-progress", "--set", "stream.linger_s=2")
    assert rep.wait(60) == 0
    out, err = live.communicate(timeout=60)
    assert live.returncode == 0, err
    summary = json.loads((tmp_path / "live" / "summary.json").read_text())
    assert summary["frames_received"] == summary["frames_processed"] == 48
    assert summary["frames_dropped"] == {} and summary["frame_gaps"] == 0 and summary["stop_reason"] == "max frames"
    assert summary["versions"]["pyzmq"] and (tmp_path / "live" / "config.toml").exists()
    assert "stages: frames" in (tmp_path / "live" / "btomo.log").read_text()

    proc = _btomo("process", str(sim), "--run-dir", str(tmp_path / "proc"), "--no-progress", *small)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads((tmp_path / "proc" / "summary.json").read_text())
    assert summary["frames_processed"] == 48 and summary["source_kind"] == "recording"
    # the same frames through the same stages: the same table, row for row
    live_rows = (tmp_path / "live" / "frames.csv").read_text()
    assert live_rows.count("\n") > 2, "the particle was never tracked"
    assert live_rows == (tmp_path / "proc" / "frames.csv").read_text()
    assert summary["lattice_frames"] is not None
