"""FCC nanocrystals cut from the lattice, their lattice planes and zone axes.

Pure geometry, in A; used by the simulator (ground truth) and by reconstruction (the initial
model is a spherical FCC Pt particle, as in the paper's Methods).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.spatial import ConvexHull, QhullError, cKDTree

__all__ = [
    "PT_LATTICE_A",
    "PT_NEIGHBOUR_CUTOFF_A",
    "FCC_VOLUME_PER_ATOM",
    "fcc_points",
    "fcc_cluster",
    "equivalent_diameter_A",
    "PT_METALLIC_RADIUS_A",
    "projected_diameter_A",
    "mean_projected_diameter_A",
    "fcc_sphere_of_projected_diameter",
    "coordination_numbers",
    "plane_normals",
    "zone_axes",
    "d_spacing",
]

#: Pt lattice constant used by the paper (A); tabulated 3.9231
PT_LATTICE_A = 3.92
#: metallic radius of Pt, A: how far an atom's image reaches beyond its centre in a projected diameter
PT_METALLIC_RADIUS_A = 1.39
#: neighbour cutoff of the paper (A): first minimum of g(r) between the 2.77 and 3.92 A shells
PT_NEIGHBOUR_CUTOFF_A = 3.41


def FCC_VOLUME_PER_ATOM(a: float = PT_LATTICE_A) -> float:  # noqa: N802 - reads as a constant
    """Volume per atom of an FCC lattice, ``a^3 / 4`` in A^3."""
    return a**3 / 4.0


_BASIS = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def fcc_points(radius_A: float, a: float = PT_LATTICE_A) -> np.ndarray:
    """All FCC lattice sites within ``radius_A`` of the origin (an atom sits at the origin)."""
    n = int(math.ceil(radius_A / a)) + 1
    cells = np.array(list(itertools.product(range(-n, n + 1), repeat=3)), dtype=np.float64)
    pts = (cells[:, None, :] + _BASIS[None, :, :]).reshape(-1, 3) * a
    return pts[np.linalg.norm(pts, axis=1) <= radius_A + 1e-9]


def equivalent_diameter_A(n_atoms: int, a: float = PT_LATTICE_A) -> float:
    """Diameter (A) of the sphere whose volume holds ``n_atoms`` at FCC density."""
    return (6.0 * n_atoms * FCC_VOLUME_PER_ATOM(a) / math.pi) ** (1.0 / 3.0)


def projected_diameter_A(xy_A: np.ndarray) -> float:
    """Equivalent-circle diameter (A) of a projection: the 2D convex hull of the projected atom
    centres ``(n, 2)`` (A) grown by the Pt metallic radius (hull area + perimeter x r + pi r^2),
    as a circle, ``2 sqrt(area / pi)``. What an image shows as the particle's size (the paper's
    projected diameter of the crystalline region), one atomic radius beyond the outer centres."""
    xy = np.asarray(xy_A, dtype=np.float64)
    r = PT_METALLIC_RADIUS_A
    try:
        hull = ConvexHull(xy)
        area = hull.volume + hull.area * r + math.pi * r * r  # 2D: volume = area, area = perimeter
    except (QhullError, ValueError):  # fewer than 3 atoms or collinear
        span = float(np.ptp(xy, axis=0).max()) if len(xy) > 1 else 0.0
        area = 2 * r * span + math.pi * r * r
    return 2.0 * math.sqrt(area / math.pi)


def _view_bases(views: int) -> np.ndarray:
    """``(views, 2, 3)``: two unit vectors spanning the image plane of each of ``views`` viewing
    directions, the upper half of a Fibonacci sphere (a projection and its antipode's are the same)."""
    from .coverage import fibonacci_sphere  # noqa: PLC0415

    d = fibonacci_sphere(2 * views)[:views]  # z from 1 down to 0
    u = np.cross(d, np.where(np.abs(d[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]]))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return np.stack([u, np.cross(d, u)], axis=1)


def mean_projected_diameter_A(atoms_A: np.ndarray, views: int = 48) -> float:
    """Mean of :func:`projected_diameter_A` (A) over ``views`` viewing directions spread evenly
    over the sphere: the size a window of a tumbling particle reports."""
    atoms = np.asarray(atoms_A, dtype=np.float64)
    return float(np.mean([projected_diameter_A(atoms @ b.T) for b in _view_bases(views)]))


def fcc_sphere_of_projected_diameter(diameter_A: float, a: float = PT_LATTICE_A) -> np.ndarray:
    """The spherical FCC cluster (atom shells about a lattice site, ``(n, 3)`` in A) whose mean
    projected diameter (:func:`mean_projected_diameter_A`) is closest to ``diameter_A``.

    A measured projected diameter reaches one atomic radius beyond the outermost atom centres,
    so a sphere cut at half of it would hold ~1.4x the atoms of a 2 nm particle: this is the
    paper's "spherical Pt nanocrystal of the mean projected diameter" with the size measured the
    way the image measures it."""
    if not (math.isfinite(diameter_A) and diameter_A > 0):
        raise ValueError(f"expected a positive projected diameter in A, got {diameter_A}")
    cloud = fcc_points(0.5 * diameter_A + a, a)
    r = np.linalg.norm(cloud, axis=1)
    shells = np.unique(np.round(r, 6))
    lo = 0.5 * diameter_A - PT_METALLIC_RADIUS_A - a  # the shell sought lies near d / 2 - r
    candidates = shells[(shells >= lo) & (shells <= 0.5 * diameter_A)]
    if len(candidates) == 0:  # a diameter of a few atoms: the smallest clusters
        candidates = shells[:3]
    best, best_err = cloud[:1], math.inf
    for cut in candidates:
        pts = cloud[r <= cut + 1e-6]
        err = abs(mean_projected_diameter_A(pts) - diameter_A) if len(pts) >= 4 else math.inf
        if err < best_err:
            best, best_err = pts, err
    return best - best.mean(axis=0)


def fcc_cluster(diameter_nm: float, shape: str = "sphere", a: float = PT_LATTICE_A, *, seed: int = 0,
                irregularity: float = 0.3) -> np.ndarray:
    """Cut an FCC cluster of the given size from the lattice, centred on the origin.

    Parameters
    ----------
    diameter_nm : float
        Diameter of the sphere of equal volume (atoms x a^3/4). A ``"sphere"`` is cut at the
        atom shell whose count is closest to it; for ``"truncated_octahedron"`` the {111}/{100}
        polyhedron (|x|,|y|,|z| <= 2s, |x|+|y|+|z| <= 3s,
        the regular truncated octahedron, its two cuts varied a little about that ratio) is sized to
        hold as many atoms as that sphere.
    shape : {"sphere", "truncated_octahedron"}
    a : float
        Lattice constant in A.

    Returns
    -------
    (n, 3) float64 array of atom positions in A, centroid at the origin.
    """
    if diameter_nm <= 0:
        raise ValueError(f"expected a positive diameter in nm, got {diameter_nm}")
    radius = 5.0 * diameter_nm
    target = (math.pi / 6.0) * (2 * radius) ** 3 / FCC_VOLUME_PER_ATOM(a)
    if shape == "sphere":
        # atoms come in shells: take the shell whose count is closest to the equal-volume count
        cloud = fcc_points(radius + a, a)
        r = np.linalg.norm(cloud, axis=1)
        shells = np.unique(np.round(r, 6))
        counts = np.searchsorted(np.sort(r), shells + 1e-6)
        cut = shells[int(np.argmin(np.abs(counts - target)))]
        pts = cloud[r <= cut + 1e-6]
    elif shape == "truncated_octahedron":
        cloud = fcc_points(2.5 * radius, a)
        l1 = np.abs(cloud).sum(axis=1)
        linf = np.abs(cloud).max(axis=1)
        # The {111} (|x|+|y|+|z| <= c1) and {100} (max |x_i| <= c2) cuts move in steps of the
        # lattice, so the count is a step function: search both cuts over their distinct shell
        # values, take the count closest to the target, and among ties the shape closest to the
        # regular truncated octahedron (c2 / c1 = 2 / 3).
        best = None
        for c1 in np.unique(np.round(l1, 6)):
            for c2 in np.unique(np.round(linf[l1 <= c1 + 1e-6], 6)):
                ratio = c2 / c1 if c1 > 0 else 1.0
                if not 0.5 <= ratio <= 0.85:
                    continue
                n = np.count_nonzero((l1 <= c1 + 1e-6) & (linf <= c2 + 1e-6))
                key = (abs(n - target), abs(ratio - 2.0 / 3.0))
                if best is None or key < best[0]:
                    best = (key, c1, c2)
        if best is None:
            raise ValueError(f"a {diameter_nm} nm truncated octahedron holds no atom")
        _, c1, c2 = best
        pts = cloud[(l1 <= c1 + 1e-6) & (linf <= c2 + 1e-6)]
    elif shape == "irregular":
        # draw again (deterministically) while the cut has a symmetry of the cube: on so coarse a
        # lattice, two facets may land on mirror-image planes
        for attempt in range(64):
            pts = _irregular(target, radius, a, seed, irregularity, attempt)
            if not _has_cubic_symmetry(pts):
                break
    else:
        raise ValueError(f"expected shape 'sphere', 'truncated_octahedron' or 'irregular', got {shape!r}")
    if len(pts) == 0:
        raise ValueError(f"a {diameter_nm} nm {shape} holds no atom")
    return pts - pts.mean(axis=0)


def _has_cubic_symmetry(pts: np.ndarray, tol_A: float = 0.1) -> bool:
    """Whether a signed axis permutation other than the identity maps the points (about their
    centroid) onto themselves."""
    c = pts - pts.mean(axis=0)
    tree = cKDTree(c)
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            if perm == (0, 1, 2) and signs == (1.0, 1.0, 1.0):
                continue
            d, _ = tree.query(c[:, list(perm)] * np.array(signs))
            if np.all(d < tol_A):
                return True
    return False


def _irregular(target: float, radius: float, a: float, seed: int, irregularity: float, attempt: int = 0) -> np.ndarray:
    """Lattice sites inside 14 {111}/{100} half-spaces at random distances, scaled to ``target`` atoms."""
    if not 0.0 <= irregularity < 1.0:
        raise ValueError(f"expected irregularity in [0, 1), got {irregularity}")
    rng = np.random.default_rng([seed, 14, attempt])
    half = np.concatenate([_family((1, 1, 1)), _family((1, 0, 0))])  # unit vectors, up to sign
    normals = np.concatenate([half, -half])
    # regular truncated octahedron: {111} at 3s/sqrt(3), {100} at 2s; varied facet by facet
    base = np.where(np.isclose(np.abs(normals).sum(axis=1), math.sqrt(3.0)), math.sqrt(3.0), 2.0)
    dist = base * (1.0 + irregularity * rng.uniform(-1.0, 1.0, len(normals)))
    centre = rng.uniform(0.0, a, 3)  # off the lattice: no site sits at a symmetry centre
    cloud = fcc_points(4.0 * radius, a) - centre
    reach = (cloud @ normals.T / dist).max(axis=1)  # inside for scale s when reach <= s
    order = np.sort(reach)
    n = int(np.clip(round(target), 1, len(order)))
    return cloud[reach <= order[n - 1] + 1e-9] + centre


def coordination_numbers(positions: np.ndarray, cutoff_A: float = PT_NEIGHBOUR_CUTOFF_A) -> np.ndarray:
    """Number of neighbours of each atom within ``cutoff_A`` (the atom itself excluded)."""
    tree = cKDTree(positions)
    counts = tree.query_ball_point(positions, r=cutoff_A, return_length=True)
    return np.asarray(counts, dtype=np.int64) - 1


def _family(hkl: tuple[int, int, int]) -> np.ndarray:
    """Distinct directions (up to sign) of the cubic family of ``hkl``, as unit vectors."""
    out: list[np.ndarray] = []
    for perm in set(itertools.permutations(hkl)):
        for signs in itertools.product((1, -1), repeat=3):
            v = np.array(perm, dtype=np.float64) * signs
            if not np.any(v):
                continue
            v /= np.linalg.norm(v)
            if not any(abs(abs(float(v @ u)) - 1.0) < 1e-9 for u in out):
                out.append(v)
    return np.array(out)


def plane_normals(hkl: tuple[int, int, int]) -> np.ndarray:
    """Unit normals of the {hkl} planes (one per +-pair): {111} gives 4, {200} gives 3."""
    return _family(hkl)


def zone_axes(uvw: tuple[int, int, int]) -> np.ndarray:
    """Unit vectors of the <uvw> zone axes (one per +-pair): <110> gives 6, <111> gives 4."""
    return _family(uvw)


def d_spacing(hkl: tuple[int, int, int], a: float = PT_LATTICE_A) -> float:
    """Interplanar spacing of cubic {hkl} in A: ``a / sqrt(h^2 + k^2 + l^2)``."""
    return a / math.sqrt(sum(i * i for i in hkl))
