"""Faults in the parts (issue 10, item 6), each with real parts: a disk that really fills (a small
tmpfs, or a real file-size limit) under ``btomo record`` and the recording writer; a Dask worker
process killed with SIGKILL mid-job and a scheduler that dies; a damaged ``windows.zarr`` under
``btomo reconstruct`` and the window reader.

What must hold: a full disk stops ``record`` with exit code 2 and one line that says so and where,
and every complete block reads back bit-identical; a lost worker makes Dask run the job again, or
fail it with a reason that says the worker died, and the caller is never held up; a lost
scheduler fails the jobs with that reason; a damaged store is one line naming the window and the
array, exit code 2, no traceback.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from btomo.reconstruct.config import ReconstructConfig
from btomo.reconstruct.window import WindowError, read_window
from btomo.stream.config import JobsConfig, load_config
from btomo.stream.jobs import ReconstructionJobs
from btomo.stream.recording import Recording, RecordingError, RecordingWriteError, RecordingWriter
from btomo.stream.replay import replay
from btomo.stream.sources import open_source
from btomo.stream.windows import WindowWriter
from helpers import free_address, small_config

try:
    import resource  # POSIX: the file-size limit
except ImportError:  # pragma: no cover - not POSIX: the disk-full tests that need it are skipped
    resource = None

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
SHAPE = (512, 512)  # uint16 noise, written raw: 512 KiB a frame
BLOCK = 4  # frames per block: 2 MiB
N_FRAMES = 24  # 12 MiB sent: more than any of the full disks below takes


# --------------------------------------------------------------------------------------------
# a disk that fills up
# --------------------------------------------------------------------------------------------
@dataclass
class FullDisk:
    """A directory where writing stops for lack of room: a tmpfs of ``size`` bytes (ENOSPC), or a
    file-size limit of ``size`` bytes per file on the process (EFBIG, SIGXFSZ ignored)."""

    kind: str
    root: Path
    size: int
    errno: int
    words: str  # what btomo's message must say

    def preexec(self) -> None:
        """For a subprocess: put the limit on it (the tmpfs needs nothing)."""
        if self.kind == "rlimit":
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, self.size))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    @contextlib.contextmanager
    def limited(self):
        """In this process: the limit while the block runs (the tmpfs is always full)."""
        if self.kind != "rlimit":
            yield
            return
        old = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, old[1]))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)


def _mount_tmpfs(where: Path, size: int) -> str | None:
    """Mount a tmpfs of ``size`` bytes at ``where``; the reason when that is not permitted."""
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        return "not Linux, or no mount command"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                       text=True)
    return None if r.returncode == 0 else (r.stderr.strip() or f"mount exited {r.returncode}")


@pytest.fixture(params=["tmpfs", "rlimit"])
def full_disk(request, tmp_path):
    """Both ways where they work: the tmpfs needs root (skipped otherwise: the limit still runs)."""
    root = tmp_path / request.param
    root.mkdir()
    if request.param == "tmpfs":
        why = _mount_tmpfs(root, 8 * MiB)
        if why:
            pytest.skip(f"cannot mount a tmpfs ({why}); the file-size-limit variant of this test runs instead")
        try:
            yield FullDisk("tmpfs", root, 8 * MiB, errno.ENOSPC, "disk full")
        finally:
            subprocess.run(["umount", "-l", str(root)], check=False)
    else:
        if resource is None:
            pytest.skip("no file-size limit on this platform (no resource module)")
        yield FullDisk("rlimit", root, 5 * MiB, errno.EFBIG, "file size limit reached")


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    """24 frames of incompressible uint16 noise as a recording (the stream to send), and the frames."""
    frames = np.random.default_rng(7).integers(0, 65535, (N_FRAMES, *SHAPE), dtype=np.uint16)
    path = tmp_path_factory.mktemp("noise") / "rec"
    with RecordingWriter(path, shape=SHAPE, pixel_size_A=0.5, fps=400, codec="raw", block_frames=8) as w:
        for i, f in enumerate(frames):
            w.append(f, frame_index=i, t_ns=i * 2_500_000)
    return path, frames


def _record(out: Path, address: str, cmd: list[str] | None = None, **kw) -> subprocess.Popen:
    """``btomo record`` into ``out`` as a real process: raw frames, 4 per block, no side channel."""
    cmd = cmd or [sys.executable, "-m", "btomo.stream"]
    return subprocess.Popen([*cmd, "record", str(out), "--source", address, "--no-progress", "--idle-timeout", "10",
                             "--set", "stream.record_codec=raw", "--set", f"stream.record_block_frames={BLOCK}",
                             "--set", "stream.side_channel="],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@contextlib.contextmanager
def _sending(source: Path, address: str):
    """``replay`` of ``source`` as fast as the receiver takes it, in a thread; stopped on the way out.
    (What is queued when the sender is done is delivered in the background, for 5 s at most.)"""
    cfg = load_config(None, {"stream.source": address, "stream.linger_s": 5.0})
    stop = threading.Event()

    def run():
        with contextlib.suppress(InterruptedError):  # stopped while the recorder, gone, takes nothing
            replay(open_source(source), cfg.stream, to=address, rate=None, stop=stop)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(30)


def _kept_blocks_are_intact(path: Path, frames: np.ndarray) -> Recording:
    rec = Recording(path)
    n = len(rec)
    assert BLOCK <= n < N_FRAMES and n % BLOCK == 0, n  # whole blocks only, and not all of them
    assert not rec.complete
    np.testing.assert_array_equal(rec.frame_index, np.arange(n))
    for i in range(n):
        np.testing.assert_array_equal(rec.read(i), frames[i])
    return rec


def _one_error_line(stderr: str, command: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith(f"btomo {command}: error:")]
    assert len(errors) == 1 and stderr.rstrip().splitlines()[-1] == errors[0], stderr
    return errors[0]


# --------------------------------------------------------------------------------------------
# 1. a full disk
# --------------------------------------------------------------------------------------------
def test_record_on_a_full_disk_exits_2_with_one_line_and_keeps_every_complete_block(full_disk, noise):
    source, frames = noise
    out = full_disk.root / "rec"
    address = free_address()
    rec = _record(out, address, preexec_fn=full_disk.preexec)
    with _sending(source, address):
        _, err = rec.communicate(timeout=60)
    assert rec.returncode == 2, err
    line = _one_error_line(err, "record")
    assert full_disk.words in line and str(out / "frames.bin") in line, line
    with _kept_blocks_are_intact(out, frames) as r:
        n = len(r)
        assert r.torn_tail_bytes == 0  # the failed block was cut off: the file ends at a block boundary
    assert f"the {n} frames in the {n // BLOCK} complete blocks before it are kept" in line, line
    assert f"frames {n} to {n + BLOCK - 1}" in line, line  # the block that did not fit
    meta = json.loads((out / "recording.json").read_text())
    assert meta["complete"] is False and meta["stop_reason"].startswith("write failed: ") and full_disk.words in \
        meta["stop_reason"]


def test_the_recording_writer_on_a_full_disk_raises_a_clear_oserror_and_can_go_on(full_disk):
    """In process: the error is an OSError (errno, filename) and a RecordingError; the blocks before
    it read back; once there is room again, the failed block is written, once."""
    frames = np.random.default_rng(3).integers(0, 65535, (12, *SHAPE), dtype=np.uint16)
    ballast = full_disk.root / "ballast"
    if full_disk.kind == "tmpfs":  # 3 of the 8 MiB taken: two 2-MiB blocks fit, the third does not
        ballast.write_bytes(b"\0" * (3 * MiB))
    path = full_disk.root / "rec"
    w = RecordingWriter(path, shape=SHAPE, pixel_size_A=0.5, fps=400, codec="raw", block_frames=BLOCK)
    with full_disk.limited():  # the limit (5 MiB a file): two blocks fit, the third does not
        for i in range(8):
            w.append(frames[i], frame_index=i, t_ns=i)
        for i in range(8, 11):
            w.append(frames[i], frame_index=i, t_ns=i)
        with pytest.raises(RecordingWriteError) as info:
            w.append(frames[11], frame_index=11, t_ns=11)  # fills the third block: written, and refused
    exc = info.value
    assert isinstance(exc, OSError) and isinstance(exc, RecordingError)
    assert exc.errno == full_disk.errno and exc.filename == str(path / "frames.bin")
    msg = str(exc)
    assert "\n" not in msg and msg.startswith(f"{path / 'frames.bin'}: {full_disk.words}"), msg
    assert "block 3 (frames 8 to 11" in msg and "the 8 frames in the 2 complete blocks before it are kept" in msg
    assert w.frames_written == 8 and w.pending_frames == 4
    assert (path / "frames.bin").stat().st_size == w.bytes_written  # the partial block is cut off
    with Recording(path) as r:  # read while the writer waits: the 8 frames, nothing torn
        assert len(r) == 8 and r.torn_tail_bytes == 0
        np.testing.assert_array_equal(r.read_all(), frames[:8])
    ballast.unlink(missing_ok=True)  # room again (the tmpfs), or out of the limited block (the limit)
    w.close()
    with Recording(path) as r:
        assert r.complete and len(r) == 12 and r.torn_tail_bytes == 0
        np.testing.assert_array_equal(r.read_all(), frames)


def test_a_recorder_killed_by_the_file_size_limit_leaves_a_torn_tail_that_is_detected(noise, tmp_path):
    """SIGXFSZ at its default (terminate): the kernel writes the block up to the limit and kills
    the recorder in the middle of it, as a crash on a full disk would. The reader finds the torn
    block and skips it; the blocks before it are intact."""
    if resource is None or not hasattr(signal, "SIGXFSZ"):
        pytest.skip("no file-size limit on this platform")
    source, frames = noise
    out = tmp_path / "rec"
    address = free_address()
    limit = 5 * MiB

    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    # Python ignores SIGXFSZ from its start: give it back its default before btomo runs
    cmd = [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
           "from btomo.stream.cli import main; sys.exit(main(sys.argv[1:]))"]
    rec = _record(out, address, cmd=cmd, preexec_fn=preexec)
    with _sending(source, address):
        out_, err = rec.communicate(timeout=60)
    assert rec.returncode == -signal.SIGXFSZ, (out_, err)
    assert (out / "frames.bin").stat().st_size == limit  # written up to the limit, mid-block
    with _kept_blocks_are_intact(out, frames) as r:
        block_bytes = BLOCK * frames[0].nbytes  # payload, without the header and frame table
        assert len(r) == 8 and 0 < r.torn_tail_bytes < block_bytes  # the third block, torn


# --------------------------------------------------------------------------------------------
# 2. the Dask cluster: a worker killed mid-job, a scheduler that goes away
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim_store(tmp_path_factory):
    """A simulated window that reconstructs in a few seconds, and two copies of it."""
    from btomo.stream.simwindow import simulate_window  # noqa: PLC0415

    cfg = small_config(**{"frames.box_px": 64, "sample.diameter_nm": 1.2, "acquisition.dose_e_per_A2": 300.0})
    store = simulate_window(cfg, tmp_path_factory.mktemp("sim"), 40, seed=1).store
    for name in ("p0_w0001", "p0_w0002"):
        shutil.copytree(store / "p0_w0000", store / name)
    return store


def _wait_for(jobs: ReconstructionJobs, window: str, what: str, cond, timeout: float = 60.0) -> dict:
    """The job of ``window`` once ``cond(job)``; the caller keeps control all along."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = time.perf_counter()
        snap = jobs.snapshot()  # what the pipeline and the dashboard call: never blocks, never raises
        assert time.perf_counter() - t < 0.5
        job = next(j for j in snap["jobs"] if j["window"] == window)
        if cond(job):
            return job
        time.sleep(0.02)
    raise AssertionError(f"window {window}: not {what} within {timeout} s: {jobs.snapshot()}")


def _submit(jobs: ReconstructionJobs, window: str) -> None:
    t = time.perf_counter()
    jobs.submit(window)
    assert time.perf_counter() - t < 0.2  # the live path is never held up


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_run_again_then_fails_with_the_reason(sim_store, tmp_path):
    """btomo's LocalCluster, one worker process, ``worker_deaths_allowed = 1``. Job A: its worker is
    killed (SIGKILL) while it runs; the nanny restarts the worker, Dask runs A again, A is done.
    Job B: killed twice: it fails saying its worker died. Job C then runs as usual."""
    jobs = ReconstructionJobs(JobsConfig(worker_deaths_allowed=1, wait_seconds=60), sim_store, tmp_path / "recon",
                              ReconstructConfig(rounds=1, directions=600))  # ~2 s a run: time to kill it
    try:
        _submit(jobs, "p0_w0000")
        a = _wait_for(jobs, "p0_w0000", "running", lambda j: j["state"] == "running")
        first_pid = a["worker_pid"]
        os.kill(first_pid, signal.SIGKILL)
        a = _wait_for(jobs, "p0_w0000", "running again", lambda j: j.get("attempts") == 2)
        assert a["worker_pid"] != first_pid and a["worker_deaths"] == 1
        assert "died while it held the job" in a["worker_lost"]
        a = _wait_for(jobs, "p0_w0000", "settled", lambda j: j["state"] not in ("queued", "running"))
        assert a["state"] == "done" and a["map"].endswith("map.mrc"), a
        assert (tmp_path / "recon" / "p0_w0000" / "map.mrc").exists()

        _submit(jobs, "p0_w0001")
        for attempt in (1, 2):
            b = _wait_for(jobs, "p0_w0001", f"running (attempt {attempt})",
                          lambda j, k=attempt: j["state"] == "running" and j.get("attempts") == k)
            os.kill(b["worker_pid"], signal.SIGKILL)
        b = _wait_for(jobs, "p0_w0001", "settled", lambda j: j["state"] not in ("queued", "running"))
        assert b["state"] == "failed" and b["worker_deaths"] == 2, b
        assert b["reason"].startswith("KilledWorker: the worker running the job died 2 times"), b["reason"]
        assert "jobs.worker_deaths_allowed = 1" in b["reason"] and "\n" not in b["reason"]
        assert not (tmp_path / "recon" / "p0_w0001" / "map.mrc").exists()

        _submit(jobs, "p0_w0002")  # the cluster goes on: its worker restarted once more
    finally:
        out = jobs.finish()
    by = {j["window"]: j for j in out["jobs"]}
    assert [by[w]["state"] for w in ("p0_w0000", "p0_w0001", "p0_w0002")] == ["done", "failed", "done"], out
    assert by["p0_w0000"]["attempts"] == 2 and by["p0_w0002"]["attempts"] == 1  # A was not run a third time
    assert out["states"]["failed"] == 1 and out["reconstructions_done"] == 2


def test_a_scheduler_that_dies_fails_its_jobs_with_the_reason_and_never_raises(sim_store, tmp_path):
    """An existing cluster (``jobs.scheduler``: a scheduler and a worker as processes); the scheduler
    is killed (SIGKILL) while a job runs. The job fails saying the connection to the scheduler was
    lost; a window closed afterwards fails the same way; ``finish`` returns in bounded time."""
    address = free_address()
    port = address.rsplit(":", 1)[1]
    devnull = subprocess.DEVNULL
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", port, "--no-dashboard"], stdout=devnull, stderr=devnull)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                               "--no-dashboard", "--no-nanny"], stdout=devnull, stderr=devnull)
    try:
        jobs = ReconstructionJobs(JobsConfig(scheduler=address, wait_seconds=30, connect_timeout_s=3), sim_store,
                                  tmp_path / "recon", ReconstructConfig(rounds=1, directions=2500))
        _submit(jobs, "p0_w0000")
        _wait_for(jobs, "p0_w0000", "running", lambda j: j["state"] == "running")
        scheduler.kill()
        scheduler.wait(10)
        a = _wait_for(jobs, "p0_w0000", "settled", lambda j: j["state"] == "failed", timeout=20)
        assert "the connection to the scheduler" in a["reason"] and address in a["reason"], a
        _submit(jobs, "p0_w0001")
        t = time.monotonic()
        out = jobs.finish()  # the client gives up reconnecting after connect_timeout_s
        assert time.monotonic() - t < 20
    finally:
        for p in (scheduler, worker):
            p.kill()
            p.wait(10)
    assert [j["state"] for j in out["jobs"]] == ["failed", "failed"], out
    assert all("the connection to the scheduler" in j["reason"] for j in out["jobs"]), out


# --------------------------------------------------------------------------------------------
# 3. a damaged window store
# --------------------------------------------------------------------------------------------
W = "p0_w0000"


def _store(path: Path) -> Path:
    """A small complete window ``p0_w0000``: 20 crops of 16 px in chunks of 8 (3 chunk files)."""
    w = WindowWriter(path, box=16, pixel_size_A=0.358, chunk_frames=8)
    w.open_window(W, {"particle": 0, "t_start_s": 0.0})
    f = np.arange(20)
    w.append(W, np.random.default_rng(0).normal(size=(20, 16, 16)),
             {"frame": f, "t_s": f / 400, "x_px": f * 1.0, "y_px": f * 1.0, "fft_peak": np.full(20, 0.3)})
    w.close_window(W, {"t_end_s": 19 / 400, "coverage": 0.5})
    w.close()
    return path


def _set_meta(path: Path, **fields) -> None:
    meta = json.loads(path.read_text())
    meta.update(fields)
    path.write_text(json.dumps(meta))


def _garble(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


def _flip_bit(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0x10
    path.write_bytes(bytes(b))


_CHUNK = "frames/c/1/0/0"
DAMAGE = {
    # name: (what is done to the window's directory, what the error must say)
    "chunk deleted": (lambda g: (g / _CHUNK).unlink(),
                      rf"array frames: expected 3 chunk files, got 2; missing 1, the first \S+/{W}/{_CHUNK} "
                      r"\(entries 8 to 15\), which would read as fill value 0.0"),
    "chunk truncated": (lambda g: os.truncate(g / _CHUNK, 100),
                        rf"array frames: chunk \S+/{W}/{_CHUNK} \(entries 8 to 15\) is damaged .* expected float32 "
                        r"values, shape \[20, 16, 16\] in chunks of \[8, 16, 16\], codecs bytes\+blosc\+crc32c, got "
                        r"a CRC-32C mismatch \(the chunk's bytes changed after it was written\)$"),
    "chunk emptied": (lambda g: os.truncate(g / _CHUNK, 0), rf"array frames: chunk \S+/{_CHUNK} .* got a CRC-32C"),
    "chunk garbled": (lambda g: _garble(g / _CHUNK), rf"array frames: chunk \S+/{_CHUNK} .*is damaged"),
    # one bit in the middle of a chunk: it would still decompress; the checksum finds it
    "one bit flipped in a chunk": (lambda g: _flip_bit(g / _CHUNK),
                                   rf"array frames: chunk \S+/{W}/{_CHUNK} \(entries 8 to 15\) is damaged .*CRC-32C"),
    "per-frame chunk garbled": (lambda g: _garble(g / "t_s/c/0"),
                                rf"array t_s: chunk \S+/{W}/t_s/c/0 \(entries 0 to 19\) is damaged .*CRC-32C"),
    "array zarr.json garbled": (lambda g: (g / "frames/zarr.json").write_text('{"shape": [20, 16'),
                                rf"array frames: its metadata \(\S+/{W}/frames/zarr.json\) is unreadable: expected a "
                                r"Zarr v3 array, got JSONDecodeError"),
    "window zarr.json garbled": (lambda g: (g / "zarr.json").write_text("not json"),
                                 rf"window {W}: its group metadata \(\S+/{W}/zarr.json\) is unreadable: expected a "
                                 r"Zarr v3 group, got JSONDecodeError"),
    "array zarr.json deleted": (lambda g: (g / "x_px/zarr.json").unlink(), r"arrays missing: \['x_px'\]"),
    "frames dtype float64": (lambda g: _set_meta(g / "frames/zarr.json", data_type="float64"),
                             r"array frames: chunk \S+/c/0/0/0 \(entries 0 to 7\) is damaged or does not match the "
                             r"metadata: expected float64 values.* got ValueError: cannot reshape"),
    "frames dtype unknown": (lambda g: _set_meta(g / "frames/zarr.json", data_type="float31"),
                             r"array frames: its metadata \(\S+\) is unreadable: .*float31"),
    "frames dtype bool": (lambda g: _set_meta(g / "frames/zarr.json", data_type="bool", fill_value=False),
                          r"array frames: expected numbers, got dtype bool"),
    "t_s dtype float32": (lambda g: _set_meta(g / "t_s/zarr.json", data_type="float32"),
                          r"array t_s: chunk \S+/t_s/c/0 .*expected float32 values.*cannot reshape"),
    "frames longer than written": (lambda g: _set_meta(g / "frames/zarr.json", shape=[40, 16, 16]),
                                   r"array frame: expected shape \(40,\) like frames, got \(20,\)"),
    "frames not square": (lambda g: _set_meta(g / "frames/zarr.json", shape=[20, 16, 8]),
                          r"array frames: expected shape \(n, box, box\), got \(20, 16, 8\)"),
    "frames chunk shape": (lambda g: _set_meta(g / "frames/zarr.json", chunk_grid={
                               "name": "regular", "configuration": {"chunk_shape": [4, 16, 16]}}),
                           r"array frames: expected 5 chunk files, got 3"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_window_is_one_line_naming_the_window_and_the_array(tmp_path, damage):
    corrupt, expected = DAMAGE[damage]
    store = _store(tmp_path / "windows.zarr")
    corrupt(store / W)
    with pytest.raises(WindowError) as info:
        read_window(store, W)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"window {W}"), msg
    assert re.search(expected, msg), msg


def test_btomo_reconstruct_on_a_damaged_window_exits_2_with_one_line(tmp_path):
    """The command itself, as a process, on three kinds of damage (run side by side)."""
    cases = {"chunk truncated": "chunk", "array zarr.json garbled": "its metadata",
             "frames dtype float64": "expected float64"}
    procs = {}
    for k, (damage, words) in enumerate(cases.items()):
        store = _store(tmp_path / f"s{k}" / "windows.zarr")
        DAMAGE[damage][0](store / W)
        procs[damage] = (words, subprocess.Popen(
            [sys.executable, "-m", "btomo.stream", "reconstruct", str(store / W), "--out", str(tmp_path / f"o{k}")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for damage, (words, p) in procs.items():
        out, err = p.communicate(timeout=60)
        assert p.returncode == 2, (damage, out, err)
        line = _one_error_line(err, "reconstruct")
        assert line.startswith(f"btomo reconstruct: error: window {W}: array frames") and words in line, line
        assert not (tmp_path / "o0" / "map.mrc").exists()
