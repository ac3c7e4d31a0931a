"""Throughput of the per-frame analysis on full 1920x1728 frames with one particle.

Measures, in one run on the same frames (held in memory, so no disk in the loop):

* ``pipeline``: :class:`btomo.stream.frames.FrameAnalysis` on every frame (detection binning,
  tracking, the crop's position / lattice / domain / diameter / SNR, the frames.csv row);
* ``baseline``: a plain NumPy version of the bare minimum of the same steps: 8x8 binning of the
  frame (NumPy reshape-mean) and the FFT-peak score of a 160 px crop (``numpy.fft.fft2``, band max);
* ``crops``: the crop-level steps alone (:class:`btomo.stream.frames.CropAnalyzer.analyse`) on
  lattice and non-lattice crops, crops/s.

    python tools/bench_frames.py [--frames 200] [--repeat 3]
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from btomo.stream.config import load_config
from btomo.stream.frames import CropAnalyzer, FrameAnalysis
from btomo.stream.messages import Frame
from btomo.stream.simulator import simulate
from btomo.stream.sources import open_source


def _baseline(frames: list[np.ndarray], centre: tuple[float, float]) -> float:
    box, pix = 160, 0.358
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(box) * box, np.fft.fftfreq(box) * box))
    band = (k >= box * pix / 2.263) & (k <= box * pix / 1.386)
    x0, y0 = int(centre[0]) - box // 2, int(centre[1]) - box // 2
    t0 = time.perf_counter()
    for f in frames:
        r, c = f.shape[0] // 8, f.shape[1] // 8
        f[: r * 8, : c * 8].reshape(r, 8, c, 8).mean(axis=(1, 3))
        crop = f[y0 : y0 + box, x0 : x0 + box].astype(np.float64)
        p = np.abs(np.fft.fft2(crop - crop.mean())) ** 2
        float(p[band].max())
    return len(frames) / (time.perf_counter() - t0)


def _pipeline(cfg, frames: list[np.ndarray]) -> float:
    stage = FrameAnalysis(cfg, None)
    t0 = time.perf_counter()
    for i, f in enumerate(frames):
        stage.process(Frame("bench", i, i * 2_500_000, f, pixel_size_A=0.358))
    return len(frames) / (time.perf_counter() - t0)


def _crops(frames: list[np.ndarray], centre: tuple[float, float], threshold: float) -> float:
    ca = CropAnalyzer(160, 0.358, 2.3)
    x0, y0 = int(centre[0]) - 80, int(centre[1]) - 80
    crops = [f[y0 : y0 + 160, x0 : x0 + 160].astype(np.float32) for f in frames]
    t0 = time.perf_counter()
    for c in crops:
        ca.analyse(c, (x0, y0), 28.0, threshold)
    return len(crops) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "btomo_bench_frames")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(overrides={"simulate.frames": args.frames, "simulate.seed": 2})
    if not (args.cache / "recording.json").exists():
        simulate(cfg, args.cache)
    with open_source(args.cache) as src:
        frames = [np.array(d) for _, _, d in src]
    import csv  # noqa: PLC0415

    with open(args.cache / "truth" / "frames.csv") as fh:
        t = next(csv.DictReader(fh))
    centre = (float(t["x_px"]), float(t["y_px"]))
    print(f"{len(frames)} frames of {frames[0].shape}, one 2 nm particle; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    for r in range(args.repeat):
        base = _baseline(frames, centre)
        pipe = _pipeline(cfg, frames)
        lat = _crops(frames, centre, 0.0)  # every crop a lattice crop: domain and diameter too
        non = _crops(frames, centre, 1e9)  # none: position, score, SNR only
        print(f"run {r}: pipeline {pipe:6.1f} frames/s | plain NumPy baseline {base:6.1f} frames/s | "
              f"ratio {pipe / base:.2f} | crops/s: lattice {lat:6.1f}, non-lattice {non:6.1f}")


if __name__ == "__main__":
    main()
