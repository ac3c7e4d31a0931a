"""The orientation search: polar transforms agree with central sections, and projection matching
finds the orientations of exact projections of an asymmetric cluster (and not of a wrong model)."""
import numpy as np
import pytest

from btomo.kernels.rotation import quat_to_matrix, random_quaternion
from btomo.reconstruct.projection import Projector
from btomo.reconstruct.refine import phase_randomised, select_significant
from btomo.reconstruct.search import (OrientationSearch, PolarGrid, angle_between, direction_rotations,
                                      image_polar, image_polar_samples, reference_polar, rot_z, shift_trials)
from helpers import GAUSS_BOX, gaussian_atoms, gaussian_atoms_projections, gaussian_atoms_volume


def _cluster(seed=1):
    rng = np.random.default_rng(seed)
    atoms = gaussian_atoms(8.0)
    return atoms[rng.random(len(atoms)) > 0.25]  # a quarter of the sites empty: no symmetry left


def test_direction_rotations_put_the_direction_along_the_beam():
    d = np.random.default_rng(0).normal(size=(50, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = direction_rotations(d)
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    np.testing.assert_allclose(r[:, 2, :], d, atol=1e-12)  # R^T e_z = d
    np.testing.assert_allclose(angle_between(rot_z(np.full(3, 0.3)), rot_z(np.zeros(3))), np.degrees(0.3))


def test_image_harmonics_equal_the_maps_central_sections():
    atoms = _cluster()
    rots = quat_to_matrix(random_quaternion(np.random.default_rng(2), 6))
    grid = PolarGrid.for_band(GAUSS_BOX, 0.03, 0.45)
    qi = image_polar(gaussian_atoms_projections(atoms, rots), grid)
    qr = reference_polar(Projector(gaussian_atoms_volume(atoms)), rots, grid)
    for a, b in zip(qi, qr):
        assert np.vdot(a, b).real / np.linalg.norm(a) / np.linalg.norm(b) > 0.999
    # the transposed rotation (the other convention) does not match
    qt = reference_polar(Projector(gaussian_atoms_volume(atoms)), rots.transpose(0, 2, 1), grid)
    assert np.mean([np.vdot(a, b).real / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(qi, qt)]) < 0.99


def test_search_finds_the_orientations_of_exact_and_noisy_projections():
    atoms = _cluster()
    rng = np.random.default_rng(3)
    rots = quat_to_matrix(random_quaternion(rng, 60))
    imgs = gaussian_atoms_projections(atoms, rots)
    vol = gaussian_atoms_volume(atoms)
    s = OrientationSearch(GAUSS_BOX, 0.03, 0.45, directions=1000, local_deg=10)
    found = s.search(image_polar(imgs, s.grid), vol)
    err = angle_between(found.rotations, rots)
    assert np.median(err) < 2.0 and err.max() < 5.0, (np.median(err), err.max())
    # white noise of the signal's variance (0 dB): still within a few degrees
    noisy = imgs + imgs.std() * rng.standard_normal(imgs.shape)
    err = angle_between(s.search(image_polar(noisy, s.grid), vol).rotations, rots)
    assert np.median(err) < 4.0, np.median(err)
    # against a different cluster the orientations are lost
    other = gaussian_atoms_volume(_cluster(seed=9))
    err = angle_between(s.search(image_polar(imgs, s.grid), other).rotations, rots)
    assert np.median(err) > 20.0
    assert s.flops > 0


def test_shifted_images_are_matched_once_their_shifts_are_undone():
    atoms = _cluster()
    rng = np.random.default_rng(4)
    rots = quat_to_matrix(random_quaternion(rng, 20))
    imgs = gaussian_atoms_projections(atoms, rots)
    shifts = rng.uniform(-2, 2, (20, 2))
    f = np.fft.fftfreq(GAUSS_BOX)
    sx, sy = shifts[:, 0, None, None], shifts[:, 1, None, None]
    ph = np.exp(-2j * np.pi * (sx * f[None, None, :] + sy * f[None, :, None]))
    moved = np.fft.ifft2(np.fft.fft2(imgs) * ph).real
    grid = PolarGrid.for_band(GAUSS_BOX, 0.03, 0.45)
    a = image_polar(imgs, grid)
    b = image_polar(moved, grid, shifts=shifts)
    np.testing.assert_allclose(b, a, atol=1e-3 * np.abs(a).max())


def test_the_search_finds_shifts_and_orientations_together():
    """Images moved by whole and half voxels off centre: the trial grid finds each shift (to the
    half-voxel trial), and the orientations are as good as those of centred images."""
    atoms = _cluster()
    rng = np.random.default_rng(5)
    rots = quat_to_matrix(random_quaternion(rng, 30))
    imgs = gaussian_atoms_projections(atoms, rots)
    trials = shift_trials(0.5, 2)
    assert len(trials) == 25 and np.array_equal(trials[0], [0.0, 0.0])
    shifts = trials[rng.integers(0, 25, 30)]
    f = np.fft.fftfreq(GAUSS_BOX)
    sx, sy = shifts[:, 0, None, None], shifts[:, 1, None, None]
    ph = np.exp(-2j * np.pi * (sx * f[None, None, :] + sy * f[None, :, None]))
    moved = np.fft.ifft2(np.fft.fft2(imgs) * ph).real
    s = OrientationSearch(GAUSS_BOX, 0.03, 0.45, directions=1000, local_deg=10)
    vol = gaussian_atoms_volume(atoms)
    found = s.search(image_polar(moved, s.grid), vol, samples=image_polar_samples(moved, s.grid), trials=trials)
    assert np.mean(np.all(found.shift == shifts, axis=1)) >= 0.9, np.c_[found.shift, shifts]
    err = angle_between(found.rotations, rots)
    assert np.median(err) < 2.0 and np.mean(err < 5.0) >= 0.9, err
    # without the trials the moved images lose their orientations
    assert np.median(angle_between(s.search(image_polar(moved, s.grid), vol).rotations, rots)) > 2 * np.median(err)


def test_phase_randomised_images_keep_the_spectrum_and_lose_the_structure():
    """The null of the significance test: the images' Fourier amplitudes, and no match with the
    map they are projections of."""
    atoms = _cluster()
    imgs = gaussian_atoms_projections(atoms, quat_to_matrix(random_quaternion(np.random.default_rng(6), 20)))
    null = phase_randomised(imgs, np.ones(imgs.shape[1:]), np.random.default_rng(0))
    np.testing.assert_allclose(np.abs(np.fft.fft2(null)), np.abs(np.fft.fft2(imgs)), rtol=1e-3,
                               atol=1e-4 * np.abs(np.fft.fft2(imgs)).max())
    s = OrientationSearch(GAUSS_BOX, 0.03, 0.45, directions=300, local_deg=10)
    vol = gaussian_atoms_volume(atoms)
    real, fake = s.search(image_polar(imgs, s.grid), vol).score, s.search(image_polar(null, s.grid), vol).score
    assert real.min() > 0.9 and fake.max() < 0.5, (real.min(), fake.max())


def test_frames_pass_the_significance_test_by_the_null_quantile():
    null = np.linspace(0.0, 1.0, 101)  # 95th percentile 0.95
    keep, thr = select_significant(np.array([0.5, 0.96, 0.99, 0.2]), null, 0.05, 2)
    assert thr == pytest.approx(0.95) and keep.tolist() == [False, True, True, False]
    # fewer than min_frames pass: the best ones are taken
    keep, _ = select_significant(np.array([0.5, 0.96, 0.3, 0.2]), null, 0.05, 2)
    assert keep.tolist() == [True, True, False, False]
    # fpr 1 keeps every frame
    keep, thr = select_significant(np.array([0.1, 0.2]), null, 1.0, 2)
    assert keep.all() and thr == -np.inf


def test_search_reuses_a_references_sections_and_never_a_stale_one():
    """The significance test searches twice against one reference: the sections are computed once;
    a new reference (a new Projector) is never matched against the last one's sections."""
    atoms = _cluster()
    rng = np.random.default_rng(7)
    rots = quat_to_matrix(random_quaternion(rng, 12))
    q = image_polar(gaussian_atoms_projections(atoms, rots), PolarGrid.for_band(GAUSS_BOX, 0.03, 0.45))
    right, wrong = Projector(gaussian_atoms_volume(atoms)), Projector(gaussian_atoms_volume(_cluster(seed=9)))
    s = OrientationSearch(GAUSS_BOX, 0.03, 0.45, directions=300, local_deg=10)
    first = s.search(q, right)
    coarse = s._coarse
    again = s.search(q, right)
    assert s._coarse is coarse  # reused
    np.testing.assert_array_equal(again.rotations, first.rotations)
    after = s.search(q, wrong)
    fresh = OrientationSearch(GAUSS_BOX, 0.03, 0.45, directions=300, local_deg=10).search(q, wrong)
    np.testing.assert_array_equal(after.rotations, fresh.rotations)
    np.testing.assert_array_equal(after.score, fresh.score)
    assert np.median(angle_between(after.rotations, rots)) > 20.0


def test_the_ring_filter_compares_images_through_their_contrast_transfer():
    """Images through a transfer that flips the contrast of some rings (a CTF past its first zero)
    are matched once the reference's sections go through the same transfer, and worse without."""
    atoms = _cluster()
    rng = np.random.default_rng(6)
    rots = quat_to_matrix(random_quaternion(rng, 30))
    f = np.fft.fftfreq(GAUSS_BOX)
    k = np.hypot(f[:, None], f[None, :])

    def transfer(kk):
        return np.sin(2 * np.pi * (np.asarray(kk) / 0.2) ** 2)  # zeros at 0.2, 0.28, 0.35 cycles/voxel

    imgs = np.fft.ifft2(np.fft.fft2(np.fft.ifftshift(gaussian_atoms_projections(atoms, rots), axes=(1, 2)))
                        * transfer(k)).real
    imgs = np.fft.fftshift(imgs, axes=(1, 2))
    vol = gaussian_atoms_volume(atoms)
    with_ctf = OrientationSearch(GAUSS_BOX, 0.03, 0.45, directions=1000, ring_filter=transfer)
    found = with_ctf.search(image_polar(imgs, with_ctf.grid), vol)
    err = angle_between(found.rotations, rots)
    assert np.median(err) < 2.5 and found.score.mean() > 0.75, (np.median(err), found.score.mean())
    plain = OrientationSearch(GAUSS_BOX, 0.03, 0.45, directions=1000)
    lost = plain.search(image_polar(imgs, plain.grid), vol)
    assert lost.score.mean() < found.score.mean() - 0.3 and np.median(angle_between(lost.rotations, rots)) > 5.0
    with pytest.raises(ValueError, match="factor per ring"):
        OrientationSearch(GAUSS_BOX, 0.03, 0.45, directions=100, ring_filter=lambda kk: np.ones(3))


def test_the_mate_pass_moves_frames_onto_the_mate_that_matches():
    """Frames whose orientation is right modulo the cube but on a wrong mate (of an asymmetric
    cluster on a cubic lattice) are put on the right one by scoring every mate exactly."""
    from btomo.kernels.coverage import cubic_rotations
    from btomo.reconstruct.search import _ring_power

    atoms = _cluster()
    rng = np.random.default_rng(7)
    rots = quat_to_matrix(random_quaternion(rng, 24))
    imgs = gaussian_atoms_projections(atoms, rots)
    mates = cubic_rotations()
    wrong = rots @ mates[rng.permutation(24)]  # every frame on some mate, most of them wrong
    s = OrientationSearch(GAUSS_BOX, 0.03, 0.45, directions=200)
    q = image_polar(imgs, s.grid)
    white = (1.0 / np.sqrt(_ring_power(q, np))).astype(np.float32)
    proj = Projector(gaussian_atoms_volume(atoms))
    assert np.median(angle_between(wrong, rots)) > 60
    rot, _, score, _, cand = s._mates(q, None, None, proj, white, wrong, mates, candidates=True)
    err = angle_between(rot, rots)
    assert np.max(err) < 1.0 and score.min() > 0.95, (err, score)
    # the same pass scores the best orientation's 48 candidates (24 mates, each also turned by 180
    # deg in the image plane): the best orientation itself (label 0) scores as the search says
    # (less what reading between angle samples loses at a sharp peak) and above every other candidate
    assert cand.shape == (24, 48)
    assert np.allclose(cand[:, 0], score, atol=0.03), (cand[:, 0], score)  # linear between angle samples
    assert np.all(np.argmax(cand, axis=1) == 0) and np.median(cand[:, 1:], axis=1).max() < 0.8, cand
