"""Denoiser quality against the simulator's clean frames (docs/accuracy.md).

Simulates a recording with its clean frames (unless ``--recording`` names one), trains the
denoiser on it for at most ``--minutes`` (unless ``--model`` names one), and compares raw frames,
a flat guess, the 5-frame average, the classical fallback, the network untrained and trained on
held-out frames: PSNR and SSIM over a crop around the particle and over the particle's disc, the
gain over a flat guess, and the adjacent-frame SNR.

    python tools/report_denoise.py --out /tmp/denoise_report --minutes 30 [--set denoiser.train_crop_px=64]
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from btomo.kernels.denoiser import BlindSpotNet
from btomo.stream.config import load_config
from btomo.stream.denoise import Denoiser, fallback_denoise, load_model, train_denoiser
from btomo.stream.evaluate import denoise_quality
from btomo.stream.progress import LogReporter
from btomo.stream.simulator import simulate
from btomo.stream.sources import open_source

COLUMNS = [("PSNR crop (dB)", "psnr_db", 2), ("SSIM crop", "ssim", 3), ("PSNR particle (dB)", "psnr_particle_db", 2),
           ("SSIM particle", "ssim_particle", 3), ("gain over flat (dB)", "gain_over_flat_db", 2),
           ("adjacent p", "adjacent_p", 3), ("adjacent SNR (dB)", "adjacent_snr_db", 1),
           ("adjacent SNR particle (dB)", "adjacent_snr_particle_db", 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/btomo_denoise_report"))
    ap.add_argument("--recording", type=Path, help="a simulated recording saved with --clean")
    ap.add_argument("--model", type=Path, help="a trained model (else one is trained)")
    ap.add_argument("--minutes", type=float, default=30.0, help="training time limit")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--shape", default="384x384")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--samples", type=int, default=40, help="held-out frame pairs evaluated")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = dict(s.split("=", 1) for s in args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    rec = args.recording
    if rec is None:
        rec = args.out / "rec"
        if not (rec / "truth" / "clean" / "recording.json").exists():
            cfg = load_config(overrides={"acquisition.shape": args.shape, "simulate.frames": args.frames,
                                         "simulate.seed": args.seed, "simulate.save_clean": True})
            simulate(cfg, rec)
    cfg = load_config(rec / "config.toml", overrides=overrides)
    model = args.model
    summary = None
    if model is None:
        model = args.out / "model.pt"
        with open_source(rec) as src:
            summary = train_denoiser(cfg, src, model, max_minutes=args.minutes, reporter=LogReporter(every_s=60))
    net, meta = load_model(model)
    torch.manual_seed(0)
    sigma = cfg.denoiser.fallback_sigma_px
    methods = {"5-frame average": lambda s: s.mean(axis=1), "fallback (average + Gaussian)":
               lambda s: fallback_denoise(s, sigma), "network, untrained": Denoiser(BlindSpotNet(net.spec)),
               "network": Denoiser(net)}
    q = denoise_quality(rec, methods, first=meta["holdout_from"], samples=args.samples)
    s = meta["summary"]
    print(f"\nrecording {rec}; model {model}: {net.spec.channels} channels, {net.spec.blocks} blocks, "
          f"{s['steps']} steps in {s['seconds'] / 60:.1f} min on {s['device']}, crops {s['crop_px']} px, "
          f"loss {s['loss_first']:.4f} -> {s['loss_final']:.4f}; {args.samples} held-out pairs from frame "
          f"{meta['holdout_from']}\n")
    print("| method | " + " | ".join(c[0] for c in COLUMNS) + " |")
    print("| --- | " + " | ".join("---" for _ in COLUMNS) + " |")
    for name, r in q.items():
        print(f"| {name} | " + " | ".join(f"{r.get(k, float('nan')):.{d}f}" for _, k, d in COLUMNS) + " |")
    (args.out / "report.json").write_text(json.dumps({"quality": q, "training": summary or s}, indent=1))


if __name__ == "__main__":
    main()
