"""Benchmark of the reconstruction: wall time per refinement round and per window, and the
orientation search's achieved GFLOP/s against a plain complex matrix product of the same size
measured in the same run.

    python tools/bench_reconstruct.py [--frames 1000] [--box 80] [--rounds 1] [--device cpu|cuda]

The window is synthetic: noisy projections (0 dB) of a 2 nm FCC particle's potential in random
orientations, ``box`` px at 0.716 A/px (already binned), so that the numbers are those of the
stated size. Prints one JSON object (for docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from btomo.kernels.crystal import fcc_cluster
from btomo.kernels.rotation import quat_to_matrix, random_quaternion
from btomo.reconstruct.atoms import model_map
from btomo.reconstruct.config import ReconstructConfig
from btomo.reconstruct.preprocess import Prepared
from btomo.reconstruct.projection import Projector
from btomo.reconstruct.refine import reconstruct_images


def plain_gemm_gflops(xp, m: int, n: int, r: int, d: int, repeats: int = 3) -> float:
    """GFLOP/s of ``(m, n, r) @ (m, r, d)`` complex64 (8 flops per complex multiply-add)."""
    rng = np.random.default_rng(0)
    a = xp.asarray((rng.standard_normal((m, n, r)) + 1j * rng.standard_normal((m, n, r))).astype(np.complex64))
    b = xp.asarray((rng.standard_normal((m, r, d)) + 1j * rng.standard_normal((m, r, d))).astype(np.complex64))
    xp.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        c = xp.matmul(a, b)
        if xp is not np:
            xp.cuda.Device().synchronize()
        best = min(best, time.perf_counter() - t)
    del c
    return 8.0 * m * n * r * d / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--box", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--directions", type=int, default=2500)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args()
    xp = np
    if args.device == "cuda":
        import cupy as xp  # noqa: PLC0415
    voxel = 0.716
    atoms = fcc_cluster(2.08)
    vol = model_map(atoms - atoms.mean(0), args.box, voxel, 1.5)
    rng = np.random.default_rng(1)
    rots = quat_to_matrix(random_quaternion(rng, args.frames))
    imgs = Projector(vol).project(rots).astype(np.float32)
    imgs += imgs.std() * rng.standard_normal(imgs.shape).astype(np.float32)
    # as binned x2 from a 0.358 A/px window (the shift range is in the window's px)
    prep = Prepared(imgs, voxel, 20.8, "window", 2, 0.6 * 20.8 / voxel, np.ones(args.frames, bool))
    cfg = ReconstructConfig(rounds=args.rounds, directions=args.directions)
    t = time.perf_counter()
    res = reconstruct_images(prep, cfg, xp=xp)
    total = time.perf_counter() - t
    # the search's own GEMM shape: harmonics x batch x rings @ rings x directions
    from btomo.reconstruct.search import PolarGrid  # noqa: PLC0415

    grid = PolarGrid.for_band(args.box, max(2.0 / args.box, voxel / cfg.band_low_A), voxel / cfg.lowpass_A)
    plain = plain_gemm_gflops(xp, grid.harmonics, 32, len(grid.radii), args.directions)
    search_flops = 8.0 * grid.harmonics * args.frames * len(grid.radii) * args.directions * args.rounds
    out = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "device": args.device, "frames": args.frames, "box": args.box, "rounds": args.rounds,
        "directions": args.directions, "rings": len(grid.radii), "angles": grid.angles,
        "seconds_total": round(total, 2), "seconds_per_round": round(total / args.rounds, 2),
        "seconds_by_step": {k: round(v, 2) for k, v in res.seconds.items()},
        "coarse_search_gflops": round(search_flops / res.seconds["search"] / 1e9, 2),
        "plain_gemm_gflops": round(plain, 2),
        "ratio_search_to_plain_gemm": round(search_flops / res.seconds["search"] / 1e9 / plain, 3),
        "window_5_rounds_estimate_s": round(5 * total / args.rounds, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
