#!/usr/bin/env python3
"""Benchmark of ``btomo simulate``: frames/s against baselines measured in the same run.

Baselines (same machine, same moment, so the ratios hold when the machine is noisy):

* ``numpy-poisson``: the least a simulator of counting frames must do, one
  ``rng.poisson(dose x pixel area)`` per frame of the same shape, in one process, no physics,
  no disk;
* ``raw-write``: writing the same number of uint16 frames to disk unencoded (``ndarray.tofile``
  into one file, then fsync).

    python tools/bench_simulate.py [--frames 2000] [--shape 512x512] [--workers 0]

Record what it prints in docs/benchmarks.md with the machine it ran on.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from btomo.stream.config import load_config
from btomo.stream.simulator import simulate


def baseline_poisson(n: int, shape: tuple[int, int], lam: float) -> float:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(n):
        rng.poisson(lam, shape).astype(np.uint16)
    return n / (time.perf_counter() - t0)


def baseline_write(n: int, shape: tuple[int, int], directory: Path) -> float:
    frame = np.random.default_rng(0).poisson(2.0, shape).astype(np.uint16)
    path = directory / "raw.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(n):
            frame.tofile(fh)
        fh.flush()
        os.fsync(fh.fileno())
    rate = n / (time.perf_counter() - t0)
    path.unlink()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--shape", default="512x512")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--codec", default="blosc-lz4", choices=["raw", "blosc-lz4"])
    args = ap.parse_args()
    cfg = load_config(overrides={"simulate.frames": args.frames, "acquisition.shape": args.shape,
                                 "simulate.workers": args.workers, "simulate.codec": args.codec})
    shape = cfg.acquisition.shape
    lam = cfg.acquisition.dose_e_per_A2 * cfg.acquisition.pixel_size_A ** 2
    tmp = Path(tempfile.mkdtemp(prefix="btomo-bench-"))
    try:
        result = simulate(cfg, tmp / "rec")
        sim_fps = result.fps
        n_base = min(args.frames, 400)
        pois_fps = baseline_poisson(n_base, shape, lam)
        write_fps = baseline_write(args.frames, shape, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    print(f"simulate {args.frames} frames {shape[0]}x{shape[1]} ({args.codec}, workers={args.workers or os.cpu_count()}): "
          f"{result.seconds:.1f} s, {sim_fps:.1f} frames/s, {result.bytes_written / args.frames / 1e6:.2f} MB/frame on disk")
    print(f"baseline numpy-poisson (1 process, no physics): {pois_fps:.1f} frames/s -> ratio {sim_fps / pois_fps:.2f}")
    print(f"baseline raw-write (uint16, unencoded, fsync): {write_fps:.1f} frames/s -> ratio {sim_fps / write_fps:.3f}")
    print(f"acquisition rate {cfg.acquisition.fps:g} frames/s -> simulate runs at {sim_fps / cfg.acquisition.fps:.2f}x real time")


if __name__ == "__main__":
    main()
