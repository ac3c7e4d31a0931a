"""Between consecutive structures: map alignment, atom correspondence, local correlation, etch rate."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from btomo.analysis.compare import (Correspondence, align_atoms, align_maps, etch_rate_atoms_per_s,
                                    local_correlation, transform_map)
from btomo.kernels.crystal import fcc_cluster
from btomo.kernels.superpose import signed_permutations
from btomo.reconstruct.atoms import model_map

VOXEL = 0.716
BOX = 44


@pytest.fixture(scope="module")
def particle():
    return fcc_cluster(1.6, "irregular", seed=5)


@pytest.mark.parametrize("mate", [0, 29])  # 0: the identity; 29: a rotoinversion (the other hand)
def test_map_alignment_recovers_a_known_motion(particle, mate):
    fixed = model_map(particle, BOX, VOXEL, 1.5)
    # the same particle seen in another reconstruction's frame: a lattice-equivalent axis
    # permutation (maybe with an inversion), a small rotation and a translation
    g = signed_permutations()[mate]
    small = Rotation.from_rotvec(np.radians([3.0, -4.0, 2.5])).as_matrix()
    a = small @ g
    t = np.array([1.3, -0.8, 0.45])
    moved_atoms = particle @ a.T + t
    moving = model_map(moved_atoms, BOX, VOXEL, 1.5)
    al = align_maps(fixed, moving, VOXEL)
    # the alignment must map the moving frame back: matrix = a^-1, translation = -a^-1 t
    err_deg = np.degrees(Rotation.from_matrix(al.matrix @ a).magnitude())
    assert al.inverted == (np.linalg.det(a) < 0)
    assert err_deg < 0.5
    assert np.abs(al.translation_A - (-np.linalg.inv(a) @ t)).max() < 0.1
    assert np.abs(al.apply_to_atoms(moved_atoms) - particle).max() < 0.1
    assert al.correlation > 0.99


def test_map_alignment_rejects_bad_maps():
    with pytest.raises(ValueError, match="same shape"):
        align_maps(np.zeros((8, 8, 8)), np.zeros((10, 10, 10)), 1.0)
    bad = np.zeros((8, 8, 8))
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        align_maps(bad, np.zeros((8, 8, 8)), 1.0)
    with pytest.raises(ValueError, match="cubic"):
        align_maps(np.zeros((8, 8)), np.zeros((8, 8)), 1.0)


def test_correspondence_recovers_planted_removals_and_displacements(particle):
    rng = np.random.default_rng(3)
    n = len(particle)
    gone = rng.choice(n, 12, replace=False)
    keep = np.setdiff1d(np.arange(n), gone)
    after = particle[keep].copy()
    moved = rng.choice(len(keep), 30, replace=False)
    shifts = rng.normal(0, 0.4, (30, 3))
    after[moved] += shifts
    new = np.array([[12.0, 0.0, 0.0], [0.0, -12.5, 1.0]])  # adsorbed far from any old site
    after = np.concatenate([after, new])
    perm = rng.permutation(len(after))
    after = after[perm]
    c = Correspondence(cutoff_A=2.0).compute(particle, after)
    assert np.array_equal(np.sort(c.removed), np.sort(gone))
    inv = np.argsort(perm)  # index in the shuffled array of each unshuffled row
    assert np.array_equal(np.sort(c.rearranged), np.sort(inv[[len(keep), len(keep) + 1]]))
    i, j = c.pairs
    assert len(i) == len(keep)
    # each pair is the planted one (after[perm[j]] came from particle[keep[perm[j]]]), with the
    # planted displacement
    assert np.array_equal(keep[perm[j]], i)
    expect = np.zeros((len(keep), 3))
    expect[moved] = shifts
    assert np.allclose(c.displacements_A, expect[perm[j]], atol=1e-12)
    s = c.summary()
    assert (s["persistent"], s["removed"], s["rearranged"]) == (len(keep), 12, 2)


def test_atom_alignment_then_correspondence(particle):
    rot = Rotation.random(random_state=2).as_matrix()
    after = particle[5:] @ rot.T + [4.0, 1.0, -2.0]
    sup = align_atoms(particle, after)
    assert sup.rmsd_A < 1e-6
    c = Correspondence().compute(particle, sup.aligned)
    assert np.array_equal(c.removed, np.arange(5)) and len(c.rearranged) == 0


def test_local_correlation_marks_where_atoms_left(particle):
    a = model_map(particle, BOX, VOXEL, 1.5)
    far = np.argsort(np.linalg.norm(particle, axis=1))[-6:]
    b = model_map(np.delete(particle, far, axis=0), BOX, VOXEL, 1.5)
    lcc = local_correlation(a, b, VOXEL, sigma_A=1.5)
    c = BOX // 2
    assert lcc[c, c, c] > 0.99  # the core is unchanged
    site = np.rint(particle[far[0]][::-1] / VOXEL).astype(int) + c
    assert lcc[tuple(site)] < 0.9
    same = local_correlation(a, a, VOXEL)
    assert np.all(same[a > 0.1 * a.max()] > 0.999)


def test_transform_map_moves_features_where_it_says():
    atom = np.array([[2.0, -1.0, 0.5]])
    vol = model_map(atom, 32, 0.5, 1.5)
    rot = Rotation.from_rotvec([0, 0, np.pi / 2]).as_matrix()
    moved = transform_map(vol, rot, [1.0, 0.0, 0.0], 0.5)
    expect = rot @ atom[0] + [1.0, 0.0, 0.0]
    peak = np.array(np.unravel_index(np.argmax(moved), moved.shape))[::-1]
    assert np.abs((peak - 16) * 0.5 - expect).max() <= 0.25 + 1e-9


def test_etch_rate():
    assert etch_rate_atoms_per_s(314, 264, (0.0, 5.12), (7.545, 13.455)) == pytest.approx(50 / 7.94, rel=1e-3)
    with pytest.raises(ValueError, match="after the first"):
        etch_rate_atoms_per_s(10, 9, (5.0, 6.0), (1.0, 2.0))
