"""Lattice occupancy by marginal likelihood over the cube's mates: from the cube-symmetrised shape
and orientations known only modulo the cube, it recovers an irregular crystal that no single
frame's mate identifies."""
import numpy as np
import pytest

from btomo.kernels.coverage import cubic_rotations
from btomo.kernels.crystal import fcc_cluster
from btomo.kernels.rotation import quat_to_matrix, random_quaternion
from btomo.reconstruct.atoms import model_map
from btomo.reconstruct.occupancy import lattice_candidates, lattice_occupancy
from btomo.reconstruct.projection import Projector

BOX, VOXEL, LOWPASS = 40, 0.716, 1.5
BAND = dict(k_min=VOXEL / 10.0, k_max=min(0.5, VOXEL / LOWPASS))


def _crystal():
    atoms = fcc_cluster(1.5, "irregular", seed=4)
    return atoms - atoms[np.argmin(np.linalg.norm(atoms, axis=1))]  # a lattice site at the origin


def _frames(atoms, n, noise, seed):
    """Projections of ``atoms`` at random orientations, with white noise ``noise`` x their RMS, and
    the orientations as a search against a cubic model would give them: each turned by a random
    one of the cube's 24 rotations (the frame's mate is unknown)."""
    rng = np.random.default_rng(seed)
    true = quat_to_matrix(random_quaternion(rng, n))
    imgs = Projector(model_map(atoms, BOX, VOXEL, LOWPASS)).project(true)
    imgs = imgs + noise * imgs.std() * rng.standard_normal(imgs.shape)
    cube = cubic_rotations()
    return imgs.astype(np.float32), true @ cube[rng.integers(0, 24, n)]


def _symmetrised(atoms):
    """The cube-symmetrised crystal: the lattice sites that at least half of the 24 mates occupy."""
    sites, centre, cube, perm = lattice_candidates(atoms, 1.0, 50.0)
    occ = np.zeros(len(sites), bool)
    occ[[int(np.argmin(np.linalg.norm(sites - a, axis=1))) for a in atoms]] = True
    return sites[occ[perm].mean(axis=0) >= 0.5]


def _best_overlap(found, atoms):
    """Recall and precision of ``found`` against ``atoms`` under the best of the 24 cube rotations
    (a match: within 0.5 A)."""
    best = (0.0, 0.0)
    for c in cubic_rotations():
        d = np.linalg.norm((found @ c.T)[:, None] - atoms[None], axis=-1)
        m = int((d.min(axis=0) < 0.5).sum())
        best = max(best, (m / len(atoms), m / len(found)))
    return best


def test_marginal_likelihood_over_mates_recovers_the_crystal_from_its_symmetrised_shape():
    atoms = _crystal()
    start = _symmetrised(atoms)
    r0, p0 = _best_overlap(start, atoms)
    assert min(r0, p0) < 0.9, "the test crystal must not be nearly cubic"
    imgs, rots = _frames(atoms, 300, noise=3.0, seed=5)
    res = lattice_occupancy(imgs, rots, np.zeros((len(imgs), 2)), start, VOXEL, max_radius_A=13.0, **BAND)
    assert res.changed and res.site_snr > 0.1, res
    recall, precision = _best_overlap(res.positions_A, atoms)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision, r0, p0, res)
    assert res.mate_certainty > 0.5, res  # most frames' mates are now known


def test_without_signal_the_atoms_are_kept_and_the_reason_given():
    atoms = _crystal()
    start = _symmetrised(atoms)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((100, BOX, BOX)).astype(np.float32)
    rots = quat_to_matrix(random_quaternion(rng, 100))
    res = lattice_occupancy(noise, rots, np.zeros((100, 2)), start, VOXEL, max_radius_A=13.0, **BAND)
    assert not res.changed and "signal-to-noise" in res.reason
    np.testing.assert_array_equal(res.positions_A, start)
    few = lattice_occupancy(noise, rots, np.zeros((100, 2)), start[:5], VOXEL, max_radius_A=13.0, **BAND)
    assert not few.changed and "too few" in few.reason
    with pytest.raises(ValueError, match=r"expected images .* got \(100, 40, 40\), \(99, 3, 3\)"):
        lattice_occupancy(noise, rots[:99], np.zeros((100, 2)), start, VOXEL, max_radius_A=13.0, **BAND)


def test_the_mates_of_a_cubic_crystal_are_all_equally_likely():
    """A cube-symmetric crystal stays as it is: no mate is preferred, nothing is added."""
    atoms = fcc_cluster(1.5, "sphere")
    atoms = atoms - atoms[np.argmin(np.linalg.norm(atoms, axis=1))]
    imgs, rots = _frames(atoms, 150, noise=3.0, seed=2)
    res = lattice_occupancy(imgs, rots, np.zeros((len(imgs), 2)), atoms, VOXEL, max_radius_A=13.0, **BAND)
    recall, precision = _best_overlap(res.positions_A, atoms)
    assert recall >= 0.97 and precision >= 0.97, (recall, precision, res)


def test_the_refinement_loop_takes_the_occupancy_as_its_next_reference(caplog):
    """``occupancy_rounds`` wires the stage into the loop: after round 1 the reference is the
    occupancy model, logged, and the loop goes on to a map and atoms."""
    import logging

    from btomo.reconstruct.config import ReconstructConfig
    from btomo.reconstruct.preprocess import Prepared
    from btomo.reconstruct.refine import reconstruct_images

    atoms = _crystal()
    imgs, _ = _frames(atoms - atoms.mean(axis=0), 120, noise=1.0, seed=7)
    prep = Prepared(imgs, VOXEL, 15.0, "window", 1, 13.0, np.ones(len(imgs), bool))
    cfg = ReconstructConfig(rounds=2, occupancy_rounds=1, directions=300, null_images=20, shift_px=1.0)
    with caplog.at_level(logging.INFO, logger="btomo.reconstruct"):
        res = reconstruct_images(prep, cfg)
    assert "occupancy" in res.seconds and len(res.rounds) == 2
    assert any("lattice occupancy:" in r.getMessage() for r in caplog.records)
    assert len(res.atoms.positions_A) > 0.5 * len(atoms)
