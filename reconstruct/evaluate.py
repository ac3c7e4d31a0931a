"""A reconstruction against the simulator's truth: atoms (recall, precision, RMSD) and orientations.

One window cannot tell the particle's hand, and its frame of reference is whatever the initial
model fixed, so the reconstruction is superposed on the truth first, allowing a rotation, a
translation and an inversion:

* :func:`superpose_atoms` tries the 48 signed permutations of the axes (the initial model is an
  axis-aligned FCC lattice like the simulator's, so the two frames differ by one of them, up to
  small errors), and any extra starting rotations given; each start is polished by iterative
  closest points (Kabsch on pairs within 1.5 A) and the start that matches most atoms wins
  (:func:`btomo.kernels.superpose.superpose`).
* :func:`match_atoms` pairs atoms one to one (Hungarian) within ``within_A`` (1 A): recall =
  pairs / true atoms, precision = pairs / found atoms, RMSD over the pairs.
* :func:`recall_by_coordination`: the recall of the bulk, facet, edge and corner atoms apart.
* :func:`removed_sites_left_empty`: of the sites of surface atoms taken away from a cubic shape
  (the simulator's ``remove_surface``), the fraction the superposed reconstruction leaves empty.
  On a nearly cubic particle those sites are the only features that tell the cube's mates apart,
  so recall and precision alone cannot say whether the shape was found: the cube-symmetrised
  answer (every site filled) scores 0, and the same number of vacancies at wrong sites scores
  recall and precision near 1 - k / n all the same.
* :func:`orientation_errors` finds the fixed rotation between the two frames from the
  orientations themselves (robustly: candidates from single frames, the most consistent kept and
  refined by Procrustes over the frames closest to it),
  for both hands and, for a cubic particle, up to its 24 symmetry mates (and the in-plane half
  turn, which a centrosymmetric lattice's projection cannot show), and returns each frame's
  angular error; :func:`mate_labels` then says which mate each frame is on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from btomo.kernels.coverage import cubic_rotations
from btomo.kernels.crystal import coordination_numbers
from btomo.kernels.superpose import match_atoms as _match
from btomo.kernels.superpose import superpose

from .continuity import candidates
from .search import rot_z

__all__ = ["AtomScore", "match_atoms", "superpose_atoms", "removed_sites_left_empty", "orientation_errors",
           "mate_labels", "is_centrosymmetric", "recall_by_coordination"]


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
    return _match(np.asarray(found, dtype=np.float64).reshape(-1, 3), np.asarray(true, dtype=np.float64).reshape(-1, 3),
                  within_A)


def superpose_atoms(found: np.ndarray, true: np.ndarray, *, starts: list[np.ndarray] | None = None,
                    within_A: float = 1.0) -> AtomScore:
    """Superpose ``found`` on ``true`` (both (n, 3), A), allowing rotation, translation and
    inversion, and score the match (see the module)."""
    found = np.asarray(found, dtype=np.float64).reshape(-1, 3)
    true = np.asarray(true, dtype=np.float64).reshape(-1, 3)
    if len(found) == 0:
        return AtomScore(len(true), 0, 0, 0.0, 0.0, float("nan"), False, found)
    sup = superpose(found, true, allow_inversion=True, starts=starts, within_A=within_A)
    m = len(sup.pairs[0])
    return AtomScore(len(true), len(found), m, m / len(true), m / len(found), sup.rmsd_A, sup.inverted, sup.aligned)


def removed_sites_left_empty(aligned_A: np.ndarray, removed_A: np.ndarray, within_A: float = 1.0) -> float:
    """The fraction of ``removed_A`` (k, 3), the truth's empty sites, with no atom of ``aligned_A``
    (the found atoms in the truth's frame, :attr:`AtomScore.aligned_A`) within ``within_A``; NaN
    when there are none (see the module)."""
    removed = np.asarray(removed_A, dtype=np.float64).reshape(-1, 3)
    if len(removed) == 0:
        return float("nan")
    aligned = np.asarray(aligned_A, dtype=np.float64).reshape(-1, 3)
    if len(aligned) == 0:
        return 1.0
    d, _ = cKDTree(aligned).query(removed)
    return float((d > within_A).mean())


def recall_by_coordination(aligned_A: np.ndarray, true_A: np.ndarray, within_A: float = 1.0) -> dict[int, dict]:
    """Recall of the true atoms by their coordination number (neighbours within
    :data:`~btomo.kernels.crystal.PT_NEIGHBOUR_CUTOFF_A` in the truth): ``{cn: {"atoms": n,
    "recall": r}}``, matched one to one within ``within_A`` (A) as :func:`match_atoms` does.
    Says where the missed atoms are: the bulk (12), facets (9, 8), edges and corners (7 and
    fewer). ``aligned_A``: the found atoms in the truth's frame (:attr:`AtomScore.aligned_A`)."""
    true = np.asarray(true_A, dtype=np.float64).reshape(-1, 3)
    hit = np.zeros(len(true), dtype=bool)
    aligned = np.asarray(aligned_A, dtype=np.float64).reshape(-1, 3)
    if len(aligned) and len(true):
        hit[match_atoms(aligned, true, within_A)[1]] = True
    cn = coordination_numbers(true)
    return {int(c): {"atoms": int((cn == c).sum()), "recall": float(hit[cn == c].mean())} for c in np.unique(cn)}


def is_centrosymmetric(atoms: np.ndarray, tol_A: float = 0.1) -> bool:
    """Whether the atoms (about their centroid) map onto themselves under inversion."""
    x = np.asarray(atoms, dtype=np.float64) - np.mean(atoms, axis=0)
    d, _ = cKDTree(x).query(-x)
    return bool(np.all(d <= tol_A))


def orientation_errors(rec: np.ndarray, true: np.ndarray, *, cubic: bool = True, centrosymmetric: bool = False,
                       candidates: int = 64, seed: int = 0, iterations: int = 20,
                       trim: float = 0.5) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-frame angular error (deg) of reconstructed orientations ``rec`` against ``true`` (both
    (n, 3, 3), particle -> lab), after the fixed rotation between the two frames (see the module).

    The fixed rotation ``g`` is first taken from single frames (``candidates`` of them, the one
    giving the smallest median error wins), then refined as the rotation that best fits the
    frames closest to it: each iteration pairs every frame with its nearest symmetry mate of the
    truth and solves for ``g`` by orthogonal Procrustes over the fraction ``trim`` of frames with
    the smallest errors, so that no single frame's own error is carried into every other frame's.

    A centrosymmetric particle's projections are themselves 2-fold symmetric (the projection of
    ``-r`` is that of ``r`` turned 180 deg in the image plane), so with ``centrosymmetric`` each
    frame may also be off by that in-plane half turn. The lattice of an FCC crystal is always
    centrosymmetric, so with it the errors are those of the lattice's orientation (modulo the 48
    elements: the cube's 24 rotations, each with and without the half turn), whatever the
    particle's shape: a search against a centrosymmetric reference cannot tell the half turn, and
    without ``centrosymmetric`` each frame it got wrong counts as 90-180 deg off.

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
    if rec.shape != true.shape or rec.shape[1:] != (3, 3):
        raise ValueError(f"expected two (n, 3, 3) stacks of the same n, got {rec.shape} and {true.shape}")
    if not 0.0 < trim <= 1.0:
        raise ValueError(f"trim must be in (0, 1], got {trim}")
    sym = cubic_rotations() if cubic else np.eye(3)[None]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rec), size=min(candidates, len(rec)), replace=False)
    best = None
    for inverted in (False, True):
        t = rot_z(np.full(len(true), np.pi)) @ true if inverted else true
        mates = t[:, None] @ sym[None]  # (n, m, 3, 3): true_i s
        if centrosymmetric:
            flip = rot_z(np.full(len(t), np.pi)) @ t
            mates = np.concatenate([mates, flip[:, None] @ sym[None]], axis=1)
        for i in pick:
            err, _ = _nearest_mate(rec @ (rec[i].T @ t[i]), mates)
            med = float(np.median(err))
            if best is None or med < best[0]:
                best = (med, rec[i].T @ t[i], inverted, mates)
    med, g, inverted, mates = best
    keep_n = max(1, int(round(trim * len(rec))))
    for _ in range(iterations):
        err, j = _nearest_mate(rec @ g, mates)
        close = np.argsort(err)[:keep_n]
        target = mates[close, j[close]]  # (k, 3, 3)
        g_new = _procrustes(np.einsum("kji,kjl->il", rec[close], target))  # sum_k rec_k^T target_k
        err_new, _ = _nearest_mate(rec @ g_new, mates)
        if np.median(err_new) > np.median(err) - 1e-9:
            break
        g = g_new
    err, _ = _nearest_mate(rec @ g, mates)
    return err, g, inverted


def mate_labels(rec: np.ndarray, true: np.ndarray, g: np.ndarray, inverted: bool) -> np.ndarray:
    """Which of the 48 lattice mates each frame's orientation is, relative to the truth: the index
    ``24 f + k`` of ``Rz(pi)^f rec_i S_k`` nearest to ``true_i`` after the fixed rotation ``g``
    (``S_k`` the cube's rotations, :func:`~btomo.kernels.coverage.cubic_rotations`; ``g`` and
    ``inverted`` from :func:`orientation_errors` with ``centrosymmetric=True``).

    Frames that share a label sit on one mate of the particle; the fraction of frames on the
    most common label is 1 when the reconstruction has one consistent particle and about 1/48
    when each frame's mate is a guess (the map is then the particle averaged over the mates).
    """
    rec = np.asarray(rec, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    t = rot_z(np.full(len(true), np.pi)) @ true if inverted else true
    return np.argmax(np.einsum("nmab,nab->nm", candidates(rec) @ g, t), axis=1)


def _nearest_mate(lhs: np.ndarray, mates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Angle (deg) from each ``lhs_i`` to its nearest ``mates[i, j]``, and that ``j``."""
    tr = np.einsum("nab,nmab->nm", lhs, mates)
    j = np.argmax(tr, axis=1)
    cos = (tr[np.arange(len(lhs)), j] - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))), j


def _procrustes(m: np.ndarray) -> np.ndarray:
    """The rotation ``g`` maximising ``trace(g^T m)``."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt
