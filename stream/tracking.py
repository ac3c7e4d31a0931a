"""Particle detection on full frames and tracks with stable ids.

Detection (paper, Methods: "the center of mass of each Pt nanocrystal was tracked ... after
applying a low-pass filter with a 2.3 A cutoff and a nonlinear filter") runs on cheap binned
frames: every ``detect_stride``-th frame is binned ``detect_bin`` x ``detect_bin`` (which is the
low-pass: 8 x 0.358 A = 2.9 A pixels); the last ``detect_frames`` binned frames are averaged
(a 2 nm particle is only ~3 sigma above the shot noise in one frame); a difference of Gaussians
matched to the particle's size picks dark blobs, the nonlinear step is a robust (median / MAD)
z-score, and local maxima above ``detect_snr`` are candidates. The accurate, per-frame position
comes from the crop-level measurement of :mod:`btomo.stream.frames`; this module keeps the tracks.

A track is updated every frame by its crop's measurement through a Kalman filter on a random
walk (process noise from ``track_diffusion_A2_s``). A track whose measurement stays weak for
``lost_frames`` frames goes *dormant* (the particle left focus or the field): it keeps its id and
last position for ``track_memory_s``, and a new detection within ``reacquire_nm`` of it revives
it under the same id.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from btomo.kernels.frames import bin_frame, gaussian_transfer
from btomo.kernels.xp import array_namespace, fft_module, to_numpy

log = logging.getLogger(__name__)

__all__ = ["Track", "Detector", "Tracker"]


@dataclass
class Track:
    """One particle followed across frames.

    Attributes
    ----------
    id : int
        Stable id (the ``particle`` column of ``frames.csv``).
    x, y : float
        Filtered centre, full-frame px (x = column, y = row).
    var : float
        Variance of the centre per axis, px^2.
    """

    id: int
    x: float
    y: float
    var: float
    born_frame: int
    last_frame: int
    state: str = "active"
    weak: int = 0
    presence: float = 2.0
    frames: int = 0
    lattice_frames: int = 0
    diameters_px: deque = field(default_factory=lambda: deque(maxlen=50))
    correlations: deque = field(default_factory=lambda: deque(maxlen=50))
    previous_crop: object = None
    previous_frame: int = -1
    rejected: int = 0
    #: rows waiting for the fixed-lag smoother: (row, filtered x, y, filtered var, predicted var)
    pending: deque = field(default_factory=deque)
    predicted_var: float = 0.0

    def predict(self, q_px2: float, frames: int = 1) -> None:
        self.var += q_px2 * max(frames, 1)
        self.predicted_var = self.var

    def hold(self, row: object) -> None:
        """Keep ``row`` (this frame's) with the filter's state for the smoother."""
        self.pending.append((row, self.x, self.y, self.var, self.predicted_var))

    def release(self, lag: int, everything: bool = False) -> list[tuple[object, float, float]]:
        """Rows older than ``lag`` frames (all if ``everything``), each with its smoothed centre.

        Fixed-lag Rauch-Tung-Striebel smoothing for the random walk: going back from the newest
        held frame, ``s[h] = f[h] + (P[h] / P_pred[h+1]) (s[h+1] - f[h])``, where ``f``, ``P``
        are the filtered centre and variance and ``P_pred`` the variance predicted before the
        update (per axis, the same for x and y).
        """
        out: list[tuple[object, float, float]] = []
        while self.pending and (everything or len(self.pending) > lag):
            items = self.pending
            _, sx, sy, _, p_next = items[-1]
            for h in range(len(items) - 2, -1, -1):
                _, fx, fy, pf, pp = items[h]
                c = pf / p_next if p_next > 0 else 0.0
                sx, sy = fx + c * (sx - fx), fy + c * (sy - fy)
                p_next = pp
            row = items.popleft()[0]
            out.append((row, sx, sy))
        return out

    def update(self, mx: float, my: float, r_px2: float, gate: float = 5.0) -> bool:
        """Kalman update with a measurement of variance ``r_px2``; a measurement further than
        ``gate`` sigmas is rejected (counted) and False returned."""
        s = self.var + r_px2
        if (mx - self.x) ** 2 + (my - self.y) ** 2 > gate * gate * 2 * s:
            self.rejected += 1
            return False
        k = self.var / s
        self.x += k * (mx - self.x)
        self.y += k * (my - self.y)
        self.var *= 1.0 - k
        return True

    def diameter_px(self, default: float) -> float:
        return float(np.median(self.diameters_px)) if len(self.diameters_px) >= 5 else default


class Detector:
    """Dark-blob detection on averaged binned frames (see the module).

    Parameters
    ----------
    shape : (rows, columns)
        Full frame shape, px.
    radius_px : float
        Expected particle radius, full-frame px.
    bin : int
        Binning factor.
    frames : int
        Binned frames averaged per detection.
    snr : float
        Detection threshold, robust z-score.
    separation_px : float
        Minimum distance between two detections, full-frame px.
    """

    def __init__(self, shape: tuple[int, int], radius_px: float, *, bin: int = 8, frames: int = 8,
                 snr: float = 5.0, separation_px: float = 80.0):
        self.shape = shape
        self.bin = max(1, min(bin, shape[0] // 4, shape[1] // 4))
        self.frames = frames
        self.snr = snr
        self.separation_px = separation_px
        self.radius_px = radius_px
        self.ring: deque = deque(maxlen=frames)
        self._filter = None

    def add(self, frame) -> None:
        """Bin ``frame`` into the average (call every ``detect_stride``-th frame)."""
        self.ring.append(bin_frame(frame, self.bin))

    @property
    def ready(self) -> bool:
        return len(self.ring) >= self.frames

    def detect(self) -> list[tuple[float, float, float]]:
        """Candidates ``(x, y, z)`` in full-frame px (pixel-centre origin), strongest first."""
        if not self.ring:
            return []
        xp = array_namespace(self.ring[0])
        fft = fft_module(xp)
        avg = self.ring[0].copy()
        for b in list(self.ring)[1:]:
            avg += b
        avg /= np.float32(len(self.ring))
        if self._filter is None or self._filter.shape != avg.shape:
            rb = self.radius_px / self.bin
            self._filter = (gaussian_transfer(avg.shape, max(0.7 * rb, 0.7), xp)
                            - gaussian_transfer(avg.shape, max(3.0 * rb, 2.0), xp))
        # dark blobs: the negative of the band-passed average
        dog = -fft.ifft2(fft.fft2(avg - avg.mean()) * self._filter).real
        med = xp.median(dog)
        mad = float(xp.median(xp.abs(dog - med))) * 1.4826 or 1.0
        z = (dog - med) / mad
        # local maxima over a window of the separation (separable running maximum)
        half = max(1, int(self.separation_px / self.bin / 2))
        m = z
        for axis in (0, 1):
            acc = m
            for d in range(1, half + 1):
                acc = xp.maximum(acc, xp.maximum(xp.roll(m, d, axis), xp.roll(m, -d, axis)))
            m = acc
        # ignore the border where the filter wraps around
        edge = max(1, int(math.ceil(self.radius_px / self.bin)))
        peaks = (z >= m) & (z >= self.snr)
        peaks[:edge, :] = False
        peaks[-edge:, :] = False
        peaks[:, :edge] = False
        peaks[:, -edge:] = False
        zy, zx = (to_numpy(a) for a in xp.nonzero(peaks))
        zs = to_numpy(z[peaks])
        order = np.argsort(-zs)
        c = (self.bin - 1) / 2.0  # a binned pixel's centre in full-frame px
        out: list[tuple[float, float, float]] = []
        for i in order:
            x, y = zx[i] * self.bin + c, zy[i] * self.bin + c
            if all((x - a) ** 2 + (y - b) ** 2 >= self.separation_px**2 for a, b, _ in out):
                out.append((float(x), float(y), float(zs[i])))
        return out


class Tracker:
    """Tracks with stable ids (see the module).

    Parameters
    ----------
    pixel_size_A : float
    fps : float
    diffusion_A2_s : float
        Lateral diffusion assumed by the filter, A^2/s.
    reacquire_px : float
        A detection this close to a dormant track's last position revives it, px.
    memory_frames : int
        Frames a dormant track is remembered.
    lost_frames : int
        Consecutive weak frames after which an active track goes dormant.
    max_particles : int
        Active tracks at most.
    """

    def __init__(self, *, pixel_size_A: float, fps: float, diffusion_A2_s: float, reacquire_px: float,
                 memory_frames: int, lost_frames: int, max_particles: int, separation_px: float):
        self.q_px2 = 2.0 * diffusion_A2_s / fps / pixel_size_A**2
        self.reacquire_px = reacquire_px
        self.memory_frames = memory_frames
        self.lost_frames = lost_frames
        self.max_particles = max_particles
        self.separation_px = separation_px
        self.tracks: list[Track] = []
        self.next_id = 0
        self.revived = 0
        self.created = 0

    def active(self) -> list[Track]:
        return [t for t in self.tracks if t.state == "active"]

    def add_detections(self, dets: list[tuple[float, float, float]], frame: int, init_var: float) -> None:
        """Start or revive tracks from detections that no active track explains."""
        for x, y, z in dets:
            if any((x - t.x) ** 2 + (y - t.y) ** 2 < self.separation_px**2 for t in self.active()):
                continue
            if len(self.active()) >= self.max_particles:
                break
            dormant = [t for t in self.tracks if t.state == "dormant"]
            near = min(dormant, key=lambda t: (x - t.x) ** 2 + (y - t.y) ** 2, default=None)
            if near is not None and math.hypot(x - near.x, y - near.y) <= self.reacquire_px:
                near.state, near.x, near.y, near.var, near.weak, near.presence = "active", x, y, init_var, 0, 2.0
                near.previous_crop = None
                near.last_frame = frame
                self.revived += 1
                log.info("particle %d reacquired at frame %d (%.0f, %.0f px)", near.id, frame, x, y)
                continue
            t = Track(self.next_id, x, y, init_var, born_frame=frame, last_frame=frame)
            self.next_id += 1
            self.created += 1
            self.tracks.append(t)
            log.info("particle %d found at frame %d (%.0f, %.0f px, z = %.1f)", t.id, frame, x, y, z)

    def housekeeping(self, frame: int) -> None:
        """Dormant tracks for weak ones; forget old dormant ones; merge tracks on one particle."""
        act = sorted(self.active(), key=lambda t: t.born_frame)
        for i, t in enumerate(act):
            if t.weak >= self.lost_frames:
                t.state = "dormant"
                log.info("particle %d lost at frame %d (weak for %d frames)", t.id, frame, t.weak)
                continue
            for older in act[:i]:
                if older.state == "active" and math.hypot(t.x - older.x, t.y - older.y) < self.separation_px / 2:
                    t.state = "merged"
                    log.info("particle %d merged into %d at frame %d", t.id, older.id, frame)
                    break
        self.tracks = [t for t in self.tracks
                       if t.state == "active" or (t.state == "dormant" and frame - t.last_frame <= self.memory_frames)]
