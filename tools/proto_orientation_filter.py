"""Track a simulated particle's orientation through its lattice frames and compare the coverage
of the tracked views with the truth's (issue 6 study; results in docs/windows.md).

Developer script, not the pipeline: crops are cut at the true centres and the lattice frames are
the truth's (noise-free fringe modulation >= 0.12), so that the orientation step is studied alone,
with :mod:`btomo.kernels.orientation` (peaks, score, particle filter) and
:mod:`btomo.kernels.coverage`.

    python tools/proto_orientation_filter.py RECORDING [--particles 3000] [--sharpness 8] [--stick 30]
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import scipy.fft as sf

from btomo.kernels.coverage import Coverage, cubic_rotations, view_directions
from btomo.kernels.frames import band_radii, crop_box, noise_floor, soft_disc
from btomo.kernels.orientation import OrientationFilter, fcc_reflections, lattice_peaks, peak_match_score
from btomo.stream.recording import Recording


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recording", type=Path)
    ap.add_argument("--particles", type=int, default=3000)
    ap.add_argument("--sharpness", type=float, default=8.0)
    ap.add_argument("--stick", type=float, default=30.0)
    ap.add_argument("--mean", action="store_true", help="report the branch's posterior mean, not its heaviest particle")
    ap.add_argument("--rot-diffusion", type=float, default=0.3, help="rad^2/s assumed by the filter")
    ap.add_argument("--box", type=int, default=160)
    ap.add_argument("--diameter-A", type=float, default=20.0)
    args = ap.parse_args()
    rec = Recording(args.recording)
    truth = list(csv.DictReader(open(args.recording / "truth" / "frames.csv")))
    lat = {int(r["frame"]): float(r["fringe_modulation"]) for r in csv.DictReader(open(args.recording / "truth" / "lattice.csv"))}
    box, pix = args.box, rec.pixel_size_A
    k = np.hypot(*np.meshgrid(sf.fftfreq(box) * box, sf.fftfreq(box) * box))
    r_in, r_out = band_radii(box, pix)
    band = (k >= r_in) & (k <= r_out)
    disc = soft_disc(box, args.diameter_A / pix / 2 + 6, 6.0, np)
    g = fcc_reflections()
    filt = OrientationFilter(rot_diffusion_rad2_s=args.rot_diffusion, fps=rec.fps, particles=args.particles,
                             sharpness=args.sharpness, stick_deg=args.stick,
                             mean_report=args.mean)
    ops = cubic_rotations()
    cov_est, cov_true = Coverage(2500, 15.0), Coverage(2500, 15.0)
    errs, log, t0 = [], [], time.perf_counter()
    for row in truth:
        f = int(row["frame"])
        if row["particle"] != "0" or lat.get(f, 0.0) < 0.12:
            continue
        crop, _, _ = crop_box(rec.read(f).astype(np.float32), float(row["x_px"]), float(row["y_px"]), box)
        p = np.abs(sf.fft2((crop - crop.mean()) * disc)) ** 2
        peaks, w = lattice_peaks(p, band, noise_floor(p, band))
        if len(peaks) == 0:
            continue
        rep = filt.update(f, lambda r: peak_match_score(r, g, peaks, w, box=box, pixel_size_A=pix,
                                                          diameter_A=args.diameter_A))
        v_est = view_directions(rep)
        v_true = view_directions(np.array([float(row[c]) for c in ("qw", "qx", "qy", "qz")]))
        mates = np.einsum("sij,j->si", ops, v_est)
        errs.append(math.degrees(math.acos(min(1.0, float(np.max(np.concatenate([mates, -mates]) @ v_true))))))
        cov_est.add(v_est)
        cov_true.add(v_true)
        if not log or f // 375 != log[-1][0] // 375:
            log.append((f, cov_est.fraction, cov_true.fraction))
    n = len(errs)
    print(f"{n} lattice frames, {1e3 * (time.perf_counter() - t0) / max(n, 1):.1f} ms each; view error modulo the "
          f"cubic group: median {np.median(errs):.1f} deg, 75th percentile {np.percentile(errs, 75):.1f} deg")
    print("| time (s) | " + " | ".join(f"{f / rec.fps:.2f}" for f, _, _ in log) + f" | end |")
    print("| estimated | " + " | ".join(f"{a:.2f}" for _, a, _ in log) + f" | {cov_est.fraction:.2f} |")
    print("| true | " + " | ".join(f"{b:.2f}" for _, _, b in log) + f" | {cov_true.fraction:.2f} |")


if __name__ == "__main__":
    main()
