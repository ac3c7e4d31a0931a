"""Windows against the simulator's truth: coverage (estimated vs from the true orientations, over
each window) and the coarse orientations' angular error; the windows' spans and frame counts.

    python tools/report_windows.py RECORDING RUN_DIR [--set SECTION.KEY=VALUE ...]

Runs ``btomo process`` on RECORDING into RUN_DIR (unless RUN_DIR already holds windows.zarr) and
prints one row per window (numbers for docs/accuracy.md and docs/windows.md).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from btomo.stream.config import load_config
from btomo.stream.evaluate import window_accuracy
from btomo.stream.pipeline import run_process
from btomo.stream.sources import open_source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recording", type=Path)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (args.run_dir / "windows.zarr").exists():
        overrides = {"jobs.enabled": "false", "denoiser.backlog": "100000"}
        overrides.update(dict(s.split("=", 1) for s in args.set))
        cfg = load_config(args.recording / "config.toml", overrides=overrides)
        with open_source(args.recording) as src:
            s = run_process(cfg, src, args.run_dir)
        w = s["stage_results"]["windows"]
        print(f"processed {s['frames_processed']} frames in {s['wall_seconds']:.0f} s; "
              f"{w['lattice_crops']} lattice crops, {w['ms_per_crop']:.1f} ms per crop, "
              f"{w['ms_per_orientation_update']:.1f} ms per orientation update")
    rows = window_accuracy(args.run_dir / "windows.zarr", args.recording)
    print("| window | closed by | span (s) | lattice frames | coverage est. | true | max gap | "
          "updates | median / p75 view error (deg) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['window']} | {r['closed_by']} | {r['t_start_s']:.2f}-{r['t_end_s']:.2f} | {r['frames']} | "
              f"{r['coverage']:.2f} | {r['coverage_true']:.2f} | {r['max_gap']:.2f} | {r.get('updates', 0)} | "
              f"{r.get('median_error_deg', np.nan):.1f} / {r.get('p75_error_deg', np.nan):.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
