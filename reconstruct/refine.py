"""The reconstruction of one window: the refinement loop of PRIME / SINGLE (paper, Methods).

``reconstruct_images`` runs, on pre-processed crops (:mod:`~btomo.reconstruct.preprocess`):

1. **Initial model**: a spherical FCC Pt particle of the measured diameter, its potential
   (Kirkland) low-passed at the reconstruction's limit (:func:`~btomo.reconstruct.atoms.model_map`),
   or the simulated map of given atoms (``initial_atoms_A``: a known or earlier model, such as
   the previous window's atoms). The spherical model is cubic: it cannot tell the 24
   rotations of the cube apart, and at low dose the refinement started from it stays close to
   the cube-symmetrised particle (docs/accuracy.md).
2. Each round:

   a. **orientations** by projection matching against the reference
      (:class:`~btomo.reconstruct.search.OrientationSearch`: 2500 directions, local refinement
      within 10 deg, every in-plane angle by FFT);
      **significance**: the same search on phase-randomised copies of the images (same power
      spectrum, same mask, no structure) gives the null distribution of the best score; only
      frames above its ``1 - frame_fpr`` quantile go into the map. At low dose most frames'
      best match is noise; leaving them out sharpens the map, and a window of pure noise then
      yields almost no frames instead of a copy of the reference;
   a'. with ``continuity`` and the window's frame indices, **mates chained in time**: frames a
      few ms apart share one mate of the lattice, each chained segment's mate chosen from its
      frames' summed scores (:mod:`~btomo.reconstruct.continuity`), each frame at the shift
      that keeps its lattice in phase with the map's (:func:`mate_shift`; with ``recentre`` the
      mates turn the map about the particle's centroid, which need not be a centre of the
      lattice's symmetry);
   b. **shifts** together with the orientations: the local pass of the search also tries every
      shift on a half-voxel grid within ``shift_px`` of the crop's centre (the tracked centre);
      a fixed grid, not one re-centred on the last round's shift, so that shifts cannot drift
      with the noise from round to round;
   c. **map** by Fourier insertion (:class:`~btomo.reconstruct.insertion.FourierInserter`) of
      the selected centred images, alternate ones into two half maps, their **FSC**;
   d. **atoms** in the (masked) map (:func:`~btomo.reconstruct.atoms.find_atoms`);
   e. the atoms' simulated map is the next **reference** (with ``recentre``, centred on their
      centroid as the crops are on the tracked particle's: a crystal's centroid need not be a
      centre of its lattice's symmetry).

   The convergence is logged per round: the median change of orientations (deg), the mean
   score, the atoms and how many match the last round's within 1 A.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from btomo.kernels.coverage import cubic_rotations
from btomo.kernels.crystal import PT_LATTICE_A, fcc_sphere_of_projected_diameter
from btomo.kernels.rotation import quat_from_matrix

from .atoms import AtomResult, find_atoms, model_map
from .config import ReconstructConfig
from .continuity import candidates as mate_candidates
from .continuity import choose_gauges, synchronise
from .ctf import Optics
from .insertion import FourierInserter, fsc, fsc_resolution
from .occupancy import lattice_occupancy
from .preprocess import Prepared, soft_disc
from .projection import Projector
from .search import OrientationSearch, SearchResult, _to_harmonics, angle_between, image_polar_samples, shift_trials

log = logging.getLogger(__name__)

SHIFT_STEP_PX = 0.5  # the shift trials' spacing, voxels: at most a quarter voxel off

__all__ = ["RoundLog", "Reconstruction", "InitialModelError", "shift_images", "initial_model", "phase_randomised",
           "select_significant", "reconstruct_images", "lattice_symmetry", "mate_shift"]


class InitialModelError(ValueError):
    """Given initial atoms that cannot be a first reference (too few, not finite, too large for the box)."""


@dataclass
class RoundLog:
    """Convergence of one refinement round."""

    round: int
    median_change_deg: float
    mean_score: float
    median_shift_px: float
    frames_in_map: int
    significance_threshold: float
    atoms: int
    atoms_kept: int
    atom_rms_change_A: float
    fsc_resolution_A: float
    model_correlation: float
    seconds: float


@dataclass
class Reconstruction:
    """The result of :func:`reconstruct_images` (maps ``[z, y, x]``, origin at ``box // 2``)."""

    map: np.ndarray
    half_maps: tuple[np.ndarray, np.ndarray]
    voxel_A: float
    rotations: np.ndarray  # (n, 3, 3) particle -> lab, of the frames used
    shifts_A: np.ndarray  # (n, 2) x, y of the particle in its crop, A
    scores: np.ndarray  # (n,)
    in_map: np.ndarray  # (n,) bool: passed the last round's significance test, inserted
    used: np.ndarray  # (n_frames,) bool: frames oriented (finite crops), the n above
    atoms: AtomResult
    fsc_freq_per_A: np.ndarray
    fsc: np.ndarray
    resolution_A: float
    rounds: list[RoundLog] = field(default_factory=list)
    prepared: Prepared | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def quaternions(self) -> np.ndarray:
        return quat_from_matrix(self.rotations)


def shift_images(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Images ``(n, b, b)`` moved by ``-shifts`` ``(n, 2)`` (x, y, px; a Fourier phase ramp): an
    image whose particle sits at ``+s`` comes out centred."""
    b = images.shape[1]
    f = np.fft.fftfreq(b)
    sx, sy = shifts[:, 0, None, None], shifts[:, 1, None, None]
    ph = np.exp(2j * math.pi * (sx * f[None, None, :] + sy * f[None, :, None]))
    return np.fft.ifft2(np.fft.fft2(images) * ph).real.astype(np.float32)


def phase_randomised(images: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copies of ``images`` ``(n, b, b)`` with their Fourier amplitudes kept and their phases
    replaced by those of white noise, then ``mask`` applied as to the images: the same spectrum
    (lattice rings included) with no structure to match."""
    phase = np.angle(np.fft.fft2(rng.standard_normal(images.shape)))
    out = np.fft.ifft2(np.abs(np.fft.fft2(images)) * np.exp(1j * phase)).real
    return (out * mask[None]).astype(np.float32)


def select_significant(scores: np.ndarray, null: np.ndarray, fpr: float,
                       min_frames: int) -> tuple[np.ndarray, float]:
    """Frames whose ``scores`` exceed the ``1 - fpr`` quantile of the ``null``
    images' scores (all when ``fpr`` is 1), at least the ``min_frames`` best. Returns the mask
    and the threshold."""
    thr = float(np.quantile(null, 1.0 - fpr)) if fpr < 1 else -math.inf
    keep = scores > thr
    want = min(min_frames, len(scores))
    if keep.sum() < want:
        log.warning("only %d of %d frames have a significant orientation (FPR %.3g): the map is made of the %d most "
                    "significant, and is not supported by the data", int(keep.sum()), len(keep), fpr, want)
        keep = np.zeros(len(scores), dtype=bool)
        keep[np.argsort(-scores)[:want]] = True
    return keep, thr


def initial_model(diameter_A: float, box: int, voxel_A: float, lowpass_A: float,
                  atoms_A: np.ndarray | None = None) -> np.ndarray:
    """A spherical FCC Pt particle of mean projected diameter ``diameter_A`` (the window's
    measured size, which reaches one atomic radius beyond the outer atom centres:
    :func:`~btomo.kernels.crystal.fcc_sphere_of_projected_diameter`), its potential low-passed
    (paper, Methods); with ``atoms_A`` ``(n, 3)`` (A), those atoms' instead, their centroid at the
    box centre (the tracked centre of the crops).

    Raises
    ------
    InitialModelError
        ``atoms_A`` is not ``(n, 3)`` with ``n >= 4``, holds non-finite values, or does not fit
        in the box (a ``ValueError``).
    """
    if atoms_A is None:
        atoms = fcc_sphere_of_projected_diameter(diameter_A)
    else:
        atoms = np.asarray(atoms_A, dtype=np.float64)
        if atoms.ndim != 2 or atoms.shape[1] != 3 or len(atoms) < 4 or not np.isfinite(atoms).all():
            raise InitialModelError(f"expected an initial model of at least 4 finite atoms (n, 3) in A, got "
                                    f"array of shape {atoms.shape}")
    atoms = atoms - atoms.mean(axis=0)
    reach = float(np.linalg.norm(atoms, axis=1).max())
    if atoms_A is not None and reach > 0.5 * box * voxel_A - 1.0:
        raise InitialModelError(f"the initial model reaches {reach:.1f} A from its centroid: expected at most "
                                f"{0.5 * box * voxel_A - 1.0:.1f} A to fit the box of {box} voxels of {voxel_A:.3f} A")
    return model_map(atoms, box, voxel_A, lowpass_A)


def _match_count(a: np.ndarray, b: np.ndarray, within_A: float = 1.0) -> tuple[int, float]:
    """Atoms of ``a`` with one of ``b`` within ``within_A``, and their RMS distance (A)."""
    if len(a) == 0 or len(b) == 0:
        return 0, float("nan")
    from scipy.spatial import cKDTree  # noqa: PLC0415

    d, _ = cKDTree(b).query(a)
    ok = d <= within_A
    return int(ok.sum()), float(np.sqrt((d[ok] ** 2).mean())) if ok.any() else float("nan")


def reconstruct_images(prep: Prepared, cfg: ReconstructConfig, *, xp: Any = np,
                       on_round: Callable[[RoundLog], None] | None = None,
                       initial_atoms_A: np.ndarray | None = None, optics: Optics | None = None,
                       frame_index: np.ndarray | None = None) -> Reconstruction:
    """Run the refinement loop on pre-processed crops (see the module).

    Parameters
    ----------
    prep : Prepared
        From :func:`~btomo.reconstruct.preprocess.prepare`.
    cfg : ReconstructConfig
    xp : module
        ``numpy`` or ``cupy`` for the orientation search.
    on_round : callable, optional
        Called with each round's :class:`RoundLog` (progress).
    initial_atoms_A : (n, 3) array, optional
        Atoms (A) whose simulated map is the first reference, instead of the spherical FCC
        particle (:func:`initial_model`).
    optics : Optics, optional
        The microscope's optics: the search compares the frames with the reference's sections
        through their contrast transfer. ``None``: the frames are taken as projections.
    frame_index : (n,) int, optional
        Each crop's acquisition frame index (the window's ``frame``), for
        ``cfg.continuity``; ``None``: the frames' order in time is unknown and their mates are
        not chained.
    """
    cfg.validate()
    t_all = time.perf_counter()
    images = prep.images[prep.finite]
    n, box, voxel = images.shape[0], prep.box, prep.voxel_A
    frames = None
    if frame_index is not None:
        frame_index = np.asarray(frame_index)
        if frame_index.shape != (len(prep.images),):
            raise ValueError(f"expected one frame index per crop, shape ({len(prep.images)},), got {frame_index.shape}")
        frames = frame_index[prep.finite]
    if n < 2:
        raise ValueError(f"need at least 2 usable frames to reconstruct, got {n}")
    k_max = min(0.5, voxel / cfg.lowpass_A)
    k_min = max(2.0 / box, voxel / cfg.band_low_A)
    transfer = None
    if optics is not None:
        pixel_A = voxel / prep.bin  # the window's pixels, in which the detector blur is given

        def transfer(k_per_voxel):
            return optics.transfer(np.asarray(k_per_voxel) / voxel, pixel_A)

        band = transfer(np.array([k_min, k_max]))
        log.info("contrast transfer of %s: %.3f at %.1f A, %.3f at %.2f A", optics, band[0], voxel / k_min, band[1],
                 voxel / k_max)
    search = OrientationSearch(box, k_min, k_max, directions=cfg.directions, local_deg=cfg.local_search_deg,
                               peaks=cfg.peaks, ring_filter=transfer, xp=xp)
    max_shift = cfg.shift_px / prep.bin
    ref = initial_model(prep.diameter_A, box, voxel, cfg.lowpass_A, initial_atoms_A)
    if initial_atoms_A is not None:
        log.info("initial model: the given %d atoms (instead of a spherical FCC particle)", len(initial_atoms_A))
    mask = soft_disc(box, min(prep.mask_radius_px, box / 2 - 2), edge=max(2.0, 0.1 * box))
    ball = _ball(box, min(prep.mask_radius_px, box / 2 - 2), max(2.0, 0.1 * box))
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(n, size=min(n, cfg.null_images), replace=False))
    trials = shift_trials(SHIFT_STEP_PX, max(1, math.ceil(max_shift / SHIFT_STEP_PX - 1e-9)))
    trials = trials[np.hypot(trials[:, 0], trials[:, 1]) <= max(max_shift, SHIFT_STEP_PX) + 1e-9]
    null_p = image_polar_samples(xp.asarray(phase_randomised(images[pick], mask, rng)), search.grid)
    null_q = _to_harmonics(null_p, search.grid, xp)
    mates, centre = None, np.zeros(3)  # the lattice's rotations onto itself, about centre (A)
    if cfg.mates:
        mates = cubic_rotations()  # the spherical model's lattice, about its centre (a site)
        if initial_atoms_A is not None:
            given = np.asarray(initial_atoms_A, dtype=np.float64)
            mates, centre = lattice_symmetry(given - given.mean(axis=0), fallback=(mates, centre))
    rot_prev = None
    atoms_prev = np.zeros((0, 3))
    rounds: list[RoundLog] = []
    seconds = {"search": 0.0, "insertion": 0.0, "atoms": 0.0}
    result = None
    for r in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        p = image_polar_samples(xp.asarray(images), search.grid)
        projector = Projector(ref)
        q = _to_harmonics(p, search.grid, xp)
        chain = cfg.continuity and frames is not None and mates is not None
        found = search.search(q, projector, samples=p, trials=trials, mates=mates, candidates=chain)
        null = search.search(null_q, projector, samples=null_p, trials=trials, mates=mates)
        keep, thr = select_significant(found.score, null.score, cfg.frame_fpr, cfg.min_frames)
        rot, shifts = found.rotations, found.shift
        if chain:
            # without recentre the map keeps its lattice's centre where the spherical model's site
            # put it, at its own centre: the mates turn about it and a moved frame keeps its shift
            about = centre / voxel if cfg.recentre else np.zeros(3)
            rot, shifts, keep = _chain_mates(found, keep, frames, mates, about, cfg, r,
                                             first=(r == 1 and initial_atoms_A is None))
        t2 = time.perf_counter()
        seconds["search"] += t2 - t0
        chosen = np.flatnonzero(keep)
        centred = shift_images(images[chosen], shifts[chosen])
        halves = []
        for parity in (0, 1):
            ins = FourierInserter(box, max_frequency=k_max, kernel_width=cfg.kernel_width)
            ins.insert(centred[parity::2], rot[chosen[parity::2]])
            halves.append(ins)
        whole = halves[0].merged(halves[1])
        vol = whole.reconstruct() * ball
        h1, h2 = halves[0].reconstruct() * ball, halves[1].reconstruct() * ball
        freq, curve = fsc(h1, h2)
        res_A = fsc_resolution(freq, curve, voxel, first=False)
        t3 = time.perf_counter()
        seconds["insertion"] += t3 - t2
        atoms = find_atoms(vol, voxel, lowpass_A=cfg.lowpass_A, min_separation_A=cfg.atom_min_separation_A,
                           mask_radius_A=prep.mask_radius_px * voxel)
        seconds["atoms"] += time.perf_counter() - t3
        change = _median_change(rot, rot_prev)
        kept, rms = _match_count(atoms.positions_A, atoms_prev)
        entry = RoundLog(r, change, float(np.mean(found.score)), float(np.median(np.hypot(*shifts.T))),
                         len(chosen), thr, len(atoms.positions_A), kept, rms, res_A, atoms.model_correlation,
                         time.perf_counter() - t0)
        rounds.append(entry)
        log.info("round %d: orientations changed %.2f deg (median), score %.4f, shift %.2f px, %d of %d frames "
                 "significant (> %.2f), %d atoms (%d kept, %.2f A RMS), FSC 0.143 at %.2f A, map-model %.3f, %.1f s",
                 r, entry.median_change_deg, entry.mean_score, entry.median_shift_px, len(chosen), n, thr,
                 entry.atoms, kept, rms, res_A, atoms.model_correlation, entry.seconds)
        if on_round is not None:
            on_round(entry)
        result = Reconstruction(vol, (h1, h2), voxel, rot, shifts * voxel, found.score, keep,
                                prep.finite.copy(), atoms, freq / voxel, curve, res_A)
        rot_prev, atoms_prev = rot, atoms.positions_A
        if len(atoms.positions_A) == 0:
            log.warning("round %d found no atoms: the map is kept as the next reference", r)
            ref = vol
            continue
        model = atoms.positions_A
        if r <= cfg.occupancy_rounds and r < cfg.rounds:
            t4 = time.perf_counter()
            occ = lattice_occupancy(images[chosen], rot[chosen], shifts[chosen], model, voxel, k_min=k_min,
                                    k_max=k_max, max_radius_A=prep.mask_radius_px * voxel, transfer=transfer)
            seconds["occupancy"] = seconds.get("occupancy", 0.0) + time.perf_counter() - t4
            if occ.changed:
                model = occ.positions_A
            else:
                log.info("round %d: lattice occupancy skipped (%s)", r, occ.reason)
        if cfg.recentre:  # on the centroid, as the crops are (the tracked centre) and the initial model is
            centroid = model.mean(axis=0)
            model = model - centroid
            log.debug("round %d: the next reference is centred on its atoms' centroid (moved %.2f A)", r,
                      float(np.linalg.norm(centroid)))
        ref = model_map(model, box, voxel, cfg.lowpass_A)
        if cfg.mates:
            mates, centre = lattice_symmetry(model, fallback=(mates, centre))
    assert result is not None
    result.rounds = rounds
    result.prepared = prep
    seconds["total"] = time.perf_counter() - t_all
    result.seconds = seconds
    return result


def _chain_mates(found: SearchResult, keep: np.ndarray, frames: np.ndarray, mates: np.ndarray, centre: np.ndarray,
                 cfg: ReconstructConfig, r: int, first: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each frame's orientation moved onto the mate its chained segment shares (see
    :mod:`~btomo.reconstruct.continuity`), at the shift that keeps its lattice where it was
    (:func:`mate_shift`; ``centre`` (3,), voxels: the lattice's symmetry centre), and, in the
    first round from the spherical start, the map's frames cut to the largest segment. Returns
    the orientations, the shifts (voxels) and the frames kept."""
    sync = synchronise(found.rotations, frames, mates=mates, neighbours=cfg.continuity_neighbours,
                       max_residual_deg=cfg.continuity_max_residual_deg, margin_deg=cfg.continuity_margin_deg)
    on = sync.segment >= 0
    if not on.any():
        log.info("round %d: no frames chained in time (their orientations do not follow one rotation)", r)
        return found.rotations, found.shift, keep
    final = choose_gauges(sync.label, sync.segment, found.candidate_scores)
    rot = mate_candidates(found.rotations, mates)[np.arange(len(final)), final]
    shifts = mate_shift(found.rotations, found.shift, rot, centre)
    sizes = sync.sizes()
    log.info("round %d: %d frames chained in time in %d segments (largest %d; %.2f of the links agree), %.2f of "
             "them moved off their own best mate", r, on.sum(), len(sizes), sizes.max(), sync.agree,
             (final[on] != 0).mean())
    if first and cfg.continuity_bootstrap_frames and sizes.max() >= cfg.continuity_bootstrap_frames:
        largest = sync.segment == int(np.argmax(sizes))
        if (keep & largest).sum() >= cfg.min_frames:
            keep = keep & largest
            log.info("round %d: the first map is made of the largest segment's %d significant frames", r, keep.sum())
    return rot, shifts, keep


def mate_shift(rot: np.ndarray, shift: np.ndarray, mate_rot: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The shift (n, 2) at which a frame found at ``rot`` (n, 3, 3) and ``shift`` (n, 2) shows
    the map's lattice in the same place at ``mate_rot``, one of its lattice's symmetry mates,
    turned about the map's centre: ``shift + ((rot - mate_rot) centre)_xy``, with ``centre`` (3,)
    a centre of the lattice's symmetry (same length unit as the shifts). The map's centre is the
    particle's centroid, which need not be one (an irregular crystal's can be a voxel or more
    from any); the frame's lattice fringes, which fix its shift, then stay in phase with the map.
    """
    return np.asarray(shift, dtype=np.float64) + ((np.asarray(rot) - np.asarray(mate_rot)) @ np.asarray(centre))[:, :2]


def lattice_symmetry(atoms_A: np.ndarray, fallback: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The 24 rotations of the FCC lattice fitted to ``atoms_A`` (n, 3) onto itself, in the map's
    frame (``L S_g L^T`` with ``L`` the lattice's axes): the orientations that a lattice frame
    cannot tell apart but the particle's shape can; and the centre (3,) (A) they turn about, the
    centre of the lattice's cubic symmetry (a site or an octahedral hole, every half lattice
    constant along the cube's axes) nearest the map's centre. ``fallback`` (mates, centre) when
    no lattice fits."""
    from btomo.analysis.structure import fit_fcc_lattice  # noqa: PLC0415

    try:
        rot, origin, _ = fit_fcc_lattice(atoms_A)
    except ValueError as exc:
        log.warning("no FCC lattice fits the %d atoms (%s): the symmetry mates stay as they were", len(atoms_A), exc)
        return fallback
    half = PT_LATTICE_A / 2.0
    centre = origin + rot @ (half * np.round(rot.T @ -origin / half))
    return np.einsum("ab,gbc,dc->gad", rot, cubic_rotations(), rot), centre


def _median_change(rot: np.ndarray, prev: np.ndarray | None) -> float:
    """Median angle (deg) between two rounds' orientations, the smallest over the cube's 24
    symmetry mates (the initial model is cubic: until the map breaks its symmetry, a frame may
    move to an equivalent mate without changing anything)."""
    if prev is None:
        return float("nan")
    return float(np.median(np.min([angle_between(rot, prev @ s) for s in cubic_rotations()], axis=0)))


def _ball(box: int, radius: float, edge: float) -> np.ndarray:
    """A soft 3D ball (raised-cosine edge) about ``box // 2``."""
    g = np.arange(box) - box // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    t = np.clip((np.sqrt(x * x + y * y + z * z) - radius) / max(edge, 1e-9), 0.0, 1.0)
    return 0.5 + 0.5 * np.cos(np.pi * t)
