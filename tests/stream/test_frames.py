"""The per-frame stage: tracks with stable ids, the online threshold, and accuracy against truth."""
import csv
import math

import numpy as np
import pytest
from helpers import small_config

from btomo.stream.config import load_config
from btomo.stream.evaluate import frame_accuracy
from btomo.stream.frames import FRAME_COLUMNS, FrameAnalysis, LatticeThreshold
from btomo.stream.messages import Frame
from btomo.stream.pipeline import run_process
from btomo.stream.simulator import simulate
from btomo.stream.sources import open_source


def _blob_frames(n, shape, centres_at, rng, radius=28.0, contrast=0.12, mean=20.0):
    """Poisson frames with dark, atom-textured discs where ``centres_at(i)`` says (a list of (x, y)):
    like a particle off its zone axis (darker on average, atomic contrast inside, no fringes)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    size = int(2 * radius + 2)
    texture = 1.0 + 0.25 * np.sign(np.random.default_rng(9).standard_normal((size // 3 + 1, size // 3 + 1)))
    texture = np.kron(texture, np.ones((3, 3)))[:size, :size]  # ~1 A "columns"
    for i in range(n):
        lam = np.full(shape, mean)
        for x, y in centres_at(i):
            x0, y0 = int(round(x)) - size // 2, int(round(y)) - size // 2
            inside = np.hypot(xx - x, yy - y) <= radius
            tex = np.ones(shape)
            tex[y0 : y0 + size, x0 : x0 + size] = texture
            lam[inside] *= (1.0 - contrast) * tex[inside]
        yield Frame("s", i, i * 2_500_000, rng.poisson(lam).astype(np.uint16), pixel_size_A=0.358)


def test_tracks_keep_their_ids_when_a_particle_leaves_and_returns(tmp_path):
    cfg = load_config(overrides={"acquisition.shape": "320x320", "frames.lost_frames": 20})
    stage = FrameAnalysis(cfg, tmp_path)
    a, b = (90.0, 100.0), (230.0, 210.0)

    def centres(i):
        out = [a]
        if not 150 <= i < 350:  # b is gone for half a second, then back 4 px away
            out.append(b if i < 150 else (b[0] + 4, b[1] - 3))
        return out

    rng = np.random.default_rng(0)
    for f in _blob_frames(500, (320, 320), centres, rng):
        stage.process(f)
    res = stage.finish()
    rows = list(csv.DictReader(open(tmp_path / "frames.csv")))
    assert list(rows[0].keys()) == FRAME_COLUMNS
    ids_a = {r["particle"] for r in rows if abs(float(r["x_px"]) - a[0]) < 20}
    ids_b = {r["particle"] for r in rows if abs(float(r["x_px"]) - b[0]) < 20}
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b
    frames_b = sorted(int(r["frame"]) for r in rows if r["particle"] in ids_b)
    assert frames_b[0] < 100 and frames_b[-1] == 499
    # b was dropped while away (after lost_frames weak frames) and revived under its id
    assert not any(260 <= f < 350 for f in frames_b)
    assert res["particles_reacquired"] == 1 and res["particles_seen"] == 2
    err = [math.hypot(float(r["x_px"]) - a[0], float(r["y_px"]) - a[1]) for r in rows if r["particle"] in ids_a]
    assert np.median(err[50:]) < 2.5  # px (0.9 A)


def test_frames_too_small_are_counted_not_fatal(tmp_path):
    stage = FrameAnalysis(small_config(), tmp_path)
    stage.process(Frame("s", 0, 0, np.zeros((32, 32), np.uint16), pixel_size_A=0.358))
    assert stage.finish()["frames_too_small"] == 1


def test_lattice_threshold_warm_up_unimodal_and_bimodal():
    rng = np.random.default_rng(3)
    th = LatticeThreshold(0.1, min_frames=200, min_separability=0.7, halflife=1e6)
    for v in 10 ** rng.normal(-1.5, 0.1, 150):
        th.add(v)
    assert th.source == "initial" and th.value == 0.1  # too few scores yet
    for v in 10 ** rng.normal(-1.5, 0.1, 300):  # one mode: no threshold to trust
        th.add(v)
    assert th.source == "initial" and th.value == 0.1
    for v in 10 ** np.concatenate([rng.normal(-1.5, 0.1, 600), rng.normal(-0.7, 0.1, 600)]):
        th.add(v)
    assert th.source == "otsu" and 10**-1.3 < th.value < 10**-0.9
    fixed = LatticeThreshold(0.1, fixed=0.2)
    for v in 10 ** rng.normal(-1.5, 0.5, 1000):
        fixed.add(v)
    assert fixed.value == 0.2 and fixed.source == "fixed"


@pytest.fixture(scope="module")
def paper_dose(tmp_path_factory):
    """1200 frames (3 s) of a 2 nm particle at the paper's dose, processed."""
    root = tmp_path_factory.mktemp("frames_acc")
    cfg = load_config(overrides={"acquisition.shape": "320x320", "simulate.frames": 1200, "simulate.seed": 3,
                                 "simulate.workers": 2, "jobs.enabled": False})  # no reconstruction here
    simulate(cfg, root / "rec")
    with open_source(root / "rec") as src:
        summary = run_process(cfg, src, root / "run")
    acc = frame_accuracy(root / "run" / "frames.csv", root / "rec", pixel_size_A=0.358, skip_s=0.5)
    return summary, acc


def test_accuracy_at_the_paper_dose(paper_dose):
    """Thresholds are what this pipeline reaches on raw frames at 15 e/A^2 (docs/accuracy.md),
    with a margin; the issue's targets that raw frames do not reach are reported there."""
    summary, acc = paper_dose
    assert summary["lattice_frames"] == summary["stage_results"]["frames"]["lattice_frames"] > 0
    assert acc["coverage"] > 0.99
    assert acc["tracking_rms_A_lattice"] < 1.0  # issue target 0.5: not reached on raw frames
    assert acc["tracking_rms_A_in_focus"] < 2.0  # 1.34 on the 3000-frame report run (target 1.5)
    assert acc["f1_clear"] >= 0.95
    assert acc["f1"] >= 0.88
    # against the noise-free image's own fringe spacing (within 0.03 A); against bulk Pt the image
    # itself is off by up to ~0.04 A in a short run (finite size and defocus; docs/accuracy.md)
    assert acc["lattice_A_error_vs_image"] <= 0.03
    assert acc["lattice_A_error"] <= 0.07
    assert acc["angle_median_error_deg"] < 1.0
    assert acc["diameter_median_error_nm"] <= 0.1  # the target
    assert abs(acc["diameter_median_bias_nm"]) <= 0.06


def _fringe_disc(i0, rng, box=160, radius=28.0, m=0.2, d_A=2.263, angle=0.4):
    """Poisson counts of a disc with fringes of modulation ``m`` (spacing ``d_A``) at ``i0`` counts/px."""
    yy, xx = np.mgrid[:box, :box].astype(np.float64) - box // 2
    inside = np.hypot(xx, yy) <= radius
    g = 0.358 / d_A
    lam = i0 * (1.0 + m * inside * np.cos(2 * np.pi * g * (xx * np.cos(angle) + yy * np.sin(angle))))
    return rng.poisson(lam).astype(np.float32)


def test_score_and_diameter_do_not_depend_on_the_dose():
    """The fringe modulation and the moment diameter are the same at half and at four times the
    paper's counts per pixel (1.9 counts/px); a noise-free disc gives the same m."""
    from btomo.stream.frames import CropAnalyzer

    rng = np.random.default_rng(5)
    ca = CropAnalyzer(160, 0.358, 2.3, prior_radius_px=28.0)
    out = {}
    for i0 in (1.0, 8.0, 1e4):
        ms, ds = [], []
        for _ in range(12):
            res, _ = ca.analyse(_fringe_disc(i0, rng), (0, 0), 28.0, 0.05)
            ms.append(res.m)
            ds.append(res.diameter_px)
        out[i0] = (np.median(ms), np.median(ds))
    (m_lo, d_lo), (m_hi, d_hi), (m_clean, d_clean) = out[1.0], out[8.0], out[1e4]
    assert 0.12 < m_clean < 0.2  # the 3x3 bins hold most of the peak's energy
    assert m_lo == pytest.approx(m_clean, rel=0.1) and m_hi == pytest.approx(m_clean, rel=0.05)
    assert d_lo == pytest.approx(d_clean, rel=0.06) and d_hi == pytest.approx(d_clean, rel=0.03)


def test_fixed_lag_smoother_beats_the_filter_on_a_random_walk():
    from btomo.stream.tracking import Track

    rng = np.random.default_rng(6)
    n, q, r = 600, 1.0, 16.0  # px^2 per frame, px^2 per measurement
    truth = np.cumsum(rng.normal(0, math.sqrt(q), (n, 2)), axis=0)
    meas = truth + rng.normal(0, math.sqrt(r), (n, 2))
    t = Track(0, float(meas[0, 0]), float(meas[0, 1]), r, born_frame=0, last_frame=0)
    filt, out = [], []
    for i in range(n):
        t.predict(q)
        t.update(float(meas[i, 0]), float(meas[i, 1]), r, gate=1e9)
        filt.append((t.x, t.y))
        t.hold(i)
        out += t.release(20)
    assert [row for row, _, _ in out] == list(range(n - 20))  # in order, 20 frames late
    out += t.release(20, everything=True)
    assert [row for row, _, _ in out] == list(range(n)) and not t.pending
    smooth = np.array([(x, y) for _, x, y in out])
    rms_f = np.sqrt(np.mean(np.sum((np.array(filt) - truth) ** 2, axis=1)))
    rms_s = np.sqrt(np.mean(np.sum((smooth - truth) ** 2, axis=1)))
    assert rms_s < 0.85 * rms_f
