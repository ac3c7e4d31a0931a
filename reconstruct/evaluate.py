"""A reconstruction against the simulator's truth: atoms (recall, precision, RMSD) and orientations.

One window cannot tell the particle's hand, and its frame of reference is whatever the initial
model fixed, so the reconstruction is superposed on the truth first, allowing a rotation, a
translation and an inversion:

* :func:`superpose_atoms` tries the 48 signed permutations of the axes (the initial model is an
  axis-aligned FCC lattice like the simulator's, so the two frames differ by one of them, up to
  small errors), and any extra starting rotations given; each start is polished by iterative
  closest points (Kabsch on pairs within 1.5 A) and the start that matches most atoms wins.
* :func:`match_atoms` pairs atoms one to one (Hungarian) within ``within_A`` (1 A): recall =
  pairs / true atoms, precision = pairs / found atoms, RMSD over the pairs.
* :func:`orientation_errors` finds the fixed rotation between the two frames from the
  orientations themselves (robustly: candidates from single frames, the most consistent kept),
  for both hands and, for a cubic particle, up to its 24 symmetry mates, and returns each
  frame's angular error.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from btomo.kernels.coverage import cubic_rotations

from .search import angle_between, rot_z

__all__ = ["AtomScore", "match_atoms", "superpose_atoms", "orientation_errors", "is_centrosymmetric"]


@dataclass
class AtomScore:
    """Atoms found against true atoms after superposition."""

    true: int
    found: int
    matched: int
    recall: float
    precision: float
    rmsd_A: float
    inverted: bool
    aligned_A: np.ndarray  # the found atoms in the truth's frame

    def as_dict(self) -> dict:
        return {"true": self.true, "found": self.found, "matched": self.matched, "recall": self.recall,
                "precision": self.precision, "rmsd_A": self.rmsd_A, "inverted": self.inverted}


def match_atoms(found: np.ndarray, true: np.ndarray, within_A: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs ``(i_found, i_true)`` within ``within_A`` minimising the summed distance."""
    if len(found) == 0 or len(true) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    d = np.linalg.norm(found[:, None, :] - true[None, :, :], axis=2)
    cost = np.where(d <= within_A, d, 1e6)
    i, j = linear_sum_assignment(cost)
    ok = d[i, j] <= within_A
    return i[ok], j[ok]


def _kabsch(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Proper rotation ``r`` and translation ``t`` minimising ``|a r^T + t - b|``."""
    ca, cb = a.mean(0), b.mean(0)
    h = (a - ca).T @ (b - cb)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, cb - ca @ r.T


def _icp(x: np.ndarray, true: np.ndarray, tree: cKDTree, iterations: int = 20) -> np.ndarray:
    y = x + (true.mean(0) - x.mean(0))
    for _ in range(iterations):
        d, j = tree.query(y)
        ok = d <= 1.5
        if ok.sum() < 3:
            break
        r, t = _kabsch(y[ok], true[j[ok]])
        y_new = y @ r.T + t
        if np.abs(y_new - y).max() < 1e-6:
            y = y_new
            break
        y = y_new
    return y


def superpose_atoms(found: np.ndarray, true: np.ndarray, *, starts: list[np.ndarray] | None = None,
                    within_A: float = 1.0) -> AtomScore:
    """Superpose ``found`` on ``true`` (both (n, 3), A), allowing rotation, translation and
    inversion, and score the match (see the module)."""
    found = np.asarray(found, dtype=np.float64).reshape(-1, 3)
    true = np.asarray(true, dtype=np.float64).reshape(-1, 3)
    if len(found) == 0:
        return AtomScore(len(true), 0, 0, 0.0, 0.0, float("nan"), False, found)
    tree = cKDTree(true)
    rots = [np.diag(s) @ np.eye(3)[list(p)] for p in itertools.permutations(range(3))
            for s in itertools.product((1.0, -1.0), repeat=3)]
    rots += [np.asarray(r) for r in (starts or [])]
    best = None
    x0 = found - found.mean(0)
    for r in rots:
        y = _icp(x0 @ r.T, true, tree)
        i, j = match_atoms(y, true, within_A)
        key = (len(i), -float(np.sqrt(((y[i] - true[j]) ** 2).sum(1).mean())) if len(i) else 0.0)
        if best is None or key > best[0]:
            best = (key, y, bool(np.linalg.det(r) < 0), i, j)
    _, y, inverted, i, j = best
    rmsd = float(np.sqrt(((y[i] - true[j]) ** 2).sum(1).mean())) if len(i) else float("nan")
    return AtomScore(len(true), len(found), len(i), len(i) / len(true), len(i) / len(found), rmsd, inverted, y)


def is_centrosymmetric(atoms: np.ndarray, tol_A: float = 0.1) -> bool:
    """Whether the atoms (about their centroid) map onto themselves under inversion."""
    x = np.asarray(atoms, dtype=np.float64) - np.mean(atoms, axis=0)
    d, _ = cKDTree(x).query(-x)
    return bool(np.all(d <= tol_A))


def orientation_errors(rec: np.ndarray, true: np.ndarray, *, cubic: bool = True, centrosymmetric: bool = False,
                       candidates: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-frame angular error (deg) of reconstructed orientations ``rec`` against ``true`` (both
    (n, 3, 3), particle -> lab), after the fixed rotation between the two frames (see the module).

    A centrosymmetric particle's projections are themselves 2-fold symmetric (the projection of
    ``-r`` is that of ``r`` turned 180 deg in the image plane), so with ``centrosymmetric`` each
    frame may also be off by that in-plane half turn.

    Returns
    -------
    errors : (n,) deg
    g : (3, 3)
        ``rec_i g ~ true_i`` (times a symmetry mate; for the other hand, ``Rz(pi) true_i``).
    inverted : bool
        The reconstruction is of the other hand.
    """
    rec = np.asarray(rec, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    sym = cubic_rotations() if cubic else np.eye(3)[None]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rec), size=min(candidates, len(rec)), replace=False)
    best = None
    for inverted in (False, True):
        t = rot_z(np.full(len(true), np.pi)) @ true if inverted else true
        for i in pick:
            g = rec[i].T @ t[i]
            lhs = rec @ g  # (n, 3, 3)
            err = np.min([angle_between(lhs, t @ s) for s in sym], axis=0)
            if centrosymmetric:
                flip = rot_z(np.full(len(t), np.pi)) @ t
                err = np.minimum(err, np.min([angle_between(lhs, flip @ s) for s in sym], axis=0))
            med = float(np.median(err))
            if best is None or med < best[0]:
                best = (med, err, g, inverted)
    _, err, g, inverted = best
    return err, g, inverted
