"""Mates from the continuity of the rotation (btomo.reconstruct.continuity) on synthetic windows:
a Brownian rotation whose found orientations are each a random one of their 48 candidates."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from btomo.reconstruct.continuity import (LABELS, apply_gauge, candidates, choose_gauges, compose, continuity, inverse,
                                          link, synchronise)

N = 600


def _window(step_deg=3.0, noise_deg=2.0, seed=0):
    """A rotation turning by ``step_deg`` per axis per frame; each found orientation is the truth
    with ``noise_deg`` of error, at a random one of its 48 candidates. Returns the truth, the found
    orientations and the label ``own`` with ``candidates(found)[own] ~ truth``."""
    rng = np.random.default_rng(seed)
    steps = Rotation.from_rotvec(np.radians(step_deg) * rng.standard_normal((N, 3)))
    true = [Rotation.random(random_state=seed)]
    for s in steps[1:]:
        true.append(s * true[-1])
    true = Rotation.concatenate(true).as_matrix()
    noisy = true @ Rotation.from_rotvec(np.radians(noise_deg) * rng.standard_normal((N, 3))).as_matrix()
    shown = rng.integers(0, LABELS, N)
    found = candidates(noisy)[np.arange(N), shown]
    # the candidate of `found` that is the truth: found = C(noisy)_shown, so C(found)_own = noisy
    cand = candidates(found)
    own = np.argmax(np.einsum("nlab,nab->nl", cand, noisy), axis=1)
    return true, found, own


def test_the_label_algebra_matches_the_candidates():
    rng = np.random.default_rng(1)
    r = Rotation.random(5, random_state=1).as_matrix()
    for a, b in rng.integers(0, LABELS, (20, 2)):
        via = candidates(candidates(r)[:, a])[:, b]
        assert np.allclose(via, candidates(r)[:, compose(a, b)])
        assert np.allclose(via, candidates(r)[:, apply_gauge(b, a)])
        assert compose(inverse(a), compose(a, b)) == b


def test_links_recover_the_relative_mates_of_consecutive_frames():
    _, found, own = _window()
    frames = np.arange(N)
    edges = link(found, frames, neighbours=1)
    assert len(edges) > 0.9 * (N - 1)
    right = [own[j] == compose(rel, own[i]) for i, j, rel, _ in edges]
    assert np.mean(right) > 0.99


def test_synchronised_frames_share_one_mate_up_to_the_gauge_of_each_run():
    _, found, own = _window(seed=2)
    frames = np.arange(N) * 2  # every other acquired frame a lattice frame
    sync = synchronise(found, frames)
    assert sync.agree > 0.95
    assert sync.sizes().max() > 0.9 * N
    # within a run of 60 frames, label and truth differ by one gauge (where the beam passes a
    # 2-fold axis of the lattice the half turn and a mate coincide, and a Brownian path cannot
    # say which continues: the gauge may change there, so it is chosen per run)
    group = _runs(sync.segment, frames, 60)
    same = 0
    for r in np.unique(group[group >= 0]):
        idx = np.flatnonzero(group == r)
        gauges = [next(h for h in range(LABELS) if apply_gauge(h, sync.label[i]) == own[i]) for i in idx]
        same += np.bincount(gauges).max()
    assert same >= 0.95 * (group >= 0).sum(), same


def _runs(segment, frames, length):
    """Each segment cut, in time order, into runs of at most ``length`` frames."""
    out = np.full(len(segment), -1)
    count = 0
    for s in np.unique(segment[segment >= 0]):
        idx = np.flatnonzero(segment == s)
        idx = idx[np.argsort(frames[idx])]
        for part in np.array_split(idx, int(np.ceil(len(idx) / length))):
            out[part] = count
            count += 1
    return out


def test_frames_out_of_order_and_without_continuity():
    _, found, own = _window(seed=3)
    perm = np.random.default_rng(0).permutation(N)  # the order of the arrays does not matter, the indices do
    sync = synchronise(found[perm], np.arange(N)[perm])
    assert sync.sizes().max() > 0.9 * N
    # independent orientations (no continuity): nothing is chained
    rand = Rotation.random(N, random_state=4).as_matrix()
    assert continuity(rand, np.arange(N)) < 0.06 and continuity(found, np.arange(N)) > 0.8
    none = synchronise(rand, np.arange(N))
    assert np.all(none.segment == -1) and np.all(none.label == -1)
    with pytest.raises(ValueError, match="orientations"):
        link(rand[:10], np.arange(11))


def test_summed_scores_pick_the_gauge_that_no_single_frame_tells():
    rng = np.random.default_rng(5)
    _, found, own = _window(seed=6)
    sync = synchronise(found, np.arange(N))
    # groups of frames that share one mate (the segments, split where the truth's gauge changes)
    gauge = np.array([next(h for h in range(LABELS) if apply_gauge(h, sync.label[i]) == own[i]) if sync.label[i] >= 0
                      else -1 for i in range(N)])
    group = np.where(sync.segment >= 0, sync.segment * LABELS + gauge, -1)
    # each frame's score at its true candidate is 0.02 above the others, under noise of 0.03
    scores = 0.2 + 0.03 * rng.standard_normal((N, LABELS))
    scores[np.arange(N), own] += 0.02
    assert np.mean(scores.argmax(axis=1) == own) < 0.3  # one frame alone: mostly wrong
    final = choose_gauges(sync.label, group, scores)
    on = sync.segment >= 0
    big = np.isin(group, [g for g in np.unique(group[on]) if (group == g).sum() >= 30])
    assert big.sum() > 0.8 * N
    assert np.mean(final[big] == own[big]) > 0.97
    # frames in no segment keep their own best orientation
    assert np.all(final[~on] == 0)
    with pytest.raises(ValueError, match="scores"):
        choose_gauges(sync.label, sync.segment, scores[:, :24])


def test_a_frame_moved_onto_a_mate_keeps_its_lattice_in_place():
    """The map's centre is the particle's centroid, which need not be a centre of its lattice's
    symmetry. A frame moved onto one of its 48 candidates, at ``mate_shift``'s shift, projects
    every lattice site exactly where it projected them before (so its fringes stay in phase with
    the map); kept at its old shift, the sites move. ``lattice_symmetry`` finds that centre (a
    site or an octahedral hole) from the atoms, and the lattice's rotations about it."""
    from scipy.spatial import cKDTree

    from btomo.kernels.crystal import fcc_cluster, fcc_points
    from btomo.reconstruct.refine import lattice_symmetry, mate_shift

    turn = Rotation.random(random_state=3).as_matrix()  # the lattice's axes in the map
    atoms = fcc_cluster(2.0, "irregular", seed=1) @ turn.T  # centroid at the map's centre
    mates, centre = lattice_symmetry(atoms, fallback=(None, None))
    lattice = centre + fcc_points(14.0) @ turn.T  # lattice sites about the found centre
    assert np.max(cKDTree(lattice).query(atoms)[0]) < 1e-6  # the atoms are on it: a centre of the lattice
    assert 0.5 < np.linalg.norm(centre) < 1.8  # and not the map's centre (this crystal's centroid is off)
    for m in mates:  # each mate maps the lattice onto itself about that centre
        assert np.max(cKDTree(lattice).query(centre + (lattice[:200] - centre) @ m.T)[0]) < 1e-6
    rng = np.random.default_rng(0)
    rot = Rotation.random(5, random_state=4).as_matrix()
    shift = rng.uniform(-1, 1, (5, 2))
    core = lattice[np.linalg.norm(lattice - centre, axis=1) < 6.0]
    for label in (1, 7, 24, 40):
        moved = candidates(rot, mates)[:, label]
        new = mate_shift(rot, shift, moved, centre)
        for i in range(5):
            before = cKDTree(lattice @ rot[i].T[:, :2] + shift[i])  # sites (x, y) as the frame showed them
            d_new = before.query(core @ moved[i].T[:, :2] + new[i])[0]
            d_old = before.query(core @ moved[i].T[:, :2] + shift[i])[0]
            assert np.max(d_new) < 1e-6, (label, i, d_new.max())
            assert np.max(d_old) > 0.05, (label, i)
