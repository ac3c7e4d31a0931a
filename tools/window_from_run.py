"""A window the live pipeline made, with its truth, laid out for ``tools/report_reconstruct.py``.

    python tools/window_from_run.py RECORDING RUN_DIR OUT [--window p0_w0000] [--raw]
    python tools/report_reconstruct.py OUT --existing --reconstruct-again

RECORDING is a simulated recording of one particle that does not etch (``btomo simulate ...
--etch-rate 0``) and RUN_DIR the run ``btomo process RECORDING`` wrote. OUT gets
``windows.zarr/p0_w0000`` (a copy of the run's window: the crops the pipeline kept, denoised or
the fallback's) and ``truth/`` (``atoms.xyz``, and ``frames.csv`` with the true orientation of
each of the window's frames, row i for crop i). With ``--raw`` the crops are replaced by the
recording's raw frames cut at the same tracked centres: the same frames without the denoiser,
for comparison. A developer's script for docs/accuracy.md (issue 7).
"""
from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
import zarr
from ase.io import read, write

from btomo.kernels.frames import crop_box
from btomo.stream.sources import open_source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recording", type=Path)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--window", default="p0_w0000")
    ap.add_argument("--raw", action="store_true", help="the recording's raw frames instead of the window's crops")
    args = ap.parse_args()
    src = args.run_dir / "windows.zarr"
    store = args.out / "windows.zarr"
    if store.exists():
        raise SystemExit(f"{store} exists: expected a new OUT")
    store.mkdir(parents=True)
    shutil.copy(src / "zarr.json", store / "zarr.json")
    shutil.copytree(src / args.window, store / "p0_w0000")
    g = zarr.open_group(store / "p0_w0000", mode="r+")
    acq = np.asarray(g["frame"][:]).astype(np.int64)
    particle = int(g.attrs["particle"])

    truth_dir = args.recording / "truth"
    with open(truth_dir / "frames.csv") as fh:
        rows = {int(r["frame"]): r for r in csv.DictReader(fh) if int(r["particle"]) == particle}
    missing = [int(f) for f in acq if int(f) not in rows]
    if missing:
        raise SystemExit(f"no truth for {len(missing)} of the window's frames (first {missing[0]})")
    steps = {rows[int(f)]["etch_step"] for f in acq}
    if len(steps) != 1:
        raise SystemExit(f"the particle etched during the window (steps {sorted(steps)}): expected a static particle")
    step = int(steps.pop())
    frames_xyz = read(truth_dir / f"atoms_p{particle}.xyz", index=":")
    atoms = next(a for a in frames_xyz if int(a.info.get("step", 0)) == step)
    (args.out / "truth").mkdir()
    write(args.out / "truth" / "atoms.xyz", atoms, format="extxyz")
    with open(args.out / "truth" / "frames.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "qw", "qx", "qy", "qz", "acquisition_frame"])
        for i, f in enumerate(acq):
            r = rows[int(f)]
            w.writerow([i, r["qw"], r["qx"], r["qy"], r["qz"], int(f)])

    if args.raw:
        crops = g["frames"]
        box = crops.shape[1]
        x, y = np.asarray(g["x_px"][:]), np.asarray(g["y_px"][:])
        with open_source(args.recording) as s:
            out = np.stack([crop_box(s.read(int(f)), float(x[i]), float(y[i]), box)[0] for i, f in enumerate(acq)])
        crops[:] = out.astype(np.float32)
    print(f"{len(acq)} frames of window {args.window} ({'raw' if args.raw else 'as the pipeline kept them'}), "
          f"{len(atoms)} true atoms (etch step {step}) -> {args.out}")


if __name__ == "__main__":
    main()
