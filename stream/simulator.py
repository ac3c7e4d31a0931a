"""The synthetic microscope: a GLC TEM session of etching Pt nanocrystals, with ground truth.

What it models (``docs/simulator.md`` has the physics and its sources):

* **Particles**: FCC Pt (a = 3.92 A) cut from the lattice as a sphere or a truncated octahedron.
* **Brownian motion**: rotational diffusion (D_r set directly, or Stokes-Einstein-Debye from a
  viscosity and the current size) and translation in x, y and along the beam inside a pocket with
  reflecting walls. The defocus follows the particle's height, so excursions away from the focal
  plane make the lattice fade through the partial-coherence envelope.
* **Oxidative etching**: a Poisson process at the set rate; each event removes one atom, chosen
  with probability ``exp(-selectivity * CN)``: islands, kinks and steps first.
* **Image formation**: projected potential from Kirkland's parameterisation (exact, in Fourier
  space), phase-object transmission, objective transfer at 300 kV with Cs = -11 um and slight
  overfocus (white atoms), partial spatial and temporal coherence, at the particle's own
  defocus; a ~10 nm water layer at the focal plane with a smooth random thickness (attenuation
  and mean inner potential) and an amorphous phase texture, imaged at the nominal defocus and
  multiplied in; oversampled waves binned to pixels, detector blur, then Poisson counting.
* **Cost**: the water background is tiled from a bank of pre-rendered tiles (each with its own
  independent Poisson draw), picked, shifted and flipped at random per tile and frame: the same
  distribution of counts and texture as a full rendering, without its cost. The image of each
  particle is rendered at full cost every frame over its neighbourhood and multiplied into the
  background's expected counts (tapered to 1 at the edge), together with the local attenuation
  of the smooth thickness map; the neighbourhoods are then counted exactly, so there is no
  seam. Outside them the tiles keep the mean thickness (the map moves the mean counts by well
  under 1 %).

Every random number comes from a generator seeded by ``(seed, purpose, frame)``: a seed gives the
same recording, bit for bit, whatever the number of worker processes.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft as sfft
from scipy import ndimage
from scipy.spatial import cKDTree

from btomo.kernels.crystal import (
    d_spacing,
    equivalent_diameter_A,
    fcc_cluster,
    plane_normals,
    projected_diameter_A,
    zone_axes,
)
from btomo.kernels.frames import fringe_truth
from btomo.kernels.optics import ObjectiveLens, electron_wavelength, interaction_constant, spatial_envelope
from btomo.kernels.potential import projected_potential
from btomo.kernels.rotation import quat_from_rotvec, quat_multiply, quat_to_matrix, random_quaternion

from .config import RunConfig, write_config
from .progress import NullReporter, Reporter
from .recording import RecordingWriter, crc32, encode_frame

log = logging.getLogger(__name__)

__all__ = [
    "ParticleTrack",
    "EtchEvent",
    "simulate_trajectories",
    "FrameRenderer",
    "frame_truth",
    "simulate",
    "SimulationResult",
]

K_BOLTZMANN = 1.380649e-23  # J/K
#: above this per-axis rotation variance in one frame (rad^2), <u(t+dt).u(t)> = exp(-var) < 0.05:
#: the orientation is drawn uniformly instead of composed from (very many) small steps
MAX_ROTATION_VAR = 3.0
#: mean inner potential of liquid water, V
WATER_INNER_POTENTIAL_V = 4.8
#: standard deviation of the amorphous phase of 10 nm of water at 1 A correlation length, rad.
#: From molecule-number fluctuations: 3.3 molecules/A^2 per 10 nm, ~0.094 rad A^2 each.
WATER_PHASE_STD_10NM = 0.08
WATER_CORRELATION_A = 1.0
#: width of the fade from a particle's single water tile into the tiled background, px
WATER_TAPER_PX = 16

#: x at which the shape transform of a sphere falls to half, over pi: tilt = 0.64 d / D
SHAPE_HALF_MAX = 0.64

_ZONES = {"110": (1, 1, 0), "100": (1, 0, 0), "111": (1, 1, 1), "112": (1, 1, 2)}
_PLANES = ((1, 1, 1), (2, 0, 0), (2, 2, 0))  # the lattice band of the paper: {111}..{220}


# --------------------------------------------------------------------------------------------
# Trajectories: motion and etching (cheap, sequential, in the main process)
# --------------------------------------------------------------------------------------------
@dataclass
class EtchEvent:
    """One atom leaving a particle.

    Attributes
    ----------
    t_s : float
        Time of the event, s.
    frame : int
        First frame without the atom.
    atom : int
        Atom id (row of the particle's initial atom table).
    cn : int
        Its coordination number when it left.
    n_after : int
        Atoms left after the event.
    """

    t_s: float
    frame: int
    atom: int
    cn: int
    n_after: int


@dataclass
class ParticleTrack:
    """Ground-truth trajectory of one particle over all frames.

    Attributes
    ----------
    atoms0 : (N, 3) float64
        Initial atom positions in the particle (body) frame, A; the row is the atom id.
    gone_frame : (N,) int64
        First frame without each atom (the frame count if it never leaves).
    events : list of EtchEvent
    origin_px : (F, 2) float64
        Body origin in the frame, (x, y) px (x = column, y = row).
    z_A : (F,) float64
        Height along the beam relative to the focal plane, A (adds to the defocus).
    quat : (F, 4) float64
        Orientation quaternions (body -> lab), scalar first.
    rot_diffusion : (F,) float64
        D_r in force at each frame, rad^2/s.
    """

    atoms0: np.ndarray
    gone_frame: np.ndarray
    events: list[EtchEvent]
    origin_px: np.ndarray
    z_A: np.ndarray
    quat: np.ndarray
    rot_diffusion: np.ndarray

    def present(self, frame: int) -> np.ndarray:
        """Boolean mask of the atoms present in ``frame``."""
        return self.gone_frame > frame

    def etch_step(self, frame: int) -> int:
        """Etching events that happened up to ``frame``."""
        return int(np.searchsorted([e.frame for e in self.events], frame, side="right"))

    def lab_atoms(self, frame: int) -> np.ndarray:
        """Atoms present in ``frame`` in lab coordinates relative to the body origin, A."""
        return self.atoms0[self.present(frame)] @ quat_to_matrix(self.quat[frame]).T


def _sed_rot_diffusion(n_atoms: int, viscosity: float, temperature: float, a: float) -> float:
    """Stokes-Einstein-Debye D_r = kT / (8 pi eta r^3), rad^2/s, r from the atom count."""
    r_m = 0.5 * equivalent_diameter_A(n_atoms, a) * 1e-10
    return K_BOLTZMANN * temperature / (8.0 * math.pi * viscosity * r_m**3)


def _reflect(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Fold positions back into [lo, hi] (reflecting walls)."""
    span = hi - lo
    y = np.mod(x - lo, 2.0 * span)
    return lo + np.where(y > span, 2.0 * span - y, y)


def _margin_px(cfg: RunConfig) -> float:
    """Closest a particle centre may come to the frame edge, px."""
    patch = patch_size_px(cfg)
    return float(min(max(cfg.frames.box_px, patch) / 2.0, min(cfg.acquisition.shape) / 2.0 - 1))


def patch_size_px(cfg: RunConfig) -> int:
    """Side of the neighbourhood rendered at full cost, px (a multiple of 16)."""
    if cfg.simulate.patch_px:
        return int(cfg.simulate.patch_px)
    extent_A = 10.0 * cfg.sample.diameter_nm + 2 * 12.0  # potential tails, delocalisation, taper
    return int(16 * math.ceil(extent_A / cfg.acquisition.pixel_size_A / 16))


def simulate_trajectories(cfg: RunConfig, n_frames: int | None = None) -> list[ParticleTrack]:
    """Brownian motion and etching of every particle, frame by frame (deterministic in the seed).

    Parameters
    ----------
    cfg : RunConfig
        Uses ``acquisition``, ``sample``, ``microscope`` and ``simulate.seed``.
    n_frames : int, optional
        Frames to simulate (default ``cfg.simulate.frames``).
    """
    s, acq = cfg.sample, cfg.acquisition
    n_frames = cfg.simulate.frames if n_frames is None else n_frames
    dt = 1.0 / acq.fps
    pix = acq.pixel_size_A
    rows, cols = acq.shape
    rng = np.random.default_rng([cfg.simulate.seed, 0])
    margin = _margin_px(cfg)
    lo_xy = np.array([margin, margin])
    hi_xy = np.array([cols - 1 - margin, rows - 1 - margin])
    half_z = 5.0 * s.z_range_nm  # A
    tracks = []
    for p in range(s.particles):
        atoms0 = fcc_cluster(s.diameter_nm, s.morphology, s.lattice_A, seed=cfg.simulate.seed * 1000 + p)
        n0 = len(atoms0)
        pairs = cKDTree(atoms0).query_pairs(r=3.41, output_type="ndarray")
        neighbours: list[list[int]] = [[] for _ in range(n0)]
        for i, j in pairs:
            neighbours[i].append(j)
            neighbours[j].append(i)
        cn = np.array([len(nb) for nb in neighbours], dtype=np.int64)
        present = np.ones(n0, dtype=bool)
        gone = np.full(n0, n_frames, dtype=np.int64)
        events: list[EtchEvent] = []
        next_t = rng.exponential(1.0 / s.etch_rate_atoms_s) if s.etch_rate_atoms_s > 0 else math.inf

        if p == 0:  # the particle of interest starts near the centre, in focus
            xy = np.array([cols / 2.0, rows / 2.0]) + rng.normal(0, 5.0, 2)
            z = 0.0
        else:
            xy = lo_xy + rng.random(2) * (hi_xy - lo_xy)
            z = (rng.random() - 0.5) * 2 * half_z
        xy = _reflect(xy, lo_xy, hi_xy)
        q = random_quaternion(rng)
        origin = np.empty((n_frames, 2))
        zs = np.empty(n_frames)
        quats = np.empty((n_frames, 4))
        drs = np.empty(n_frames)
        sd_xy = math.sqrt(2 * s.diffusion_xy_A2_s * dt) / pix
        sd_z = math.sqrt(2 * s.diffusion_z_A2_s * dt)
        for f in range(n_frames):
            t = f * dt
            while next_t <= t and present.sum() > s.min_atoms:
                cand = present & (cn < 12)
                if not cand.any():
                    cand = present
                idx = np.flatnonzero(cand)
                w = np.exp(-s.etch_selectivity * (cn[idx] - cn[idx].min()))
                i = int(rng.choice(idx, p=w / w.sum()))
                present[i] = False
                gone[i] = f
                for j in neighbours[i]:
                    cn[j] -= 1
                events.append(EtchEvent(float(next_t), f, i, int(cn[i]), int(present.sum())))
                next_t += rng.exponential(1.0 / s.etch_rate_atoms_s)
            if f > 0:
                var = 2 * drs[f - 1] * dt  # per-axis variance of the rotation in one frame, rad^2
                if var > MAX_ROTATION_VAR:
                    q = random_quaternion(rng)  # fully decorrelated within a frame
                else:
                    n_sub = max(1, math.ceil(var / 0.01))
                    for step in rng.normal(0, math.sqrt(var / n_sub), (n_sub, 3)):
                        q = quat_multiply(quat_from_rotvec(step), q)
                    q = q / np.linalg.norm(q)
                xy = _reflect(xy + rng.normal(0, sd_xy, 2), lo_xy, hi_xy)
                z = float(_reflect(np.array(z + rng.normal(0, sd_z)), -half_z, half_z)) if half_z > 0 else 0.0
            origin[f], zs[f], quats[f] = xy, z, q
            drs[f] = (
                _sed_rot_diffusion(int(present.sum()), s.viscosity_pa_s, s.temperature_K, s.lattice_A)
                if s.viscosity_pa_s > 0
                else s.rot_diffusion_rad2_s
            )
        tracks.append(ParticleTrack(atoms0, gone, events, origin, zs, quats, drs))
    return tracks


# --------------------------------------------------------------------------------------------
# Ground truth per frame
# --------------------------------------------------------------------------------------------
def projected_diameter_nm(lab_atoms: np.ndarray) -> float:
    """Equivalent-circle diameter of the projection along the beam (lab z), nm
    (:func:`~btomo.kernels.crystal.projected_diameter_A` of the atoms' x, y)."""
    return projected_diameter_A(lab_atoms[:, :2]) / 10.0


TRUTH_COLUMNS = [
    "frame", "t_s", "particle", "x_px", "y_px", "z_A", "qw", "qx", "qy", "qz",
    "zone_axis", "zone_angle_deg", "zone_axis_visible", "fringes_visible", "focus_envelope",
    "in_focus", "lattice_visible", "projected_diameter_nm", "n_atoms", "etch_step",
]


@functools.lru_cache(maxsize=1)
def _families() -> tuple[dict[str, np.ndarray], dict[tuple[int, int, int], np.ndarray]]:
    """Unit vectors of the zone axes and plane normals the truth looks at (computed once)."""
    return ({name: zone_axes(uvw) for name, uvw in _ZONES.items()}, {hkl: plane_normals(hkl) for hkl in _PLANES})


def frame_truth(cfg: RunConfig, track: ParticleTrack, frame: int, particle: int) -> dict:
    """The ground-truth row of one particle in one frame (columns :data:`TRUTH_COLUMNS`).

    * ``x_px``, ``y_px``: projected centroid of the atoms present (x = column, y = row, origin at
      the centre of pixel (0, 0)).
    * ``zone_axis`` / ``zone_angle_deg``: the nearest of <110>, <100>, <111>, <112> to the beam;
      ``zone_axis_visible`` when it is within the visibility angle.
    * ``fringes_visible``: some {111}, {200} or {220} plane is edge-on within its visibility
      angle: the tilt at which the sphere's shape transform ``3 (sin x - x cos x) / x^3``,
      ``x = pi D g sin(tilt)``, falls to half, i.e. ``0.64 d_hkl / D`` rad for a crystal of
      diameter D (or the set angle).
    * ``focus_envelope``: the spatial-coherence envelope at the {111} frequency at this height;
      ``in_focus`` when it is at least 0.5. ``lattice_visible`` = fringes and in focus.
    """
    s, mic = cfg.sample, cfg.microscope
    pix = cfg.acquisition.pixel_size_A
    rot = quat_to_matrix(track.quat[frame])
    lab = track.lab_atoms(frame)
    n_atoms = len(lab)
    centre = track.origin_px[frame] + lab[:, :2].mean(axis=0) / pix
    beam_body = rot[2]  # the lab z axis seen in the body frame
    diam_A = equivalent_diameter_A(n_atoms, s.lattice_A)
    fixed = math.radians(s.visibility_angle_deg) if s.visibility_angle_deg > 0 else None

    zones, planes = _families()
    best_zone, best_angle = "", 180.0
    for name, axes in zones.items():
        ang = math.degrees(math.acos(min(1.0, float(np.abs(axes @ beam_body).max()))))
        if ang < best_angle:
            best_zone, best_angle = name, ang
    zone_tol = fixed if fixed is not None else SHAPE_HALF_MAX * d_spacing((1, 1, 1), s.lattice_A) / diam_A
    fringes = False
    for hkl in _PLANES:
        tol = fixed if fixed is not None else SHAPE_HALF_MAX * d_spacing(hkl, s.lattice_A) / diam_A
        if float(np.abs(planes[hkl] @ beam_body).min()) < math.sin(tol):
            fringes = True
    lam = electron_wavelength(mic.voltage_kv)
    k111 = 1.0 / d_spacing((1, 1, 1), s.lattice_A)
    env = float(
        spatial_envelope(np.float64(k111), lam, mic.defocus_A + track.z_A[frame], mic.cs_um * 1e4,
                         mic.convergence_mrad * 1e-3)
    )
    q = track.quat[frame]
    return {
        "frame": frame,
        "t_s": frame / cfg.acquisition.fps,
        "particle": particle,
        "x_px": float(centre[0]),
        "y_px": float(centre[1]),
        "z_A": float(track.z_A[frame]),
        "qw": float(q[0]), "qx": float(q[1]), "qy": float(q[2]), "qz": float(q[3]),
        "zone_axis": best_zone,
        "zone_angle_deg": best_angle,
        "zone_axis_visible": int(math.radians(best_angle) < zone_tol),
        "fringes_visible": int(fringes),
        "focus_envelope": env,
        "in_focus": int(env >= 0.5),
        "lattice_visible": int(fringes and env >= 0.5),
        "projected_diameter_nm": projected_diameter_nm(lab),
        "n_atoms": n_atoms,
        "etch_step": track.etch_step(frame),
    }


# --------------------------------------------------------------------------------------------
# Image formation
# --------------------------------------------------------------------------------------------
@dataclass
class _Bank:
    """Pre-rendered background tiles, stored 2x2 periodically so any shift is a view."""

    counts: np.ndarray  # (K, 2t, 2t) uint16
    lam: np.ndarray  # (K, 2t, 2t) float32, expected counts
    tile: int


class FrameRenderer:
    """Renders frame ``f`` of a session from its trajectories (used in each worker process)."""

    BANK_TILES = 24

    def __init__(self, cfg: RunConfig, tracks: list[ParticleTrack]):
        self.cfg = cfg
        self.tracks = tracks
        self.lattice_truth: list[tuple[float, float, float]] = []  # of the last rendered frame, per particle
        acq, mic, s = cfg.acquisition, cfg.microscope, cfg.sample
        self.shape = tuple(acq.shape)
        self.pix = acq.pixel_size_A
        self.os = cfg.simulate.oversample
        self.sigma = interaction_constant(mic.voltage_kv)
        self.counts_per_unit = acq.dose_e_per_A2 * self.pix * self.pix  # e/px for intensity 1
        self.patch = min(patch_size_px(cfg), *self.shape)
        self.taper = max(2, self.patch // 12)
        self.thickness_A = self._thickness_map()
        self.mean_thickness_A = float(self.thickness_A.mean())
        # the water's attenuation where it is thicker or thinner than the tiles' mean
        self.attenuation_ratio = np.exp(
            -(self.thickness_A - self.mean_thickness_A) / (10.0 * s.liquid_mfp_nm)
        ).astype(np.float32)
        self._optics: dict[tuple[int, int], ObjectiveLens] = {}
        self._blur: dict[tuple[int, int], np.ndarray] = {}
        self.weight = self._taper_weight(self.patch, self.taper)
        self.bank = self._make_bank()
        # around each particle the water comes from a single bank tile, so that a crop box
        # around it holds no seam between tiles; it fades into the tiled background at its edge
        self.water_px = min(self.bank.tile, max(self.patch, cfg.frames.box_px + 2 * WATER_TAPER_PX))
        self.water_weight = self._taper_weight(self.water_px, min(WATER_TAPER_PX, self.water_px // 4))

    # -- building blocks ------------------------------------------------------------------
    def _thickness_map(self) -> np.ndarray:
        """Smooth random water thickness over the frame, A (correlation ~ 10 nm)."""
        s = self.cfg.sample
        mean = 10.0 * s.liquid_thickness_nm
        rows, cols = self.shape
        step = 16
        rng = np.random.default_rng([self.cfg.simulate.seed, 3])
        coarse = rng.standard_normal((rows // step + 3, cols // step + 3))
        coarse = ndimage.gaussian_filter(coarse, sigma=100.0 / (self.pix * step), mode="wrap")
        coarse = (coarse - coarse.mean()) / (coarse.std() + 1e-12)
        fine = ndimage.zoom(coarse, step, order=1)[:rows, :cols]
        return np.clip(mean * (1.0 + s.liquid_variation * fine), 0.0, None).astype(np.float32)

    def optics(self, shape: tuple[int, int]) -> ObjectiveLens:
        """The objective on a (fine) grid of ``shape``; the nominal defocus's transfer is kept."""
        if shape not in self._optics:
            mic = self.cfg.microscope
            self._optics[shape] = ObjectiveLens(
                shape, self.pix / self.os, wavelength_A=electron_wavelength(mic.voltage_kv),
                cs_A=mic.cs_um * 1e4, convergence_rad=mic.convergence_mrad * 1e-3,
                focal_spread_A=mic.focal_spread_A, cache_defocus_A=mic.defocus_A)
        return self._optics[shape]

    def _detector_mtf(self, shape: tuple[int, int]) -> np.ndarray:
        if shape not in self._blur:
            sig = self.cfg.microscope.detector_blur_px
            ky = np.fft.fftfreq(shape[0])[:, None]
            kx = np.fft.fftfreq(shape[1])[None, :]
            self._blur[shape] = np.exp(-2 * math.pi**2 * sig * sig * (ky * ky + kx * kx)).astype(np.float32)
        return self._blur[shape]

    @staticmethod
    def _taper_weight(n: int, width: int) -> np.ndarray:
        ramp = np.ones(n, dtype=np.float32)
        x = (np.arange(width) + 0.5) / width
        ramp[:width] = 0.5 - 0.5 * np.cos(math.pi * x)
        ramp[-width:] = ramp[:width][::-1]
        return np.outer(ramp, ramp)

    def _image(self, phase: np.ndarray, amp: np.ndarray | float, defocus_A: float) -> np.ndarray:
        """Intensity of the exit wave ``amp exp(i phase)`` through the objective (fine grid)."""
        psi = (amp * np.exp(1j * phase)).astype(np.complex64)
        wave = sfft.ifft2(sfft.fft2(psi) * self.optics(phase.shape).transfer(defocus_A))
        return (wave.real**2 + wave.imag**2).astype(np.float32)

    def intensity(
        self,
        shape: tuple[int, int],
        atoms_yx_A: np.ndarray | None,
        thickness_A: np.ndarray | float,
        defocus_A: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Image intensity (vacuum = 1) of a region, px grid ``shape``, float32.

        The particle and the water layer lie at different heights: the particle is imaged at its
        own defocus (``defocus_A``, with its partial-coherence envelope), the water at the nominal
        defocus of the focal plane. The two images multiply: exact to first order in the water's
        weak phase (the cross terms between waves scattered by both are dropped).

        Parameters
        ----------
        atoms_yx_A : (n, 2) array or None
            Atom positions (row, column) in A from the centre of the region's pixel (0, 0).
        thickness_A : array of ``shape`` or float
            Water thickness, A.
        defocus_A : float
            Defocus of the particle (Kirkland sign), A.
        """
        o = self.os
        fine = (shape[0] * o, shape[1] * o)
        fpix = self.pix / o
        s = self.cfg.sample
        inten = np.ones(fine, dtype=np.float32)
        t = np.asarray(thickness_A, dtype=np.float32)
        if s.liquid_thickness_nm > 0 and np.any(t > 0):
            t = np.broadcast_to(t, shape)
            t_fine = np.repeat(np.repeat(t, o, axis=0), o, axis=1) if o > 1 else t
            noise = rng.standard_normal(fine, dtype=np.float32)
            corr_px = WATER_CORRELATION_A / fpix
            ky = np.fft.fftfreq(fine[0])[:, None]
            kx = np.fft.fftfreq(fine[1])[None, :]
            g = np.exp(-2 * math.pi**2 * corr_px**2 * (ky * ky + kx * kx)).astype(np.float32)
            amorph = sfft.ifft2(sfft.fft2(noise) * g).real.astype(np.float32)
            # white noise of unit variance filtered by a unit-sum Gaussian: variance 1/(4 pi s^2)
            amorph *= WATER_PHASE_STD_10NM * s.liquid_texture * math.sqrt(4 * math.pi) * corr_px
            phase = (self.sigma * WATER_INNER_POTENTIAL_V) * t_fine + amorph * np.sqrt(t_fine / 100.0)
            amp = np.exp(-t_fine / (2.0 * 10.0 * s.liquid_mfp_nm))
            inten = self._image(phase, amp, self.cfg.microscope.defocus_A)
        if atoms_yx_A is not None and len(atoms_yx_A):
            shifted = atoms_yx_A + 0.5 * (o - 1) * fpix
            phase = self.sigma * projected_potential(shifted, fine, fpix, b_factor_A2=s.b_factor_A2)
            inten = inten * self._image(phase, 1.0, defocus_A)
        if o > 1:
            inten = inten.reshape(shape[0], o, shape[1], o).mean(axis=(1, 3))
        if self.cfg.microscope.detector_blur_px > 0:
            inten = sfft.irfft2(sfft.rfft2(inten) * self._detector_mtf(shape)[:, : shape[1] // 2 + 1], s=shape)
            inten = inten.astype(np.float32)
        return inten

    def _make_bank(self) -> _Bank:
        # large enough for the single-tile water square around a particle (crop box + fades)
        want = max(256, self.cfg.frames.box_px + 2 * WATER_TAPER_PX, self.patch)
        t = min(16 * math.ceil(want / 16), *self.shape)
        rng = np.random.default_rng([self.cfg.simulate.seed, 2])
        counts = np.empty((self.BANK_TILES, 2 * t, 2 * t), dtype=np.uint16)
        lam = np.empty((self.BANK_TILES, 2 * t, 2 * t), dtype=np.float32)
        for k in range(self.BANK_TILES):
            inten = self.intensity((t, t), None, self.mean_thickness_A, self.cfg.microscope.defocus_A, rng)
            lt = np.maximum(inten * self.counts_per_unit, 0).astype(np.float32)
            ct = np.minimum(rng.poisson(lt), 65535).astype(np.uint16)
            counts[k] = np.tile(ct, (2, 2))
            lam[k] = np.tile(lt, (2, 2))
        return _Bank(counts, lam, t)

    def _background(self, rng: np.random.Generator, want_lam: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Tile the frame from the bank: random tile, shift and flip per tile position."""
        rows, cols = self.shape
        b = self.bank
        t = b.tile
        counts = np.empty(self.shape, dtype=np.uint16)
        lam = np.empty(self.shape, dtype=np.float32) if want_lam else None
        oy, ox = (int(v) for v in rng.integers(0, t, 2))
        for y0 in range(-oy, rows, t):
            for x0 in range(-ox, cols, t):
                k = int(rng.integers(b.counts.shape[0]))
                ry, rx = (int(v) for v in rng.integers(0, t, 2))
                flip = int(rng.integers(4))
                sy = slice(max(y0, 0), min(y0 + t, rows))
                sx = slice(max(x0, 0), min(x0 + t, cols))
                ty = slice(ry + sy.start - y0, ry + sy.stop - y0)
                tx = slice(rx + sx.start - x0, rx + sx.stop - x0)
                for src, dst in ((b.counts, counts), (b.lam, lam)):
                    if dst is None:
                        continue
                    tile = src[k]
                    if flip & 1:
                        tile = tile[::-1]
                    if flip & 2:
                        tile = tile[:, ::-1]
                    dst[sy, sx] = tile[ty, tx]
        return counts, lam

    # -- one frame ------------------------------------------------------------------------
    def render(self, frame: int, want_clean: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Counts (uint16) of ``frame``, and its expected counts (float32) if ``want_clean``.

        The frame's expected counts start as the water background tiled from the bank. Around
        each particle, a square larger than the crop box takes its water from one bank tile (no
        seam between tiles there), fading into the tiled background at its edge; the local
        thickness's attenuation is applied once over these squares. Then each particle's own
        image (vacuum = 1, at its own defocus) multiplies in over its neighbourhood, tapered to 1
        at the edge, so that particles that meet both stay. The squares are counted afresh
        (Poisson); the rest keeps the bank's counts. The counts do not depend on ``want_clean``.
        """
        rng = np.random.default_rng([self.cfg.simulate.seed, 1, frame])
        self.lattice_truth = []
        counts, lam = self._background(rng, want_lam=True)
        b = self.bank
        squares: list[tuple[slice, slice, np.ndarray]] = []
        for track in self.tracks:  # the water around each particle
            ox, oy = track.origin_px[frame]
            sy, sx, ly, lx = self._square(ox, oy, self.water_px)
            if sy is None:
                continue
            k = int(rng.integers(b.counts.shape[0]))
            ry, rx = (int(v) for v in rng.integers(0, b.tile, 2))
            tile = b.lam[k, ry : ry + self.water_px, rx : rx + self.water_px]
            w = self.water_weight[ly, lx]
            lam[sy, sx] = w * tile[ly, lx] + (1.0 - w) * lam[sy, sx]
            squares.append((sy, sx, w))
        if not squares:
            return counts, (lam if want_clean else None)
        y0, y1 = min(q[0].start for q in squares), max(q[0].stop for q in squares)
        x0, x1 = min(q[1].start for q in squares), max(q[1].stop for q in squares)
        # the local thickness's attenuation, once over all squares (the tiles have the mean)
        wmax = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
        for sy, sx, w in squares:
            view = wmax[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0]
            np.maximum(view, w, out=view)
        lam[y0:y1, x0:x1] *= 1.0 + wmax * (self.attenuation_ratio[y0:y1, x0:x1] - 1.0)
        for track in self.tracks:  # each particle's image multiplies in
            ox, oy = track.origin_px[frame]
            sy, sx, ly, lx = self._square(ox, oy, self.patch)
            if sy is None:
                self.lattice_truth.append((math.nan, math.nan, math.nan))
                continue
            lab = track.lab_atoms(frame)
            n = self.patch
            py0, px0 = sy.start - ly.start, sx.start - lx.start
            # atom (row, column) in A from the patch's pixel (0, 0) centre
            yx = np.stack([(oy - py0) * self.pix + lab[:, 1], (ox - px0) * self.pix + lab[:, 0]], axis=1)
            defocus = self.cfg.microscope.defocus_A + float(track.z_A[frame])
            particle = self.intensity((n, n), yx, 0.0, defocus, rng)
            lam[sy, sx] *= 1.0 + self.weight[ly, lx] * (particle[ly, lx] - 1.0)
            area = math.pi * (5.0 * projected_diameter_nm(lab) / self.pix) ** 2
            self.lattice_truth.append(fringe_truth(particle, self.cfg.frames.box_px, self.pix, area,
                                                   self.cfg.sample.lattice_A))
        # count the squares afresh (a particle's patch lies inside its water square)
        region = lam[y0:y1, x0:x1]
        np.maximum(region, 0.0, out=region)
        mask = wmax > 0
        for sy, sx, _ in squares:  # the squares' outermost pixels have weight 0: count them too
            mask[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0] = True
        counts[y0:y1, x0:x1][mask] = np.minimum(rng.poisson(region[mask]), 65535).astype(np.uint16)
        return counts, (lam if want_clean else None)

    def _square(self, ox: float, oy: float, n: int):
        """Frame and local slices of the ``n``-px square aligned to pixels around (ox, oy) px.

        Returns ``(sy, sx, ly, lx)`` (frame rows, frame columns, and the same in the square), or
        four ``None`` when the square lies outside the frame.
        """
        rows, cols = self.shape
        py0, px0 = int(round(oy)) - n // 2, int(round(ox)) - n // 2
        sy = slice(max(py0, 0), min(py0 + n, rows))
        sx = slice(max(px0, 0), min(px0 + n, cols))
        if sy.stop <= sy.start or sx.stop <= sx.start:
            return None, None, None, None
        return sy, sx, slice(sy.start - py0, sy.stop - py0), slice(sx.start - px0, sx.stop - px0)


# --------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------
_WORKER: dict = {}


def _worker_init(cfg_dict: dict, tracks: list[ParticleTrack], subprocess: bool = False) -> None:
    if subprocess:  # the parent handles Ctrl-C (and flushes); a worker just stops with the pool
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    cfg = RunConfig.from_dict(cfg_dict)
    _WORKER["renderer"] = FrameRenderer(cfg, tracks)
    _WORKER["codec"] = cfg.simulate.codec
    _WORKER["clean"] = cfg.simulate.save_clean


def _render_chunk(frames: list[int]) -> list[tuple]:
    r: FrameRenderer = _WORKER["renderer"]
    out = []
    for f in frames:
        counts, lam = r.render(f, want_clean=_WORKER["clean"])
        data = encode_frame(counts, _WORKER["codec"])
        clean = None
        if lam is not None:
            cdata = encode_frame(lam, _WORKER["codec"])
            clean = (cdata, crc32(cdata))
        out.append((f, data, crc32(data), float(counts.mean()), clean, list(r.lattice_truth)))
    return out


def _rendered(cfg: RunConfig, tracks: list[ParticleTrack], chunks: list[list[int]], workers: int):
    """Yield rendered chunks in frame order.

    With several workers, at most ``2 * workers`` chunks are in flight: when the writer falls
    behind, rendering waits (backpressure), so memory stays bounded whatever the frame size. A
    worker that dies (killed, out of memory) raises ``BrokenProcessPool`` here instead of
    hanging; workers ignore SIGINT, so that Ctrl-C is handled once, by this process.
    """
    if workers == 1:
        _worker_init(cfg.to_dict(), tracks)
        yield from map(_render_chunk, chunks)
        return
    # one BLAS thread per worker: the workers are the parallelism. The executor starts its
    # processes lazily, at the first submit, so the environment stays set until it is shut down.
    env_keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in env_keys}
    os.environ.update({k: "1" for k in env_keys})
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                               initargs=(cfg.to_dict(), tracks, True))
    in_flight: deque = deque()
    todo = iter(chunks)
    try:
        for c in itertools.islice(todo, 2 * workers):
            in_flight.append(pool.submit(_render_chunk, c))
        while in_flight:
            batch = in_flight.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                in_flight.append(pool.submit(_render_chunk, nxt))
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
@dataclass
class SimulationResult:
    """What ``simulate`` made, for the CLI summary and the demo."""

    path: Path
    frames: int
    shape: tuple[int, int]
    seconds: float
    bytes_written: int
    mean_counts: float
    lattice_visible_fraction: list[float] = field(default_factory=list)
    atoms_start: list[int] = field(default_factory=list)
    atoms_end: list[int] = field(default_factory=list)
    etch_events: list[int] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


@contextlib.contextmanager
def _atomic(path: Path):
    """Yield a temporary path beside ``path``; move it into place only when the block succeeds,
    so that an interrupted run never leaves a truth file cut short."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_truth(cfg: RunConfig, tracks: list[ParticleTrack], out: Path) -> list[float]:
    from ase import Atoms  # noqa: PLC0415 - ASE only where atoms are written
    from ase.io import write as ase_write  # noqa: PLC0415

    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    n_frames = len(tracks[0].quat)
    visible = [0] * len(tracks)
    with _atomic(truth / "frames.csv") as tmp, open(tmp, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=TRUTH_COLUMNS)
        wr.writeheader()
        for f in range(n_frames):
            for p, tr in enumerate(tracks):
                row = frame_truth(cfg, tr, f, p)
                visible[p] += row["lattice_visible"]
                wr.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})
    with _atomic(truth / "etch_steps.csv") as tmp, open(tmp, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["particle", "step", "t_s", "frame", "atom", "cn", "n_atoms"])
        for p, tr in enumerate(tracks):
            for k, e in enumerate(tr.events, start=1):
                wr.writerow([p, k, f"{e.t_s:.6f}", e.frame, e.atom, e.cn, e.n_after])
    particles = []
    for p, tr in enumerate(tracks):
        steps = [0] + [e.frame for e in tr.events]
        images = []
        mask = np.ones(len(tr.atoms0), dtype=bool)
        for k, f in enumerate(steps):
            if k:  # after exactly k events (several can fall in one frame)
                mask[tr.events[k - 1].atom] = False
            a = Atoms(symbols=["Pt"] * int(mask.sum()), positions=tr.atoms0[mask])
            a.new_array("id", np.flatnonzero(mask).astype(np.int64))
            a.info.update(step=k, frame=int(f), t_s=float(f / cfg.acquisition.fps))
            images.append(a)
        with _atomic(truth / f"atoms_p{p}.xyz") as tmp:
            ase_write(tmp, images, format="extxyz")
        particles.append({
            "particle": p,
            "atoms_initial": int(len(tr.atoms0)),
            "atoms_final": int(tr.present(n_frames - 1).sum()),
            "etch_events": len(tr.events),
            "diameter_nm": cfg.sample.diameter_nm,
            "morphology": cfg.sample.morphology,
            "rot_diffusion_rad2_s_first": float(tr.rot_diffusion[0]),
            "rot_diffusion_rad2_s_last": float(tr.rot_diffusion[-1]),
            "atoms_file": f"atoms_p{p}.xyz",
        })
    with _atomic(truth / "particles.json") as tmp:
        tmp.write_text(json.dumps({"particles": particles}, indent=2))
    return [v / n_frames for v in visible]


LATTICE_TRUTH_COLUMNS = ["frame", "particle", "fringe_modulation", "fringe_angle_deg", "fringe_d_A"]


def _write_lattice_truth(truth: Path, rows: list[tuple]) -> None:
    """``truth/lattice.csv``: the lattice signal of each particle's noise-free image, per frame
    (:func:`btomo.kernels.frames.fringe_truth`; written once rendering is done)."""
    with _atomic(truth / "lattice.csv") as tmp, open(tmp, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(LATTICE_TRUTH_COLUMNS)
        for f, p, m, ang, d in rows:
            wr.writerow([f, p, f"{m:.6g}", f"{ang:.4f}", f"{d:.5f}"])


def simulate(cfg: RunConfig, out: str | Path, reporter: Reporter | None = None) -> SimulationResult:
    """Write a synthetic recording with its ground truth into ``out`` (see ``docs/recording.md``).

    Parameters
    ----------
    cfg : RunConfig
        Validated configuration; ``simulate``, ``acquisition``, ``microscope`` and ``sample`` are
        used.
    out : path
        New recording directory (must not hold a recording already).
    reporter : Reporter, optional
        Progress of the rendering, one update per frame.
    """
    reporter = reporter or NullReporter()
    out = Path(out)
    t0 = time.perf_counter()
    n_frames = cfg.simulate.frames
    tracks = simulate_trajectories(cfg)
    meta = {"source": "btomo simulate", "series": 1, "seed": cfg.simulate.seed,
            "dose_e_per_A2": cfg.acquisition.dose_e_per_A2}
    # the writer refuses a directory that holds a recording already: before anything is written
    writer = RecordingWriter(out, shape=cfg.acquisition.shape, dtype=np.uint16,
                             pixel_size_A=cfg.acquisition.pixel_size_A, fps=cfg.acquisition.fps,
                             codec=cfg.simulate.codec, block_frames=cfg.simulate.block_frames, meta=meta)
    write_config(cfg, out)
    # the truth depends only on the trajectories: written first, so an interrupted run has it too
    visible = _write_truth(cfg, tracks, out)
    clean_writer = None
    if cfg.simulate.save_clean:
        clean_writer = RecordingWriter(out / "truth" / "clean", shape=cfg.acquisition.shape, dtype=np.float32,
                                       pixel_size_A=cfg.acquisition.pixel_size_A, fps=cfg.acquisition.fps,
                                       codec=cfg.simulate.codec, block_frames=cfg.simulate.block_frames,
                                       meta={**meta, "content": "expected counts before Poisson noise"})
    workers = min(cfg.simulate.workers or os.cpu_count() or 1, n_frames)
    chunk = max(1, min(16, n_frames // (4 * workers) or 1))
    chunks = [list(range(i, min(i + chunk, n_frames))) for i in range(0, n_frames, chunk)]
    mean_counts = 0.0
    lattice_rows: list[tuple] = []
    reporter.start(n_frames, "simulate")
    log.info("simulating %d frames of %dx%d on %d worker(s)", n_frames, *cfg.acquisition.shape, workers)
    try:
        for batch in _rendered(cfg, tracks, chunks, workers):
            for f, data, crc, mean, clean, lattice in batch:
                lattice_rows.extend((f, p, *v) for p, v in enumerate(lattice))
                t_ns = round(f * 1e9 / cfg.acquisition.fps)
                writer.append_encoded(data, crc, frame_index=f, t_ns=t_ns)
                if clean_writer is not None and clean is not None:
                    clean_writer.append_encoded(clean[0], clean[1], frame_index=f, t_ns=t_ns)
                mean_counts += mean / n_frames
                reporter.update(1)
        writer.close(frames_expected=n_frames)
        _write_lattice_truth(out / "truth", lattice_rows)
        if clean_writer is not None:
            clean_writer.close()
    except BaseException:
        # interrupted or failed: keep what is rendered, durable and readable; never mark it complete
        for w in (writer, clean_writer):
            if w is not None and not w.closed:
                try:
                    w.abandon()
                except Exception:  # noqa: BLE001 - e.g. the disk is full: report, keep the first error
                    log.exception("%s: could not flush what was rendered", w.path)
        raise
    finally:
        reporter.end()
    seconds = time.perf_counter() - t0
    result = SimulationResult(
        path=out, frames=n_frames, shape=tuple(cfg.acquisition.shape), seconds=seconds,
        bytes_written=writer.bytes_written, mean_counts=mean_counts, lattice_visible_fraction=visible,
        atoms_start=[len(t.atoms0) for t in tracks], atoms_end=[int(t.present(n_frames - 1).sum()) for t in tracks],
        etch_events=[len(t.events) for t in tracks],
    )
    log.info("simulated %d frames in %.1f s (%.1f frames/s) into %s", n_frames, seconds, result.fps, out)
    return result
