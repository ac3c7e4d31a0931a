#!/usr/bin/env python3
"""Numbers for docs/accuracy.md: the simulator against analytic physics and the paper.

Developer script. Each line is a quantity the tests also check with a threshold
(tests/stream/test_simulator_physics.py); here they are printed in full.

    python tools/report_simulator.py
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import maximum_filter

from btomo.kernels.crystal import coordination_numbers, fcc_cluster
from btomo.kernels.potential import scattering_factor
from btomo.kernels.rotation import quat_to_matrix
from btomo.stream.config import load_config
from btomo.stream.simulator import FrameRenderer, simulate_trajectories

PIX, BOX = 0.358, 160


def small(**kw):
    base = {"acquisition.shape": "192x192", "frames.box_px": 128, "sample.diameter_nm": 1.5,
            "simulate.frames": 16, "simulate.workers": 1}
    base.update(kw)
    return load_config(overrides=base)


def rotation_to(axis):
    z = np.asarray(axis, float) / np.linalg.norm(axis)
    x = np.cross([0.0, 0.0, 1.0] if abs(z[2]) < 0.9 else [1.0, 0.0, 0.0], z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z])


def noise_free(cfg, atoms, defocus):
    r = FrameRenderer(cfg, simulate_trajectories(cfg, n_frames=1))
    yx = np.stack([atoms[:, 1], atoms[:, 0]], 1) + (BOX // 2) * PIX
    return r.intensity((BOX, BOX), yx, 0.0, defocus, np.random.default_rng(0))


def main() -> None:
    print("| check | simulator | reference |")
    print("| --- | --- | --- |")
    f = [float(scattering_factor(np.array(q))) for q in (0, 0.5, 1, 2)]
    print(f"| Kirkland f(q) Pt at q = 0, 0.5, 1, 2 1/A | {', '.join(f'{v:.3f}' for v in f)} A | 10.807, 5.995, 3.034, 1.199 A |")

    cfg = small(**{"sample.liquid_thickness_nm": 0.0})
    img = noise_free(cfg, fcc_cluster(2.0) @ rotation_to([1, 1, 0]).T, cfg.microscope.defocus_A)
    p = np.abs(np.fft.fftshift(np.fft.fft2(img - img.mean()))) ** 2
    yy, xx = np.indices(p.shape) - BOX // 2
    r = np.hypot(yy, xx)
    p[(r < 12) | (r > 80)] = 0
    mx = (p == maximum_filter(p, size=5)) & (p > 0)
    radii = r[mx][np.argsort(p[mx])[::-1]][:8]
    # radii of the brightest FFT pixels (integer positions: within half a pixel of the spot)
    r111 = [v for v in radii if abs(v - BOX * PIX / 2.263) < 1.5]
    r200 = [v for v in radii if abs(v - BOX * PIX / 1.960) < 1.5]
    print(f"| FFT peak radius, [110] particle, 160 px box | {{111}} {np.mean(r111):.1f} px ({len(r111)} spots), "
          f"{{200}} {np.mean(r200):.1f} px ({len(r200)} spots) | 25.3 / 29.2 px |")

    cfg = small(**{"sample.liquid_thickness_nm": 0.0, "acquisition.shape": "256x256"})
    rend = FrameRenderer(cfg, simulate_trajectories(cfg))
    counts = np.stack([rend.render(k)[0] for k in range(8)]).astype(float)[:, :48, :48]
    lam = 15 * PIX * PIX
    z = (counts.mean() - lam) / math.sqrt(lam / counts.size)
    print(f"| mean counts in vacuum, 15 e/A^2 at 0.358 A/px | {counts.mean():.4f} e/px (z = {z:+.1f}), variance "
          f"{counts.var():.3f} | {lam:.4f} e/px, Poisson variance = mean |")

    d_r = 2.0
    cfg = small(**{"sample.rot_diffusion_rad2_s": d_r, "sample.particles": 12, "sample.diameter_nm": 1.0,
                   "sample.etch_rate_atoms_s": 0.0, "sample.z_range_nm": 0.0, "acquisition.shape": "1024x1024"})
    tracks = simulate_trajectories(cfg, n_frames=1600)
    rot = np.stack([quat_to_matrix(t.quat) for t in tracks])
    lags = np.arange(4, 100, 4)  # out to exp(-1): longer lags are noise-dominated
    c = np.array([np.einsum("pfij,pfij->pf", rot[:, k:], rot[:, :-k]).mean() / 3 for k in lags])
    tau = lags / cfg.acquisition.fps
    fit = -np.polyfit(tau, np.log(c), 1)[0] / 2
    print(f"| rotational diffusion from <u(t).u(0)> = exp(-2 D_r t) | D_r = {fit:.3f} rad^2/s | set {d_r} rad^2/s |")

    cfg = small(**{"sample.etch_rate_atoms_s": 40.0, "sample.diameter_nm": 3.0})
    tr = simulate_trajectories(cfg, n_frames=4000)[0]
    cn0 = coordination_numbers(tr.atoms0)
    rem = np.array([e.cn for e in tr.events])
    print(f"| etching, 10 s at 40 atoms/s, 3 nm sphere | {len(tr.events)} events; CN of removed atoms "
          f"{rem.mean():.2f} (first 10: {rem[:10].mean():.2f}) | 400 +- 20; surface CN of the pristine particle "
          f"{cn0[cn0 < 12].mean():.2f} |")

    cfg = small(**{"sample.liquid_thickness_nm": 0.0})
    rot110 = rotation_to([1, 1, 0])
    atoms = fcc_cluster(2.0) @ rot110.T

    def spot(img):
        q = np.abs(np.fft.fftshift(np.fft.fft2(img - img.mean()))) ** 2
        tot = 0.0
        for hkl in ((1, -1, 1), (1, -1, -1), (0, 0, 2)):
            g = rot110 @ np.array(hkl, float) / 3.92
            x, y = (int(round(v * BOX * PIX + BOX // 2)) for v in g[:2])
            tot += q[y - 1 : y + 2, x - 1 : x + 2].sum()
        return tot

    d0 = cfg.microscope.defocus_A
    near = max(spot(noise_free(cfg, atoms, d0 + dz)) for dz in (-100, 0, 100))
    fades = {dz: spot(noise_free(cfg, atoms, d0 + dz)) / near for dz in (-400, -200, 200, 400)}
    print("| {111}+{200} power off focus (4 mrad), relative to best near focus | " +
          ", ".join(f"{dz / 10:+.0f} nm: {v:.3f}" for dz, v in fades.items()) + " | fades beyond the depth of focus |")

    rec = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if rec is not None:
        import csv

        from btomo.stream.recording import Recording

        r = Recording(rec)
        rows = [x for x in csv.DictReader(open(rec / "truth" / "frames.csv")) if x["particle"] == "0"]

        def crop(fr, x, y, b):
            x, y = int(round(x)), int(round(y))
            return fr[y - b // 2 : y + b // 2, x - b // 2 : x + b // 2].astype(float)

        def lowpass(a):
            ky = np.fft.fftfreq(a.shape[0], PIX)[:, None]
            kx = np.fft.fftfreq(a.shape[1], PIX)[None, :]
            return np.fft.ifft2(np.fft.fft2(a) * (np.hypot(ky, kx) < 1 / 2.3)).real

        for b, filt in ((160, False), (64, True)):
            ps = []
            for i in range(min(len(r) - 1, 400)):
                x, y = float(rows[i]["x_px"]), float(rows[i]["y_px"])
                a, c2 = crop(r.read(i), x, y, b), crop(r.read(i + 1), x, y, b)
                if filt:
                    a, c2 = lowpass(a), lowpass(c2)
                ps.append(np.corrcoef(a.ravel(), c2.ravel())[0, 1])
            pm = float(np.mean(ps))
            label = f"{b} px crop" + (", low-pass 2.3 A" if filt else ", raw")
            print(f"| adjacent-frame SNR 10 log10(p/(1-p)), {label} | p = {pm:.4f}, {10 * math.log10(pm / (1 - pm)):.1f} dB "
                  f"| paper, real frames: -7 +- 2 dB |")
        clean_dir = rec / "truth" / "clean"
        if clean_dir.exists():
            clean = Recording(clean_dir)
            p_range, p_max = [], []
            for i in range(0, len(r), max(1, len(r) // 100)):
                x, y = float(rows[i]["x_px"]), float(rows[i]["y_px"])
                a, t = crop(r.read(i), x, y, 160), crop(clean.read(i), x, y, 160)
                mse = float(((a - t) ** 2).mean())
                p_range.append(10 * math.log10((t.max() - t.min()) ** 2 / mse))
                p_max.append(10 * math.log10(t.max() ** 2 / mse))
            print(f"| PSNR of raw 160 px crops against the noise-free truth | {np.mean(p_max):.1f} +- {np.std(p_max):.1f} dB "
                  f"(peak = max of truth), {np.mean(p_range):.1f} dB (peak = its range) "
                  "| paper, simulated frames at 10 e/A^2: 6.2 +- 0.4 dB |")


if __name__ == "__main__":
    main()
