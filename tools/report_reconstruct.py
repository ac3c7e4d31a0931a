"""Reconstruction against the simulator's truth: atoms (recall, precision, RMSD after
superposition, allowing inversion) and frame orientations (angular error).

    python tools/report_reconstruct.py OUT --frames N [--dose E] [--diameter NM] [--set K=V ...]
    python tools/report_reconstruct.py OUT --existing       # evaluate OUT's window and recon again
    python tools/report_reconstruct.py OUT --existing --reconstruct-again --recon-dir recon_truth --initial-model truth

Writes a simulated window of a static particle (``btomo.stream.simwindow``) under OUT, runs
``btomo reconstruct`` on it into OUT/recon, and prints the numbers for docs/accuracy.md (also as
OUT/accuracy.json).

Orientations: ``orientation_median_deg`` is the error modulo the particle's symmetry (the cube's
24 rotations; the in-plane half turn too when the truth is centrosymmetric);
``lattice_orientation_median_deg`` modulo the lattice's 48 mates (the cube's rotations, each with
and without the half turn), which is what the lattice fringes fix; ``frames_in_map_on_one_mate``
the fraction of the map's frames on its most common mate (1: one consistent particle; about
1/48: each frame's mate a guess, the map the particle averaged over its mates).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
from ase.io import read

from btomo.kernels.rotation import quat_to_matrix
from btomo.reconstruct.evaluate import (is_centrosymmetric, mate_labels, orientation_errors, recall_by_coordination,
                                       removed_sites_left_empty, superpose_atoms)
from btomo.reconstruct.run import reconstruct_window
from btomo.stream.config import load_config
from btomo.stream.simwindow import simulate_window


def evaluate(out: Path, recon: Path) -> dict:
    truth = read(out / "truth" / "atoms.xyz").positions
    rows = list(csv.DictReader(open(out / "truth" / "frames.csv")))
    qt = np.array([[float(r[k]) for k in ("qw", "qx", "qy", "qz")] for r in rows])
    found = read(recon / "atoms.xyz").positions if (recon / "atoms.xyz").stat().st_size > 4 else np.zeros((0, 3))
    orows = [r for r in csv.DictReader(open(recon / "orientations.csv")) if r["oriented"] == "1"]
    qr = np.array([[float(r[k]) for k in ("qw", "qx", "qy", "qz")] for r in orows])
    idx = np.array([int(r["index"]) for r in orows])
    in_map = np.array([r["in_map"] == "1" for r in orows])
    rec, true = quat_to_matrix(qr), quat_to_matrix(qt[idx])
    err, _, inverted = orientation_errors(rec, true, centrosymmetric=is_centrosymmetric(truth))
    # the lattice's orientation (modulo its 48 mates), and which mate each frame in the map is on
    lat, g, lat_inv = orientation_errors(rec, true, centrosymmetric=True)
    labels = mate_labels(rec[in_map], true[in_map], g, lat_inv)
    score = superpose_atoms(found, truth)
    gone = out / "truth" / "removed_sites.xyz"
    removed = read(gone).positions if gone.exists() and gone.stat().st_size > 4 else np.zeros((0, 3))
    summary = json.loads((recon / "reconstruction.json").read_text())
    return {**score.as_dict(), "removed_sites": len(removed),
            "removed_sites_left_empty": removed_sites_left_empty(score.aligned_A, removed),
            "recall_by_coordination": recall_by_coordination(score.aligned_A, truth),
            "orientation_median_deg": float(np.median(err)),
            "orientation_p90_deg": float(np.percentile(err, 90)), "orientations_inverted": inverted,
            "in_map": int(in_map.sum()), "orientation_median_in_map_deg": float(np.median(err[in_map])),
            "lattice_orientation_median_deg": float(np.median(lat)),
            "lattice_orientation_median_in_map_deg": float(np.median(lat[in_map])),
            "frames_in_map_on_one_mate": float(np.bincount(labels, minlength=48).max() / max(1, len(labels))),
            "resolution_A": summary["resolution_A"], "frames": summary["frames_used"],
            "seconds": summary["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--dose", type=float, default=15.0, help="e/A^2 per frame")
    ap.add_argument("--diameter", type=float, default=2.08, help="nm")
    ap.add_argument("--box", type=int, default=128, help="crop side, px")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shape", default="truncated_octahedron", help="sphere, truncated_octahedron or irregular")
    ap.add_argument("--remove-surface", type=int, default=20, help="random surface atoms taken away")
    ap.add_argument("--rot-diffusion", type=float, default=0.0,
                    help="rad^2/s: orientations follow a Brownian rotation at 400 frames/s (0: drawn independently)")
    ap.add_argument("--existing", action="store_true", help="only evaluate what OUT holds")
    ap.add_argument("--reconstruct-again", action="store_true",
                    help="with --existing: reconstruct OUT's window again (into --recon-dir), then evaluate")
    ap.add_argument("--recon-dir", default="recon", help="the reconstruction's folder under OUT (default recon)")
    ap.add_argument("--simulate-only", action="store_true", help="write the window and its truth, no reconstruction")
    ap.add_argument("--initial-model", metavar="truth|ATOMS",
                    help="first reference: the window's true atoms (a diagnostic: is the truth a fixed point of the "
                    "refinement?) or an atoms file; default the spherical FCC particle")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = {"acquisition.dose_e_per_A2": args.dose, "sample.diameter_nm": args.diameter,
                 "frames.box_px": args.box}
    overrides.update(dict(s.split("=", 1) for s in args.set))
    cfg = load_config(overrides=overrides)
    recon = args.out / args.recon_dir
    if not args.existing:
        t0 = time.perf_counter()
        sw = simulate_window(cfg, args.out, args.frames, seed=args.seed, shape=args.shape,
                             remove_surface=args.remove_surface, rot_diffusion_rad2_s=args.rot_diffusion)
        print(f"simulated {args.frames} frames of {len(sw.atoms_A)} atoms in {time.perf_counter() - t0:.0f} s")
        if args.simulate_only:
            return
    if not args.existing or args.reconstruct_again:
        initial = None
        if args.initial_model == "truth":
            initial = read(args.out / "truth" / "atoms.xyz").positions
        elif args.initial_model:
            initial = read(args.initial_model).positions
        reconstruct_window(args.out / "windows.zarr", "p0_w0000", recon, cfg.reconstruct, initial_atoms_A=initial)
    row = evaluate(args.out, recon)
    if not args.existing:
        row.update({"dose": args.dose, "diameter_nm": args.diameter, "shape": args.shape,
                    "removed_surface_atoms": args.remove_surface, "seed": args.seed,
                    "rot_diffusion_rad2_s": args.rot_diffusion})
    row["initial_model"] = args.initial_model or "spherical FCC"
    name = "accuracy.json" if args.recon_dir == "recon" else f"accuracy_{args.recon_dir}.json"
    (args.out / name).write_text(json.dumps(row, indent=2))
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
