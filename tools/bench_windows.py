"""Window writer throughput: crops/s into ``windows.zarr`` against a raw write of the same bytes.

Both in the same run, on the same disk, with fsync at the end: ``writer`` is
:class:`btomo.stream.windows.WindowWriter` (whole chunks from its thread, Blosc lz4 + bitshuffle,
a window closed durably every ``--window`` crops); ``raw`` writes the same float32 bytes with
``ndarray.tofile`` and fsyncs. The crops are denoised-looking (the fallback on Poisson counts at
the paper's dose), so compression sees realistic data.

    python tools/bench_windows.py [--crops 4000] [--box 160] [--chunk 64] [--repeat 3]

Then the cost of orientation coverage per lattice frame (``--views``): ``Coverage.add`` of one view
(2500 directions, incremental) against the plain NumPy baseline that recomputes the coverage from
all views so far, at the same number of views; and one orientation update of the window stage
(lattice peaks of a 160 px crop + the particle filter with ``windows.orientation_particles``).
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

from btomo.stream.denoise import fallback_denoise
from btomo.stream.windows import WindowWriter, window_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", type=int, default=4000)
    ap.add_argument("--box", type=int, default=160)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--views", type=int, default=500, help="views for the coverage benchmark (0: skip it)")
    ap.add_argument("--particles", type=int, default=1500, help="orientation filter particles")
    args = ap.parse_args()
    if args.views:
        bench_coverage(args.views, args.particles)
    rng = np.random.default_rng(0)
    base = fallback_denoise(rng.poisson(1.9, (args.chunk, 5, args.box, args.box)).astype(np.float32), 1.5)
    n_chunks = max(1, args.crops // args.chunk)
    mb = n_chunks * base.nbytes / 1e6
    print(f"{n_chunks * args.chunk} crops of {args.box}x{args.box} float32 ({mb:.0f} MB) in chunks of {args.chunk}; "
          f"{platform.machine()}, {os.cpu_count()} cores")
    for r in range(args.repeat):
        root = Path(tempfile.mkdtemp(dir=args.dir))
        try:
            t0 = time.perf_counter()
            w = WindowWriter(root / "windows.zarr", box=args.box, pixel_size_A=0.358, chunk_frames=args.chunk)
            number, in_window = 0, 0
            w.open_window(window_name(0, number), {"particle": 0})
            for i in range(n_chunks):
                f = np.arange(i * args.chunk, (i + 1) * args.chunk)
                meta = {"frame": f, "t_s": f / 400, "x_px": f * 0.0, "y_px": f * 0.0, "fft_peak": f * 0.0}
                w.append(window_name(0, number), base, meta)
                in_window += args.chunk
                if in_window >= args.window and i < n_chunks - 1:
                    w.close_window(window_name(0, number), {})
                    number, in_window = number + 1, 0
                    w.open_window(window_name(0, number), {"particle": 0})
            w.close_window(window_name(0, number), {})
            c = w.close()
            t_writer = time.perf_counter() - t0
            disk = sum(p.stat().st_size for p in (root / "windows.zarr").rglob("*") if p.is_file())
            t0 = time.perf_counter()
            with open(root / "raw.bin", "wb") as fh:
                for _ in range(n_chunks):
                    base.tofile(fh)
                fh.flush()
                os.fsync(fh.fileno())
            t_raw = time.perf_counter() - t0
        finally:
            shutil.rmtree(root, ignore_errors=True)
        crops = n_chunks * args.chunk
        print(f"run {r}: writer {crops / t_writer:8.0f} crops/s ({mb / t_writer:6.0f} MB/s in, "
              f"{disk / 1e6:.0f} MB on disk, ratio {mb * 1e6 / disk:.2f}, {c['windows_complete']} windows) | "
              f"raw write {crops / t_raw:8.0f} crops/s ({mb / t_raw:6.0f} MB/s) | writer / raw {t_raw / t_writer:.2f}")


def bench_coverage(views: int, particles: int) -> None:
    """ms per lattice frame: coverage update (incremental vs recomputed) and orientation update."""
    from btomo.kernels.coverage import Coverage, fibonacci_sphere  # noqa: PLC0415
    from btomo.kernels.frames import band_radii, soft_disc  # noqa: PLC0415
    from btomo.kernels.orientation import (  # noqa: PLC0415
        OrientationFilter, fcc_reflections, lattice_peaks, peak_match_score)

    rng = np.random.default_rng(1)
    v = rng.normal(size=(views, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    cov = Coverage()
    t0 = time.perf_counter()
    for i in range(views):
        cov.add(v[i])
    t_inc = (time.perf_counter() - t0) / views
    grid = fibonacci_sphere(2500)
    cos_a = np.cos(np.radians(15.0))
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):  # the baseline at the last (largest) number of views
        allv = np.concatenate([v, -v])
        naive = float(((allv @ grid.T) >= cos_a).any(axis=0).mean())
    t_naive = (time.perf_counter() - t0) / reps
    assert abs(naive - cov.fraction) < 1e-12
    print(f"coverage update, {views} views: incremental {1e3 * t_inc:.3f} ms/view | recomputed from all views "
          f"{1e3 * t_naive:.3f} ms | recomputed / incremental {t_naive / t_inc:.1f}")
    # one orientation update as the window stage does it, on a lattice crop ([011] zone axis fringes)
    box, pix = 160, 0.358
    g = fcc_reflections()
    yy, xx = (np.mgrid[:box, :box] - box // 2) * pix
    img = sum(np.cos(2 * np.pi * (k[0] * xx + k[1] * yy)) for k in g if abs(k[0]) < 1e-9)
    crop = rng.poisson(20 * (1 + 0.3 * (np.hypot(xx, yy) < 14) * img / np.abs(img).max())).astype(np.float32)
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(box) * box, np.fft.fftfreq(box) * box))
    r_in, r_out = band_radii(box, pix)
    band = (k >= r_in) & (k <= r_out)
    disc = soft_disc(box, 34.0, 6.0, np)
    f = OrientationFilter(rot_diffusion_rad2_s=0.3, fps=400.0, particles=particles, seed=0)
    n, t_peaks, t_filter = 60, 0.0, 0.0
    for i in range(n):
        t0 = time.perf_counter()
        p = np.abs(np.fft.fft2((crop - crop.mean()) * disc)) ** 2
        peaks, w = lattice_peaks(p, band)
        t1 = time.perf_counter()
        f.update(4 * i, lambda r: peak_match_score(r, g, peaks, w, box=box, pixel_size_A=pix, diameter_A=20.0))
        t2 = time.perf_counter()
        if i:  # the first update weighs 8x the particles (the uniform start)
            t_peaks += t1 - t0
            t_filter += t2 - t1
    print(f"orientation update ({particles} particles): peaks {1e3 * t_peaks / (n - 1):.1f} ms + filter "
          f"{1e3 * t_filter / (n - 1):.1f} ms per updated lattice frame")


if __name__ == "__main__":
    main()
