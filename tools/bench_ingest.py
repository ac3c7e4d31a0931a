#!/usr/bin/env python3
"""Benchmarks of the stream edge: paced ingest, unpaced ingest vs raw pyzmq, recorder vs raw write.

Every figure is printed with a baseline measured in the same run (these machines are noisy):

``paced``
    Full 1920x1728 uint16 frames sent by another process over tcp loopback at 400 frames/s for
    ``--seconds`` (default 60) in the btomo protocol, received by :class:`btomo.stream.ingest.Ingest`
    (block policy) and consumed: frames lost, index gaps, end-to-end latency percentiles
    (acquisition stamp at the sender -> consumed), and how late the sender fell behind.
``unpaced``
    The same frames as fast as possible: first a raw pyzmq PULL (``recv_multipart(copy=False)``,
    nothing else), then the Ingest (decode, checks, queue, consumer). Ratio ingest / raw.
``recorder``
    Writing frames to disk: a raw sequential write of the same bytes (64 MiB writes, fsync every
    64 MiB, like the recorder's blocks), then :class:`btomo.stream.recording.RecordingWriter` with
    the raw codec, then with Blosc lz4 + bitshuffle, then ``btomo record`` whole (a sender process
    at full speed, tcp, ingest, recorder). Ratio recorder bytes/s / raw bytes/s.

    python tools/bench_ingest.py [paced|unpaced|recorder|all] [--seconds 60] [--frames 2000]

Record what it prints in docs/benchmarks.md with the machine it ran on.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

SHAPE = (1920, 1728)


def _free_address() -> str:
    from btomo.stream.ingest import free_tcp_address

    return free_tcp_address()


def _frames(n: int = 8) -> list[np.ndarray]:
    """A few distinct counting frames (about 2 counts/px, like the paper's dose)."""
    rng = np.random.default_rng(0)
    return [rng.poisson(2.0, SHAPE).astype(np.uint16) for _ in range(n)]


def _sender(address: str, n: int, fps: float, result: "mp.Queue") -> None:
    """Another process, as a detector is: bind PUSH, send n btomo frames at fps (0 = max)."""
    from btomo.stream.messages import SeriesStart
    from btomo.stream.wire import frame_message, series_end_message, series_start_message

    frames = _frames()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 64)
    sock.bind(address)
    sock.send_multipart(series_start_message(SeriesStart("bench", SHAPE, np.dtype("<u2"), 0.358, fps or None)))
    period = 1.0 / fps if fps else 0.0
    late = 0.0
    t0 = time.perf_counter()
    wall0 = time.time_ns()
    for i in range(n):
        if period:
            wait = t0 + i * period - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                late = max(late, -wait)
            t = wall0 + round(i * period * 1e9)  # acquired on schedule: lateness counts as latency
        else:
            t = time.time_ns()
        sock.send_multipart(frame_message("bench", i, t, frames[i % len(frames)], wall_ns=t), copy=False)
    sock.send_multipart(series_end_message("bench", n))
    result.put({"seconds": time.perf_counter() - t0, "max_late_s": late})
    sock.close(linger=-1)
    ctx.term()


def _start_sender(address: str, n: int, fps: float):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_sender, args=(address, n, fps, q), daemon=True)
    p.start()
    return p, q


def _ingest_run(n: int, fps: float, idle_s: float = 5.0) -> dict:
    from btomo.stream.config import load_config
    from btomo.stream.ingest import Ingest
    from btomo.stream.messages import Frame

    address = _free_address()
    cfg = load_config(None, {"stream.source": address, "stream.max_frames": n, "stream.idle_timeout_s": idle_s,
                             "stream.side_channel": _free_address()})
    ingest = Ingest(cfg).start()
    proc, q = _start_sender(address, n, fps)
    got = 0
    t_first = t_last = None
    for rec in ingest.records():
        if isinstance(rec, Frame):
            ingest.counters.processed(rec)
            got += 1
            now = time.perf_counter()
            t_first = t_first or now
            t_last = now
    ingest.close()
    sender = q.get(timeout=60)
    proc.join(30)
    c = ingest.counters.snapshot()
    return {"frames": got, "seconds": (t_last - t_first) if got > 1 else float("nan"), "counters": c,
            "sender": sender}


@contextlib.contextmanager
def _plain_pull(n: int):
    """A plain pyzmq PULL with a sender process of n frames: yields the socket after the series
    start; afterwards takes the series end and cleans up."""
    address = _free_address()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 64)
    sock.connect(address)
    proc, q = _start_sender(address, n, 0)
    sock.recv_multipart()  # series start
    try:
        yield sock
        sock.recv_multipart()  # series end
        q.get(timeout=60)
        proc.join(30)
    finally:
        sock.close(0)
        ctx.term()


def _raw_run(n: int) -> dict:
    with _plain_pull(n) as sock:
        t0 = time.perf_counter()
        nbytes = 0
        for i in range(n):
            parts = sock.recv_multipart(copy=False)
            if i == 0:
                t0 = time.perf_counter()
            nbytes += len(parts[1])
        dt = time.perf_counter() - t0
    return {"frames": n, "seconds": dt, "bytes": nbytes}


def bench_paced(seconds: float) -> None:
    n = int(400 * seconds)
    print(f"\n== paced: {n} frames {SHAPE[0]}x{SHAPE[1]} uint16 at 400 frames/s ({seconds:g} s) over tcp loopback")
    r = _ingest_run(n, 400.0)
    c = r["counters"]
    lat = c["latency"]
    lost = n - r["frames"]
    print(f"received {r['frames']}/{n} (lost {lost}), dropped {c['frames_dropped']}, gaps {c['frame_gaps']}, "
          f"malformed {c['messages_malformed']}")
    print(f"rate {r['frames'] / r['seconds']:.1f} frames/s ({r['frames'] * 2 * SHAPE[0] * SHAPE[1] / r['seconds'] / 1e9:.2f} GB/s); "
          f"sender max late {1e3 * r['sender']['max_late_s']:.1f} ms; queue high water {c['queue_high_water']}")
    print("latency acquisition->consumed (ms): " + ", ".join(f"{k[:-3]} {v:.2f}" for k, v in lat.items() if k.endswith("_ms")))
    print(f"queue latency accepted->consumed (ms): p50 {c['queue_latency']['p50_ms']:.2f}, p99 {c['queue_latency']['p99_ms']:.2f}")


def bench_unpaced(n: int) -> None:
    print(f"\n== unpaced: {n} frames {SHAPE[0]}x{SHAPE[1]} uint16 as fast as possible over tcp loopback")
    raws, ings = [], []
    for _ in range(5):  # interleaved repeats: the ratio of medians
        raw = _raw_run(n)
        raws.append(raw["frames"] / raw["seconds"])
        ing = _ingest_run(n, 0.0)
        assert ing["frames"] == n, f"ingest lost frames: {ing['frames']}/{n}"
        ings.append(ing["frames"] / ing["seconds"])
        print(f"  raw pyzmq {raws[-1]:.0f} frames/s, ingest {ings[-1]:.0f} frames/s")
    r, i = float(np.median(raws)), float(np.median(ings))
    gb = 2 * SHAPE[0] * SHAPE[1] / 1e9
    print(f"raw pyzmq PUSH/PULL: {r:.0f} frames/s ({r * gb:.2f} GB/s)")
    print(f"btomo ingest:        {i:.0f} frames/s ({i * gb:.2f} GB/s)")
    print(f"ratio ingest / raw = {i / r:.3f} (goal >= 0.9)")


class _Clock:
    """A progress reporter that notes when the first frame was written."""

    t_first = 0.0

    def start(self, total, description) -> None:
        pass

    def update(self, advance: int = 1, **state) -> None:
        if not self.t_first:
            self.t_first = time.perf_counter()

    def end(self) -> None:
        pass


def bench_recorder(n: int, directory: Path) -> None:
    from btomo.stream.recording import RecordingWriter

    frames = _frames()
    nbytes = n * frames[0].nbytes
    print(f"\n== recorder: {n} frames {SHAPE[0]}x{SHAPE[1]} uint16 ({nbytes / 1e9:.2f} GB) into {directory}")
    block = 64 << 20

    def write_all(path: Path, buffers) -> float:
        """Write the buffers to one file, fsyncing every 64 MiB; seconds from the first buffer."""
        t0 = None
        with open(path, "wb") as f:
            pending = 0
            for buf in buffers:
                t0 = t0 or time.perf_counter()
                f.write(buf)
                pending += memoryview(buf).nbytes
                if pending >= block:
                    f.flush()
                    os.fsync(f.fileno())
                    pending = 0
            f.flush()
            os.fsync(f.fileno())
        dt = time.perf_counter() - t0
        path.unlink()
        return dt

    def raw_write() -> float:
        return nbytes / write_all(directory / "raw.bin", (frames[i % len(frames)] for i in range(n)))

    def recorder(codec: str) -> tuple[float, int]:
        path = directory / f"rec-{codec}"
        t0 = time.perf_counter()
        with RecordingWriter(path, shape=SHAPE, pixel_size_A=0.358, fps=400, codec=codec, block_frames=64) as w:
            for i in range(n):
                w.append(frames[i % len(frames)], frame_index=i, t_ns=i)
        dt = time.perf_counter() - t0
        on_disk = w.bytes_written
        shutil.rmtree(path)
        return nbytes / dt, on_disk

    def record_over_socket(codec: str) -> float:
        """``btomo record`` whole: a sender process at full speed -> tcp -> ingest -> recorder."""
        from btomo.stream.config import load_config
        from btomo.stream.record import record

        address = _free_address()
        cfg = load_config(None, {"stream.source": address, "stream.max_frames": n, "stream.idle_timeout_s": 10.0,
                                 "stream.side_channel": "", "stream.record_codec": codec})
        proc, q = _start_sender(address, n, 0)
        path = directory / f"record-{codec}"
        clock = _Clock()
        result = record(cfg, path, reporter=clock)
        t_end = time.perf_counter()  # after the last block's fsync and the close
        q.get(timeout=60)
        proc.join(30)
        shutil.rmtree(path)
        assert result.frames == n, f"record lost frames: {result.frames}/{n}"
        return nbytes * (n - 1) / n / (t_end - clock.t_first)  # from the first frame written

    def raw_socket_write() -> float:
        """The plainest receive-and-write: pyzmq PULL + ``file.write`` + fsync every 64 MiB."""
        with _plain_pull(n) as sock:
            received = (sock.recv_multipart(copy=False)[1].buffer for _ in range(n))
            dt = write_all(directory / "raw-socket.bin", received)
        return nbytes * (n - 1) / n / dt

    rows = []
    for _ in range(3):
        raw = raw_write()
        raw_sock = raw_socket_write()
        rec_raw, disk_raw = recorder("raw")
        rec_blosc, disk_blosc = recorder("blosc-lz4")
        sock_raw = record_over_socket("raw")
        sock_blosc = record_over_socket("blosc-lz4")
        rows.append((raw, rec_raw, rec_blosc, raw_sock, sock_raw, sock_blosc))
        print(f"  raw write {raw / 1e9:.2f} GB/s, recorder raw {rec_raw / 1e9:.2f} GB/s, "
              f"recorder blosc-lz4 {rec_blosc / 1e9:.2f} GB/s of frames ({disk_blosc / nbytes:.2f} of the bytes on disk); "
              f"over tcp: pyzmq+write {raw_sock / 1e9:.2f}, btomo record raw {sock_raw / 1e9:.2f}, "
              f"blosc-lz4 {sock_blosc / 1e9:.2f} GB/s")
    raw, rec_raw, rec_blosc, raw_sock, sock_raw, sock_blosc = (float(np.median(col)) for col in zip(*rows))
    print(f"raw sequential write: {raw / 1e9:.2f} GB/s")
    print(f"recorder, raw codec:  {rec_raw / 1e9:.2f} GB/s  ratio {rec_raw / raw:.3f} (goal >= 0.8)")
    print(f"recorder, blosc-lz4:  {rec_blosc / 1e9:.2f} GB/s of frame data, ratio {rec_blosc / raw:.3f}; "
          f"{400 * frames[0].nbytes / 1e9:.2f} GB/s needed for 400 full frames/s")
    print(f"over tcp from a sender process: plain pyzmq receive + write {raw_sock / 1e9:.2f} GB/s; btomo record, "
          f"raw codec {sock_raw / 1e9:.2f} GB/s, ratio {sock_raw / raw_sock:.3f} (goal >= 0.8); blosc-lz4 "
          f"{sock_blosc / 1e9:.2f} GB/s of frame data, ratio {sock_blosc / raw_sock:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("which", nargs="?", default="all", choices=["paced", "unpaced", "recorder", "all"])
    ap.add_argument("--seconds", type=float, default=60.0, help="paced run length, s (default 60)")
    ap.add_argument("--frames", type=int, default=2000, help="frames of the unpaced and recorder runs")
    ap.add_argument("--dir", type=Path, default=None, help="directory on the disk to test (default: a temp dir)")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"pyzmq {zmq.pyzmq_version()} (libzmq {zmq.zmq_version()})")
    if args.which in ("unpaced", "all"):
        bench_unpaced(args.frames)
    if args.which in ("recorder", "all"):
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            bench_recorder(min(args.frames, 1000), Path(d))
    if args.which in ("paced", "all"):
        bench_paced(args.seconds)


if __name__ == "__main__":
    main()
