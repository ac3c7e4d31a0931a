"""`simulate` end to end: the recording, its truth, determinism, and the clean frames."""
import csv
import json

import numpy as np
import pytest
from ase.io import read as ase_read

from btomo.stream.config import load_config
from btomo.stream.recording import Recording
from btomo.stream.simulator import TRUTH_COLUMNS, simulate
from helpers import small_config


@pytest.fixture(scope="module")
def two_particles(tmp_path_factory):
    cfg = small_config(**{"simulate.frames": 40, "sample.particles": 2, "sample.etch_rate_atoms_s": 300.0,
                          "simulate.save_clean": True, "acquisition.shape": "256x320"})
    out = tmp_path_factory.mktemp("sim") / "rec"
    return cfg, out, simulate(cfg, out)


def test_recording_has_the_frames_and_metadata(two_particles):
    cfg, out, result = two_particles
    with Recording(out) as rec:
        assert len(rec) == 40 and rec.complete
        assert rec.shape == (256, 320) and rec.dtype == np.uint16
        assert rec.pixel_size_A == pytest.approx(0.358) and rec.fps == 400.0
        np.testing.assert_allclose(np.diff(rec.t_s), 1 / 400.0)
        np.testing.assert_array_equal(rec.frame_index, np.arange(40))
        assert rec.read(0).mean() == pytest.approx(result.mean_counts, rel=0.1)
    assert load_config(out / "config.toml") == cfg


def test_truth_table_covers_every_frame_and_particle(two_particles):
    cfg, out, _ = two_particles
    rows = list(csv.DictReader(open(out / "truth" / "frames.csv")))
    assert list(rows[0]) == TRUTH_COLUMNS
    assert len(rows) == 40 * 2
    for r in rows:
        q = np.array([float(r[k]) for k in ("qw", "qx", "qy", "qz")])
        assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-5)
        assert 0 <= float(r["x_px"]) < 320 and 0 <= float(r["y_px"]) < 256
        assert r["lattice_visible"] == str(int(r["fringes_visible"] == "1" and r["in_focus"] == "1"))


def test_atoms_per_etching_step_read_with_ase(two_particles):
    cfg, out, result = two_particles
    meta = json.loads((out / "truth" / "particles.json").read_text())["particles"]
    steps = list(csv.DictReader(open(out / "truth" / "etch_steps.csv")))
    rows = list(csv.DictReader(open(out / "truth" / "frames.csv")))
    for p in range(2):
        images = ase_read(out / "truth" / f"atoms_p{p}.xyz", index=":")
        p_steps = [s for s in steps if s["particle"] == str(p)]
        assert len(images) == len(p_steps) + 1 == result.etch_events[p] + 1
        assert len(images[0]) == meta[p]["atoms_initial"] == result.atoms_start[p]
        for img, st in zip(images[1:], p_steps):
            assert len(img) == int(st["n_atoms"])
            assert int(st["atom"]) not in set(img.arrays["id"])  # the removed atom is gone
        last = [r for r in rows if r["particle"] == str(p)][-1]
        assert len(images[int(last["etch_step"])]) == int(last["n_atoms"])
        assert set(img.get_chemical_symbols()) == {"Pt"}


def test_clean_frames_are_the_expectation_of_the_counts(two_particles):
    _, out, _ = two_particles
    with Recording(out) as rec, Recording(out / "truth" / "clean") as clean:
        assert clean.dtype == np.float32 and len(clean) == len(rec)
        counts = rec.read_all().astype(np.float64)
        lam = clean.read_all().astype(np.float64)
    z = (counts - lam) / np.sqrt(np.maximum(lam, 1e-6))
    assert abs(z.mean()) < 0.01  # unbiased
    assert z.var() == pytest.approx(1.0, abs=0.02)  # Poisson variance


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a = small_config(**{"simulate.frames": 12, "simulate.workers": 1})
    b = small_config(**{"simulate.frames": 12, "simulate.workers": 2})
    c = small_config(**{"simulate.frames": 12, "simulate.workers": 1, "simulate.seed": 1})
    for cfg, name in ((a, "a"), (b, "b"), (c, "c")):
        simulate(cfg, tmp_path / name)
    fa, fb, fc = ((tmp_path / n / "frames.bin").read_bytes() for n in "abc")
    assert fa == fb
    assert fa != fc
    assert (tmp_path / "a/truth/frames.csv").read_text() == (tmp_path / "b/truth/frames.csv").read_text()
