#!/usr/bin/env python3
"""Montage of a recording: crops around a particle over time, with their FFTs and the truth.

Developer script (not part of the package). Shows whether the lattice appears and fades as the
particle turns and drifts through focus: one column per chosen frame; rows are the raw counts
averaged over 5 frames (what a scientist sees without a denoiser), the noise-free expected
counts when the recording has ``truth/clean``, and the FFT power of the crop with the {111} and
{220} radii marked.

    python tools/montage.py RECORDING --out docs/montage.png [--columns 8] [--particle 0]
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from btomo.stream.recording import Recording  # noqa: E402


def crop(frame: np.ndarray, x: float, y: float, box: int) -> np.ndarray:
    """Box around (x, y) px, padded with the frame mean at the edges."""
    out = np.full((box, box), float(frame.mean()), dtype=np.float64)
    y0, x0 = int(round(y)) - box // 2, int(round(x)) - box // 2
    sy = slice(max(y0, 0), min(y0 + box, frame.shape[0]))
    sx = slice(max(x0, 0), min(x0 + box, frame.shape[1]))
    out[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0] = frame[sy, sx]
    return out


def fft_power(img: np.ndarray) -> np.ndarray:
    win = np.outer(np.hanning(img.shape[0]), np.hanning(img.shape[1]))
    return np.abs(np.fft.fftshift(np.fft.fft2((img - img.mean()) * win))) ** 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recording", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--columns", type=int, default=8)
    ap.add_argument("--particle", type=int, default=0)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--frames", type=str, help="comma-separated frame positions (default: chosen from the truth)")
    args = ap.parse_args(argv)

    rec = Recording(args.recording)
    truth_path = args.recording / "truth" / "frames.csv"
    if not truth_path.exists():
        print(f"{truth_path} not found: a montage needs a simulated recording", file=sys.stderr)
        return 2
    rows = [r for r in csv.DictReader(open(truth_path)) if int(r["particle"]) == args.particle]
    clean = Recording(args.recording / "truth" / "clean") if (args.recording / "truth" / "clean").exists() else None
    if args.frames:
        picks = [int(v) for v in args.frames.split(",")]
    else:
        # alternate visible / not-visible frames spread over the recording, so both show
        vis = [i for i, r in enumerate(rows) if r["lattice_visible"] == "1"]
        inv = [i for i, r in enumerate(rows) if r["lattice_visible"] == "0"]
        n_vis = args.columns - args.columns // 2
        picks = sorted(
            [vis[int(k)] for k in np.linspace(0, len(vis) - 1, n_vis)] if vis else []
        ) + sorted([inv[int(k)] for k in np.linspace(0, len(inv) - 1, args.columns // 2)] if inv else [])
        picks = sorted(set(picks))[: args.columns]
    n_rows = 3 if clean is not None else 2
    fig, axes = plt.subplots(n_rows, len(picks), figsize=(1.9 * len(picks), 2.1 * n_rows), squeeze=False)
    pix = rec.pixel_size_A
    for c, f in enumerate(picks):
        r = rows[f]
        x, y = float(r["x_px"]), float(r["y_px"])
        lo, hi = max(0, f - 2), min(len(rec), f + 3)
        avg = np.mean([crop(rec.read(i), x, y, args.box) for i in range(lo, hi)], axis=0)
        avg = ndimage.gaussian_filter(avg, 1.0)
        ax = axes[0, c]
        ax.imshow(avg, cmap="gray")
        ax.set_title(f"t={float(r['t_s']):.3f} s\n{'LATTICE' if r['lattice_visible'] == '1' else 'no lattice'}",
                     fontsize=8, color="tab:blue" if r["lattice_visible"] == "1" else "black")
        row = 1
        if clean is not None:
            axes[row, c].imshow(crop(clean.read(f), x, y, args.box), cmap="gray")
            row += 1
        p = fft_power(crop(clean.read(f), x, y, args.box) if clean is not None else avg)
        axes[row, c].imshow(np.log1p(p / np.median(p)), cmap="magma")
        for d, col in ((2.263, "cyan"), (1.386, "lime")):
            axes[row, c].add_patch(plt.Circle((args.box // 2, args.box // 2), args.box * pix / d, fill=False,
                                              color=col, lw=0.5, ls="--"))
        axes[row, c].set_xlabel(f"zone {r['zone_axis']} {float(r['zone_angle_deg']):.0f} deg\nz={float(r['z_A']) / 10:.0f} nm",
                                fontsize=7)
    labels = ["raw, 5-frame avg", "noise-free truth", "FFT (111, 220)"] if clean is not None else \
        ["raw, 5-frame avg", "FFT (111, 220)"]
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    for k, lab in enumerate(labels):
        axes[k, 0].set_ylabel(lab, fontsize=8)
    fig.suptitle(f"{args.recording.name}: particle {args.particle}, {rec.shape[0]}x{rec.shape[1]} px at "
                 f"{pix} A/px, {len(rec)} frames", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(picks)} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
