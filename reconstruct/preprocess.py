"""Pre-processing of a window's crops for reconstruction: size, crop, bin, normalise, mask.

1. **Size.** The particle's diameter comes from the window's ``diameter_nm`` attribute when it
   has one, else it is measured from the frames (:func:`estimate_diameter_A`: where the
   per-pixel variance over the window, which the turning lattice raises inside the particle,
   falls to half its excess over the surrounding liquid).
2. **Crop and bin.** The box is cut to what the particle and the shift search need
   (``margin`` x the diameter plus twice the largest shift, never more than the crops), then
   binned by Fourier cropping by the largest integer factor that keeps Nyquist finer than the
   low-pass limit (0.358 A/px and 1.5 A: factor 2, 0.716 A voxels, Nyquist 1.43 A).
3. **Normalise.** Each crop minus the mean of its background ring (outside the mask), divided
   by that ring's standard deviation: frames of different dose or thickness count alike.
4. **Mask.** A soft spherical (circular) mask of radius ``mask_scale`` x the particle radius
   with a raised-cosine edge, so that liquid far from the particle adds no noise.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Prepared", "estimate_diameter_A", "bin_factor", "soft_disc", "prepare"]


@dataclass
class Prepared:
    """Crops ready for reconstruction.

    Attributes
    ----------
    images : (n, box, box) float32
        Normalised, masked, binned crops; origin at ``box // 2``.
    voxel_A : float
        Their pixel size (and the map's voxel size), A.
    diameter_A : float
        The particle's diameter used for the mask and the initial model, A.
    diameter_source : str
        ``"window"`` (its attribute) or ``"frames"`` (measured).
    bin : int
        Binning factor applied.
    mask_radius_px : float
        Mask radius in the binned pixels.
    finite : (n,) bool
        Crops kept (no NaN or infinity); the others were set to zero and are left out.
    """

    images: np.ndarray
    voxel_A: float
    diameter_A: float
    diameter_source: str
    bin: int
    mask_radius_px: float
    finite: np.ndarray

    @property
    def box(self) -> int:
        return int(self.images.shape[1])


def estimate_diameter_A(frames: np.ndarray, pixel_A: float) -> float:
    """The particle's diameter (A) from a window's crops: the radius where the per-pixel variance
    over the frames falls to half its excess over the outermost ring (a turning lattice makes
    the particle's pixels vary more than the liquid's), doubled. NaN when no excess shows."""
    v = np.nanvar(np.asarray(frames, dtype=np.float64), axis=0)
    b = v.shape[0]
    y, x = np.indices(v.shape)
    r = np.hypot(x - b // 2, y - b // 2).astype(int)
    prof = np.bincount(r.ravel(), v.ravel()) / np.maximum(np.bincount(r.ravel()), 1)
    prof = prof[: b // 2]
    edge = float(np.median(prof[int(0.8 * len(prof)):]))
    core = float(prof[: max(2, len(prof) // 10)].mean())
    if not core > edge * 1.02:
        return float("nan")
    half = edge + 0.5 * (core - edge)
    below = np.flatnonzero(prof < half)
    below = below[below > 0]
    if len(below) == 0:
        return float("nan")
    i = int(below[0])
    # linear interpolation between the last radius above half and the first below
    f = (prof[i - 1] - half) / max(prof[i - 1] - prof[i], 1e-30)
    return 2.0 * (i - 1 + f) * pixel_A


def bin_factor(pixel_A: float, lowpass_A: float) -> int:
    """Largest integer binning that keeps Nyquist (2 x the binned pixel) at most ``lowpass_A``."""
    return max(1, int(math.floor(lowpass_A / (2.0 * pixel_A) + 1e-9)))


def soft_disc(box: int, radius: float, edge: float) -> np.ndarray:
    """A disc of ``radius`` px about ``box // 2`` with a raised-cosine edge ``edge`` px wide."""
    y, x = np.indices((box, box))
    r = np.hypot(x - box // 2, y - box // 2)
    t = np.clip((r - radius) / max(edge, 1e-9), 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def _fourier_bin(images: np.ndarray, factor: int) -> np.ndarray:
    """Bin ``(n, b, b)`` by ``factor`` by cropping the transform (no aliasing); ``b / factor`` even."""
    if factor == 1:
        return images
    n, b = images.shape[0], images.shape[1]
    nb = b // factor
    ft = np.fft.fftshift(np.fft.fft2(images), axes=(1, 2))
    lo = b // 2 - nb // 2
    ft = ft[:, lo:lo + nb, lo:lo + nb]
    return (np.fft.ifft2(np.fft.ifftshift(ft, axes=(1, 2))).real / (factor * factor)).astype(np.float32)


def prepare(frames: np.ndarray, pixel_A: float, *, lowpass_A: float = 1.5, diameter_A: float | None = None,
            shift_px: float = 5.0, margin: float = 1.6, mask_scale: float = 1.25) -> Prepared:
    """Crops of a window -> :class:`Prepared` (see the module).

    Parameters
    ----------
    frames : (n, b, b)
        The window's crops (any real dtype); non-finite crops are zeroed and flagged.
    pixel_A : float
        Their pixel size, A.
    lowpass_A : float
        Reconstruction low-pass limit, A.
    diameter_A : float, optional
        The particle's diameter, A (else measured from the frames).
    shift_px : float
        Largest shift searched, in the input's pixels.
    margin : float
        Box side as a multiple of the diameter (before adding the shift range).
    mask_scale : float
        Mask radius as a multiple of the particle's radius.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[1] != frames.shape[2] or frames.shape[0] == 0:
        raise ValueError(f"expected crops (n, box, box) with n > 0, got shape {frames.shape}")
    if not (math.isfinite(pixel_A) and pixel_A > 0):
        raise ValueError(f"pixel size must be a positive number of A, got {pixel_A}")
    x = frames.astype(np.float32)
    finite = np.isfinite(x).all(axis=(1, 2))
    if not finite.any():
        raise ValueError("every crop holds NaN or infinite values")
    x[~finite] = 0.0
    source = "window"
    if diameter_A is None or not (math.isfinite(diameter_A) and diameter_A > 0):
        diameter_A = estimate_diameter_A(x[finite], pixel_A)
        source = "frames"
        if not math.isfinite(diameter_A):
            raise ValueError("the window has no diameter_nm and none could be measured from its frames "
                             "(no excess variance at the centre)")
    b0 = frames.shape[1]
    factor = bin_factor(pixel_A, lowpass_A)
    want = margin * diameter_A / pixel_A + 2 * shift_px
    side = int(min(b0, 2 * factor * math.ceil(want / (2 * factor))))
    side -= side % (2 * factor)
    if side < 8 * factor:
        raise ValueError(f"crops of {b0} px are too small for a {diameter_A:.1f} A particle at {pixel_A} A/px")
    lo = b0 // 2 - side // 2
    x = x[:, lo:lo + side, lo:lo + side]
    x = _fourier_bin(x, factor)
    voxel = pixel_A * factor
    box = x.shape[1]
    radius = mask_scale * 0.5 * diameter_A / voxel
    mask = soft_disc(box, min(radius, box / 2 - 2), edge=max(2.0, 0.1 * box))
    ring = mask < 0.01
    if ring.sum() < 16:  # the particle fills the box: normalise on the whole crop
        ring = np.ones_like(mask, dtype=bool)
    bg = x[:, ring]
    mu = bg.mean(axis=1)
    sd = bg.std(axis=1)
    sd = np.where(sd > 0, sd, 1.0)
    x = (x - mu[:, None, None]) / sd[:, None, None] * mask[None]
    x[~finite] = 0.0
    log.info("pre-processing: %d crops of %d px at %.3f A/px -> box %d at %.3f A (bin %d), diameter %.1f A (%s), "
             "mask radius %.1f px", len(x), b0, pixel_A, box, voxel, factor, diameter_A, source, radius)
    return Prepared(x.astype(np.float32), voxel, float(diameter_A), source, factor, float(radius), finite)
