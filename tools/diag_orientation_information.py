"""How much a window's frames say about their orientation and their cubic mate, against truth.

    python tools/diag_orientation_information.py OUT [--groups 0,2,5,10,20] [--every 5] [--peaks 3]

OUT is a folder written by ``tools/report_reconstruct.py`` (``OUT/windows.zarr`` and
``OUT/truth``). With the **true** atoms' map as the reference, every frame is scored by one
independent scorer (whitened, band-limited cross-correlation over sub-voxel shifts, the same band
as the reconstruction) and the script prints:

1. the mean score at the true orientation against random orientations (the scorer works);
2. how often the true orientation beats its 23 cubic mates (the particle's shape is the only
   difference between them), per frame and summed over the frames within +-k acquisition frames,
   each neighbour at its **own** true orientation (what perfect relative orientations would give)
   and at the **centre** frame's (what pooling neighbouring frames at one orientation gives);
3. the orientation search's result on a quarter of the frames against the same reference: its
   error modulo the cube and how often the truth scores higher than what the search found (near
   50 % means the likelihood is flat, not that the search misses its maximum).

A developer's diagnostic for docs/accuracy.md (issue 7); it writes nothing.
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
from ase.io import read

from btomo.kernels.coverage import cubic_rotations
from btomo.kernels.rotation import quat_to_matrix
from btomo.reconstruct.evaluate import orientation_errors
from btomo.reconstruct.config import ReconstructConfig
from btomo.reconstruct.preprocess import prepare
from btomo.reconstruct.projection import Projector
from btomo.reconstruct.refine import SHIFT_STEP_PX, initial_model
from btomo.reconstruct.search import OrientationSearch, _to_harmonics, image_polar_samples, shift_trials
from btomo.reconstruct.run import window_optics
from btomo.reconstruct.window import read_window

UP = 4  # shift resolution of the scorer: 1 / UP voxel


class Scorer:
    """Normalised, ring-whitened cross-correlation of crops with a map's projections, maximised
    over shifts within ``max_shift`` voxels on a 1/UP-voxel grid; with ``transfer`` (a function
    of cycles/voxel) the projections go through the microscope's contrast transfer first."""

    def __init__(self, images: np.ndarray, reference: np.ndarray, k_min: float, k_max: float, max_shift: float,
                 transfer=None):
        n, box = images.shape[0], images.shape[1]
        self.box = box
        f = np.fft.fftfreq(box)
        k = np.hypot(*np.meshgrid(f, f, indexing="ij"))
        self.ctf = np.ones_like(k) if transfer is None else np.asarray(transfer(k))
        self.F = np.fft.fft2(np.fft.ifftshift(images.astype(np.float64), axes=(1, 2)))
        ring = np.rint(k * box).astype(int)
        power = np.bincount(ring.ravel(), (np.abs(self.F) ** 2).mean(0).ravel()) / np.bincount(ring.ravel())
        self.W = ((k >= k_min) & (k <= k_max)) / np.maximum(power[ring], 1e-30)
        self.nF = np.sqrt((np.abs(self.F) ** 2 * self.W).sum((1, 2)))
        u = np.fft.fftfreq(UP * box) * box
        yy, xx = np.meshgrid(u, u, indexing="ij")
        self.near = np.hypot(yy, xx) <= max_shift + 1e-9
        self.proj = Projector(reference)

    def __call__(self, idx: np.ndarray, rotations: np.ndarray) -> np.ndarray:
        box, h = self.box, self.box // 2
        P = np.fft.fft2(np.fft.ifftshift(self.proj.project(rotations), axes=(1, 2))) * self.ctf
        nP = np.sqrt((np.abs(P) ** 2 * self.W).sum((1, 2)))
        X = self.F[idx] * np.conj(P) * self.W
        Xp = np.zeros((len(idx), UP * box, UP * box), complex)
        for sy in (slice(0, h), slice(-h, None)):
            for sx in (slice(0, h), slice(-h, None)):
                Xp[:, sy, sx] = X[:, sy, sx]
        cc = np.fft.ifft2(Xp).real * (UP * box) ** 2  # the sum over frequencies
        return cc[:, self.near].max(1) / (self.nF[idx] * nP)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--groups", default="0,2,5,10,20", help="half-widths k (acquisition frames)")
    ap.add_argument("--every", type=int, default=5, help="centre frames for the common-orientation groups")
    ap.add_argument("--peaks", type=int, default=3, help="coarse peaks of the search check")
    ap.add_argument("--lowpass", type=float, default=1.5, help="A")
    ap.add_argument("--ctf", choices=("auto", "none"), default="auto",
                    help="the window's optics' contrast transfer on the projections (auto) or none")
    args = ap.parse_args()
    t0 = time.perf_counter()
    w = read_window(args.out / "windows.zarr", "p0_w0000")
    prep = prepare(w.frames, w.pixel_size_A, lowpass_A=args.lowpass, shift_px=5.0,
                   diameter_A=10.0 * float(w.attrs["diameter_nm"]))
    n, box, vox = prep.images.shape[0], prep.box, prep.voxel_A
    rows = list(csv.DictReader(open(args.out / "truth" / "frames.csv")))
    rt = quat_to_matrix(np.array([[float(r[k]) for k in ("qw", "qx", "qy", "qz")] for r in rows]))
    acq = np.asarray(w.meta["frame"])
    truth = read(args.out / "truth" / "atoms.xyz").positions
    ref = initial_model(prep.diameter_A, box, vox, args.lowpass, truth)
    k_max, k_min = min(0.5, vox / args.lowpass), max(2.0 / box, vox / 25.0)
    max_shift = 5.0 / prep.bin
    optics = window_optics(w.attrs, ReconstructConfig(ctf=args.ctf), "p0_w0000")
    transfer = None if optics is None else (lambda k: optics.transfer(np.asarray(k) / vox, vox / prep.bin))
    score = Scorer(prep.images, ref, k_min, k_max, max_shift, transfer)
    every = np.arange(n)
    print(f"contrast transfer: {optics or 'none'}")
    print(f"{n} frames, box {box}, voxel {vox:.3f} A, band {vox / k_max:.2f}-{vox / k_min:.1f} A")

    q = np.random.default_rng(0).normal(size=(n, 4))
    rnd = quat_to_matrix(q / np.linalg.norm(q, axis=1, keepdims=True))
    print(f"1. mean score at the true orientation {score(every, rt).mean():.4f}, at random ones "
          f"{score(every, rnd).mean():.4f}")

    mates = cubic_rotations()
    ident = int(np.argmin(np.abs(mates - np.eye(3)).sum(axis=(1, 2))))
    own = np.stack([score(every, rt @ mates[m]) for m in range(24)], axis=1)  # (n, 24)
    print("2. the true orientation best of its 24 cubic mates (chance 0.042):")
    for k in (int(v) for v in args.groups.split(",")):
        hit_own = [own[np.abs(acq - acq[c]) <= k].sum(0).argmax() == ident for c in range(n)]
        hit_common = []
        for c in range(0, n, args.every):
            nb = np.flatnonzero(np.abs(acq - acq[c]) <= k)
            tot = [score(nb, np.repeat((rt[c] @ mates[m])[None], len(nb), 0)).sum() for m in range(24)]
            hit_common.append(int(np.argmax(tot)) == ident)
        size = np.mean([np.sum(np.abs(acq - acq[c]) <= k) for c in range(n)])
        print(f"   +-{k:3d} frames ({size:5.1f} on average): each at its own true orientation "
              f"{np.mean(hit_own):.3f}, all at the centre frame's {np.mean(hit_common):.3f}", flush=True)

    sub = np.arange(0, n, 4)
    search = OrientationSearch(box, k_min, k_max, directions=2500, local_deg=10.0, peaks=args.peaks,
                               ring_filter=transfer)
    trials = shift_trials(SHIFT_STEP_PX, max(1, math.ceil(max_shift / SHIFT_STEP_PX - 1e-9)))
    trials = trials[np.hypot(trials[:, 0], trials[:, 1]) <= max(max_shift, SHIFT_STEP_PX) + 1e-9]
    p = image_polar_samples(prep.images[sub], search.grid)
    found = search.search(_to_harmonics(p, search.grid, np), score.proj, samples=p, trials=trials)
    err, _, _ = orientation_errors(found.rotations, rt[sub])
    s_found, s_true = score(sub, found.rotations), score(sub, rt[sub])
    print(f"3. search ({args.peaks} peaks) on {len(sub)} frames: error mod the cube median {np.median(err):.1f} deg "
          f"(quartiles {np.percentile(err, 25):.1f} / {np.percentile(err, 75):.1f}); score found {s_found.mean():.4f}, "
          f"truth {s_true.mean():.4f}; the truth scores higher in {np.mean(s_true > s_found):.2f} of the frames")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
