"""Rigid superposition and one-to-one matching of atom sets (A), no I/O.

Shared by the reconstruction's scoring against the truth (``btomo.reconstruct.evaluate``) and
the comparison of consecutive structures (``btomo.analysis.compare``):

* :func:`kabsch`: the proper rotation and translation that best map one paired set on another;
* :func:`match_atoms`: one-to-one pairs (Hungarian assignment) within a distance;
* :func:`superpose`: the rigid motion (optionally with an inversion) that maps one unpaired set
  on another, from the 48 signed axis permutations (two FCC maps of one crystal differ by one of
  them, up to small errors) and any extra starts, each polished by iterative closest points;
  the start that pairs most atoms wins, ties by the smaller RMSD, then by the smaller rotation
  (a symmetric particle fits several ways equally: the one that moves it least is kept).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

__all__ = ["kabsch", "match_atoms", "signed_permutations", "Superposition", "superpose"]


def kabsch(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Proper rotation ``r`` and translation ``t`` minimising ``|a r^T + t - b|`` (rows paired)."""
    ca, cb = a.mean(0), b.mean(0)
    h = (a - ca).T @ (b - cb)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, cb - ca @ r.T


def match_atoms(a: np.ndarray, b: np.ndarray, within_A: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs ``(i_a, i_b)`` within ``within_A`` minimising the summed distance."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    pairs = cKDTree(a).sparse_distance_matrix(cKDTree(b), within_A, output_type="coo_matrix")
    if pairs.nnz == 0:
        return np.zeros(0, int), np.zeros(0, int)
    # only atoms with a candidate within reach enter the (dense) assignment
    ra, ia = np.unique(pairs.row, return_inverse=True)
    rb, ib = np.unique(pairs.col, return_inverse=True)
    big = 1e6
    cost = np.full((len(ra), len(rb)), big)
    cost[ia, ib] = pairs.data
    i, j = linear_sum_assignment(cost)
    ok = cost[i, j] < big
    return ra[i[ok]], rb[j[ok]]


def signed_permutations(proper_only: bool = False) -> list[np.ndarray]:
    """The 48 signed permutation matrices (the cube's rotations and rotoinversions), or its 24
    rotations."""
    mats = [np.diag(s) @ np.eye(3)[list(p)] for p in itertools.permutations(range(3))
            for s in itertools.product((1.0, -1.0), repeat=3)]
    return [m for m in mats if np.linalg.det(m) > 0] if proper_only else mats


@dataclass
class Superposition:
    """``moving`` mapped onto ``fixed``: ``aligned = moving @ matrix.T + translation``.

    Attributes
    ----------
    matrix : (3, 3)
        Rotation, or rotoinversion when ``inverted``.
    translation : (3,)
        A.
    inverted : bool
    aligned : (n, 3)
        The moving atoms in the fixed frame, A.
    pairs : (i_moving, i_fixed)
        One-to-one pairs within the matching distance.
    rmsd_A : float
        Over the pairs (NaN without pairs).
    """

    matrix: np.ndarray
    translation: np.ndarray
    inverted: bool
    aligned: np.ndarray
    pairs: tuple[np.ndarray, np.ndarray]
    rmsd_A: float


def _icp(x: np.ndarray, fixed: np.ndarray, tree: cKDTree, reach_A: float, iterations: int = 20):
    """Iterative closest points from ``x`` (already centred on ``fixed``'s centroid); returns the
    moved points and the rigid motion applied."""
    r_all, t_all = np.eye(3), np.zeros(3)
    y = x
    for _ in range(iterations):
        d, j = tree.query(y)
        ok = d <= reach_A
        if ok.sum() < 3:
            break
        r, t = kabsch(y[ok], fixed[j[ok]])
        y_new = y @ r.T + t
        r_all, t_all = r @ r_all, t_all @ r.T + t
        done = np.abs(y_new - y).max() < 1e-6
        y = y_new
        if done:
            break
    return y, r_all, t_all


def superpose(moving, fixed, *, allow_inversion: bool = True, starts: list[np.ndarray] | None = None,
              within_A: float = 1.0, reach_A: float = 1.5) -> Superposition:
    """Superpose ``moving`` on ``fixed`` (both ``(n, 3)``, A; see the module).

    Parameters
    ----------
    allow_inversion : bool
        Also try the 24 rotoinversions (one map cannot tell the particle's hand).
    starts : list of (3, 3), optional
        Extra starting rotations (about the centroids).
    within_A : float
        Largest distance of a pair when scoring.
    reach_A : float
        Largest distance of a pair while polishing.
    """
    moving = np.asarray(moving, dtype=np.float64).reshape(-1, 3)
    fixed = np.asarray(fixed, dtype=np.float64).reshape(-1, 3)
    if len(moving) == 0 or len(fixed) == 0:
        return Superposition(np.eye(3), np.zeros(3), False, moving.copy(), (np.zeros(0, int), np.zeros(0, int)),
                             float("nan"))
    tree = cKDTree(fixed)
    rots = signed_permutations(proper_only=not allow_inversion) + [np.asarray(r) for r in (starts or [])]
    cm, cf = moving.mean(0), fixed.mean(0)
    best = None
    for r0 in rots:
        y, r1, t1 = _icp((moving - cm) @ r0.T + cf, fixed, tree, reach_A)
        i, j = match_atoms(y, fixed, within_A)
        rmsd = float(np.sqrt(((y[i] - fixed[j]) ** 2).sum(1).mean())) if len(i) else float("nan")
        matrix = r1 @ r0
        # ties (a symmetric particle fits equally well several ways) go to the smallest motion
        angle = float(np.arccos(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))) if np.linalg.det(matrix) > 0 \
            else 4.0
        key = (len(i), -round(rmsd, 6) if len(i) else 0.0, -round(angle, 6))
        if best is None or key > best[0]:
            translation = (cf - cm @ r0.T) @ r1.T + t1
            best = (key, Superposition(matrix, translation, bool(np.linalg.det(r0) < 0), y, (i, j), rmsd))
    return best[1]
