"""Accuracy of the per-frame analysis against simulator truth at several doses (docs/accuracy.md).

Simulates one recording per dose (a 2 nm particle, the paper's optics), runs ``btomo process``'s
pipeline on it and compares ``frames.csv`` with the truth (:mod:`btomo.stream.evaluate`).

    python tools/report_frames.py --frames 3000 --shape 384x384 --doses 7.5 15 30 --out /tmp/frames_report
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from btomo.stream.config import load_config
from btomo.stream.evaluate import frame_accuracy
from btomo.stream.pipeline import run_process
from btomo.stream.simulator import simulate
from btomo.stream.sources import open_source

ROWS = [
    ("tracking RMS, lattice frames (A)", "tracking_rms_A_lattice", "<= 0.5", 2),
    ("tracking RMS, in-focus frames (A)", "tracking_rms_A_in_focus", "<= 1.5", 2),
    ("tracking median (A)", "tracking_median_A", "", 2),
    ("frames tracked / truth", "coverage", "", 3),
    ("lattice F1 (truth m >= 0.12)", "f1", ">= 0.95", 3),
    ("lattice F1, clear frames (m < 0.08 or >= 0.16)", "f1_clear", ">= 0.95", 3),
    ("lattice F1 vs geometric visibility", "f1_geometric", "", 3),
    ("lattice F1 vs zone axis within its angle", "f1_zone_axis", "", 3),
    ("precision / recall", ("precision", "recall"), "", 3),
    ("lattice fraction found / true", ("lattice_fraction", "truth_lattice_fraction"), "", 3),
    ("diameter median abs error (nm)", "diameter_median_error_nm", "<= 0.1", 3),
    ("diameter median bias (nm)", "diameter_median_bias_nm", "", 3),
    ("lattice parameter median (A)", "lattice_A_median", "3.92 +- 0.03", 3),
    ("... of the noise-free image's fringes (A)", "lattice_A_image_median", "", 3),
    ("in-plane angle median error (deg)", "angle_median_error_deg", "", 2),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--shape", default="384x384")
    ap.add_argument("--doses", type=float, nargs="+", default=[7.5, 15.0, 30.0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/btomo_frames_report"))
    ap.add_argument("--skip-s", type=float, default=0.5, help="leave out the first seconds (warm-up)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = {}
    for dose in args.doses:
        rec = args.out / f"dose{dose:g}"
        cfg = load_config(overrides={"acquisition.shape": args.shape, "acquisition.dose_e_per_A2": dose,
                                     "simulate.frames": args.frames, "simulate.seed": args.seed})
        if not (rec / "truth" / "lattice.csv").exists():
            simulate(cfg, rec)
        run = args.out / f"run{dose:g}"
        t0 = time.perf_counter()
        with open_source(rec) as src:
            summary = run_process(cfg, src, run)
        acc = frame_accuracy(run / "frames.csv", rec, pixel_size_A=cfg.acquisition.pixel_size_A, skip_s=args.skip_s)
        acc["ms_per_frame"] = summary["stage_results"]["frames"]["ms_per_frame"]
        acc["seconds"] = time.perf_counter() - t0
        results[dose] = acc
    print(f"{args.frames} frames of {args.shape}, a 2 nm particle, seed {args.seed}, first {args.skip_s} s left out\n")
    print("| quantity | target (15 e/A^2) | " + " | ".join(f"{d:g} e/A^2" for d in args.doses) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in args.doses) + " |")
    for label, key, target, digits in ROWS:
        cells = []
        for d in args.doses:
            r = results[d]
            if isinstance(key, tuple):
                cells.append(" / ".join(f"{r[k]:.{digits}f}" for k in key))
            else:
                cells.append(f"{r[key]:.{digits}f}")
        print(f"| {label} | {target} | " + " | ".join(cells) + " |")
    (args.out / "report.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
