"""FCC clusters: sizes, shells and coordination."""
import numpy as np
import pytest
from scipy.spatial.distance import pdist

from btomo.kernels.crystal import (
    coordination_numbers,
    d_spacing,
    equivalent_diameter_A,
    fcc_cluster,
    plane_normals,
    zone_axes,
)


def test_nearest_neighbour_distance_and_shells():
    atoms = fcc_cluster(2.0)
    d = pdist(atoms)
    assert d.min() == pytest.approx(3.92 / np.sqrt(2), abs=1e-9)
    # the FCC shells of reference.md: 2.772, 3.920, 4.801, 5.544 A
    for r in (2.772, 3.920, 4.801, 5.544):
        assert np.any(np.abs(d - r) < 2e-3)


@pytest.mark.parametrize("shape", ["sphere", "truncated_octahedron"])
@pytest.mark.parametrize("diameter", [1.0, 2.0, 3.0])
def test_cluster_size_matches_diameter(shape, diameter):
    atoms = fcc_cluster(diameter, shape)
    assert np.allclose(atoms.mean(axis=0), 0, atol=1e-9)
    # equal-volume diameter within 10 % (20 % at 1 nm): the lattice makes the count a step function
    assert equivalent_diameter_A(len(atoms)) / 10 == pytest.approx(diameter, rel=0.2 if diameter <= 1 else 0.1)


def test_two_nm_sphere_is_near_the_paper_particle():
    # the paper's structure I: 314 atoms (equal-volume diameter 2.08 nm; 1.97 nm measured)
    assert 290 <= len(fcc_cluster(2.08)) <= 340


def test_truncated_octahedron_has_only_low_index_facets():
    atoms = fcc_cluster(2.0, "truncated_octahedron")
    cn = coordination_numbers(atoms)
    # {111} facet atoms have 9 neighbours, {100} facet atoms 8, no atom of a perfect polyhedron
    # below 5 (vertices); the bulk is 12
    assert cn.max() == 12 and cn.min() >= 5


def test_coordination_in_the_bulk_is_twelve():
    atoms = fcc_cluster(2.5)
    cn = coordination_numbers(atoms)
    inner = np.linalg.norm(atoms, axis=1) < 6.0
    assert np.all(cn[inner] == 12)


def test_families_and_spacings():
    assert len(plane_normals((1, 1, 1))) == 4
    assert len(plane_normals((2, 0, 0))) == 3
    assert len(plane_normals((2, 2, 0))) == 6
    assert len(zone_axes((1, 1, 0))) == 6
    assert d_spacing((1, 1, 1)) == pytest.approx(2.263, abs=1e-3)
    assert d_spacing((2, 0, 0)) == pytest.approx(1.960, abs=1e-3)
    assert d_spacing((2, 2, 0)) == pytest.approx(1.386, abs=1e-3)


def test_bad_shape_and_size_are_rejected():
    with pytest.raises(ValueError, match="expected shape"):
        fcc_cluster(2.0, "cube")
    with pytest.raises(ValueError, match="positive diameter"):
        fcc_cluster(-1.0)


def test_irregular_crystal_is_lopsided_and_has_no_cubic_symmetry():
    from btomo.kernels.crystal import _has_cubic_symmetry

    for seed in range(6):
        atoms = fcc_cluster(1.6, "irregular", seed=seed)
        assert 0.8 * 142 < len(atoms) < 1.25 * 142  # about the equal-volume count of a 1.6 nm sphere (142)
        assert not _has_cubic_symmetry(atoms)
        axes = np.sqrt(np.linalg.eigvalsh(np.cov(atoms.T)))
        assert axes[-1] / axes[0] > 1.05  # not round
    assert np.array_equal(fcc_cluster(1.6, "irregular", seed=1), fcc_cluster(1.6, "irregular", seed=1))
    assert not np.array_equal(fcc_cluster(1.6, "irregular", seed=1), fcc_cluster(1.6, "irregular", seed=2))
    assert _has_cubic_symmetry(fcc_cluster(1.6, "truncated_octahedron"))


def test_projected_diameter_of_known_shapes():
    from btomo.kernels.crystal import PT_METALLIC_RADIUS_A as r
    from btomo.kernels.crystal import projected_diameter_A

    # one atom: a disc of the metallic radius
    assert projected_diameter_A(np.zeros((1, 2))) == pytest.approx(2 * r)
    # a 10 A square of centres: area 100 + 40 r + pi r^2 as a circle
    sq = np.array([[0, 0], [10, 0], [10, 10], [0, 10], [5, 5]], dtype=float)
    assert projected_diameter_A(sq) == pytest.approx(2 * np.sqrt((100 + 40 * r + np.pi * r * r) / np.pi))


def test_sphere_of_a_projected_diameter_has_that_diameter_and_fewer_atoms_than_a_centre_cut():
    """The initial model's sphere: a measured (projected) diameter reaches one atomic radius past
    the outer centres, so the sphere that shows it is smaller than one cut at half of it."""
    from btomo.kernels.crystal import fcc_sphere_of_projected_diameter, mean_projected_diameter_A

    counts = []
    for d in (15.0, 22.4, 30.0):
        atoms = fcc_sphere_of_projected_diameter(d)
        assert abs(mean_projected_diameter_A(atoms) - d) < 0.6, d
        assert np.abs(atoms.mean(axis=0)).max() < 1e-9
        assert np.linalg.norm(atoms, axis=1).max() <= d / 2  # centres inside the measured size
        counts.append(len(atoms))
    assert counts == sorted(counts)
    # 22.4 A measured on a 302-atom crystal: the centre cut gave ~390 atoms, this ~320
    assert 280 <= counts[1] <= 340 < len(fcc_cluster(2.24, "sphere"))
    with pytest.raises(ValueError, match="positive projected diameter"):
        fcc_sphere_of_projected_diameter(float("nan"))
