"""Breaking the cube's symmetry: which lattice sites the particle occupies, by marginal likelihood.

A lattice frame fixes a particle's orientation only modulo the 24 rotations of the cube: the
fringes look the same from every symmetry mate, and only the particle's shape (which sites of
the lattice are occupied) tells the mates apart. One raw frame at the paper's dose does that
weakly (docs/accuracy.md: the true mate scores best in about a third of the frames), so a
refinement that commits each frame to its single best orientation (PRIME's hard assignment)
stays on the cube-symmetrised particle when it starts from the paper's spherical FCC model.

This stage decides the shape from all frames at once instead. With each frame's orientation
``R_i`` (modulo the cube) and shift from the search, the particle is a set ``M`` of sites of
the FCC lattice fitted to the current atoms, and frame ``i`` under mate ``g`` is scored by
matched filtering: ``c[i, g, s]`` is the frame, whitened and filtered with one Pt atom's
projected potential (Kirkland), at the projection of site ``s`` rotated by the lattice's cube
rotation ``S_g`` about the site at the particle's centre. Treating the sites' responses as
independent Gaussian measurements of a site signal ``mu`` in noise ``sigma`` (both measured on
the frames: ``mu`` on the sites every mate occupies, ``sigma`` on the shell just outside the
particle), the log-likelihood of ``M`` with the mate of each frame unknown (uniform prior,
summed out) is

``J(M) = sum_i log( (1/24) sum_g exp( mu / sigma^2 * sum_{s in M} c[i, g, s] ) )
- n |M| mu^2 / (2 sigma^2)``.

``J`` is maximised over the occupancies by greedy ascent: each sweep computes the change of
``J`` for flipping every site and flips the best tenth of those that raise it (the best one
alone when flipping several together would lower ``J``). Flips change the surface only: a site
leaves when it has fewer than 12 occupied neighbours and joins when it has at least 3, so no
holes open inside and no atoms float outside (treating sites as independent overstates what a
buried site adds to a projection, where it shares a column with others).

Because the mates are summed out rather than chosen frame by frame, weak evidence from every
frame adds up. Measured on the 1000-frame irregular window at the paper's dose
(docs/accuracy.md): from its cube-symmetrised shape and the **true** orientations (each frame's
mate unknown) it recovers the crystal exactly (recall and precision 1.000); with the search's
orientations, whose errors are 12 / 22 / 39 deg (quartiles, modulo the cube), it moves the
shape part of the way (in the loop, 4 of 5 rounds: 0.82 / 0.87 -> 0.88 / 0.92 recall /
precision), but over-adds surface sites of a nearly cubic crystal (0.99 / 0.92 -> 0.97 / 0.89).
The orientation errors, not the mates, then limit it; the stage is off by default
(``occupancy_rounds``).

The occupied sites become the next round's reference; the sites that an atom of the current
model occupies keep that atom's refined position, new sites take the lattice position.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates
from scipy.spatial import cKDTree
from scipy.special import logsumexp

from btomo.analysis.structure import lattice_cube, neighbour_bonds
from btomo.kernels.crystal import PT_LATTICE_A, PT_NEIGHBOUR_CUTOFF_A, fcc_points
from btomo.kernels.potential import scattering_factor

log = logging.getLogger(__name__)

__all__ = ["OccupancyResult", "matched_filter", "lattice_candidates", "site_responses", "lattice_occupancy"]

UPSAMPLE = 2  # the filtered frames are sampled on a grid twice as fine as the voxels


@dataclass
class OccupancyResult:
    """The outcome of :func:`lattice_occupancy`.

    Attributes
    ----------
    positions_A : (m, 3)
        The occupied sites (A, map frame about the box centre).
    changed : bool
        False when the stage kept the input atoms (too few atoms or frames, or no signal).
    reason : str
        Why it kept them, or ``""``.
    candidates, start_sites, added, removed : int
        Lattice sites considered, sites the input atoms occupy, sites added and removed.
    sweeps : int
    log_likelihood_gain : float
        ``J`` at the end minus ``J`` of the input atoms' sites.
    site_snr : float
        ``mu / sigma``: one site's signal in one frame over its noise.
    mate_certainty : float
        Mean over frames of the largest posterior probability of a mate (1/24 when the model
        tells no mates apart, 1 when every frame's mate is certain).
    frames : int
    seconds : float
    """

    positions_A: np.ndarray
    changed: bool
    reason: str
    candidates: int = 0
    start_sites: int = 0
    added: int = 0
    removed: int = 0
    sweeps: int = 0
    log_likelihood_gain: float = 0.0
    site_snr: float = float("nan")
    mate_certainty: float = float("nan")
    frames: int = 0
    seconds: float = 0.0


def matched_filter(images: np.ndarray, voxel_A: float, k_min: float, k_max: float,
                   upsample: int = UPSAMPLE, transfer=None) -> np.ndarray:
    """The images ``(n, b, b)`` whitened by their mean radial power spectrum, filtered with one
    Pt atom's projected potential (its Fourier transform is the Kirkland scattering factor) as
    the microscope shows it (times ``transfer``, a function of cycles per voxel, when given:
    :mod:`~btomo.reconstruct.ctf`), band-limited to ``k_min..k_max`` (cycles per voxel), on a
    grid ``upsample`` times finer (Fourier padding). Returns ``(n, b * upsample, b * upsample)``
    float32."""
    n, b = images.shape[0], images.shape[-1]
    f = np.fft.fft2(np.asarray(images, dtype=np.float64))
    fy, fx = np.meshgrid(np.fft.fftfreq(b), np.fft.fftfreq(b), indexing="ij")
    k = np.hypot(fx, fy)  # cycles per voxel
    ring = np.rint(k * b).astype(int)
    power = (np.abs(f) ** 2).mean(axis=0)
    radial = np.bincount(ring.ravel(), power.ravel()) / np.maximum(np.bincount(ring.ravel()), 1)
    band = (k >= k_min) & (k <= k_max)
    atom = scattering_factor(k / voxel_A) * (1.0 if transfer is None else np.asarray(transfer(k)))
    filt = np.where(band, atom / np.maximum(radial[ring], 1e-30), 0.0)
    big = b * upsample
    out = np.zeros((n, big, big), dtype=np.complex128)
    o = (big - b) // 2
    out[:, o:o + b, o:o + b] = np.fft.fftshift(f * filt, axes=(1, 2))
    return (np.fft.ifft2(np.fft.ifftshift(out, axes=(1, 2))).real * upsample**2).astype(np.float32)


def lattice_candidates(atoms_A: np.ndarray, shell_A: float, max_radius_A: float,
                       lattice_A: float = PT_LATTICE_A) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The FCC lattice fitted to ``atoms_A`` (n, 3): its sites within ``shell_A`` beyond the atom
    farthest from the site nearest the atoms' centroid (the centre of the cube rotations), and
    never beyond ``max_radius_A`` from it.

    Returns
    -------
    sites : (m, 3)
        Candidate sites, A.
    centre : (3,)
        The site the cube rotations turn about, A.
    cube : (24, 3, 3)
        The lattice's cube rotations (lab frame).
    perm : (24, m)
        ``perm[g, s]``: the candidate that ``cube[g]`` takes site ``s`` to.
    """
    rot, centre, cube = lattice_cube(atoms_A, lattice_A)
    # the reach of the atoms bonded to at least 3 others (a stray atom does not widen the lattice)
    i, _ = neighbour_bonds(atoms_A, PT_NEIGHBOUR_CUTOFF_A)
    bonded = np.bincount(i, minlength=len(atoms_A)) >= 3
    body = atoms_A[bonded] if bonded.sum() >= 4 else atoms_A
    radius = min(float(np.linalg.norm(body - centre, axis=1).max()) + shell_A, max_radius_A)
    sites = centre + fcc_points(radius, lattice_A) @ rot.T
    tree = cKDTree(sites)
    perm = np.stack([tree.query((sites - centre) @ c.T + centre)[1] for c in cube])
    return sites, centre, cube, perm


def site_responses(filtered: np.ndarray, rotations: np.ndarray, shifts_px: np.ndarray, points_A: np.ndarray,
                   voxel_A: float, upsample: int = UPSAMPLE) -> np.ndarray:
    """The filtered frames ``(n, B, B)`` (:func:`matched_filter`) at the projections of
    ``points_A`` ``(..., 3)`` (A, about the box centre) turned by each frame's rotation ``(n, 3, 3)``
    (particle -> lab) and moved by its shift ``(n, 2)`` (x, y, voxels). Returns ``(n, ...)``
    float32 (cubic spline interpolation)."""
    n, big = filtered.shape[0], filtered.shape[-1]
    box = big // upsample
    flat = points_A.reshape(-1, 3)
    out = np.empty((n, len(flat)), dtype=np.float32)
    for i in range(n):
        p = flat @ rotations[i].T
        x = (box // 2 + p[:, 0] / voxel_A + shifts_px[i, 0]) * upsample
        y = (box // 2 + p[:, 1] / voxel_A + shifts_px[i, 1]) * upsample
        out[i] = map_coordinates(filtered[i], [y, x], order=3, mode="wrap")
    return out.reshape((n,) + points_A.shape[:-1])


def _logmeanexp(a: np.ndarray, axis: int) -> np.ndarray:
    return logsumexp(a, axis=axis) - math.log(a.shape[axis])


def lattice_occupancy(images: np.ndarray, rotations: np.ndarray, shifts_px: np.ndarray, atoms_A: np.ndarray,
                      voxel_A: float, *, k_min: float, k_max: float, max_radius_A: float,
                      shell_A: float = 3.0, lattice_A: float = PT_LATTICE_A, max_sweeps: int = 200,
                      flip_fraction: float = 0.1, min_snr: float = 0.02, min_bonds: int = 3,
                      transfer=None) -> OccupancyResult:
    """The lattice sites that maximise the marginal likelihood of the frames (see the module).

    Parameters
    ----------
    images : (n, b, b)
        Pre-processed crops (origin at ``b // 2``), those of the frames whose orientation is
        trusted (the significant ones).
    rotations : (n, 3, 3)
        Their orientations (particle -> lab), modulo the cube.
    shifts_px : (n, 2)
        The particle's position (x, y) in each crop, voxels.
    atoms_A : (m, 3)
        The current model (A, about the box centre): it fixes the lattice and is the start.
    voxel_A : float
        Voxel size, A.
    k_min, k_max : float
        The band used, cycles per voxel (the search's).
    max_radius_A : float
        No site beyond this distance from the centre (the mask), A.
    shell_A : float
        Candidate sites reach this far beyond the current model's outermost atom, A.
    lattice_A : float
        Lattice constant, A.
    max_sweeps : int
    flip_fraction : float
        Fraction of the sites that would raise ``J`` flipped together in one sweep.
    min_snr : float
        Below this measured site signal-to-noise ratio the input atoms are kept.
    min_bonds : int
        Fewest occupied nearest neighbours of a site that joins the particle.
    transfer : callable, optional
        The frames' contrast transfer (cycles per voxel -> factor) for the matched filter.
    """
    t0 = time.perf_counter()
    atoms_A = np.asarray(atoms_A, dtype=np.float64)
    n = len(images)
    if (np.ndim(images) != 3 or np.shape(rotations) != (n, 3, 3) or np.shape(shifts_px) != (n, 2)
            or atoms_A.ndim != 2 or atoms_A.shape[1] != 3):
        raise ValueError(f"expected images (n, b, b), rotations (n, 3, 3), shifts (n, 2) and atoms (m, 3), got "
                         f"{np.shape(images)}, {np.shape(rotations)}, {np.shape(shifts_px)} and {atoms_A.shape}")
    if len(atoms_A) < 13:
        return OccupancyResult(atoms_A, False, f"{len(atoms_A)} atoms: too few to fit a lattice")
    if n < 2:
        return OccupancyResult(atoms_A, False, f"{n} frames: too few")
    try:
        sites, centre, cube, perm = lattice_candidates(atoms_A, shell_A, max_radius_A, lattice_A)
    except ValueError as exc:
        return OccupancyResult(atoms_A, False, f"no lattice fits the atoms ({exc})")
    dist, near = cKDTree(sites).query(atoms_A)
    on_site = dist <= 0.5 * lattice_A / math.sqrt(2.0)
    start = np.zeros(len(sites), dtype=bool)
    start[near[on_site]] = True
    filtered = matched_filter(images, voxel_A, k_min, k_max, transfer=transfer)
    mates = np.einsum("gab,sb->gsa", cube, sites - centre) + centre  # (24, m, 3)
    c = site_responses(filtered, rotations, shifts_px, mates, voxel_A)  # (n, 24, m)
    # calibration: the signal on the sites every mate of the start occupies, the noise on those
    # no mate occupies
    core = start[perm].all(axis=0)
    outside = ~start[perm].any(axis=0)
    if core.sum() < 4 or outside.sum() < 4:
        return OccupancyResult(atoms_A, False, f"{core.sum()} core and {outside.sum()} outside sites: cannot "
                               "calibrate", candidates=len(sites), frames=n)
    c -= c[:, :, outside].mean()
    mu = float(c[:, :, core].mean())
    sigma = float(c[:, :, outside].std())
    snr = mu / sigma if sigma > 0 else 0.0
    if not snr >= min_snr:
        return OccupancyResult(atoms_A, False, f"site signal-to-noise {snr:.3f} below {min_snr}",
                               candidates=len(sites), frames=n, site_snr=snr)
    c *= mu / sigma**2
    penalty = n * mu**2 / (2.0 * sigma**2)

    def objective(occ: np.ndarray) -> tuple[float, np.ndarray]:
        lg = c[:, :, occ].sum(axis=2)
        return float(_logmeanexp(lg, 1).sum() - penalty * occ.sum()), lg

    # flips change the surface only: a site leaves when it has fewer than 12 occupied neighbours,
    # joins when it has at least ``min_bonds`` (no holes inside, no atoms floating outside)
    adjacency = np.zeros((len(sites), len(sites)), dtype=np.float32)
    adjacency[neighbour_bonds(sites, PT_NEIGHBOUR_CUTOFF_A * lattice_A / PT_LATTICE_A)] = 1.0
    occ = start.copy()
    j_start, lg = objective(occ)
    j = j_start
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        base = _logmeanexp(lg, 1)
        sign = np.where(occ, -1.0, 1.0).astype(np.float32)
        gain = np.empty(len(sites))
        for s0 in range(0, len(sites), 64):
            sl = slice(s0, s0 + 64)
            trial = lg[:, :, None] + c[:, :, sl] * sign[None, None, sl]
            gain[sl] = (_logmeanexp(trial, 1) - base[:, None]).sum(axis=0) - penalty * sign[sl]
        nb = adjacency @ occ.astype(np.float32)
        gain[np.where(occ, nb >= 12, nb < min_bonds)] = -np.inf
        if gain.max() <= 1e-6:
            break
        up = np.flatnonzero(gain > 1e-6)
        pick = up[np.argsort(-gain[up])[:max(1, int(flip_fraction * len(up)))]]
        new = occ.copy()
        new[pick] = ~new[pick]
        j_new, lg_new = objective(new)
        if j_new <= j and len(pick) > 1:
            new = occ.copy()
            new[pick[0]] = ~new[pick[0]]
            j_new, lg_new = objective(new)
        if j_new <= j:
            break
        occ, j, lg = new, j_new, lg_new
    post = np.exp(lg - lg.max(axis=1, keepdims=True))
    certainty = float((post.max(axis=1) / post.sum(axis=1)).mean())
    # the sites the input atoms occupy keep their refined positions
    placed = sites.copy()
    placed[near[on_site]] = atoms_A[on_site]
    positions = placed[occ]
    res = OccupancyResult(positions, True, "", len(sites), int(start.sum()), int((occ & ~start).sum()),
                          int((start & ~occ).sum()), sweeps, j - j_start, snr, certainty, n,
                          time.perf_counter() - t0)
    log.info("lattice occupancy: %d frames, %d candidate sites, site SNR %.3f; %d -> %d sites (+%d, -%d) in %d "
             "sweeps, log-likelihood +%.1f, mate certainty %.2f, %.1f s", n, res.candidates, snr, res.start_sites,
             len(positions), res.added, res.removed, sweeps, res.log_likelihood_gain, certainty, res.seconds)
    return res
