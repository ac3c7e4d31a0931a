"""Inference throughput of the denoiser on particle crops (docs/benchmarks.md).

Measures, in one run, crops/s and megapixels/s of :class:`btomo.stream.denoise.Denoiser` (the
paper's architecture unless ``--channels/--blocks`` say otherwise; random weights: speed does not
depend on them) on batches of 5-frame stacks of 160 and 256 px, for fp32 and bf16 autocast, on
the CPU and, when there is one, on the CUDA GPU (also CUDA graphs via ``torch.compile(mode=
"reduce-overhead")`` where it wins). Baselines in the same run: the classical fallback (5-frame
mean + Gaussian, NumPy/SciPy) and the paper's offline rate (13,715 full 1920x1728 frames in about
6 h on an RTX 3090, about 2 Mpx/s).

    python tools/bench_denoise.py [--sizes 160 256] [--batch 8] [--seconds 10]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from btomo.kernels.denoiser import BlindSpotNet, DenoiserSpec
from btomo.stream.denoise import Denoiser, fallback_denoise

PAPER_MPX_S = 13715 * 1920 * 1728 / (6 * 3600) / 1e6


def _rate(fn, stacks: np.ndarray, seconds: float) -> float:
    fn(stacks)  # warm-up (allocations, cuDNN/oneDNN plans, compilation)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n == 0:
        fn(stacks)
        n += len(stacks)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 256])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring time per case")
    ap.add_argument("--channels", type=int, default=24)
    ap.add_argument("--blocks", type=int, default=14)
    args = ap.parse_args()
    spec = DenoiserSpec(channels=args.channels, blocks=args.blocks)
    net = BlindSpotNet(spec)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"denoiser {spec.channels} channels, {spec.blocks} blocks ({net.macs_per_pixel() / 1e3:.0f} kMAC/px); "
          f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), GPU: {gpu}; paper's offline rate {PAPER_MPX_S:.2f} Mpx/s")
    print("| device | crop | batch | method | crops/s | Mpx/s | x paper offline | x fallback |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for size in args.sizes:
        stacks = rng.poisson(1.9, (args.batch, 5, size, size)).astype(np.float32)
        base = _rate(lambda s: fallback_denoise(s, 1.5), stacks, args.seconds)
        cases = [("cpu", "fallback (NumPy)", None)]
        for dev in devices:
            cases += [(dev, "fp32", Denoiser(net, dev, batch=args.batch)),
                      (dev, "bf16", Denoiser(net, dev, batch=args.batch, bf16=True))]
        for dev, name, den in cases:
            if den is None:
                rate = base
            else:
                rate = _rate(den, stacks, args.seconds)
            mpx = rate * size * size / 1e6
            print(f"| {dev} | {size} | {args.batch} | {name} | {rate:.1f} | {mpx:.2f} | {mpx / PAPER_MPX_S:.2f} | "
                  f"{rate / base:.3f} |", flush=True)


if __name__ == "__main__":
    main()
