"""Orientation scoring against truth: the fixed rotation between frames, the lattice's half turn,
and which mate each frame is on (btomo.reconstruct.evaluate)."""
import numpy as np
from scipy.spatial.transform import Rotation

from btomo.kernels.coverage import cubic_rotations
from btomo.reconstruct.evaluate import mate_labels, orientation_errors
from btomo.reconstruct.search import rot_z

N = 400


def _frames(noise_deg: float, seed: int = 0):
    """True orientations, a fixed frame rotation ``g`` and per-frame errors of ``noise_deg`` per axis:
    ``rec_i = true_i E_i g^T`` (so ``rec_i g = true_i E_i``). As in a reconstruction from the
    axis-aligned initial model, ``g`` is a rotation of the cube (here times 0.7 deg), so the two
    frames share the lattice's axes."""
    rng = np.random.default_rng(seed)
    true = Rotation.random(N, random_state=seed).as_matrix()
    g = cubic_rotations()[seed % 24] @ Rotation.from_rotvec(np.radians([0.4, -0.4, 0.4])).as_matrix()
    e = Rotation.from_rotvec(np.radians(noise_deg) * rng.standard_normal((N, 3))).as_matrix()
    size = np.degrees(Rotation.from_matrix(e).magnitude())
    return rng, true, g, true @ e @ g.T, size


def test_the_half_turn_a_lattice_cannot_show_is_not_an_orientation_error():
    rng, true, g, rec, size = _frames(2.0)
    mates = cubic_rotations()[rng.integers(0, 24, N)]
    turned = rng.random(N) < 0.5
    rec = rec @ (g @ mates @ g.T)  # a random cube mate each (rec_i g = true_i E_i S_k)
    rec[turned] = rot_z(np.full(int(turned.sum()), np.pi)) @ rec[turned]
    lattice, _, _ = orientation_errors(rec, true, centrosymmetric=True)
    assert abs(np.median(lattice) - np.median(size)) < 0.3, (np.median(lattice), np.median(size))
    shape, _, _ = orientation_errors(rec, true, centrosymmetric=False)
    assert np.percentile(shape, 75) > 20.0, np.percentile(shape, 75)  # the turned half counts as far off


def test_the_fixed_rotation_is_fitted_to_many_frames_not_taken_from_one():
    rng, true, g, rec, size = _frames(6.0, seed=3)
    bad = rng.random(N) < 0.3
    rec[bad] = Rotation.random(int(bad.sum()), random_state=9).as_matrix()
    err, g_est, inverted = orientation_errors(rec, true, candidates=8)
    assert not inverted
    # the good frames' errors are their own, not theirs plus the error of one chosen frame
    assert abs(np.median(err[~bad]) - np.median(size[~bad])) < 0.4, (np.median(err[~bad]), np.median(size[~bad]))
    # g itself is found to within 2 deg (modulo the cube)
    off = [np.degrees(np.arccos(np.clip((np.trace(g_est @ s @ g.T) - 1) / 2, -1, 1))) for s in cubic_rotations()]
    assert min(off) < 2.0, min(off)


def test_mate_labels_say_how_many_frames_share_one_mate():
    rng, true, g, rec, _ = _frames(2.0, seed=5)
    sym = cubic_rotations()
    one = rng.random(N) < 0.6  # these frames on one mate, the others each on a random one
    k = np.where(one, 7, rng.integers(0, 24, N))
    rec = rec @ g @ sym[k].transpose(0, 2, 1) @ g.T  # rec_i g = true_i E_i S_k^T
    _, g_est, inverted = orientation_errors(rec, true, centrosymmetric=True)
    labels = mate_labels(rec, true, g_est, inverted)
    assert labels.shape == (N,) and labels.min() >= 0 and labels.max() < 48
    assert len(set(labels[one])) == 1
    top = np.bincount(labels, minlength=48).max() / N
    assert 0.6 <= top <= 0.66, top
