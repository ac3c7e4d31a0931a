#!/usr/bin/env python3
"""Soak test: a long simulated 400 frames/s session through ``btomo live`` (issue 10, item 5).

A simulated recording (``--frames`` frames of ``--shape``) is sent over and over, paced at
``--fps``, as one btomo-protocol series on tcp 127.0.0.1 (frame indices and acquisition times go
on increasing; each frame is stamped with its scheduled wall time, so a sender held back by the
pipeline counts as latency). ``btomo live`` runs the whole pipeline on it in a subprocess:
per-frame analysis, denoiser, windows and reconstruction jobs on its LocalCluster, writing
``metrics.jsonl`` every ``--every`` seconds (:mod:`btomo.stream.metrics`). At the end this script
reads those lines and judges, after ``--warmup`` minutes:

* resident memory growth of the live process at most 5 % (max after warm-up vs the warm-up end),
  and the same for its children (the Dask workers), reported;
* no leaked threads or file descriptors (max after warm-up vs the warm-up end);
* latency percentiles (acquisition -> processed) stable: the p50 / p99 of each third of the run
  after warm-up, which must not trend upwards by more than 50 % + 20 ms;
* every frame sent was processed (policy ``block``) or counted as dropped (``drop-oldest``).

It writes ``soak.json`` and ``soak.png`` (memory, threads, fds, latency, rate over time) to
``--out`` and exits 1 when a criterion fails.

    python tools/soak.py --minutes 30 --out /tmp/soak     # the issue's run
    python tools/soak.py --minutes 3 --warmup 1 --out /tmp/soak-short
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zmq

from btomo.stream.config import load_config
from btomo.stream.ingest import free_tcp_address
from btomo.stream.messages import SeriesStart
from btomo.stream.metrics import read_metrics
from btomo.stream.recording import Recording
from btomo.stream.simulator import simulate
from btomo.stream.wire import frame_message, series_end_message, series_start_message

# the pipeline for a 160x160 frame: the detector told the particle's size, light reconstructions
# (2 rounds over 500 directions) so that the jobs keep up on a 2-core machine
LIVE_SETTINGS = {
    "frames.box_px": 96, "frames.particle_diameter_nm": 1.5,
    "windows.max_seconds": 10.0, "reconstruct.rounds": 2, "reconstruct.directions": 500,
    "jobs.max_pending": 4, "jobs.wait_seconds": 120,
}


def _recording(out: Path, frames: int, shape: str, seed: int, box: int) -> Path:
    rec = out / f"rec-{shape}-{frames}-{seed}"
    if (rec / "recording.json").exists():
        return rec
    cfg = load_config(overrides={"acquisition.shape": shape, "simulate.frames": frames, "simulate.seed": seed,
                                 "sample.diameter_nm": 1.5, "sample.etch_rate_atoms_s": 0.0, "frames.box_px": box})
    simulate(cfg, rec)
    return rec


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _send(address: str, rec: Path, fps: float, seconds: float) -> dict:
    """Bind PUSH on ``address`` and send the recording's frames cyclically for ``seconds``."""
    with Recording(rec) as r:
        frames = [np.ascontiguousarray(r.read(i)) for i in range(len(r))]
        px = r.pixel_size_A
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 64)
    sock.setsockopt(zmq.LINGER, 10_000)
    sock.bind(address)
    series = f"soak-{os.getpid()}"
    sock.send_multipart(series_start_message(SeriesStart(series, frames[0].shape, frames[0].dtype, px, fps, 15.0)))
    n = len(frames)
    t0 = time.time_ns() + 200_000_000
    period = 1e9 / fps
    late, i = 0, 0
    end = t0 + seconds * 1e9
    while True:
        due = t0 + int(i * period)
        if due >= end:
            break
        wait = (due - time.time_ns()) * 1e-9
        if wait > 0:
            time.sleep(wait)
        elif wait < -1 / fps:
            late += 1
        sock.send_multipart(frame_message(series, i, int(i * period), frames[i % n], wall_ns=due, pixel_size_A=px),
                            copy=False)
        i += 1
    sock.send_multipart(series_end_message(series, i))
    achieved = i / max((time.time_ns() - t0) * 1e-9, 1e-9)
    sock.close()
    ctx.term()
    return {"frames_sent": i, "late_frames": late, "achieved_fps": achieved, "end_wall": time.time()}


def _judge(lines: list[dict], warmup_s: float, end_wall: float) -> dict:
    """The criteria over the stream's lines after the warm-up (not the final wait for jobs)."""
    after = [m for m in lines if m["t_s"] >= warmup_s and m["wall_time"] <= end_wall]
    if len(after) < 4:
        raise SystemExit(f"too few metrics lines after the warm-up ({len(after)}): run longer")
    base = max((m for m in lines if m["t_s"] < warmup_s), key=lambda m: m["t_s"], default=after[0])
    rss0, rss_max = base["rss_mb"], max(m["rss_mb"] for m in after)
    ch0, ch_max = base["children_rss_mb"], max(m["children_rss_mb"] for m in after)
    thirds = np.array_split(np.arange(len(after)), 3)
    lat = []
    for idx in thirds:
        p50 = [after[i]["latency_ms"].get("p50_ms") for i in idx if after[i]["latency_ms"].get("count")]
        p99 = [after[i]["latency_ms"].get("p99_ms") for i in idx if after[i]["latency_ms"].get("count")]
        lat.append({"p50_ms": float(np.median(p50)) if p50 else None, "p99_ms": float(np.median(p99)) if p99 else None})
    ok_lat = all(x["p99_ms"] is not None and x["p99_ms"] <= 1.5 * lat[0]["p99_ms"] + 20 for x in lat)
    out = {
        "rss_mb_warmup_end": rss0, "rss_mb_max_after": rss_max, "rss_growth_pct": 100 * (rss_max - rss0) / rss0,
        "children_rss_mb_warmup_end": ch0, "children_rss_mb_max_after": ch_max,
        "children_rss_growth_pct": 100 * (ch_max - ch0) / ch0 if ch0 else None,
        "threads_warmup_end": base["threads"], "threads_max_after": max(m["threads"] for m in after),
        "fds_warmup_end": base["fds"], "fds_max_after": max(m["fds"] for m in after),
        "latency_by_third": lat,
        "fps_median_after": float(np.median([m["fps"] for m in after])),
    }
    out["checks"] = {
        "rss_growth_le_5pct": out["rss_growth_pct"] <= 5.0,
        "threads_not_leaking": out["threads_max_after"] <= out["threads_warmup_end"] + 4,
        "fds_not_leaking": out["fds_max_after"] <= out["fds_warmup_end"] + 8,
        "latency_stable": ok_lat,
    }
    return out


def _figure(lines: list[dict], warmup_s: float, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    t = np.array([m["t_s"] for m in lines]) / 60
    fig, ax = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    ax[0, 0].plot(t, [m["rss_mb"] for m in lines], label="live")
    ax[0, 0].plot(t, [m["children_rss_mb"] for m in lines], label="Dask workers")
    ax[0, 0].set_ylabel("resident memory, MiB")
    ax[0, 0].legend()
    ax[0, 1].plot(t, [m["threads"] for m in lines], label="threads")
    ax[0, 1].plot(t, [m["fds"] for m in lines], label="file descriptors")
    ax[0, 1].legend()
    ax[1, 0].plot(t, [m["latency_ms"].get("p50_ms", np.nan) for m in lines], label="p50")
    ax[1, 0].plot(t, [m["latency_ms"].get("p99_ms", np.nan) for m in lines], label="p99")
    ax[1, 0].set_yscale("log")
    ax[1, 0].set_ylabel("latency per interval, ms")
    ax[1, 0].legend()
    ax[1, 1].plot(t, [m["fps"] for m in lines])
    ax[1, 1].set_ylabel("frames processed / s")
    for a in ax.flat:
        a.axvline(warmup_s / 60, color="grey", lw=0.8, ls="--")
    for a in ax[1]:
        a.set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0, help="minutes excluded from the judgement")
    ap.add_argument("--fps", type=float, default=400.0)
    ap.add_argument("--shape", default="160x160")
    ap.add_argument("--frames", type=int, default=1200, help="frames simulated (sent cyclically)")
    ap.add_argument("--every", type=float, default=10.0, help="metrics interval, s")
    ap.add_argument("--policy", default="block", choices=["block", "drop-oldest"])
    ap.add_argument("--box", type=int, default=96, help="crop box, px (frames.box_px)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="more settings for btomo live (repeatable)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("soak"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rec = _recording(args.out, args.frames, args.shape, args.seed, args.box)
    run = args.out / "run"
    if run.exists():
        shutil.rmtree(run)
    address = free_tcp_address()
    sets = {**LIVE_SETTINGS, "frames.box_px": args.box, "stream.metrics_every_s": args.every,
            "stream.queue_policy": args.policy, "stream.side_channel": ""}
    for item in args.set:
        key, _, value = item.partition("=")
        sets[key] = value
    cmd = [sys.executable, "-m", "btomo.stream", "live", "--source", address, "--run-dir", str(run),
           "--no-dashboard", "--idle-timeout", "5"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    # its output to a file: a pipe nobody reads until the end would fill and block its logging
    log_out = open(args.out / "live.out", "w")
    live = subprocess.Popen(cmd, stdout=log_out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120  # start sending once the pipeline is up, as a session would
    while "connected to" not in _text(run / "btomo.log") and live.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        sent = _send(address, rec, args.fps, args.minutes * 60)
        live.wait(timeout=600)
    except BaseException:
        live.send_signal(signal.SIGINT)
        live.wait(timeout=600)
        raise
    finally:
        log_out.close()
    if live.returncode != 0:
        print(_text(args.out / "live.out")[-3000:], file=sys.stderr)
        return 1
    summary = json.loads((run / "summary.json").read_text())
    lines = read_metrics(run / "metrics.jsonl")
    result = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
              "settings": {**vars(args), "out": str(args.out), "live": sets}, "sender": sent,
              "frames_processed": summary["frames_processed"], "frames_dropped": summary["frames_dropped"],
              "frame_gaps": summary["frame_gaps"], "jobs": summary["jobs"], "windows_closed": summary["windows_closed"],
              **_judge(lines, args.warmup * 60, sent["end_wall"])}
    dropped = sum(summary["frames_dropped"].values())
    result["checks"]["every_frame_accounted"] = summary["frames_processed"] + dropped == sent["frames_sent"]
    if args.policy == "block":
        result["checks"]["nothing_dropped"] = dropped == 0
    (args.out / "soak.json").write_text(json.dumps(result, indent=2, default=str))
    _figure(lines, args.warmup * 60, args.out / "soak.png")
    for k, v in result.items():
        if k not in ("settings", "checks"):
            print(f"{k}: {v}")
    for k, v in result["checks"].items():
        print(f"check {k}: {'ok' if v else 'FAILED'}")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
