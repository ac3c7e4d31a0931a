"""The denoiser: training gains against clean truth, model files, checkpoints, the live stage."""
import itertools
import logging
import math
import threading

import numpy as np
import pytest
import torch

from btomo.kernels.denoiser import BlindSpotNet, DenoiserSpec
from btomo.stream.config import load_config
from btomo.stream.denoise import (
    Backlog, DenoiserError, Denoiser, _checkpoint, fallback_denoise, load_model, save_model, train_denoiser,
)
from btomo.stream.evaluate import denoise_quality, psnr, snr_db_from_correlation, ssim
from btomo.stream.pipeline import run_process
from btomo.stream.simulator import simulate
from btomo.stream.sources import open_source

SMALL = {"denoiser.channels": 8, "denoiser.blocks": 3, "denoiser.train_crop_px": 48,
         "denoiser.train_samples": 400, "denoiser.train_warmup_steps": 20}


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """900 frames of 288x288 with a 2 nm particle at the paper's dose, clean frames saved."""
    root = tmp_path_factory.mktemp("denoise")
    cfg = load_config(overrides={"acquisition.shape": "288x288", "simulate.frames": 900, "simulate.seed": 5,
                                 "simulate.workers": 2, "simulate.save_clean": True})
    simulate(cfg, root / "rec")
    return root / "rec", cfg


@pytest.fixture(scope="module")
def trained(recording, tmp_path_factory):
    rec, _ = recording
    cfg = load_config(rec / "config.toml", overrides=SMALL | {"denoiser.train_steps": 300})
    out = tmp_path_factory.mktemp("model") / "small.pt"
    with open_source(rec) as src:
        summary = train_denoiser(cfg, src, out, seed=1)
    return out, summary, cfg


def test_metrics_on_known_inputs():
    clean = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    assert psnr(clean + 0.1, clean) == pytest.approx(20.0)
    assert ssim(clean, clean) == pytest.approx(1.0)
    assert ssim(clean + np.random.default_rng(0).normal(0, 0.3, clean.shape), clean) < 0.5
    assert snr_db_from_correlation(0.1663) == pytest.approx(-7.0, abs=0.01)
    assert snr_db_from_correlation(0.9617) == pytest.approx(14.0, abs=0.02)
    assert math.isnan(snr_db_from_correlation(-0.1))


def test_training_gives_a_clear_gain_over_raw_average_and_untrained(recording, trained):
    """The issue's gains (PSNR +10 dB over raw, +3 dB over the 5-frame average: an identity model
    fails both) and a gain over the same network untrained (which fails the last line). On these
    frames a flat guess scores high too (the particle is a few % of the counts): docs/accuracy.md
    reports the network against it."""
    rec, _ = recording
    model, summary, cfg = trained
    assert summary["steps"] == 300 and summary["loss_final"] < summary["loss_first"]
    net, meta = load_model(model)
    assert meta["source"] == str(rec) and meta["summary"]["steps"] == 300
    assert meta["config"]["denoiser"]["channels"] == 8
    torch.manual_seed(1)
    untrained = BlindSpotNet(net.spec)
    q = denoise_quality(rec, {"avg5": lambda s: s.mean(axis=1), "untrained": Denoiser(untrained),
                              "network": Denoiser(net)}, first=meta["holdout_from"], samples=16)
    gain = q["network"]["psnr_db"] - q["raw"]["psnr_db"]
    assert gain >= 10.0, q
    assert q["network"]["psnr_db"] >= q["avg5"]["psnr_db"] + 3.0, q
    assert q["network"]["ssim"] > q["raw"]["ssim"], q
    assert q["network"]["psnr_db"] >= q["untrained"]["psnr_db"] + 0.75, q


def test_model_file_round_trip_and_bad_files(trained, tmp_path):
    model, _, _ = trained
    net, meta = load_model(model)
    x = np.random.default_rng(2).poisson(2.0, (2, 5, 40, 40)).astype(np.float32)
    y1 = Denoiser(net)(x)
    save_model(tmp_path / "copy.pt", net, meta)
    y2 = Denoiser(load_model(tmp_path / "copy.pt")[0])(x)
    assert y1.shape == (2, 40, 40) and np.array_equal(y1, y2)
    y3 = Denoiser(net, bf16=True)(x)  # bf16 autocast: close to fp32
    assert np.sqrt(np.mean((y3 - y1) ** 2)) < 0.1 * y1.std() + 1e-3
    data = model.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DenoiserError, match="not a readable model file"):
        load_model(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(DenoiserError, match="not a btomo denoiser model"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(DenoiserError, match="not found"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"expected \(n, 5, H, W\)"):
        Denoiser(net)(x[:, :3])


def test_training_resumes_from_a_checkpoint(recording, tmp_path, caplog):
    rec, _ = recording
    cfg = load_config(rec / "config.toml", overrides=SMALL | {"denoiser.train_steps": 12, "denoiser.train_samples": 40})
    out = tmp_path / "m.pt"
    spec = DenoiserSpec(channels=8, blocks=3)
    net = BlindSpotNet(spec)
    opt = torch.optim.RAdam(net.parameters())
    _checkpoint(out.with_name("m.pt.ckpt"), net, opt, 8, 12, spec, [1.0])
    with caplog.at_level(logging.INFO), open_source(rec) as src:
        summary = train_denoiser(cfg, src, out, resume=True)
    assert "resumed from" in caplog.text and "at step 8 of 12" in caplog.text
    assert summary["steps"] == 12 and out.exists() and not out.with_name("m.pt.ckpt").exists()


def test_fallback_is_a_five_frame_average_and_gaussian():
    stack = np.zeros((5, 32, 32), np.float32)
    stack[:, 16, 16] = 5.0
    out = fallback_denoise(stack, 1.5)
    assert out.shape == (32, 32) and out.sum() == pytest.approx(5.0, rel=1e-3)
    assert out[16, 16] == pytest.approx(5.0 / (2 * math.pi * 1.5**2), rel=0.05)


def test_backlog_keeps_lattice_crops_first():
    b = Backlog(3)
    assert [b.put(i, lattice=False) for i in range(3)] == [None, None, None]
    assert b.put("n", lattice=False) == "backlog_full"  # a non-lattice crop waits behind nothing
    assert b.put("L1", lattice=True) == "displaced"  # the oldest non-lattice crop makes room
    assert b.put("L2", lattice=True) == "displaced" and b.put("L3", lattice=True) == "displaced"
    assert b.put("L4", lattice=True) == "backlog_full" and len(b) == 3
    assert b.take(10) == ["L1", "L2", "L3"] and len(b) == 0


def test_pipeline_denoises_tracked_crops_with_the_fallback_and_says_so(recording, tmp_path, caplog):
    rec, _ = recording
    # a backlog of 2: however busy the machine, a file waits for the denoiser instead of losing crops
    cfg = load_config(rec / "config.toml", overrides={"jobs.enabled": False, "denoiser.backlog": 2})
    with caplog.at_level(logging.WARNING), open_source(rec) as src:
        summary = run_process(cfg, src, tmp_path / "run")
    den = summary["stage_results"]["denoise"]
    rows = summary["stage_results"]["frames"]["particle_frames"]
    assert den["method"] == "fallback" and den["backlog_policy"] == "wait"
    assert caplog.text.count("no denoiser model") == 1
    assert den["skipped"]["backlog_full"] == den["skipped"]["displaced"] == 0, den
    assert den["denoised"] > 0.95 * rows  # the rest: the series' ends, which lack context frames
    assert den["denoised"] + sum(den["skipped"].values()) == rows
    assert den["backlog"] == 0


class _FirstFrames:
    """The first ``n`` frames of a source (the rest of its interface passes through)."""

    def __init__(self, source, n):
        self.source, self.n = source, n

    def __getattr__(self, name):
        return getattr(self.source, name)

    def __len__(self):
        return self.n

    def __iter__(self):
        return itertools.islice(iter(self.source), self.n)


@pytest.mark.parametrize("policy", ["wait", "skip"])
def test_a_full_backlog_holds_a_file_back_and_skips_for_a_live_stream(recording, tmp_path, policy):
    """The denoiser's worker is held for the first 1.5 s, so the backlog of 2 fills: "wait"
    (``btomo process``'s default) holds the frame loop until there is room and loses nothing;
    "skip" (``btomo live``'s) skips and counts."""
    from btomo.stream.denoise import DenoiseStage
    from btomo.stream.frames import FrameAnalysis

    rec, _ = recording
    cfg = load_config(rec / "config.toml", overrides={"denoiser.backlog": 2, "denoiser.batch": 1})
    release = threading.Event()
    threading.Timer(1.5, release.set).start()

    def held_then_fallback(stacks):
        release.wait(10)
        return fallback_denoise(stacks, 1.5)

    frames = FrameAnalysis(cfg, tmp_path / "run")
    stage = DenoiseStage(cfg, frames, denoiser=held_then_fallback, offline=(policy == "wait"))
    with open_source(rec) as src:
        summary = run_process(cfg, _FirstFrames(src, 200), tmp_path / "run", stages=(frames, stage))
    den = summary["stage_results"]["denoise"]
    rows = summary["stage_results"]["frames"]["particle_frames"]
    lost = den["skipped"]["backlog_full"] + den["skipped"]["displaced"]
    assert den["backlog_policy"] == policy and den["denoised"] + sum(den["skipped"].values()) == rows
    if policy == "wait":
        assert lost == 0 and den["held_s"] > 0.3, den
    else:
        assert lost > 0 and den["held_s"] == 0, den


def test_cli_train_then_denoise_to_mrc_and_zarr(recording, tmp_path, capsys):
    import mrcfile
    import zarr

    from btomo.stream.cli import main

    rec, _ = recording
    model = tmp_path / "m.pt"
    sets = [f"--set={k}={v}" for k, v in (SMALL | {"denoiser.train_steps": 5, "denoiser.train_samples": 20}).items()]
    assert main(["train-denoiser", str(rec), "--out", str(model), "--no-progress", *sets]) == 0
    assert "5 steps" in capsys.readouterr().out and model.exists()
    # a short stack: the first 6 frames as MRC
    with open_source(rec) as src:
        frames = np.stack([src.read(i) for i in range(6)]).astype(np.float32)
    with mrcfile.new(tmp_path / "six.mrc") as m:
        m.set_data(frames)
        m.voxel_size = 0.358
    assert main(["denoise", str(tmp_path / "six.mrc"), "--model", str(model), "--out", str(tmp_path / "d.mrc"),
                 "--fps", "400", "--no-progress"]) == 0
    with mrcfile.open(tmp_path / "d.mrc") as m:
        assert m.data.shape == frames.shape and np.isfinite(m.data).all()
        assert float(m.voxel_size.x) == pytest.approx(0.358, abs=1e-3)
        assert m.data.std() < 0.5 * frames.std()  # smoother than the counts
    assert main(["denoise", str(tmp_path / "six.mrc"), "--model", str(model), "--out", str(tmp_path / "d.zarr"),
                 "--fps", "400", "--no-progress"]) == 0
    z = zarr.open_array(tmp_path / "d.zarr", mode="r")
    assert z.shape == frames.shape and z.metadata.zarr_format == 3
    # errors are one line, exit code 2
    assert main(["denoise", str(tmp_path / "six.mrc"), "--model", str(tmp_path / "none.pt"),
                 "--out", str(tmp_path / "e.mrc"), "--fps", "400"]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_pipeline_with_a_model_denoises_lattice_crops_first(recording, trained, tmp_path):
    from btomo.stream.denoise import DenoiseStage
    from btomo.stream.frames import FrameAnalysis

    rec, _ = recording
    model, _, _ = trained
    cfg = load_config(rec / "config.toml", overrides={"denoiser.model": str(model), "denoiser.backlog": 4,
                                                      "denoiser.batch": 4})
    got = []
    frames = FrameAnalysis(cfg, tmp_path / "run")
    stage = DenoiseStage(cfg, frames, sink=lambda row, crop, raw: got.append((row["lattice"], crop.shape, raw.shape)))
    with open_source(rec) as src:
        summary = run_process(cfg, src, tmp_path / "run", stages=(frames, stage))
    den = summary["stage_results"]["denoise"]
    rows = summary["stage_results"]["frames"]["particle_frames"]
    assert den["method"] == "network" and den["denoised"] == len(got) > 0
    assert den["denoised"] + sum(den["skipped"].values()) == rows  # every row accounted for
    box = (cfg.frames.box_px, cfg.frames.box_px)
    assert all(shape == raw == box for _, shape, raw in got)  # the denoised crop and the raw one
    if den["skipped"]["backlog_full"] + den["skipped"]["displaced"]:  # it fell behind: lattice first
        lattice_share = np.mean([lat for lat, _, _ in got])
        assert lattice_share >= summary["stage_results"]["frames"]["lattice_fraction"]


def test_a_failing_consumer_is_counted_and_denoising_goes_on(recording, tmp_path):
    from btomo.stream.denoise import DenoiseStage
    from btomo.stream.frames import FrameAnalysis

    rec, _ = recording
    cfg = load_config(rec / "config.toml", overrides={"denoiser.backlog": 4000})
    seen = []

    def sink(row, crop, raw):
        seen.append(row["frame"])
        if len(seen) % 2:
            raise RuntimeError("consumer broke")

    frames = FrameAnalysis(cfg, tmp_path / "run")
    stage = DenoiseStage(cfg, frames, sink=sink)
    with open_source(rec) as src:
        summary = run_process(cfg, src, tmp_path / "run", stages=(frames, stage))
    den = summary["stage_results"]["denoise"]
    assert den["denoised"] == len(seen) > 100
    assert den["sink_errors"] == (len(seen) + 1) // 2
