"""Window writer throughput: crops/s into ``windows.zarr`` against a raw write of the same bytes.

Both in the same run, on the same disk, with fsync at the end: ``writer`` is
:class:`btomo.stream.windows.WindowWriter` (whole chunks from its thread, Blosc lz4 + bitshuffle,
a window closed durably every ``--window`` crops); ``raw`` writes the same float32 bytes with
``ndarray.tofile`` and fsyncs. The crops are denoised-looking (the fallback on Poisson counts at
the paper's dose), so compression sees realistic data.

    python tools/bench_windows.py [--crops 4000] [--box 160] [--chunk 64] [--repeat 3]
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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
