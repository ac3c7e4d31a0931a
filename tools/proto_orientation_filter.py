"""Prototype (issue 6): track a particle's full orientation through its lattice frames with a
particle filter and compare the coverage of the tracked views with the truth's.

Developer script, not the pipeline: crops are cut at the true centres and lattice frames are taken
from the truth (noise-free fringe modulation >= 0.12), to study the orientation step alone.
Method and results: docs/windows.md. Written to study, not tidied: the next step folds it into the package.

    python tools/proto_orientation_filter.py RECORDING [PARTICLES] [BETA] [STICK_DEG] [MIN_WEIGHT]
"""
import csv
import math
import sys
import time

import numpy as np
import scipy.fft as sf

from btomo.stream.recording import Recording
from btomo.kernels.frames import crop_box, soft_disc, box_sum, noise_floor, band_radii
from btomo.kernels.coverage import Coverage, cubic_rotations, view_directions
from btomo.kernels.rotation import quat_to_matrix, quat_multiply, quat_from_rotvec, random_quaternion, quat_normalize
rec = sys.argv[1]; B = 160; px = 0.358; a = 3.92
NP = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
T = list(csv.DictReader(open(rec + '/truth/frames.csv')))
L = {int(r['frame']): float(r['fringe_modulation']) for r in csv.DictReader(open(rec+'/truth/lattice.csv'))}
src = Recording(rec)
hkl = [(h,k,l) for h in range(-2,3) for k in range(-2,3) for l in range(-2,3) if (h,k,l)!=(0,0,0) and len({h%2,k%2,l%2})==1 and h*h+k*k+l*l in (3,4,8)]
G = np.array(hkl, float) / a
sig_z = 1.0 / 20 / 1.5
f = sf.fftfreq(B) * B; FY, FX = np.meshgrid(f, f, indexing='ij')
r_in, r_out = band_radii(B, px); band = (np.hypot(FY, FX) >= r_in) & (np.hypot(FY, FX) <= r_out)
disc = soft_disc(B, 34, 6.0, np)
def peaks(k):
    t = T[k]; x, y = float(t['x_px']), float(t['y_px'])
    crop, o, _ = crop_box(src.read(k).astype(np.float32), x, y, B)
    c = (crop - crop.mean()) * disc
    P = np.abs(sf.fft2(c))**2; S = box_sum(P, 1); fl = 9 * noise_floor(P, band)
    Sb = np.where(band, S, 0)
    loc = (Sb >= np.roll(Sb, 1, 0)) & (Sb >= np.roll(Sb, -1, 0)) & (Sb >= np.roll(Sb, 1, 1)) & (Sb >= np.roll(Sb, -1, 1)) & (Sb > 6 * fl)
    iy, ix = np.nonzero(loc)
    return np.stack([FX[iy, ix], FY[iy, ix]], 1), (Sb[iy, ix] / fl - 1.0)
def score(Rm, obs, w):
    K = np.einsum('nij,gj->ngi', Rm, G); vis = np.exp(-K[..., 2]**2 / (2 * sig_z**2)); kxy = K[..., :2] * (B * px)
    d2 = ((kxy[:, None] - obs[None, :, None])**2).sum(-1)
    return (w[None, :, None] * vis[:, None, :] * np.exp(-d2 / (2 * 1.5**2))).max(-1).sum(-1) / max(w.sum(), 1e-9)
rng = np.random.default_rng(0)
Dr = 0.3; dt = 1 / 400; beta = float(sys.argv[3]) if len(sys.argv) > 3 else 8.0
parts = random_quaternion(rng, 20000); wts = np.full(len(parts), 1 / len(parts)); last = None
prev_q = None; STICK = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0; MINW = float(sys.argv[5]) if len(sys.argv) > 5 else 0.05
cov_est = Coverage(2500, 15.0); cov_true = Coverage(2500, 15.0)
ops = cubic_rotations(); errs = []; log = []; t0 = time.perf_counter(); nl = 0
for k in range(3000):
    if L[k] < 0.12: continue
    obs, w = peaks(k)
    if len(obs) == 0: continue
    nl += 1
    if last is not None:  # predict: rotational diffusion over the elapsed frames (+ a floor)
        s = math.sqrt(2 * Dr * dt * (k - last)) + 0.02
        parts = quat_normalize(quat_multiply(quat_from_rotvec(rng.normal(0, s, (len(parts), 3))), parts))
    last = k
    sc = score(quat_to_matrix(parts), obs, w)
    lw = np.log(wts + 1e-300) + beta * sc
    wts = np.exp(lw - lw.max()); wts /= wts.sum()
    best = parts[int(np.argmax(wts))]
    if prev_q is not None:
        ang = 2 * np.degrees(np.arccos(np.clip(np.abs(parts @ prev_q), 0, 1)))
        near = ang < STICK
        if wts[near].sum() > MINW:
            best = parts[near][int(np.argmax(wts[near]))]
    prev_q = best
    # resample to NP (systematic)
    n_out = NP
    cs = np.cumsum(wts); u = (rng.random() + np.arange(n_out)) / n_out
    idx = np.minimum(np.searchsorted(cs, u), len(wts) - 1)
    parts = parts[idx]; wts = np.full(n_out, 1 / n_out)
    v_est = view_directions(best)
    q = np.array([float(T[k][c_]) for c_ in ('qw','qx','qy','qz')]); v_true = view_directions(q)
    m = np.einsum('sij,j->si', ops, v_est); m = np.concatenate([m, -m])
    errs.append(math.degrees(math.acos(min(1.0, float(np.max(m @ v_true))))))
    cov_est.add(v_est); cov_true.add(v_true)
    if not log or k // 375 != log[-1][0] // 375:
        log.append((k, cov_est.fraction, cov_true.fraction))
print('lattice frames', nl, 'ms/frame', 1e3 * (time.perf_counter() - t0) / nl)
print('median err mod cubic', np.median(errs), 'p75', np.percentile(errs, 75))
print(' '.join(f"{k/400:.2f}s {a:.2f}/{b:.2f}" for k, a, b in log))
print('final est', cov_est.fraction, 'true', cov_true.fraction)
