"""The truth and the images agree: the truth is the geometry that was rendered."""
import copy
import csv
import math

import numpy as np
from ase.io import read as ase_read

from btomo.kernels.rotation import quat_to_matrix
from btomo.stream.recording import Recording
from btomo.stream.simulator import FrameRenderer, simulate, simulate_trajectories
from helpers import small_config


def test_truth_centre_quaternion_and_atoms_reproduce_the_clean_frames(tmp_path):
    """Place the truth's atoms (XYZ of the etching step, rotated by the truth quaternion, at the
    truth centre and height) and render them alone: the clean frame must match."""
    cfg = small_config(**{"simulate.frames": 30, "simulate.save_clean": True, "sample.liquid_thickness_nm": 0.0,
                          "sample.etch_rate_atoms_s": 200.0, "sample.rot_diffusion_rad2_s": 5.0,
                          "sample.diffusion_z_A2_s": 1e5, "acquisition.shape": "256x256"})
    out = tmp_path / "rec"
    simulate(cfg, out)
    rows = list(csv.DictReader(open(out / "truth" / "frames.csv")))
    images = ase_read(out / "truth" / "atoms_p0.xyz", index=":")
    renderer = FrameRenderer(cfg, simulate_trajectories(cfg, n_frames=1))
    lam0 = cfg.acquisition.dose_e_per_A2 * cfg.acquisition.pixel_size_A ** 2
    pix, box = cfg.acquisition.pixel_size_A, 128
    checked = 0
    with Recording(out / "truth" / "clean") as clean:
        for f in (0, 11, 29):
            r = rows[f]
            atoms = images[int(r["etch_step"])].positions
            assert len(atoms) == int(r["n_atoms"])
            q = np.array([float(r[k]) for k in ("qw", "qx", "qy", "qz")])
            lab = atoms @ quat_to_matrix(q).T
            lab -= lab.mean(axis=0)  # the truth centre is the projected centroid
            x, y = float(r["x_px"]), float(r["y_px"])
            cy, cx = int(round(y)), int(round(x))
            yx = np.stack([(y - cy + box // 2) * pix + lab[:, 1], (x - cx + box // 2) * pix + lab[:, 0]], axis=1)
            defocus = cfg.microscope.defocus_A + float(r["z_A"])
            expected = renderer.intensity((box, box), yx, 0.0, defocus, np.random.default_rng(0)) * lam0
            got = clean.read(f)[cy - box // 2 : cy + box // 2, cx - box // 2 : cx + box // 2]
            core = (slice(40, 88), slice(40, 88))  # the particle, away from both patches' edges
            err = np.abs(got[core] - expected[core]).max()
            assert err < 0.01 * lam0, f"frame {f}: clean frame differs from the truth by {err:.3g} e/px"
            # and a wrong orientation would not match: turn the particle 90 degrees
            turned = np.stack([yx[:, 1], yx[:, 0]], axis=1)
            other = renderer.intensity((box, box), turned, 0.0, defocus, np.random.default_rng(0)) * lam0
            assert np.abs(got[core] - other[core]).max() > 20 * err
            checked += 1
    assert checked == 3


def test_counts_do_not_depend_on_asking_for_clean_frames():
    cfg = small_config(**{"sample.particles": 3, "acquisition.shape": "256x320"})
    r = FrameRenderer(cfg, simulate_trajectories(cfg))
    for f in range(3):
        np.testing.assert_array_equal(r.render(f, want_clean=True)[0], r.render(f, want_clean=False)[0])


def test_overlapping_particles_both_stay_in_the_image():
    cfg = small_config(**{"sample.particles": 2, "sample.liquid_thickness_nm": 0.0, "acquisition.shape": "256x256"})
    tracks = simulate_trajectories(cfg, n_frames=1)
    a, b = tracks
    b = copy.deepcopy(b)
    b.origin_px[0] = a.origin_px[0] + [12.0, 5.0]  # 4 A apart: the patches overlap almost whole
    lam0 = cfg.acquisition.dose_e_per_A2 * cfg.acquisition.pixel_size_A ** 2
    only_a = FrameRenderer(cfg, [a]).render(0, want_clean=True)[1] / lam0
    only_b = FrameRenderer(cfg, [b]).render(0, want_clean=True)[1] / lam0
    both = FrameRenderer(cfg, [a, b]).render(0, want_clean=True)[1] / lam0
    np.testing.assert_allclose(both, only_a * only_b, rtol=1e-4, atol=1e-5)
    assert np.abs(both - only_a).max() > 0.1 and np.abs(both - only_b).max() > 0.1


def test_counts_around_the_particle_keep_the_dose():
    """Inside the neighbourhood rendered at full cost, away from the particle: dose x pixel area."""
    cfg = small_config(**{"sample.liquid_thickness_nm": 0.0, "acquisition.shape": "256x256",
                          "sample.diameter_nm": 1.0})
    track = simulate_trajectories(cfg)[0]
    r = FrameRenderer(cfg, [track])
    lam = 15.0 * 0.358**2
    ring = []
    for f in range(8):
        counts = r.render(f)[0].astype(float)
        cx, cy = (int(round(v)) for v in track.origin_px[f])
        yy, xx = np.indices(counts.shape)
        d = np.hypot(yy - cy, xx - cx)
        ring.append(counts[(d > 30) & (d < 50)])  # 11-18 A from a 5 A particle, inside the patch
    ring = np.concatenate(ring)
    assert abs(ring.mean() - lam) < 4 * math.sqrt(lam / ring.size) + 0.01 * lam


def test_water_viscosity_does_not_hang():
    """Stokes-Einstein-Debye in plain water: D_r ~ 1e8 rad^2/s, orientations random every frame."""
    cfg = small_config(**{"sample.viscosity_pa_s": 1e-3})
    track = simulate_trajectories(cfg, n_frames=200)[0]
    assert track.rot_diffusion[0] > 1e7
    z_axis = np.stack([quat_to_matrix(q)[:, 2] for q in track.quat])
    assert abs(np.mean(np.sum(z_axis[1:] * z_axis[:-1], axis=1))) < 0.2  # no memory from frame to frame


def _line_contrast(img, mask):
    """Largest mean |step| across one row or column boundary, over the median one (pixels in
    ``mask`` only): ~1.5 for seamless texture, 3-5 across a seam between two tiles."""
    worst = 0.0
    for axis in (0, 1):
        d = np.abs(np.diff(img, axis=axis))
        m = (mask[1:, :] & mask[:-1, :]) if axis == 0 else (mask[:, 1:] & mask[:, :-1])
        step = (d * m).sum(axis=1 - axis) / np.maximum(m.sum(axis=1 - axis), 1)
        worst = max(worst, float(step.max() / np.median(step)))
    return worst


def test_no_tile_seam_in_the_crop_box_around_a_particle():
    """The water around a particle comes from one tile: no line of discontinuity in its box."""
    cfg = small_config(**{"acquisition.shape": "512x512", "frames.box_px": 160, "sample.diameter_nm": 2.0,
                          "sample.etch_rate_atoms_s": 0.0})
    track = simulate_trajectories(cfg)[0]
    r = FrameRenderer(cfg, [track])
    yy, xx = np.indices((160, 160))
    off_particle = np.hypot(yy - 80, xx - 80) > 40
    for f in range(6):
        lam = r.render(f, want_clean=True)[1]
        cx, cy = (int(round(v)) for v in track.origin_px[f])
        crop = lam[cy - 80 : cy + 80, cx - 80 : cx + 80]
        assert _line_contrast(crop, off_particle) < 2.3, f"frame {f}: a seam in the crop box"
        # the check can fail: a box on a seam between tiles, elsewhere in the frame, does
        seam_row = int(np.argmax(np.abs(np.diff(lam, axis=0)).mean(axis=1)))
        y0 = min(max(seam_row - 80, 0), 512 - 160)
        elsewhere = lam[y0 : y0 + 160, :160]
        assert _line_contrast(elsewhere, np.ones_like(elsewhere, dtype=bool)) > 2.5


def test_thickness_map_attenuates_once_where_particles_overlap():
    """Off the particles, expected counts are dose x pixel area x exp(-t(x) / mfp), whatever the
    number of particles whose neighbourhoods cover the pixel."""
    cfg = small_config(**{"sample.particles": 2, "sample.liquid_texture": 0.0, "sample.liquid_mfp_nm": 20.0,
                          "sample.liquid_variation": 0.5, "acquisition.shape": "256x256", "sample.diameter_nm": 1.0})
    a, b = simulate_trajectories(cfg, n_frames=1)
    b = copy.deepcopy(b)
    b.origin_px[0] = a.origin_px[0] + [40.0, 0.0]
    r = FrameRenderer(cfg, [a, b])
    lam = r.render(0, want_clean=True)[1]
    expected = 15.0 * 0.358**2 * np.exp(-r.thickness_A / (10 * cfg.sample.liquid_mfp_nm))
    yy, xx = np.indices(lam.shape)
    (ax, ay), (bx, by) = a.origin_px[0], b.origin_px[0]
    off = (np.hypot(xx - ax, yy - ay) > 25) & (np.hypot(xx - bx, yy - by) > 25)
    both = off & (np.abs(xx - ax) < 40) & (np.abs(yy - ay) < 40) & (np.abs(xx - bx) < 40) & (np.abs(yy - by) < 40)
    sensitive = both & (np.abs(r.attenuation_ratio - 1) > 0.03)
    assert sensitive.sum() > 100
    np.testing.assert_allclose(lam[sensitive], expected[sensitive], rtol=0.01)
