"""Atoms from a density map, and the map of an atomic model (SINGLE's model building).

:func:`find_atoms`:

1. **Correlate** the map with one Pt atom's potential (Kirkland, low-passed like the map): the
   matched filter (a locally normalised correlation peaks between atoms as well).
2. **Peaks** of the correlation, at least ``min_separation_A`` apart (greedy, best first), inside
   the mask.
3. **Threshold from the data**: Otsu's threshold on the peaks' correlations separates atoms from
   noise; then the threshold is moved over the candidates near it to maximise the correlation
   between the map and the model's simulated map (SINGLE does both).
4. **Sub-voxel positions**: a parabola through each peak and its two neighbours along each axis,
   then (:func:`refine_positions`) a least-squares fit of the whole model's map to the map: at
   1.5 A the atoms' potentials overlap, so a surface atom's peak is pulled towards its neighbours
   (the lattice of an exact map read 0.4 % small); Gauss-Newton steps on every position at once,
   each against the residual of all the others, remove that pull.

:func:`model_map` renders an atomic model as a map (the next round's reference).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from btomo.kernels.potential import potential_volume

log = logging.getLogger(__name__)

__all__ = ["AtomResult", "model_map", "otsu_threshold", "find_atoms", "refine_positions"]


def model_map(atoms_A: np.ndarray, box: int, voxel_A: float, lowpass_A: float) -> np.ndarray:
    """The potential (V) of atoms ``(n, 3)`` (x, y, z in A about the box centre), low-passed,
    ``[z, y, x]``; an empty model gives zeros."""
    if len(atoms_A) == 0:
        return np.zeros((box,) * 3)
    return potential_volume(np.asarray(atoms_A, dtype=np.float64), box, voxel_A, lowpass_A=lowpass_A)


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of ``values``: the cut that maximises the between-class variance."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2 or v.max() == v.min():
        return float(v.min()) if len(v) else 0.0
    hist, edges = np.histogram(v, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = (w0 * w1 * (m0 - m1) ** 2)[:-1]
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))  # a gap: every cut in it ties
    return float(0.5 * (edges[best[0] + 1] + edges[best[-1] + 1]))


def _correlation_map(vol: np.ndarray, template: np.ndarray, radius: float) -> np.ndarray:
    """Cross-correlation of ``vol`` with ``template`` (same box, centred), cut to a sphere of
    ``radius`` voxels and made zero-mean there, normalised by the map's global variance (the
    matched filter). Index ``s`` of the result is the map's voxel ``s``."""
    box = vol.shape[0]
    g = np.arange(box) - box // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    sphere = (x * x + y * y + z * z <= radius * radius).astype(np.float64)
    npts = sphere.sum()
    t = template * sphere
    t = (t - t.sum() / npts) * sphere
    t /= np.sqrt((t * t).sum())
    num = np.fft.irfftn(np.fft.rfftn(vol) * np.conj(np.fft.rfftn(np.fft.ifftshift(t))), s=vol.shape, axes=(0, 1, 2))
    return num / np.sqrt(max(float(((vol - vol.mean()) ** 2).mean()) * npts, 1e-300))


def _subvoxel(c: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Parabolic peak offsets (voxels, in (-0.5, 0.5)) along z, y, x at integer peaks ``idx``."""
    box = c.shape[0]
    out = np.zeros(idx.shape, dtype=np.float64)
    for ax in range(3):
        lo, hi = idx.copy(), idx.copy()
        lo[:, ax] = np.clip(lo[:, ax] - 1, 0, box - 1)
        hi[:, ax] = np.clip(hi[:, ax] + 1, 0, box - 1)
        c0 = c[tuple(idx.T)]
        cm = c[tuple(lo.T)]
        cp = c[tuple(hi.T)]
        den = cm - 2 * c0 + cp
        out[:, ax] = np.where(den < 0, 0.5 * (cm - cp) / np.where(den < 0, den, -1.0), 0.0)
    return np.clip(out, -0.5, 0.5)


@dataclass
class AtomResult:
    """Atoms found in a map.

    Attributes
    ----------
    positions_A : (n, 3)
        x, y, z in A about the box centre.
    scores : (n,)
        Their correlation with the atom's potential.
    threshold : float
        The chosen correlation threshold.
    otsu : float
        Otsu's threshold on the candidates.
    model_correlation : float
        Correlation of the model's map with the map (inside the mask) at the chosen threshold.
    candidates : int
        Peaks considered.
    """

    positions_A: np.ndarray
    scores: np.ndarray
    threshold: float
    otsu: float
    model_correlation: float
    candidates: int


def find_atoms(vol: np.ndarray, voxel_A: float, *, lowpass_A: float = 1.5, min_separation_A: float = 2.2,
               mask_radius_A: float | None = None, search_steps: int = 24, refine_iterations: int = 5) -> AtomResult:
    """Atoms of a map ``[z, y, x]`` (see the module).

    Parameters
    ----------
    vol : (box, box, box)
        The map, origin at ``box // 2``.
    voxel_A : float
        Voxel size, A.
    lowpass_A : float
        The map's resolution limit (the atom template is low-passed alike), A.
    min_separation_A : float
        Smallest distance between two atoms, A.
    mask_radius_A : float, optional
        Atoms are looked for within this radius of the centre only.
    search_steps : int
        Thresholds tried around Otsu's for the map-model correlation.
    refine_iterations : int
        Gauss-Newton steps of :func:`refine_positions` on the chosen atoms (0: parabolas only).
    """
    vol = np.asarray(vol, dtype=np.float64)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"expected a cubic map, got shape {vol.shape}")
    if not np.isfinite(vol).all():
        raise ValueError("the map holds NaN or infinite values")
    box = vol.shape[0]
    template = model_map(np.zeros((1, 3)), box, voxel_A, lowpass_A)
    corr = _correlation_map(vol, template, radius=max(1.5, 0.5 * min_separation_A / voxel_A + 0.5))
    g = np.arange(box) - box // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    r = np.sqrt(x * x + y * y + z * z) * voxel_A
    inside = r <= (mask_radius_A if mask_radius_A else 0.5 * (box - 4) * voxel_A)
    inside &= vol > 0  # an atom is a maximum of positive density
    # local maxima among the 26 neighbours (a wider footprint would let rounding to voxels put
    # two atoms 2.77 A apart closer than the separation); the separation is enforced below on
    # sub-voxel positions
    peaks = (corr == ndimage.maximum_filter(corr, size=3, mode="constant", cval=-np.inf)) & inside
    idx = np.argwhere(peaks)
    vals = corr[peaks]
    order = np.argsort(-vals)
    idx, vals = idx[order], vals[order]
    # greedy minimum separation on sub-voxel positions
    pos = (idx + _subvoxel(corr, idx) - box // 2)[:, ::-1] * voxel_A  # x, y, z in A
    keep: list[int] = []
    from scipy.spatial import cKDTree  # noqa: PLC0415

    tree = cKDTree(pos) if len(pos) else None
    taken = np.zeros(len(pos), dtype=bool)
    for i in range(len(pos)):
        if taken[i]:
            continue
        keep.append(i)
        for j in tree.query_ball_point(pos[i], min_separation_A):
            if j > i:
                taken[j] = True
    pos, vals = pos[keep], vals[keep]
    if len(pos) == 0:
        return AtomResult(np.zeros((0, 3)), np.zeros(0), float("nan"), float("nan"), float("nan"), 0)
    otsu = otsu_threshold(vals)
    n_otsu = int((vals >= otsu).sum())
    # thresholds: the candidate scores around Otsu's cut (counts from 0.5x to 2x its atoms)
    counts = sorted({int(round(n_otsu * f)) for f in np.geomspace(0.5, 2.0, search_steps)} | {n_otsu})
    counts = [c for c in counts if 1 <= c <= len(pos)]
    m = vol[inside] - vol[inside].mean()
    best = (-2.0, n_otsu)
    for c in counts:
        mm = model_map(pos[:c], box, voxel_A, lowpass_A)[inside]
        mm = mm - mm.mean()
        cc = float((m * mm).sum() / math.sqrt(max((m * m).sum() * (mm * mm).sum(), 1e-300)))
        if cc > best[0]:
            best = (cc, c)
    cc, c = best
    threshold = float(vals[c - 1])
    if refine_iterations > 0:
        pos = pos.copy()
        pos[:c] = refine_positions(vol, pos[:c], voxel_A, lowpass_A, iterations=refine_iterations, mask=inside)
        mm = model_map(pos[:c], box, voxel_A, lowpass_A)[inside]
        mm = mm - mm.mean()
        cc = float((m * mm).sum() / math.sqrt(max((m * m).sum() * (mm * mm).sum(), 1e-300)))
    log.info("atoms: %d candidates, Otsu %.3f (%d atoms), chosen %d atoms (threshold %.3f, map-model corr %.3f)",
             len(pos), otsu, n_otsu, c, threshold, cc)
    return AtomResult(pos[:c], vals[:c], threshold, otsu, cc, len(pos))


def refine_positions(vol: np.ndarray, positions_A: np.ndarray, voxel_A: float, lowpass_A: float, *,
                     iterations: int = 5, max_step_A: float = 0.25, mask: np.ndarray | None = None) -> np.ndarray:
    """Least-squares positions: minimise ``|vol - s sum_i T(x - p_i)|^2`` over the amplitude s
    and all positions p_i, with T one atom's potential low-passed at ``lowpass_A``.

    Each Gauss-Newton step moves atom i by ``grad C(p_i) / (s h)``, where ``C = R (x) T`` is the
    correlation of the current residual ``R`` with T (one FFT; its gradient by multiplying with
    ``2 pi i k``) and ``h = |dT/dx|^2``: the block-diagonal (atom by atom) Newton step, exact for
    well-separated atoms, and for touching ones each atom sees the others' tails through ``R``.
    Steps are capped at ``max_step_A``; ``mask`` (bool, like ``vol``) limits the amplitude fit.

    Returns
    -------
    (n, 3) x, y, z in A about the box centre.
    """
    pos = np.asarray(positions_A, dtype=np.float64).reshape(-1, 3).copy()
    if len(pos) == 0 or iterations <= 0:
        return pos
    box = vol.shape[0]
    t = model_map(np.zeros((1, 3)), box, voxel_A, lowpass_A)
    ft_t = np.conj(np.fft.rfftn(np.fft.ifftshift(t)))
    kz = np.fft.fftfreq(box)[:, None, None]
    ky = np.fft.fftfreq(box)[None, :, None]
    kx = np.fft.rfftfreq(box)[None, None, :]
    # h = sum_x (dT/dx)^2 in voxel units, by Parseval over the full spectrum (rfft: double the
    # inner columns)
    weight = np.full(kx.shape, 2.0)
    weight[..., 0] = 1.0
    if box % 2 == 0:
        weight[..., -1] = 1.0
    h = float(np.sum(weight * (2 * np.pi * kx) ** 2 * np.abs(ft_t) ** 2) / box**3)
    sel = np.ones(vol.shape, dtype=bool) if mask is None else mask
    for _ in range(iterations):
        mm = model_map(pos, box, voxel_A, lowpass_A)
        s = float((vol[sel] * mm[sel]).sum() / max((mm[sel] ** 2).sum(), 1e-300))
        if not s > 0:
            break
        fr = np.fft.rfftn(vol - s * mm) * ft_t
        # C(x) = sum_y R(y) T(y - x): its gradient along each axis, voxels^-1
        grads = [np.fft.irfftn(fr * (2j * np.pi * k), s=vol.shape, axes=(0, 1, 2)) for k in (kx, ky, kz)]
        coords = (pos[:, ::-1] / voxel_A + box // 2).T  # z, y, x voxel indices
        g = np.stack([ndimage.map_coordinates(gr, coords, order=1, mode="nearest") for gr in grads], axis=1)
        # C(p) = <R, T(. - p)> grows towards +grad at p: move along it
        step = g / (s * h) * voxel_A
        norm = np.linalg.norm(step, axis=1, keepdims=True)
        step *= np.minimum(1.0, max_step_A / np.maximum(norm, 1e-300))
        pos += step
    return pos
