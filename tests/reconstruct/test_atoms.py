"""Atoms from maps: every atom of a 2 nm FCC particle's low-passed potential, at sub-voxel accuracy,
with the threshold chosen from the data."""
import math

import numpy as np
from scipy.spatial import cKDTree

from btomo.kernels.crystal import fcc_cluster
from btomo.reconstruct.atoms import find_atoms, model_map, otsu_threshold
from btomo.reconstruct.evaluate import (is_centrosymmetric, match_atoms, recall_by_coordination,
                                       removed_sites_left_empty, superpose_atoms)


def _particle():
    atoms = fcc_cluster(2.08)
    return atoms - atoms.mean(0) + np.array([0.21, -0.17, 0.33])  # off the voxel grid


def test_otsu_splits_two_populations():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0, 0.1, 500), rng.normal(2, 0.1, 300)])
    assert 0.4 < otsu_threshold(v) < 1.6


def test_every_atom_of_a_clean_and_a_noisy_map_is_found():
    atoms = _particle()
    vol = model_map(atoms, 48, 0.716, 1.5)
    rng = np.random.default_rng(1)
    for noise, rmsd_max in ((0.0, 0.01), (0.5, 0.15)):
        v = vol + noise * vol.std() * rng.standard_normal(vol.shape)
        res = find_atoms(v, 0.716, lowpass_A=1.5, mask_radius_A=14)
        i, j = match_atoms(res.positions_A, atoms, 1.0)
        assert len(i) == len(atoms) == len(res.positions_A), (noise, len(i), len(res.positions_A))
        rmsd = np.sqrt(((res.positions_A[i] - atoms[j]) ** 2).sum(1).mean())
        assert rmsd < rmsd_max, (noise, rmsd)
        d, _ = cKDTree(res.positions_A).query(res.positions_A, k=2)
        assert d[:, 1].min() >= 2.2


def test_superposition_undoes_rotation_translation_and_inversion():
    atoms = _particle()
    assert is_centrosymmetric(atoms)
    asym = atoms[np.random.default_rng(2).random(len(atoms)) > 0.2]
    assert not is_centrosymmetric(asym)
    r = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]]) @ np.array([[1, 0, 0], [0, 0, -1], [0, 1.0, 0]])
    moved = -(asym @ r.T) + np.array([3.0, -2.0, 1.0])  # turned, inverted, moved
    score = superpose_atoms(moved, asym)
    assert score.matched == len(asym) and score.rmsd_A < 1e-6 and score.inverted
    # a wrong structure does not match
    score = superpose_atoms(np.random.default_rng(3).uniform(-10, 10, (len(asym), 3)), asym)
    assert score.recall < 0.5


def test_least_squares_positions_remove_the_pull_of_neighbours():
    """At 1.5 A the atoms' potentials overlap: peaks alone put surface atoms inside (the lattice
    reads small); the joint fit of the model's map puts them back."""
    atoms = _particle()
    vol = model_map(atoms, 48, 0.716, 1.5)
    peaks = find_atoms(vol, 0.716, lowpass_A=1.5, mask_radius_A=14, refine_iterations=0)
    fitted = find_atoms(vol, 0.716, lowpass_A=1.5, mask_radius_A=14)
    nn = []
    for res in (peaks, fitted):
        i, j = match_atoms(res.positions_A, atoms, 1.0)
        assert len(i) == len(atoms)
        rmsd = np.sqrt(((res.positions_A[i] - atoms[j]) ** 2).sum(1).mean())
        d, _ = cKDTree(res.positions_A).query(res.positions_A, k=2)
        nn.append((rmsd, np.mean(d[d[:, 1] < 3.0, 1])))
    assert nn[0][0] > 0.03 and nn[0][1] < 2.766  # the bias is there without the fit (0.05 A, -0.4 %)
    assert nn[1][0] < 0.005 and abs(nn[1][1] - 2.772) < 0.002


def test_removed_sites_left_empty_tells_the_found_shape_from_a_symmetric_or_wrong_one():
    """On a cubic shape with surface atoms taken away, recall and precision barely tell the true
    vacancies from wrong ones; the fraction of the true vacancies left empty does."""
    full = fcc_cluster(2.0, "truncated_octahedron")
    surface = np.flatnonzero(np.array([len(n) for n in cKDTree(full).query_ball_point(full, 3.0)]) < 13)
    rng = np.random.default_rng(5)
    gone, other = np.split(rng.choice(surface, 20, replace=False), [10])
    truth, removed = np.delete(full, gone, axis=0), full[gone]
    wrong = np.delete(full, other, axis=0)  # as many vacancies, elsewhere
    scores = {}
    for name, found in (("truth", truth), ("symmetric", full), ("wrong", wrong)):
        s = superpose_atoms(found, truth)
        assert s.recall > 0.9 and s.precision > 0.9, (name, s.as_dict())  # all three look alike here
        scores[name] = removed_sites_left_empty(s.aligned_A, removed)
    assert scores["truth"] == 1.0 and scores["symmetric"] == 0.0 and scores["wrong"] <= 0.5, scores
    assert math.isnan(removed_sites_left_empty(truth, np.zeros((0, 3))))
    assert removed_sites_left_empty(np.zeros((0, 3)), removed) == 1.0


def test_recall_by_coordination_says_a_shrunk_map_lost_its_edges_not_its_bulk():
    """A map that lost the particle's outer shell (as one from crops that attenuate the thin edge)
    has the bulk's recall and none of the corners'; every class of the full answer is recalled."""
    truth = fcc_cluster(2.0, "truncated_octahedron")
    cn = np.array([len(n) - 1 for n in cKDTree(truth).query_ball_point(truth, 3.3)])
    rng = np.random.default_rng(2)
    jittered = truth + rng.normal(0.0, 0.1, truth.shape)
    full = recall_by_coordination(jittered, truth)
    assert sum(v["atoms"] for v in full.values()) == len(truth)
    assert set(full) == set(np.unique(cn).tolist())
    assert all(v["recall"] == 1.0 for v in full.values()), full
    shrunk = jittered[np.linalg.norm(truth - truth.mean(0), axis=1) < 8.0]
    by = recall_by_coordination(shrunk, truth)
    assert by[12]["recall"] > 0.6, by
    assert by[min(by)]["recall"] == 0.0, by  # the corners are the outermost atoms
    assert by[12]["atoms"] == int((cn == 12).sum())
    assert recall_by_coordination(np.zeros((0, 3)), truth)[12]["recall"] == 0.0
