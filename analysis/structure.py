"""Per-structure analysis of one atomic map (paper, Methods "Structure analysis").

Compute objects in the style of freud: settings in the constructor, ``compute(positions)``
returns ``self``, results are properties that raise before ``compute``. Positions are ``(n, 3)``
in A; every neighbour list is "all atoms within ``cutoff_A``" (paper: 3.41 A, the first minimum of
Pt's g(r)), the atom itself excluded.

* :class:`BondOrder`: Steinhardt's local ``q_lm`` (eq. 5), the coarse-grained ``Q_lm`` with the
  atom itself included (eq. 6), the invariants ``q_l``, ``Q_l`` (eq. 7), the normalised
  ``w_l`` (eq. 10), the bond order ``s6`` (eqs. 8-9) and the crystalline atoms (more than half
  of the bonds with s6 > 0.8).
* :class:`RadialDistribution`: g(r) of a finite cluster.
* :class:`LocalGeometry`: coordination, mean Pt-Pt distance per atom, distance from the centre,
  radial strain against a fitted FCC lattice, the equal-volume diameter.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import scipy.sparse as sp
from scipy.spatial import ConvexHull, cKDTree

from btomo.kernels.coverage import cubic_rotations
from btomo.kernels.crystal import FCC_VOLUME_PER_ATOM, PT_LATTICE_A, PT_NEIGHBOUR_CUTOFF_A
from btomo.kernels.harmonics import spherical_harmonics, wigner_3j_table

log = logging.getLogger(__name__)

__all__ = ["check_positions", "neighbour_bonds", "BondOrder", "RadialDistribution", "LocalGeometry",
           "fit_fcc_lattice", "nearest_fcc_sites", "equal_volume_diameter_A", "lattice_cube",
           "cube_symmetric_fraction"]


def check_positions(positions, what: str = "positions") -> np.ndarray:
    """``positions`` as a finite ``(n, 3)`` float64 array, or a ``ValueError`` that says what came."""
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"expected {what} of shape (n, 3) in A, got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"expected finite {what}, got {int(np.sum(~np.isfinite(p).all(axis=1)))} rows with NaN/inf")
    return p


def neighbour_bonds(positions: np.ndarray, cutoff_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Directed bonds ``i -> j`` (both directions of each pair) within ``cutoff_A``, sorted by ``i``.

    Raises ``ValueError`` when two atoms coincide (closer than 1e-6 A).
    """
    pairs = cKDTree(positions).query_pairs(r=cutoff_A, output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    d = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
    if np.any(d < 1e-6):
        k = int(np.argmin(d))
        raise ValueError(f"atoms {pairs[k, 0]} and {pairs[k, 1]} sit at the same place")
    i = np.concatenate([pairs[:, 0], pairs[:, 1]])
    j = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.lexsort((j, i))
    return i[order].astype(np.intp), j[order].astype(np.intp)


class _Computed:
    """Properties that raise before ``compute``."""

    _done = False

    def _need(self) -> None:
        if not self._done:
            raise RuntimeError(f"{type(self).__name__}: call compute() before reading results")


class BondOrder(_Computed):
    """Steinhardt bond-orientational order of every atom (paper eqs. 5-10).

    Parameters
    ----------
    cutoff_A : float
        Neighbour cutoff, A.
    ls : tuple of int
        Degrees l to compute (6 is always added: s6 needs it).
    s6_threshold : float
        A bond is crystalline when s6 exceeds this (paper: 0.8).

    Notes
    -----
    ``Q_lm(i) = (q_lm(i) + sum_j q_lm(j)) / (N_i + 1)`` over the neighbours j (eq. 6, the atom
    itself included, as freud and pyscal do). ``w_l`` is normalised by ``(sum_m |.|^2)^(3/2)``
    and computed from the coarse-grained ``Q_lm`` (``w_local`` from ``q_lm``). ``s6(i, j)`` uses
    the local ``q_6m`` normalised per atom (eq. 9, ten Wolde et al.). Atoms without neighbours get
    NaN order parameters and are not crystalline.
    """

    def __init__(self, *, cutoff_A: float = PT_NEIGHBOUR_CUTOFF_A, ls: tuple[int, ...] = (4, 6),
                 s6_threshold: float = 0.8):
        if cutoff_A <= 0:
            raise ValueError(f"expected a positive cutoff in A, got {cutoff_A}")
        if not 0 < s6_threshold < 1:
            raise ValueError(f"expected s6_threshold in (0, 1), got {s6_threshold}")
        if any(int(l) < 0 for l in ls):  # noqa: E741
            raise ValueError(f"expected degrees l >= 0, got {ls}")
        self.cutoff_A = float(cutoff_A)
        self.ls = tuple(sorted(set(int(l) for l in ls) | {6}))  # noqa: E741
        self.s6_threshold = float(s6_threshold)

    def compute(self, positions) -> "BondOrder":
        """Compute everything for ``positions`` ``(n, 3)`` A; returns ``self``."""
        p = check_positions(positions)
        n = len(p)
        i, j = neighbour_bonds(p, self.cutoff_A)
        cn = np.bincount(i, minlength=n)
        # sparse sums over each atom's bonds and over its neighbours
        ones = np.ones(len(i))
        to_atom = sp.csr_matrix((ones, (i, np.arange(len(i)))), shape=(n, len(i)))
        adjacency = sp.csr_matrix((ones, (i, j)), shape=(n, n))
        has = cn > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            inv_cn = np.where(has, 1.0 / np.maximum(cn, 1), 0.0)
        vec = p[j] - p[i]
        self._qlm: dict[int, np.ndarray] = {}
        self._Qlm: dict[int, np.ndarray] = {}
        for l in self.ls:  # noqa: E741
            qlm = np.asarray(to_atom @ spherical_harmonics(l, vec)) * inv_cn[:, None] if len(i) else \
                np.zeros((n, 2 * l + 1), dtype=np.complex128)
            self._qlm[l] = qlm
            self._Qlm[l] = (qlm + np.asarray(adjacency @ qlm)) / (cn + 1.0)[:, None]
        q6 = self._qlm[6]
        norm6 = np.linalg.norm(q6, axis=1)
        unit = q6 / np.where(norm6 > 0, norm6, 1.0)[:, None]
        s6 = np.einsum("bm,bm->b", unit[i], np.conj(unit[j])).real
        xbond = s6 > self.s6_threshold
        self._bonds = (i, j)
        self._s6 = s6
        self._cn = cn
        self._has = has
        self._xbonds = np.bincount(i, weights=xbond, minlength=n).astype(np.int64)
        self._crystalline = has & (self._xbonds > cn / 2.0)
        self._done = True
        return self

    # --- results -------------------------------------------------------------------------------
    def _nan(self, v: np.ndarray) -> np.ndarray:
        return np.where(self._has, v, np.nan)

    @property
    def cn(self) -> np.ndarray:
        """Coordination number of each atom (neighbours within the cutoff)."""
        self._need()
        return self._cn

    @property
    def bonds(self) -> tuple[np.ndarray, np.ndarray]:
        """Directed bonds ``(i, j)``, sorted by ``i``."""
        self._need()
        return self._bonds

    def qlm(self, l: int, *, coarse: bool = True) -> np.ndarray:  # noqa: E741
        """``Q_lm`` (coarse, eq. 6) or ``q_lm`` (local, eq. 5), ``(n, 2l+1)`` complex, m = -l..l."""
        self._need()
        self._check_l(l)
        return (self._Qlm if coarse else self._qlm)[l]

    def ql(self, l: int, *, coarse: bool = True) -> np.ndarray:  # noqa: E741
        """Rotational invariant ``Q_l`` (coarse, eq. 7) or ``q_l`` (local) per atom."""
        v = self.qlm(l, coarse=coarse)
        return self._nan(np.sqrt(4.0 * math.pi / (2 * l + 1) * np.sum(np.abs(v) ** 2, axis=1)))

    def wl(self, l: int, *, coarse: bool = True) -> np.ndarray:  # noqa: E741
        """Normalised third-order invariant ``w_l`` (eq. 10) per atom."""
        v = self.qlm(l, coarse=coarse)
        i1, i2, i3, w = wigner_3j_table(l)
        raw = (v[:, i1] * v[:, i2] * v[:, i3]).real @ w
        norm = np.sum(np.abs(v) ** 2, axis=1) ** 1.5
        return self._nan(raw / np.where(norm > 0, norm, 1.0))

    @property
    def s6(self) -> np.ndarray:
        """s6 of each directed bond (order of :attr:`bonds`)."""
        self._need()
        return self._s6

    @property
    def crystalline_bonds(self) -> np.ndarray:
        """Number of each atom's bonds with s6 above the threshold."""
        self._need()
        return self._xbonds

    @property
    def crystalline(self) -> np.ndarray:
        """True where more than half of an atom's bonds are crystalline."""
        self._need()
        return self._crystalline

    @property
    def crystalline_fraction(self) -> float:
        """Fraction of crystalline atoms (0 for no atoms)."""
        self._need()
        return float(np.mean(self._crystalline)) if len(self._crystalline) else 0.0

    def _check_l(self, l: int) -> None:  # noqa: E741
        if l not in self._qlm:
            raise ValueError(f"l = {l} was not computed; this BondOrder has ls = {self.ls}")


class RadialDistribution(_Computed):
    """Pair distribution g(r) of a finite cluster.

    ``g(r) = 2 n_pairs(r) / (N rho 4 pi r^2 dr)`` with ``rho = N / V`` and V the convex hull's
    volume of the atoms grown by half the nearest-neighbour distance (the cluster's own density);
    for a finite cluster g falls to 0 beyond its diameter, unlike a bulk g(r).

    Parameters
    ----------
    r_max_A : float
        Largest distance, A.
    bin_A : float
        Bin width, A.
    """

    def __init__(self, *, r_max_A: float = 10.0, bin_A: float = 0.05):
        if r_max_A <= 0 or bin_A <= 0 or bin_A >= r_max_A:
            raise ValueError(f"expected 0 < bin_A < r_max_A, got bin {bin_A} A, r_max {r_max_A} A")
        self.r_max_A, self.bin_A = float(r_max_A), float(bin_A)

    def compute(self, positions) -> "RadialDistribution":
        p = check_positions(positions)
        edges = np.arange(0.0, self.r_max_A + 0.5 * self.bin_A, self.bin_A)
        pairs = cKDTree(p).query_pairs(r=self.r_max_A, output_type="ndarray")
        d = np.linalg.norm(p[pairs[:, 0]] - p[pairs[:, 1]], axis=1) if len(pairs) else np.zeros(0)
        counts, _ = np.histogram(d, bins=edges)
        r = 0.5 * (edges[1:] + edges[:-1])
        rho = len(p) / cluster_volume_A3(p) if len(p) >= 4 else np.nan
        shell = 4.0 * math.pi * r * r * self.bin_A
        self._r = r
        self._g = 2.0 * counts / (max(len(p), 1) * rho * shell)
        self._distances = d
        self._done = True
        return self

    @property
    def r(self) -> np.ndarray:
        """Bin centres, A."""
        self._need()
        return self._r

    @property
    def g(self) -> np.ndarray:
        """g(r) per bin."""
        self._need()
        return self._g

    def first_peak(self, cutoff_A: float = PT_NEIGHBOUR_CUTOFF_A) -> tuple[float, float]:
        """Mean and standard deviation (A) of the pair distances below ``cutoff_A``: the centre and
        width of a Gaussian fitted to the nearest-neighbour peak (paper Fig. 4b)."""
        self._need()
        d = self._distances[self._distances < cutoff_A]
        return (float(d.mean()), float(d.std())) if len(d) else (math.nan, math.nan)


def cluster_volume_A3(positions: np.ndarray, skin_A: float = 0.5 * 2.772) -> float:
    """Volume (A^3) of the atoms' convex hull grown outward by ``skin_A`` (Steiner: V + S t + ...,
    with the hull's area S; the mean-width term is approximated by the equivalent sphere's)."""
    hull = ConvexHull(positions)
    v, s = hull.volume, hull.area
    mean_width = 2.0 * (3.0 * v / (4.0 * math.pi)) ** (1.0 / 3.0)
    return float(v + s * skin_A + math.pi * mean_width * skin_A**2 + 4.0 / 3.0 * math.pi * skin_A**3)


def equal_volume_diameter_A(n_atoms: int, lattice_A: float = PT_LATTICE_A) -> float:
    """Diameter (A) of the sphere holding ``n_atoms`` at the FCC density ``4 / a^3``."""
    return (6.0 * n_atoms * FCC_VOLUME_PER_ATOM(lattice_A) / math.pi) ** (1.0 / 3.0)


def nearest_fcc_sites(frac: np.ndarray) -> np.ndarray:
    """Nearest FCC site in cubic-cell units (a = 1) for each row of ``frac``: the D3 lattice
    (integer coordinates with an even sum) scaled by 1/2 (Conway & Sloane's rounding rule)."""
    x = 2.0 * frac
    r = np.rint(x)
    odd = (r.sum(axis=1) % 2) != 0
    if np.any(odd):
        err = x - r
        k = np.argmax(np.abs(err), axis=1)
        rows = np.flatnonzero(odd)
        kk = k[rows]
        r[rows, kk] += np.where(err[rows, kk] >= 0, 1.0, -1.0)
    return r / 2.0


def _kabsch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation R minimising ``|a R^T - b|`` for centred point sets (rows)."""
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    return (u @ np.diag([1.0, 1.0, d]) @ vt).T


_NN_DIRECTIONS = np.array([v for v in np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1])).reshape(3, -1).T
                           if np.count_nonzero(v) == 2], dtype=np.float64) / math.sqrt(2.0)


_D110 = np.array([1.0, 1.0, 0.0]) / math.sqrt(2.0)
_D101 = np.array([1.0, 0.0, 1.0]) / math.sqrt(2.0)


def fit_fcc_lattice(positions, lattice_A: float = PT_LATTICE_A, cutoff_A: float = PT_NEIGHBOUR_CUTOFF_A,
                    iterations: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit an FCC lattice of constant ``lattice_A`` (rotation and origin free) to the atoms.

    The orientation comes from the nearest-neighbour bond directions (each matched to the
    closest of the 12 <110> directions, then a Kabsch fit, from several starting guesses), the
    origin and orientation are then refined by least squares against each atom's nearest
    lattice site.

    Returns
    -------
    rotation : (3, 3)
        Lattice (cubic axes) -> lab.
    origin : (3,)
        A lattice site, A.
    sites : (n, 3)
        Each atom's nearest lattice site, A.
    """
    p = check_positions(positions)
    if len(p) < 2:
        raise ValueError(f"need at least 2 atoms to fit a lattice, got {len(p)}")
    i, j = neighbour_bonds(p, cutoff_A)
    bonds = p[j] - p[i]
    if len(bonds) == 0:
        raise ValueError(f"no two atoms within {cutoff_A} A: nothing to fit a lattice to")
    unit = bonds / np.linalg.norm(bonds, axis=1, keepdims=True)
    best = None
    # starting guesses: the first bond onto [110]/sqrt2 and a second bond 60 deg away onto [101]/sqrt2
    cos = unit @ unit[0]
    second = np.flatnonzero(np.abs(cos - 0.5) < 0.15)
    seeds = [np.eye(3)] if len(second) == 0 else []
    for s in second[:6]:
        a = np.stack([unit[0], unit[s], np.cross(unit[0], unit[s])])
        b = np.stack([_D110, _D101, np.cross(_D110, _D101)])
        seeds.append(_kabsch(b, a))
    for rot in seeds:
        for _ in range(4):
            ideal = _NN_DIRECTIONS @ rot.T
            k = np.argmax(unit @ ideal.T, axis=1)
            rot = _kabsch(_NN_DIRECTIONS[k], unit)
        resid = float(np.mean(np.max(unit @ (_NN_DIRECTIONS @ rot.T).T, axis=1)))
        if best is None or resid > best[0]:
            best = (resid, rot)
    rot = best[1]
    centre = p.mean(axis=0)
    origin = p[np.argmin(np.linalg.norm(p - centre, axis=1))]
    for _ in range(iterations):
        frac = (p - origin) @ rot / lattice_A
        sites = nearest_fcc_sites(frac) * lattice_A
        # least squares: p ~ origin + sites R^T
        mp, ms = p.mean(axis=0), sites.mean(axis=0)
        rot = _kabsch(sites - ms, p - mp)
        origin = mp - ms @ rot.T
    frac = (p - origin) @ rot / lattice_A
    sites = origin + (nearest_fcc_sites(frac) * lattice_A) @ rot.T
    return rot, origin, sites


class LocalGeometry(_Computed):
    """Coordination, mean Pt-Pt distance, distance from the centre and radial strain per atom.

    Parameters
    ----------
    cutoff_A : float
        Neighbour cutoff, A.
    lattice_A : float
        Lattice constant of the reference FCC lattice for the strain, A (Pt: 3.92).

    Notes
    -----
    Radial strain of atom i: ``(|r_i - c| - |s_i - c|) / |s_i - c|`` with c the centroid and s_i
    the atom's site in the FCC lattice of constant ``lattice_A`` fitted to the whole structure
    (rotation and origin free, :func:`fit_fcc_lattice`): a particle expanded by 1.3 % reads 0.013
    everywhere. NaN for atoms whose site lies within 1 A of the centre.
    """

    def __init__(self, *, cutoff_A: float = PT_NEIGHBOUR_CUTOFF_A, lattice_A: float = PT_LATTICE_A):
        if cutoff_A <= 0 or lattice_A <= 0:
            raise ValueError(f"expected positive cutoff and lattice constant, got {cutoff_A}, {lattice_A} A")
        self.cutoff_A, self.lattice_A = float(cutoff_A), float(lattice_A)

    def compute(self, positions) -> "LocalGeometry":
        p = check_positions(positions)
        n = len(p)
        i, j = neighbour_bonds(p, self.cutoff_A)
        d = np.linalg.norm(p[j] - p[i], axis=1)
        cn = np.bincount(i, minlength=n)
        with np.errstate(invalid="ignore"):
            self._mean_nn = np.bincount(i, weights=d, minlength=n) / np.where(cn > 0, cn, np.nan)
        self._cn = cn
        self._centre = p.mean(axis=0) if n else np.zeros(3)
        self._r = np.linalg.norm(p - self._centre, axis=1)
        strain = np.full(n, np.nan)
        if n >= 2 and len(i):
            _, _, sites = fit_fcc_lattice(p, self.lattice_A, self.cutoff_A)
            rs = np.linalg.norm(sites - self._centre, axis=1)
            ok = rs > 1.0
            strain[ok] = (self._r[ok] - rs[ok]) / rs[ok]
        self._strain = strain
        self._diameter = equal_volume_diameter_A(n, self.lattice_A) if n else 0.0
        self._done = True
        return self

    @property
    def cn(self) -> np.ndarray:
        self._need()
        return self._cn

    @property
    def mean_neighbour_distance_A(self) -> np.ndarray:
        """Mean distance to the neighbours within the cutoff, A (NaN without neighbours)."""
        self._need()
        return self._mean_nn

    @property
    def centre_distance_A(self) -> np.ndarray:
        """Distance from the centroid, A."""
        self._need()
        return self._r

    @property
    def radial_strain(self) -> np.ndarray:
        """Radial strain (dimensionless) against the fitted lattice (see the class notes)."""
        self._need()
        return self._strain

    @property
    def diameter_A(self) -> float:
        """Equal-volume diameter from the atom count at the FCC density, A."""
        self._need()
        return self._diameter


def lattice_cube(atoms_A: np.ndarray, lattice_A: float = PT_LATTICE_A) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FCC lattice fitted to the atoms ``(n, 3)`` (A; :func:`fit_fcc_lattice`), and its cube
    rotations about the lattice site nearest the atoms' centroid.

    Returns
    -------
    rotation : (3, 3)
        Lattice (cubic axes) -> lab.
    centre : (3,)
        The site the rotations turn about, A.
    cube : (24, 3, 3)
        The lattice's cube rotations in the lab frame, in the order of
        :func:`~btomo.kernels.coverage.cubic_rotations`.

    Raises
    ------
    ValueError
        No lattice fits (see :func:`fit_fcc_lattice`).
    """
    rot, origin, _ = fit_fcc_lattice(atoms_A, lattice_A=lattice_A)
    centroid = np.asarray(atoms_A, dtype=np.float64).mean(axis=0)
    centre = origin + (nearest_fcc_sites(((centroid - origin) @ rot / lattice_A)[None])[0] * lattice_A) @ rot.T
    return rot, centre, np.einsum("ab,gbc,dc->gad", rot, cubic_rotations(), rot)


def cube_symmetric_fraction(atoms_A: np.ndarray, within_A: float = 1.0, lattice_A: float = PT_LATTICE_A) -> float:
    """The fraction of the atoms ``(n, 3)`` (A) whose 24 images under the cube rotations of their
    fitted FCC lattice (:func:`lattice_cube`: about the lattice site nearest their centroid) all
    lie within ``within_A`` of an atom.

    1 for a cube-symmetric shape: a full truncated octahedron, or a reconstruction averaged over
    the lattice's symmetry mates (docs/reconstruct.md); 0.53-0.64 for the 2 nm test particles'
    own shapes (a truncated octahedron less 20 surface atoms, irregular crystals;
    docs/accuracy.md). ``nan`` when no lattice fits (fewer than 4 atoms, or no FCC order).
    """
    atoms_A = np.asarray(atoms_A, dtype=np.float64)
    if atoms_A.ndim != 2 or atoms_A.shape[1] != 3:
        raise ValueError(f"expected atoms of shape (n, 3), got {atoms_A.shape}")
    if len(atoms_A) < 4:
        return float("nan")
    try:
        _, centre, cube = lattice_cube(atoms_A, lattice_A)
    except ValueError:
        return float("nan")
    images = np.einsum("gab,nb->gna", cube, atoms_A - centre) + centre  # (24, n, 3)
    dist, _ = cKDTree(atoms_A).query(images.reshape(-1, 3))
    return float((dist.reshape(len(cube), -1) <= within_A).all(axis=0).mean())
