"""Per-structure analysis against analytic reference values (../shared/reference.md) and freud."""
import math

import numpy as np
import pytest
from ase.cluster import Icosahedron, Octahedron
from scipy.special import sph_harm_y
from scipy.spatial.transform import Rotation

from btomo.analysis.structure import (BondOrder, LocalGeometry, RadialDistribution, cube_symmetric_fraction,
                                     fit_fcc_lattice)
from btomo.kernels.crystal import fcc_cluster, fcc_points
from btomo.kernels.harmonics import spherical_harmonics, wigner_3j


def _centre_index(p):
    return int(np.argmin(np.linalg.norm(p - p.mean(axis=0), axis=1)))


def _hcp(n=4, a=2.772):
    """An ideal HCP block (c/a = sqrt(8/3)) with nearest neighbours at ``a``."""
    c = a * math.sqrt(8.0 / 3.0)
    pts = []
    for i in range(-n, n + 1):
        for j in range(-n, n + 1):
            for k in range(-n, n + 1):
                base = np.array([i + 0.5 * j, j * math.sqrt(3) / 2, 0.0]) * a
                pts.append(base + [0, 0, 2 * k * c / 2])
                pts.append(base + np.array([0.5 * a, a / (2 * math.sqrt(3)), c / 2]) + [0, 0, 2 * k * c / 2])
    return np.array(pts)


def _bcc(n=4, a=3.0):
    g = np.arange(-n, n + 1)
    cube = np.array(np.meshgrid(g, g, g, indexing="ij")).reshape(3, -1).T * a
    return np.concatenate([cube, cube + a / 2])


def test_harmonics_match_scipy_and_3j_match_sympy():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(40, 3))
    v[0] = [0, 0, 1]  # the poles
    v[1] = [0, 0, -3]
    r = np.linalg.norm(v, axis=1)
    theta, phi = np.arccos(v[:, 2] / r), np.arctan2(v[:, 1], v[:, 0])
    for l in (0, 1, 4, 6, 10):  # noqa: E741
        ref = np.stack([sph_harm_y(l, m, theta, phi) for m in range(-l, l + 1)], axis=1)
        assert np.abs(spherical_harmonics(l, v) - ref).max() < 1e-12
    from sympy.physics.wigner import wigner_3j as sympy_3j

    for args in [(6, 6, 6, 2, -3, 1), (4, 4, 4, 0, 0, 0), (6, 6, 6, -6, 0, 6), (4, 4, 4, 1, 1, -2), (6, 6, 6, 1, 1, 1)]:
        assert wigner_3j(*args) == pytest.approx(float(sympy_3j(*args)), abs=1e-14)


@pytest.mark.parametrize("name, points, ref", [
    ("FCC", fcc_points(12.0), (0.19094, 0.57452, -0.15932, -0.01316)),
    ("HCP", _hcp(), (0.09722, 0.48476, 0.13410, -0.01244)),
    ("BCC, 14 neighbours", _bcc(), (0.03637, 0.51069, 0.15932, 0.01316)),
])
def test_reference_values_of_perfect_lattices(name, points, ref):
    bo = BondOrder(ls=(4, 6)).compute(points)
    c = _centre_index(points)
    assert bo.cn[c] == (14 if name.startswith("BCC") else 12)
    got = (bo.ql(4)[c], bo.ql(6)[c], bo.wl(4)[c], bo.wl(6)[c])
    assert got == pytest.approx(ref, abs=1e-5), name
    assert bo.ql(6, coarse=False)[c] == pytest.approx(ref[1], abs=1e-5)


def test_icosahedral_centre_and_pt309_classification():
    ico = Icosahedron("Pt", 5, latticeconstant=3.92).positions
    assert len(ico) == 309
    bo = BondOrder().compute(ico)
    values, counts = np.unique(bo.cn, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {6: 12, 8: 90, 9: 60, 12: 147}
    assert int(bo.crystalline.sum()) == 110
    assert bo.crystalline_fraction == pytest.approx(110 / 309)
    c = _centre_index(ico)
    assert bo.ql(4, coarse=False)[c] == pytest.approx(0.0, abs=1e-10)
    assert bo.ql(6, coarse=False)[c] == pytest.approx(0.66332, abs=1e-5)
    assert bo.wl(6, coarse=False)[c] == pytest.approx(-0.16975, abs=1e-5)
    # the icosahedral invariant survives coarse-graining (the neighbours' average is icosahedral too)
    assert bo.wl(6)[c] == pytest.approx(-0.16975, abs=1e-5)


def test_truncated_octahedron_is_fully_crystalline():
    to = Octahedron("Pt", 8, cutoff=2, latticeconstant=3.92).positions
    assert len(to) == 314
    bo = BondOrder().compute(to)
    assert bo.crystalline.all()
    assert np.all(bo.s6 > 0.8)


def test_invariants_do_not_depend_on_orientation_or_order():
    p = fcc_cluster(1.6, "irregular", seed=2)
    rng = np.random.default_rng(1)
    p = p + rng.normal(0, 0.15, p.shape)
    a = BondOrder().compute(p)
    perm = rng.permutation(len(p))
    rot = Rotation.random(random_state=4).as_matrix()
    b = BondOrder().compute(p[perm] @ rot.T + [5.0, -2.0, 1.0])
    for l in (4, 6):  # noqa: E741
        assert np.allclose(a.ql(l)[perm], b.ql(l), atol=1e-10)
    assert np.allclose(a.wl(6)[perm], b.wl(6), atol=1e-10)
    assert np.array_equal(a.crystalline[perm], b.crystalline)


def _freud(pos, l, *, average, wl=False):  # noqa: E741
    freud = pytest.importorskip("freud")
    box = freud.box.Box.cube(2 * (float(np.ptp(pos, axis=0).max()) + 20.0))  # padded: no periodic image in reach
    st = freud.order.Steinhardt(l, average=average, wl=wl, wl_normalize=True)
    st.compute((box, pos.astype(np.float32)), neighbors={"r_max": 3.41, "exclude_ii": True})
    return np.asarray(st.particle_order, dtype=np.float64)


def _freud_crystalline(pos):
    freud = pytest.importorskip("freud")
    box = freud.box.Box.cube(2 * (float(np.ptp(pos, axis=0).max()) + 20.0))
    sl = freud.order.SolidLiquid(l=6, q_threshold=0.8, solid_threshold=1, normalize_q=True)
    sl.compute((box, pos.astype(np.float32)), neighbors={"r_max": 3.41, "exclude_ii": True})
    nl = sl.nlist
    cn = np.bincount(nl.query_point_indices, minlength=len(pos))
    # freud's ql_ij per bond (its own neighbour list); a bond is crystalline above 0.8
    xb = np.bincount(nl.query_point_indices, weights=np.asarray(sl.ql_ij) > 0.8, minlength=len(pos))
    return cn, xb, (xb > cn / 2) & (cn > 0), nl, np.asarray(sl.ql_ij)


def _disordered(seed):
    """A crystalline core grown by 80 randomly placed atoms, each 2.3-3.3 A from its nearest."""
    rng = np.random.default_rng(seed)
    core = fcc_cluster(1.4)
    pts = list(core)
    while len(pts) < len(core) + 80:
        v = rng.normal(size=3)
        cand = v / np.linalg.norm(v) * rng.uniform(6.0, 11.0)
        if 2.3 < np.min(np.linalg.norm(np.array(pts) - cand, axis=1)) < 3.3:
            pts.append(cand)
    return np.array(pts)


@pytest.mark.parametrize("case", ["perfect", "thermal 0.1", "thermal 0.2", "thermal 0.3", "partly disordered"])
def test_agreement_with_freud(case):
    rng = np.random.default_rng(7)
    if case == "perfect":
        pos = fcc_cluster(2.0)
    elif case.startswith("thermal"):
        base = fcc_cluster(2.0, "truncated_octahedron")
        pos = base + rng.normal(0.0, float(case.split()[1]), base.shape)
    else:
        pos = _disordered(3)
    bo = BondOrder().compute(pos)
    for l in (4, 6):  # noqa: E741
        assert np.abs(bo.ql(l) - _freud(pos, l, average=True)).max() < 1e-4, (case, l)
        assert np.abs(bo.ql(l, coarse=False) - _freud(pos, l, average=False)).max() < 1e-4, (case, l)
    assert np.abs(bo.wl(6) - _freud(pos, 6, average=True, wl=True)).max() < 1e-4, case
    cn, xb, crystalline, nl, qlij = _freud_crystalline(pos)
    assert np.array_equal(cn, bo.cn)
    # freud works in float32: a bond within 1e-4 of the threshold may fall either way
    near = np.abs(qlij - 0.8) < 1e-4
    sure = np.ones(len(pos), dtype=bool)
    sure[nl.query_point_indices[near]] = False
    assert np.array_equal(crystalline[sure], bo.crystalline[sure]), case
    assert np.array_equal(xb[sure], bo.crystalline_bonds[sure])
    if case == "partly disordered":
        assert 0.2 < bo.crystalline_fraction < 0.8  # both kinds present: the test means something


def test_radial_strain_and_lattice_fit():
    rng_rot = Rotation.random(random_state=11).as_matrix()
    base = fcc_cluster(2.5)
    expanded = (base * 1.013) @ rng_rot.T + [3.0, -1.0, 2.0]
    geo = LocalGeometry().compute(expanded)
    s = geo.radial_strain[np.isfinite(geo.radial_strain)]
    assert len(s) >= len(base) - 1
    assert np.allclose(s, 0.013, atol=1e-9)
    rot, _, sites = fit_fcc_lattice(base @ rng_rot.T)
    assert np.abs(sites - base @ rng_rot.T).max() < 1e-9
    # the fitted axes are the cubic axes up to the cube's symmetry
    m = rot.T @ rng_rot
    assert np.allclose(np.abs(m).round(6) @ np.ones(3), 1.0)
    assert geo.mean_neighbour_distance_A[_centre_index(expanded)] == pytest.approx(2.772 * 1.013, abs=2e-3)
    assert geo.diameter_A / 10 == pytest.approx((6 * len(base) * 3.92**3 / 4 / math.pi) ** (1 / 3) / 10)


def test_radial_distribution_of_fcc():
    p = fcc_cluster(2.5)
    rd = RadialDistribution(r_max_A=8.0, bin_A=0.05).compute(p)
    peak, width = rd.first_peak()
    assert peak == pytest.approx(2.772, abs=1e-3) and width < 1e-6
    # g(r) is non-zero only at FCC's shells, and its first shell integrates to the mean CN
    for r in rd.r[rd.g > 0]:
        assert min(abs(r - shell) for shell in (2.772, 3.920, 4.801, 5.544, 6.198, 6.790, 7.334, 7.840)) < 0.05
    from btomo.analysis.structure import cluster_volume_A3

    rho = len(p) / cluster_volume_A3(p)
    first = rd.r < 3.41
    cn = np.sum(rd.g[first] * rho * 4 * np.pi * rd.r[first] ** 2 * 0.05)
    assert cn == pytest.approx(BondOrder().compute(p).cn.mean(), rel=1e-6)


def test_bad_inputs_and_reading_before_compute():
    with pytest.raises(RuntimeError, match="compute"):
        _ = BondOrder().crystalline
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        BondOrder().compute(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        BondOrder().compute(np.array([[0, 0, 0], [np.nan, 0, 0.0]]))
    with pytest.raises(ValueError, match="same place"):
        BondOrder().compute(np.array([[0, 0, 0], [0, 0, 0.0], [2.7, 0, 0]]))
    with pytest.raises(ValueError, match="not computed"):
        BondOrder(ls=(6,)).compute(fcc_cluster(1.0)).ql(4)
    lone = BondOrder().compute(np.array([[0, 0, 0], [10.0, 0, 0]]))
    assert np.all(np.isnan(lone.ql(6))) and not lone.crystalline.any()


def _cube_union(atoms):
    """``atoms`` (lattice sites) with all their images under the cube's 24 rotations about the
    atom nearest their centroid: the cube-symmetrised shape that contains them."""
    from btomo.kernels.coverage import cubic_rotations  # noqa: PLC0415

    centre = atoms[np.argmin(np.linalg.norm(atoms - atoms.mean(axis=0), axis=1))]
    images = np.concatenate([(atoms - centre) @ c.T + centre for c in cubic_rotations()])
    return np.unique(np.round(images, 6), axis=0)


def test_the_cube_symmetric_fraction_tells_a_crystals_own_shape_from_the_cubes():
    """A truncated octahedron is the cube's shape (1.0); less 20 surface atoms, or an irregular
    crystal, well below (about 0.6); the cube-symmetrised irregular crystal 1.0 again; the measure
    does not depend on where the particle sits or how it is turned; no lattice, no number."""
    full = fcc_cluster(2.0, "truncated_octahedron")
    assert cube_symmetric_fraction(full) == 1.0
    rng = np.random.default_rng(1)
    dist = np.linalg.norm(full - full.mean(axis=0), axis=1)
    holed = np.delete(full, rng.choice(np.flatnonzero(dist > np.median(dist)), 20, replace=False), axis=0)
    frac = cube_symmetric_fraction(holed)
    assert 0.3 < frac < 0.8, frac
    turned = holed @ Rotation.random(random_state=2).as_matrix().T + np.array([3.1, -7.0, 2.2])
    assert cube_symmetric_fraction(turned) == pytest.approx(frac)
    irregular = fcc_cluster(2.0, "irregular", seed=4)
    assert cube_symmetric_fraction(irregular) < 0.8
    symmetrised = _cube_union(irregular)
    assert len(symmetrised) > len(irregular) and cube_symmetric_fraction(symmetrised) == 1.0
    assert np.isnan(cube_symmetric_fraction(full[:3]))
    assert np.isnan(cube_symmetric_fraction(np.random.default_rng(0).uniform(-10, 10, (50, 3)) * 3.0))
    with pytest.raises(ValueError, match=r"expected atoms of shape \(n, 3\)"):
        cube_symmetric_fraction(full[:, :2])
