"""Which mate each frame is on, from the continuity of the particle's rotation through a window.

A lattice frame fixes the crystal's orientation only modulo the lattice's symmetry: the cube's 24
rotations ``S_k`` (acting in the particle's frame) and, because a centrosymmetric lattice
projects the same turned by 180 deg in the image plane, that half turn ``Rz(pi)`` (acting in the
lab frame). The 48 candidates of a found orientation ``R`` are ``Rz(pi)^f R S_k``, labelled
``24 f + k``. At the paper's dose one frame tells them apart little better than chance, so a map
that takes each frame's best candidate is the particle averaged over its mates (measured:
docs/accuracy.md). But a window is a time series: between lattice frames a few ms apart the
particle turns a few degrees, while two candidates are at least 90 deg apart, so each frame's
candidate can be chained to its neighbours' without any frame telling mates apart:

* :func:`link` joins each frame to its next ``neighbours`` lattice frames (within ``max_gap``
  acquisition frames): the candidate of the later frame nearest the earlier one's orientation,
  kept when it is within ``max_residual_deg`` and at least ``margin_deg`` nearer than the next
  best (near a 2-fold zone axis the half turn and a mate coincide, and the margin drops such
  links).
* :func:`synchronise` gives every frame a label consistent with its links: along the most
  certain links first (a spanning forest), then each label by the majority of its links
  (iterated); the connected parts are the segments. Within a segment the frames share one mate;
  which mate (the segment's *gauge*: ``Rz(pi)^f0 C S_h`` for all its frames) the links cannot say.
* :func:`choose_gauges` picks each segment's gauge from its frames' scores at all 48 candidates
  against the current reference, summed over the segment: evidence far too weak in one frame
  adds up over hundreds.

Where the beam passes close to a 2-fold axis of the lattice, the half turn and a mate coincide,
and the path can go on straight or turn back onto the twin: both are continuous (turning back is
even a little closer), so a link across such a passage may join two stretches of different
mates. Measured on a Brownian window at the paper's dose (docs/accuracy.md): the largest segment
holds 75-90 % of its significant frames on one mate; cutting segments shorter and choosing each
piece's gauge from the scores did worse, because the scores against a reference still close to
cube-symmetric do not single out a piece's mate.

The labels compose as the direct product of the half turn (left) and the cube (right):
:func:`compose` gives a neighbour's label from a link, :func:`apply_gauge` a gauge to a label.
"""
from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass

import numpy as np

from btomo.kernels.coverage import cubic_rotations

from .search import angle_between

__all__ = ["LABELS", "candidates", "compose", "inverse", "apply_gauge", "link", "continuity",
           "Synchronised", "synchronise", "choose_gauges"]

log = logging.getLogger(__name__)

_CUBE = cubic_rotations()
#: candidates per orientation: the cube's 24 rotations, each with and without the half turn
LABELS = 2 * len(_CUBE)
_HALF = np.diag([-1.0, -1.0, 1.0])  # Rz(pi)


def _index(m: np.ndarray) -> int:
    return int(np.argmax(np.einsum("ab,gab->g", m, _CUBE)))


_MUL = np.array([[_index(a @ b) for b in _CUBE] for a in _CUBE])  # S_a S_b = S_MUL[a, b]
_INV = np.array([_index(a.T) for a in _CUBE])


def candidates(rot: np.ndarray, mates: np.ndarray | None = None) -> np.ndarray:
    """The 48 candidates ``Rz(pi)^f R S_k`` (label ``24 f + k``) of each orientation, (n, 48, 3, 3).

    ``mates`` (24, 3, 3): the lattice's rotations in the map's frame, ``L S_k L^T`` in the order
    of :func:`~btomo.kernels.coverage.cubic_rotations` (so that the labels compose alike);
    default the axis-aligned cube's."""
    mates = _CUBE if mates is None else np.asarray(mates, dtype=np.float64)
    if mates.shape != _CUBE.shape:
        raise ValueError(f"expected the lattice's 24 rotations, shape (24, 3, 3), got {mates.shape}")
    c = np.asarray(rot, dtype=np.float64)[:, None] @ mates[None]
    return np.concatenate([c, _HALF @ c], axis=1)


def compose(rel, label):
    """The label of a frame linked to one of label ``label`` by the relative label ``rel`` (that
    of the frame when the other is at label 0): half turns add, cube rotations multiply as
    ``S_rel S_label``."""
    rel, label = np.asarray(rel), np.asarray(label)
    return 24 * ((rel // 24 + label // 24) % 2) + _MUL[rel % 24, label % 24]


def inverse(rel):
    """The relative label of the other direction of a link."""
    rel = np.asarray(rel)
    return 24 * (rel // 24) + _INV[rel % 24]


def apply_gauge(gauge, label):
    """A label under the gauge ``gauge`` (every candidate ``C`` of the segment becomes
    ``Rz(pi)^f0 C S_h``): half turns add, the cube rotation multiplies on the right."""
    gauge, label = np.asarray(gauge), np.asarray(label)
    return 24 * ((gauge // 24 + label // 24) % 2) + _MUL[label % 24, gauge % 24]


def link(rot: np.ndarray, frames: np.ndarray, *, neighbours: int = 12, max_gap: int = 50,
         max_residual_deg: float = 25.0, margin_deg: float = 8.0,
         mates: np.ndarray | None = None) -> list[tuple[int, int, int, float]]:
    """Links ``(i, j, rel, residual_deg)`` between each frame ``i`` and its next lattice frames ``j``
    (see the module); ``rot`` (n, 3, 3) particle -> lab, ``frames`` (n,) acquisition indices,
    ``mates`` as in :func:`candidates`."""
    rot = np.asarray(rot, dtype=np.float64)
    frames = np.asarray(frames)
    if rot.shape != (len(frames), 3, 3):
        raise ValueError(f"expected (n, 3, 3) orientations for {len(frames)} frame indices, got {rot.shape}")
    order = np.argsort(frames, kind="stable")
    cand = candidates(rot, mates)
    edges = []
    for a, i in enumerate(order):
        for j in order[a + 1:a + 1 + neighbours]:
            if frames[j] - frames[i] > max_gap:
                break
            ang = angle_between(rot[i][None], cand[j])
            best, second = np.argsort(ang)[:2]
            if ang[best] <= max_residual_deg and ang[second] - ang[best] >= margin_deg:
                edges.append((int(i), int(j), int(best), float(ang[best])))
    return edges


@dataclass
class Synchronised:
    """Labels consistent along a window's links.

    Attributes
    ----------
    label : (n,) int
        Each frame's candidate (0-47), -1 where the frame has no link.
    segment : (n,) int
        Connected part of the links (-1: none); a segment's frames share one mate.
    links : int
        Links used.
    agree : float
        Fraction of the links the labels satisfy.
    """

    label: np.ndarray
    segment: np.ndarray
    links: int
    agree: float

    def sizes(self) -> np.ndarray:
        """Frames per segment."""
        return np.bincount(self.segment[self.segment >= 0])


def continuity(rot: np.ndarray, frames: np.ndarray, close_deg: float = 10.0, mates: np.ndarray | None = None) -> float:
    """The fraction of consecutive lattice frames (in acquisition order) with a candidate within
    ``close_deg`` of the earlier one's orientation: about 0.03 for independent orientations, 0.4
    for the simulator's default Brownian rotation at the paper's dose (measured)."""
    edges = link(rot, frames, neighbours=1, max_gap=np.iinfo(np.int64).max, max_residual_deg=180.0, margin_deg=0.0,
                 mates=mates)
    return float(np.mean([res <= close_deg for *_, res in edges])) if edges else 0.0


def synchronise(rot: np.ndarray, frames: np.ndarray, *, iterations: int = 10, min_continuity: float = 0.15,
                **link_kw) -> Synchronised:
    """Labels for the frames of a window from their links (:func:`link`, whose keywords pass
    through); see the module. A window whose :func:`continuity` is below ``min_continuity`` (its
    orientations do not follow one rotation: independent frames, or a rotation too fast for the
    frame rate) gets no labels."""
    n = len(rot)
    cont = continuity(rot, frames, mates=link_kw.get("mates"))
    if cont < min_continuity:
        log.info("continuity %.2f below %.2f: the frames' mates are not chained", cont, min_continuity)
        return Synchronised(np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64), 0, float("nan"))
    edges = link(rot, frames, **link_kw)
    adj: list[list[tuple[int, int, float]]] = [[] for _ in range(n)]
    for i, j, rel, res in edges:
        adj[i].append((j, rel, res))
        adj[j].append((i, int(inverse(rel)), res))
    label = np.full(n, -1, dtype=np.int64)
    order = np.argsort(np.asarray(frames), kind="stable")
    for root in order:  # spanning forest, most certain (smallest residual) links first
        if label[root] >= 0 or not adj[root]:
            continue
        label[root] = 0
        heap = [(res, int(root), j, rel) for j, rel, res in adj[root]]
        heapq.heapify(heap)
        while heap:
            _, i, j, rel = heapq.heappop(heap)
            if label[j] >= 0:
                continue
            label[j] = compose(rel, label[i])
            for k, rel2, res2 in adj[j]:
                if label[k] < 0:
                    heapq.heappush(heap, (res2, j, k, rel2))
    for _ in range(iterations):  # each label by the majority of its links
        changed = 0
        for i in range(n):
            if not adj[i]:
                continue
            votes = np.bincount([int(compose(inverse(rel), label[j])) for j, rel, _ in adj[i]], minlength=LABELS)
            if votes.max() > votes[label[i]]:
                label[i] = int(np.argmax(votes))
                changed += 1
        if not changed:
            break
    # segments: connected parts over the links the labels satisfy
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    agree = 0
    for i, j, rel, _ in edges:
        if label[j] == compose(rel, label[i]):
            parent[find(i)] = find(j)
            agree += 1
    roots = np.array([find(x) for x in range(n)])
    keep = (label >= 0) & (np.bincount(roots, minlength=n)[roots] >= 2)
    segment = np.full(n, -1, dtype=np.int64)
    if keep.any():
        segment[keep] = np.unique(roots[keep], return_inverse=True)[1]
    label = np.where(keep, label, -1)
    return Synchronised(label, segment, len(edges), agree / len(edges) if edges else float("nan"))


def choose_gauges(label: np.ndarray, group: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each frame's final candidate: within each group (a segment, -1: none) the gauge
    that maximises the group's summed ``scores`` (n, 48) (each frame at every candidate of its
    orientation, :attr:`~btomo.reconstruct.search.SearchResult.candidate_scores`); frames
    outside any group keep candidate 0, their own best orientation."""
    scores = np.asarray(scores)
    if scores.shape != (len(label), LABELS):
        raise ValueError(f"expected scores of shape ({len(label)}, {LABELS}), got {scores.shape}")
    final = np.zeros(len(label), dtype=np.int64)
    table = apply_gauge(np.arange(LABELS)[:, None], np.arange(LABELS)[None, :])  # [gauge, label]
    for g in np.unique(group[group >= 0]):
        idx = np.flatnonzero(group == g)
        total = scores[idx[:, None], table[:, label[idx]].T].sum(axis=0)
        final[idx] = table[int(np.argmax(total)), label[idx]]
    return final

