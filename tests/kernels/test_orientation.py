"""Orientation from lattice peaks: synthetic fringe images of known orientation, and tracking."""
import math

import numpy as np
import pytest

from btomo.kernels.coverage import Coverage, cubic_rotations, fibonacci_sphere, view_directions
from btomo.kernels.frames import band_radii, noise_floor, soft_disc
from btomo.kernels.orientation import OrientationFilter, fcc_reflections, lattice_peaks, peak_match_score
from btomo.kernels.rotation import quat_from_rotvec, quat_multiply, quat_normalize, quat_to_matrix

BOX, PIX, DIAM = 160, 0.358, 20.0


def _fringes(q, rng, counts=20.0, m=0.3):
    """Poisson counts of a disc whose fringes are the reflections that orientation q puts edge-on."""
    g = fcc_reflections()
    k = quat_to_matrix(q) @ g.T  # (3, n) lab frame
    vis = np.exp(-k[2] ** 2 / (2 * (1 / (1.5 * DIAM)) ** 2))
    yy, xx = (np.mgrid[:BOX, :BOX] - BOX // 2) * PIX
    img = np.zeros((BOX, BOX))
    for j in np.flatnonzero(vis > 0.3):
        img += vis[j] * np.cos(2 * np.pi * (k[0, j] * xx + k[1, j] * yy))
    inside = np.hypot(xx, yy) <= DIAM / 2 * 2.8
    lam = counts * (1 + m * inside * img / max(1.0, np.abs(img).max()))
    return rng.poisson(lam).astype(np.float32)


def _peaks(img):
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(BOX) * BOX, np.fft.fftfreq(BOX) * BOX))
    r_in, r_out = band_radii(BOX, PIX)
    band = (k >= r_in) & (k <= r_out)
    p = np.abs(np.fft.fft2((img - img.mean()) * soft_disc(BOX, 56, 6.0, np))) ** 2
    return lattice_peaks(p, band, noise_floor(p, band))


def _angle_mod_cubic(v_est, v_true):
    ops = cubic_rotations()
    m = np.einsum("sij,j->si", ops, v_est)
    m = np.concatenate([m, -m])
    return math.degrees(math.acos(min(1.0, float(np.max(m @ v_true)))))


def test_reflections_and_peaks_of_a_zone_axis():
    g = fcc_reflections()
    assert len(g) == 8 + 6 + 12  # {111}, {200}, {220}
    assert np.linalg.norm(g, axis=1).min() == pytest.approx(math.sqrt(3) / 3.92)
    q = quat_normalize(np.array([1.0, 0, 0, 0]))  # beam along body z: the [001] zone axis
    peaks, w = _peaks(_fringes(q, np.random.default_rng(0)))
    # [001] shows {200} and {220} at 90 and 45 deg: 4 + 4 peaks
    r = np.hypot(peaks[:, 0], peaks[:, 1])
    assert len(peaks) == 8 and np.all(w > 5)
    # (integer FFT bins: within a bin of the exact radii)
    assert np.sort(r) == pytest.approx([2 * BOX * PIX / 3.92] * 4 + [math.sqrt(8) * BOX * PIX / 3.92] * 4, abs=0.8)


def test_score_finds_the_orientation_modulo_cubic_symmetry():
    rng = np.random.default_rng(1)
    dirs = fibonacci_sphere(800)
    dirs = dirs[dirs[:, 2] >= 0]
    errors = []
    for trial in range(6):
        # a zone axis near a low-index direction, turned a little: two or more fringe sets
        v = np.array([[0, 0, 1], [1, 1, 0], [1, 1, 1]][trial % 3], float)
        q_true = quat_multiply(quat_from_rotvec(rng.normal(0, 0.05, 3)), _rotation_to(v, rng.uniform(0, np.pi)))
        peaks, w = _peaks(_fringes(q_true, rng))
        rots = np.array([_matrix(d, psi) for d in dirs for psi in np.radians(np.arange(0, 180, 4))])
        s = peak_match_score(rots, fcc_reflections(), peaks, w, box=BOX, pixel_size_A=PIX, diameter_A=DIAM)
        errors.append(_angle_mod_cubic(rots[int(np.argmax(s))][2], view_directions(q_true)))
    assert np.median(errors) < 6.0, errors
    assert peak_match_score(rots[:3], fcc_reflections(), np.zeros((0, 2)), np.zeros(0), box=BOX,
                            pixel_size_A=PIX, diameter_A=DIAM).tolist() == [0, 0, 0]


def _matrix(v, psi):
    v = v / np.linalg.norm(v)
    t = np.array([1.0, 0, 0]) if abs(v[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = np.cross(v, t)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(v, e1)
    x = math.cos(psi) * e1 + math.sin(psi) * e2
    return np.stack([x, np.cross(v, x), v])


def _rotation_to(v, psi):
    """Quaternion whose R has third row v (view direction v) and in-plane angle psi."""
    m = _matrix(np.asarray(v, float), psi)
    w = math.sqrt(max(0.0, 1 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    if w < 1e-6:
        from scipy.spatial.transform import Rotation

        x, y, z, w = Rotation.from_matrix(m).as_quat()
        return quat_normalize(np.array([w, x, y, z]))
    return quat_normalize(np.array([w, (m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w),
                                    (m[1, 0] - m[0, 1]) / (4 * w)]))


def test_filter_follows_a_tumbling_particle_and_its_coverage():
    """A Brownian orientation trajectory; every 3rd frame shows its lattice peaks (predicted from
    the truth, as a noise-free detector would); the filter's views cover what the truth covers."""
    rng = np.random.default_rng(2)
    fps, d_r = 400.0, 2.0  # fast tumbling: the sphere is covered within the run
    q = quat_normalize(np.array([0.9, 0.1, -0.3, 0.2]))
    g = fcc_reflections()
    f = OrientationFilter(rot_diffusion_rad2_s=d_r, fps=fps, particles=1500, seed=3)
    cov_est, cov_true = Coverage(1000, 15.0), Coverage(1000, 15.0)
    errs = []
    for frame in range(1500):
        q = quat_normalize(quat_multiply(quat_from_rotvec(rng.normal(0, math.sqrt(2 * d_r / fps), 3)), q))
        if frame % 3:
            continue
        k = quat_to_matrix(q) @ g.T
        vis = np.exp(-k[2] ** 2 / (2 * (1 / (1.5 * DIAM)) ** 2)) > 0.5
        if not vis.any():
            continue
        peaks = (k[:2, vis] * BOX * PIX).T + rng.normal(0, 0.5, (int(vis.sum()), 2))
        rep = f.update(frame, lambda r: peak_match_score(r, g, peaks, np.ones(len(peaks)), box=BOX,
                                                           pixel_size_A=PIX, diameter_A=DIAM))
        errs.append(_angle_mod_cubic(view_directions(rep), view_directions(q)))
        cov_est.add(view_directions(rep))
        cov_true.add(view_directions(q))
    assert np.median(errs) < 8.0
    assert abs(cov_est.fraction - cov_true.fraction) <= 0.1, (cov_est.fraction, cov_true.fraction)
