"""The per-frame analysis stage: tracking, lattice score, domain centre, diameter, orientation, SNR.

This is the paper's pre-processing and "2D image analysis" (Methods), run on every frame as it
arrives. For each tracked particle (:mod:`btomo.stream.tracking`) a ``box_px`` crop is cut at
the predicted centre, and one pass over it gives (kernels in :mod:`btomo.kernels.frames`):

1. **Position**: the crop's darkness at the particle's size (low-passed well below 2.3 A) and
   its local energy in the 1.2-3.3 A band (atoms scatter there whether the lattice shows or not)
   are z-scored and added; the maximum near the prediction, refined by a centre of mass at full
   resolution, is the measurement. A Kalman filter on a random walk combines the measurements;
   a fixed-lag Rauch-Tung-Striebel smoother (``track_smoothing_frames``, default 20 = 50 ms)
   revises each centre with the frames after it before the row is written.
2. **Lattice score** ``fft_peak``: the crop, minus its mean and inside a soft disc a little larger
   than the particle, is Fourier transformed; the strongest peak in the Pt band {111}..{220}
   (3x3 bins, noise floor removed) gives the fringe modulation ``m`` (0-1, comparable across
   particles and doses: :mod:`btomo.kernels.frames`).
3. **Decision** ``lattice``: ``m`` above Otsu's threshold of the running histogram of log ``m``
   (all particles; it fades with a half-life so the threshold follows a run). Until the histogram
   holds ``otsu_min_frames`` scores and is clearly bimodal, an initial threshold is used.
4. On lattice frames: the **crystal domain** (inverse FFT of the peak and its Friedel mate).
   The peak of its smoothed energy envelope re-centres the particle (a second, more precise
   measurement for the filter, used when the peak stands clear of the noise); its size gives the
   **projected diameter**: by default from the second moment of the noise-subtracted fringe
   intensity (the same at any dose), or as the paper did (bilateral filter, Otsu, area:
   ``diameter_method = "otsu"``, which grows as the dose falls). The peak's sub-bin position
   gives the **in-plane angle** and the **lattice parameter**.
5. **Adjacent-frame SNR**: ``10 log10(p / (1 - p))`` with ``p`` the mean correlation of
   consecutive crops (inside the disc) over the last ``snr_window`` frames.

Rows go to ``frames.csv`` (``../shared/contracts.md``) through :class:`FramesTable`; the stage's
counters feed ``summary.json`` and the dashboard. ``btomo live`` and ``btomo process`` run this
same stage on the same :class:`~btomo.stream.messages.Frame` records, so they write the same table.
"""
from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from btomo.kernels.frames import (
    band_radii,
    bilateral_filter,
    crop_box,
    domain_image,
    fringe_modulation,
    frequency_index,
    gaussian_transfer,
    lattice_parameter,
    lattice_peak,
    noise_floor,
    masked_correlation,
    otsu_threshold,
    peak_pair_mask,
    soft_disc,
    weighted_centroid,
)
from btomo.kernels.xp import array_namespace, fft_module

from .config import RunConfig
from .messages import Frame, SeriesStart
from .tracking import Detector, Track, Tracker

log = logging.getLogger(__name__)

__all__ = ["FRAME_COLUMNS", "LatticeThreshold", "CropAnalyzer", "CropResult", "FramesTable", "FrameAnalysis"]

#: columns of frames.csv: the contract's first, then ours
FRAME_COLUMNS = [
    "frame", "t_s", "particle", "x_px", "y_px", "fft_peak", "lattice", "diameter_nm", "window",
    "lattice_threshold", "angle_deg", "lattice_A", "reflection", "snr_db", "position_z", "presence", "diameter_frame_nm",
]

#: ``diameter_nm`` is the median of the particle's last this many single-frame diameters (one frame's
#: domain is noisy; the particle changes over seconds); ``diameter_frame_nm`` is the frame's own
DIAMETER_MEDIAN_OF = 25


class LatticeThreshold:
    """Online Otsu threshold on the running histogram of log10 fringe modulation.

    Parameters
    ----------
    initial : float
        Threshold (fringe modulation) until the histogram can be trusted.
    fixed : float
        A fixed threshold (> 0) instead of Otsu's.
    min_frames : int
        Scores needed before Otsu's threshold replaces the initial one.
    min_separability : float
        Otsu's effectiveness needed to accept a new threshold (a unimodal histogram, e.g. the
        first second of a run in which no lattice showed, keeps the previous threshold).
    halflife : float
        Half-life of the histogram's counts, in scores.
    """

    LOG_RANGE = (-3.0, 0.3)
    BINS = 200
    UPDATE_EVERY = 50

    def __init__(self, initial: float, *, fixed: float = 0.0, min_frames: int = 400,
                 min_separability: float = 0.7, halflife: float = 4000.0):
        self.value = fixed if fixed > 0 else initial
        self.fixed = fixed > 0
        self.min_frames = min_frames
        self.min_separability = min_separability
        self.decay = 0.5 ** (self.UPDATE_EVERY / max(halflife, 1.0))
        self.edges = np.linspace(*self.LOG_RANGE, self.BINS + 1)
        self.hist = np.zeros(self.BINS)
        self.seen = 0
        self.separability = 0.0
        self.source = "fixed" if self.fixed else "initial"

    def add(self, m: float) -> None:
        lm = math.log10(max(m, 10 ** self.LOG_RANGE[0]))
        i = min(max(int((lm - self.LOG_RANGE[0]) / (self.LOG_RANGE[1] - self.LOG_RANGE[0]) * self.BINS), 0),
                self.BINS - 1)
        self.hist[i] += 1.0
        self.seen += 1
        if self.fixed or self.seen % self.UPDATE_EVERY:
            return
        if self.seen >= self.min_frames:
            t, eta = otsu_threshold(hist=self.hist, edges=self.edges)
            self.separability = eta
            if eta >= self.min_separability:
                if self.source != "otsu":
                    log.info("lattice threshold from Otsu after %d scores: %.3f (separability %.2f)",
                             self.seen, 10**t, eta)
                self.value, self.source = 10**t, "otsu"
        self.hist *= self.decay

    def snapshot(self) -> dict[str, Any]:
        return {"threshold": self.value, "source": self.source, "separability": self.separability,
                "scores": self.seen}


@dataclass
class CropResult:
    """What one crop of one particle gave (full-frame px unless named otherwise)."""

    x_meas: float
    y_meas: float
    position_z: float
    presence: float
    m: float
    ratio: float
    angle_deg: float
    lattice_A: float
    reflection: str
    domain_x: float = math.nan
    domain_y: float = math.nan
    diameter_px: float = math.nan
    lattice: bool = False


class CropAnalyzer:
    """The crop-level steps for one box size and pixel size (arrays built once, on the data's
    array module).

    Parameters
    ----------
    box : int
        Crop box, px.
    pixel_size_A : float
    lowpass_A : float
        Tracking low-pass, A: the darkness map keeps nothing finer.
    domain_mask_bins : float
        Fourier mask radius for the domain centre, bins (0: box over the particle's diameter).
    diameter_method : {"moment", "otsu"}
        How the domain's area is measured (see :meth:`_domain`).
    prior_radius_px : float
        Expected particle radius, px: the diameter's moment region is never smaller.
    """

    SEARCH_PX = 24  # the particle is looked for within this distance of the prediction

    def __init__(self, box: int, pixel_size_A: float, lowpass_A: float, xp=np, domain_mask_bins: float = 0.0,
                 diameter_method: str = "moment", prior_radius_px: float = 0.0):
        self.box, self.pix, self.xp = box, pixel_size_A, xp
        self.diameter_method = diameter_method
        self.prior_radius_px = prior_radius_px
        self.fft = fft_module(xp)
        fy = frequency_index(box, xp)[:, None]
        fx = frequency_index(box, xp)[None, :]
        self.k_bins = xp.sqrt(fy * fy + fx * fx)
        r_in, r_out = band_radii(box, pixel_size_A)
        self.band = (self.k_bins >= r_in) & (self.k_bins <= r_out)
        # atoms scatter into 1.2-3.3 A whether or not the lattice shows: the energy cue
        k_per_A = self.k_bins / (box * pixel_size_A)
        self.energy_band = ((k_per_A > 0.3) & (k_per_A < 0.8)).astype(xp.float32)
        self.lowpass_A = lowpass_A
        self.domain_mask_bins = domain_mask_bins
        yy = xp.arange(box, dtype=xp.float32)[:, None] - box // 2
        xx = xp.arange(box, dtype=xp.float32)[None, :] - box // 2
        self.r_centre = xp.sqrt(yy * yy + xx * xx)
        self.rows = xp.arange(box, dtype=xp.float32)[:, None]  # pixel grids, built once
        self.cols = xp.arange(box, dtype=xp.float32)[None, :]
        self.search = self.r_centre <= self.SEARCH_PX
        self._cache: dict[tuple, Any] = {}

    def _position_filter(self, radius_px: float):
        key = ("pos", round(radius_px, 1))
        if key not in self._cache:
            xp = self.xp
            # darkness: a blob filter at the particle's size (its inner Gaussian is far below
            # the 2.3 A low-pass), minus the background
            sig = max(radius_px / 2.0, 0.5 * self.lowpass_A / self.pix)
            g1 = gaussian_transfer((self.box, self.box), sig, xp)
            g2 = gaussian_transfer((self.box, self.box), 2.0 * radius_px, xp)
            self._cache[key] = g1 - g2
        return self._cache[key]

    def _disc(self, radius_px: float):
        key = ("disc", round(radius_px, 1))
        if key not in self._cache:
            self._cache[key] = soft_disc(self.box, radius_px, 6.0, self.xp)
        return self._cache[key]

    @staticmethod
    def _z(a, xp):
        s = float(a.std())
        return (a - a.mean()) / (s if s > 0 else 1.0)

    def analyse(self, crop, origin: tuple[int, int], radius_px: float, threshold: float,
                at: tuple[float, float] | None = None) -> tuple[CropResult, Any]:
        """Measure one particle in ``crop`` (cut at ``origin`` = frame px of crop pixel (0, 0));
        ``at`` is the predicted centre in crop px (default: where the particle is found).

        Returns the result and the masked, mean-free crop (for the adjacent-frame correlation).
        """
        xp, fft, box = self.xp, self.fft, self.box
        mean = float(crop.mean())
        c = crop - np.float32(mean)
        spec = fft.fft2(c)
        # 1. position: darkness + band energy, z-scored, near the prediction
        pf = self._position_filter(radius_px)
        dark = -fft.ifft2(spec * pf).real
        bp = fft.ifft2(spec * self.energy_band).real
        energy = fft.ifft2(fft.fft2(bp * bp) * pf).real
        score = self._z(dark, xp) + self._z(energy, xp)
        masked = xp.where(self.search, score, -xp.inf)
        j = int(xp.argmax(masked))
        py, px = divmod(j, box)
        peak = float(score[py, px])
        near = ((self.rows - py) ** 2 + (self.cols - px) ** 2) <= radius_px**2
        w = xp.where(near, xp.clip(score - 0.5 * peak, 0.0, None), 0.0)
        cx, cy = weighted_centroid(w)
        if not math.isfinite(cx):
            cx, cy = float(px), float(py)
        # presence: how much darker the particle's disc is than the ring around it, in units of
        # the noise of that difference (from the crop's own pixel variance: any detector gain),
        # at the predicted position (at the best spot, noise alone would look like a particle)
        ax, ay = at if at is not None else (cx, cy)
        r2 = (self.rows - ay) ** 2 + (self.cols - ax) ** 2
        inner = r2 <= radius_px**2
        ring = (r2 >= (radius_px + 4.0) ** 2) & (r2 <= (2.0 * radius_px + 4.0) ** 2)
        n_in, n_ring = int(inner.sum()), int(ring.sum())
        presence = 0.0
        if n_in and n_ring:
            var = float(c.var())
            diff = float(c[ring].mean()) - float(c[inner].mean())
            presence = diff / math.sqrt(var / n_in + var / n_ring) if var > 0 else 0.0
        # 2. lattice score inside a soft disc a little larger than the particle
        disc = self._disc(radius_px + 6.0)
        mc = c * disc
        mspec = fft.fft2(mc)
        power = (mspec.real**2 + mspec.imag**2)
        lp = lattice_peak(power, self.band)
        area = math.pi * radius_px**2
        m = fringe_modulation(lp.energy, mean, box * box, area)
        kr = lp.radius()
        a, hkl = lattice_parameter(kr, box, self.pix)
        res = CropResult(
            x_meas=origin[0] + cx, y_meas=origin[1] + cy, position_z=peak, presence=presence, m=m, ratio=lp.ratio,
            angle_deg=math.degrees(math.atan2(lp.ky, lp.kx)) % 180.0, lattice_A=a,
            reflection="".join(str(h) for h in hkl), lattice=m > threshold,
        )
        if res.lattice:
            self._domain(spec, lp.ky, lp.kx, radius_px, origin, (ax, ay), res)
        return res, mc

    #: Fourier mask radius around a peak, in units of box / particle diameter (the width of the
    #: particle's shape transform; the domain image's blur then scales with the particle). The
    #: centre uses the tight mask (the envelope's peak: least noise; on simulated frames at the
    #: paper's dose 1.13 A RMS per frame, against 1.45 A for the Otsu centroid of a 2.0 mask),
    #: the area a wider one (a sharper edge).
    CENTRE_MASK = 1.0
    DIAMETER_MASK = 3.2
    #: the diameter's second-moment region, in particle radii around the domain centre
    MOMENT_REGION = 1.2
    #: equivalent diameter over the RMS radius of the fringe intensity: 3.55 on noise-free
    #: simulated 2 nm Pt particles (docs/accuracy.md). For comparison: 2.83 for a uniform disc,
    #: 3.46 for an intensity falling as the square of a sphere's thickness.
    MOMENT_TO_DIAMETER = 3.55

    def _segment(self, spec, ky: float, kx: float, rb: float, radius_px: float):
        """The paper's area: bilateral-filtered domain image, Otsu, pixels above (boolean mask)."""
        xp, box = self.xp, self.box
        dom = domain_image(spec, peak_pair_mask((box, box), ky, kx, rb, xp))
        smooth = bilateral_filter(dom, 2.0, None, 3)
        # Otsu inside the search region grown by the particle (the rest of the crop is noise)
        roi = self.r_centre <= self.SEARCH_PX + 1.5 * radius_px
        t, _ = otsu_threshold(smooth[roi], bins=128)
        return (smooth > t) & roi

    def _moment_diameter(self, spec, ky: float, kx: float, rb: float, region_px: float,
                         cx: float, cy: float) -> float:
        """Equivalent diameter (px) from the second moment of the noise-subtracted fringe
        intensity around (cx, cy) crop px.

        ``|ifft(spectrum * pair mask)|^2`` holds the fringes' intensity plus the noise that
        passes the mask, whose mean per pixel is known from the band's noise floor: subtracted,
        the intensity is unbiased at any dose, and so is its second moment (noise adds scatter,
        not bias, unlike a threshold). Within ``region_px`` of the centre.
        """
        xp, box, fft = self.xp, self.box, self.fft
        mask = peak_pair_mask((box, box), ky, kx, rb, xp)
        n = box * box
        noise = float(mask.sum()) * noise_floor(spec.real**2 + spec.imag**2, self.band) / (n * n)
        field = fft.ifft2(spec * mask)
        inten = field.real**2 + field.imag**2 - np.float32(noise)
        r2 = (self.rows - cy) ** 2 + (self.cols - cx) ** 2
        w = xp.where(r2 <= region_px**2, inten, 0.0)
        total = float(w.sum())
        if not total > 0:
            return math.nan
        mom = float((w * r2).sum()) / total
        return self.MOMENT_TO_DIAMETER * math.sqrt(mom) if mom > 0 else math.nan

    def _envelope_filter(self, radius_px: float):
        key = ("env", round(radius_px, 1))
        if key not in self._cache:
            self._cache[key] = gaussian_transfer((self.box, self.box), 0.5 * radius_px, self.xp)
        return self._cache[key]

    def _domain(self, spec, ky: float, kx: float, radius_px: float, origin: tuple[int, int],
                at: tuple[float, float], res: CropResult) -> None:
        """Crystal domain of the peak (paper: mask a pair of peaks, inverse FFT, ...).

        Centre: the peak, near the prediction ``at`` (crop px), of the fringes' energy envelope
        ``|ifft(spectrum * pair mask)|^2`` smoothed at half the particle's radius (a matched
        filter for a domain of the particle's size), sub-pixel by a parabola. Area: by default
        the second moment of the noise-subtracted fringe intensity (:meth:`_moment_diameter`,
        independent of the dose); with ``diameter_method = "otsu"`` the paper's bilateral filter
        and Otsu threshold (its area grows as the dose falls, docs/accuracy.md).
        """
        xp, box, fft = self.xp, self.box, self.fft
        scale = box / (2.0 * radius_px)
        rb = self.domain_mask_bins or max(2.0, self.CENTRE_MASK * scale)
        dom = domain_image(spec, peak_pair_mask((box, box), ky, kx, rb, xp))
        env = fft.ifft2(fft.fft2(dom * dom) * self._envelope_filter(radius_px)).real
        near = ((self.rows - at[1]) ** 2 + (self.cols - at[0]) ** 2) <= self.SEARCH_PX**2
        j = int(xp.argmax(xp.where(near, env, -xp.inf)))
        iy, ix = divmod(j, box)
        if not (0 < iy < box - 1 and 0 < ix < box - 1):
            return
        cy, cx = iy + _parabola(env[iy - 1:iy + 2, ix]), ix + _parabola(env[iy, ix - 1:ix + 2])
        res.domain_x, res.domain_y = origin[0] + cx, origin[1] + cy
        rb_area = max(3.0, self.DIAMETER_MASK * scale)
        if self.diameter_method == "otsu":
            mask = self._segment(spec, ky, kx, rb_area, radius_px)
            res.diameter_px = 2.0 * math.sqrt(float(mask.sum()) / math.pi)
        else:
            region = self.MOMENT_REGION * max(radius_px, self.prior_radius_px)
            res.diameter_px = self._moment_diameter(spec, ky, kx, rb_area, region, cx, cy)


def _parabola(v) -> float:
    """Sub-pixel offset of the maximum of three samples (a parabola), within [-0.5, 0.5]."""
    m, c, p = (float(x) for x in v)
    d = m - 2.0 * c + p
    return float(min(0.5, max(-0.5, 0.5 * (m - p) / d))) if d < 0 else 0.0


class FramesTable:
    """``frames.csv`` of a run, written as rows arrive (flushed at least every ``every_s``)."""

    def __init__(self, path: Path, every_s: float = 1.0):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.writer = csv.writer(self.fh)
        self.writer.writerow(FRAME_COLUMNS)
        self.every_s = every_s
        self.last = time.monotonic()
        self.rows = 0

    def write(self, row: list[Any]) -> None:
        self.writer.writerow(row)
        self.rows += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.fh.flush()
            self.last = now

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.flush()
            self.fh.close()


def _fmt(v: float, digits: int = 3) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


class FrameAnalysis:
    """The per-frame stage (see the module). Writes ``run_dir/frames.csv`` when ``run_dir`` is given.

    Parameters
    ----------
    cfg : RunConfig
    run_dir : path, optional
    """

    name = "frames"

    #: measurement noise per axis of the crop position (darkness + energy) and of the domain
    #: centre, A (simulated frames at 15 e/A^2: 3.6 and 0.8 A; the position's larger value
    #: downweights its outliers)
    POSITION_SIGMA_A = 4.0
    DOMAIN_SIGMA_A = 0.8
    #: the domain centre steers the track only when its peak stands this far above the noise
    #: expected in its 3x3 bins (noise alone: 3.6-6 in 90 % of crops; lattice frames at half the
    #: paper's dose: 7.6 and more in 95 %): below, the envelope's peak is noise
    DOMAIN_MIN_RATIO = 8.0
    #: a track is weak while the running mean (over ~PRESENCE_FRAMES) of its disc-vs-ring contrast,
    #: in noise units, is below PRESENT_SNR (a 2 nm particle at 15 e/A^2: 0.8-3, median 1.7; no particle: 0 +- 0.25)
    PRESENCE_FRAMES = 20
    PRESENT_SNR = 0.6

    def __init__(self, cfg: RunConfig, run_dir: Path | None = None):
        self.cfg = cfg
        self.fc = cfg.frames
        self.table = FramesTable(run_dir / "frames.csv", self.fc.write_every_s) if run_dir is not None else None
        self.threshold = LatticeThreshold(
            self.fc.lattice_threshold_initial, fixed=self.fc.lattice_threshold, min_frames=self.fc.otsu_min_frames,
            min_separability=self.fc.otsu_min_separability, halflife=self.fc.otsu_halflife_s * cfg.acquisition.fps)
        self.latest: dict[int, dict[str, Any]] = {}
        self.frames = 0
        self.particle_frames = 0
        self.lattice_frames = 0
        self.rejected_measurements = 0
        self.too_small = 0
        self.seconds = 0.0
        self._series: SeriesStart | None = None
        self._setup: tuple | None = None
        self._holding: dict[int, Track] = {}  # tracks with rows waiting for the smoother
        #: called with every finished row (a dict of the ``frames.csv`` fields), in file order
        self.sink: Any = None

    # -- setup per series ----------------------------------------------------------------
    def prepare(self, series: SeriesStart) -> None:
        self._release(everything=True)
        self._series = series
        self._setup = None

    def _ensure(self, frame: Frame):
        pix = frame.pixel_size_A or self.cfg.acquisition.pixel_size_A
        key = (tuple(frame.data.shape), pix, array_namespace(frame.data).__name__)
        if self._setup is not None and self._setup[0] == key:
            return self._setup[1]
        self._release(everything=True)  # a new frame geometry: new tracks
        fc, fps = self.fc, self.cfg.acquisition.fps
        xp = array_namespace(frame.data)
        radius = 5.0 * fc.particle_diameter_nm / pix
        box = fc.box_px
        parts = {
            "pix": pix,
            "radius": radius,
            "crops": CropAnalyzer(box, pix, fc.tracking_lowpass_A, xp, fc.domain_mask_bins, fc.diameter_method,
                                  radius),
            "detector": Detector(tuple(frame.data.shape), radius, bin=fc.detect_bin, frames=fc.detect_frames,
                                 snr=fc.detect_snr, separation_px=box / 2),
            "tracker": Tracker(pixel_size_A=pix, fps=fps, diffusion_A2_s=fc.track_diffusion_A2_s,
                               reacquire_px=10.0 * fc.reacquire_nm / pix,
                               memory_frames=int(fc.track_memory_s * fps), lost_frames=fc.lost_frames,
                               max_particles=fc.max_particles, separation_px=box / 2),
        }
        if self._setup is not None:
            log.info("frame geometry changed to %s at %.4g A/px: tracking starts afresh", key[0], pix)
        self._setup = (key, parts)
        return parts

    # -- per frame -------------------------------------------------------------------------
    def process(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        if min(frame.data.shape) < self.fc.box_px // 2:
            if not self.too_small:
                log.warning("frames of %s px are too small for a %d-px crop box: not analysed (counted)",
                            frame.data.shape, self.fc.box_px)
            self.too_small += 1
            return
        parts = self._ensure(frame)
        fc = self.fc
        det: Detector = parts["detector"]
        tracker: Tracker = parts["tracker"]
        crops: CropAnalyzer = parts["crops"]
        pix = parts["pix"]
        n = self.frames
        if n % fc.detect_stride == 0:
            det.add(frame.data)
        if det.ready and n % fc.detect_every == 0:
            tracker.add_detections(det.detect(), frame.frame, (self.POSITION_SIGMA_A / pix) ** 2 * 4)
        r_pos = (self.POSITION_SIGMA_A / pix) ** 2
        r_dom = (self.DOMAIN_SIGMA_A / pix) ** 2
        t_s = frame.t_ns / 1e9
        for track in tracker.active():
            gap = frame.frame - track.last_frame if track.frames else 1
            track.predict(tracker.q_px2, gap)
            try:
                crop, origin, inside = crop_box(frame.data, track.x, track.y, fc.box_px)
            except ValueError:
                track.weak = fc.lost_frames  # the particle's box left the frame
                continue
            radius = track.diameter_px(2 * parts["radius"]) / 2
            res, masked = crops.analyse(crop, origin, radius, self.threshold.value,
                                        at=(track.x - origin[0], track.y - origin[1]))
            track.presence += (res.presence - track.presence) / self.PRESENCE_FRAMES
            if track.presence < self.PRESENT_SNR or inside < 0.5:
                track.weak += 1  # hold the position: following noise would walk away from where it was
            else:
                track.weak = 0
                if not track.update(res.x_meas, res.y_meas, r_pos):
                    self.rejected_measurements += 1
            self.threshold.add(res.m)
            if res.lattice and res.ratio >= self.DOMAIN_MIN_RATIO and math.isfinite(res.domain_x):
                track.update(res.domain_x, res.domain_y, r_dom)
            if res.lattice and math.isfinite(res.diameter_px):
                track.diameters_px.append(res.diameter_px)
            # adjacent-frame correlation of consecutive crops
            if track.previous_crop is not None and track.previous_frame == frame.frame - 1:
                p = masked_correlation(masked, track.previous_crop, crops._disc(radius + 6.0))
                if math.isfinite(p):
                    track.correlations.append(p)
            track.previous_crop, track.previous_frame = masked, frame.frame
            track.last_frame = frame.frame
            track.frames += 1
            track.lattice_frames += int(res.lattice)
            self.particle_frames += 1
            self.lattice_frames += int(res.lattice)
            self._hold(frame, t_s, track, res, pix)
        tracker.housekeeping(frame.frame)
        self._release()
        self.frames += 1
        self.seconds += time.perf_counter() - t0

    def _snr_db(self, track: Track) -> float:
        if len(track.correlations) < 2:
            return math.nan
        p = float(np.mean(track.correlations))
        if not 0 < p < 1:
            return math.nan
        return 10.0 * math.log10(p / (1.0 - p))

    def _hold(self, frame: Frame, t_s: float, track: Track, res: CropResult, pix: float) -> None:
        """This frame's row for ``track`` (everything but the centre, which the smoother sets)."""
        one = res.diameter_px * pix / 10.0 if res.lattice else math.nan
        recent = list(track.diameters_px)[-DIAMETER_MEDIAN_OF:]
        diameter_nm = float(np.median(recent)) * pix / 10.0 if res.lattice and recent else math.nan
        track.hold({
            "frame": frame.frame, "t_s": t_s, "particle": track.id, "x_px": math.nan, "y_px": math.nan,
            "fft_peak": res.m, "lattice": int(res.lattice), "diameter_nm": diameter_nm,
            "lattice_threshold": self.threshold.value, "angle_deg": res.angle_deg if res.lattice else math.nan,
            "lattice_A": res.lattice_A if res.lattice else math.nan, "reflection": res.reflection if res.lattice else "",
            "snr_db": self._snr_db(track), "position_z": res.position_z, "presence": track.presence,
            "diameter_frame_nm": one,
        })
        self._holding[id(track)] = track

    def _release(self, everything: bool = False) -> None:
        """Write the rows the smoother is done with (all of them at the end of a series)."""
        lag = self.fc.track_smoothing_frames
        for key, track in list(self._holding.items()):
            flush = everything or track.state != "active"
            for row, x, y in track.release(lag, everything=flush):
                row["x_px"], row["y_px"] = x, y
                self._write(row)
            if not track.pending:
                del self._holding[key]

    def _write(self, row: dict[str, Any]) -> None:
        self.latest[row["particle"]] = row
        if self.sink is not None:
            self.sink(row)
        if self.table is not None:
            self.table.write([
                row["frame"], f"{row['t_s']:.6f}", row["particle"], _fmt(row["x_px"], 2), _fmt(row["y_px"], 2),
                f"{row['fft_peak']:.5f}", row["lattice"], _fmt(row["diameter_nm"], 3), "",
                f"{row['lattice_threshold']:.5f}", _fmt(row["angle_deg"], 2), _fmt(row["lattice_A"], 4),
                row["reflection"], _fmt(row["snr_db"], 2), _fmt(row["position_z"], 2), _fmt(row["presence"], 2),
                _fmt(row["diameter_frame_nm"], 3),
            ])

    def active_tracks(self) -> list[tuple[int, float, float]]:
        """``(particle, x, y)`` (filtered centre, frame px) of every active track, now."""
        tracker = self._setup[1]["tracker"] if self._setup else None
        return [(t.id, t.x, t.y) for t in tracker.active()] if tracker else []

    def counters(self) -> dict[str, Any]:
        """What the dashboard and ``summary.json`` show."""
        tracker = self._setup[1]["tracker"] if self._setup else None
        return {
            "frames": self.frames,
            "particle_frames": self.particle_frames,
            "lattice_frames": self.lattice_frames,
            "lattice_fraction": self.lattice_frames / self.particle_frames if self.particle_frames else None,
            "threshold": self.threshold.snapshot(),
            "particles_active": len(tracker.active()) if tracker else 0,
            "particles_seen": tracker.created if tracker else 0,
            "particles_reacquired": tracker.revived if tracker else 0,
            "measurements_rejected": self.rejected_measurements,
            "frames_too_small": self.too_small,
            "ms_per_frame": 1e3 * self.seconds / self.frames if self.frames else None,
            "latest": {str(k): v for k, v in self.latest.items()},
        }

    def finish(self) -> dict[str, Any]:
        self._release(everything=True)
        if self.table is not None:
            self.table.close()
        return self.counters()
