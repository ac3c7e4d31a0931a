"""Per-frame image kernels: binning, crops, the lattice (FFT-peak) score, the crystal domain.

These implement the paper's "2D image analysis" (Methods) on one frame or one crop. Every
function takes its array module from its input (NumPy or CuPy, :mod:`btomo.kernels.xp`): the
same code runs on the CPU and the GPU. Sizes are in pixels unless a name says otherwise;
frequencies are FFT bin indices (cycles per box) unless they end in ``_per_A``.

The lattice score is the **fringe modulation** ``m``: for an image ``I = I0 (1 + m cos(g.r))``
inside the particle's projected area ``S`` (px), one Fourier peak holds the energy
``N (m I0 / 2)^2 S`` (Parseval, ``N`` = pixels of the box), so ``m = 2 sqrt(E / (N S)) / I0``
with ``E`` the peak's energy above the noise floor. ``m`` does not depend on the dose, the box or
the particle's size, only on how strongly the lattice shows: a number comparable across
particles and doses. The simulator's truth uses the same definition on the noise-free image.
"""
from __future__ import annotations

import math

import numpy as np

from .crystal import PT_LATTICE_A, d_spacing
from .xp import array_namespace, fft_module

__all__ = [
    "LATTICE_PLANES",
    "band_radii",
    "bin_frame",
    "crop_box",
    "frequency_index",
    "gaussian_transfer",
    "soft_disc",
    "box_sum",
    "LatticePeak",
    "lattice_peak",
    "subpixel_peak",
    "noise_floor",
    "peak_pair_mask",
    "domain_image",
    "bilateral_filter",
    "otsu_threshold",
    "weighted_centroid",
    "masked_correlation",
    "fringe_modulation",
    "lattice_parameter",
    "nearest_reflection",
    "fringe_truth",
]

#: the Pt reflections of the lattice band, strongest first: {111}..{220} (reference.md)
LATTICE_PLANES: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (2, 0, 0), (2, 2, 0))


def band_radii(box: int, pixel_size_A: float, lattice_A: float = PT_LATTICE_A, *,
               margin: float = 0.06) -> tuple[float, float]:
    """Inner and outer radius (FFT bins) of the lattice band of a ``box``-px crop.

    The band spans {111} to {220} (``box * pixel / d``: 25.3 to 41.3 bins for 160 px at
    0.358 A/px) widened by ``margin`` (relative) on both sides for strain and sampling.
    """
    if box <= 0 or pixel_size_A <= 0:
        raise ValueError(f"expected a positive box and pixel size, got {box} px and {pixel_size_A} A")
    r_in = box * pixel_size_A / d_spacing(LATTICE_PLANES[0], lattice_A)
    r_out = box * pixel_size_A / d_spacing(LATTICE_PLANES[-1], lattice_A)
    return r_in * (1 - margin), r_out * (1 + margin)


def frequency_index(n: int, xp=np):
    """FFT bin index of each element along an axis of length ``n`` (``fftfreq(n) * n``)."""
    return xp.fft.fftfreq(n).astype(xp.float32) * n


def bin_frame(frame, factor: int):
    """Mean over ``factor x factor`` blocks, float32 (the trailing rows/columns that do not fill a
    block are dropped)."""
    xp = array_namespace(frame)
    if factor < 1:
        raise ValueError(f"expected a binning factor >= 1, got {factor}")
    if factor == 1:
        return frame.astype(xp.float32)
    r, c = frame.shape[0] // factor, frame.shape[1] // factor
    if r == 0 or c == 0:
        raise ValueError(f"a {frame.shape} frame is smaller than one {factor}x{factor} bin")
    v = frame[: r * factor, : c * factor].reshape(r, factor, c, factor)
    return v.sum(axis=(1, 3), dtype=xp.float32) / np.float32(factor * factor)


def crop_box(frame, cx: float, cy: float, box: int):
    """The ``box``-px square around (cx, cy), float32, and where it lies.

    The square's centre pixel ``(box // 2, box // 2)`` is frame pixel ``(round(cy), round(cx))``.
    Where the square reaches past the frame edge it is filled with the mean of the part inside
    (no mirrored copy of the particle, no step that would put a line through the FFT).

    Returns
    -------
    crop : (box, box) float32
    origin : (x0, y0) int
        Frame pixel of the crop's pixel (0, 0).
    inside : float
        Fraction of the square inside the frame.
    """
    xp = array_namespace(frame)
    rows, cols = frame.shape
    x0 = int(round(cx)) - box // 2
    y0 = int(round(cy)) - box // 2
    fy0, fy1 = max(y0, 0), min(y0 + box, rows)
    fx0, fx1 = max(x0, 0), min(x0 + box, cols)
    if fy0 >= fy1 or fx0 >= fx1:
        raise ValueError(f"a {box}-px box at ({cx:.1f}, {cy:.1f}) lies outside the {rows}x{cols} frame")
    part = frame[fy0:fy1, fx0:fx1].astype(xp.float32)
    if part.shape == (box, box):
        return part, (x0, y0), 1.0
    out = xp.full((box, box), part.mean(), dtype=xp.float32)
    out[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0] = part
    return out, (x0, y0), part.size / float(box * box)


def gaussian_transfer(shape: tuple[int, int], sigma_px: float, xp=np):
    """Fourier transfer of a unit-sum Gaussian of ``sigma_px`` (full FFT layout), float32."""
    ky = frequency_index(shape[0], xp)[:, None] / shape[0]
    kx = frequency_index(shape[1], xp)[None, :] / shape[1]
    return xp.exp(-2.0 * math.pi**2 * sigma_px**2 * (ky * ky + kx * kx)).astype(xp.float32)


def soft_disc(box: int, radius_px: float, edge_px: float = 6.0, xp=np):
    """A disc of ``radius_px`` around the box centre with a cosine edge ``edge_px`` wide, float32."""
    yy = xp.arange(box, dtype=xp.float32)[:, None] - box // 2
    xx = xp.arange(box, dtype=xp.float32)[None, :] - box // 2
    r = xp.sqrt(yy * yy + xx * xx)
    t = xp.clip((r - (radius_px - edge_px / 2)) / max(edge_px, 1e-6), 0.0, 1.0)
    return (0.5 + 0.5 * xp.cos(math.pi * t)).astype(xp.float32)


def box_sum(a, half: int = 1):
    """Sum over the ``(2 half + 1)^2`` neighbourhood of every element, periodic (for FFT planes)."""
    xp = array_namespace(a)
    out = xp.zeros_like(a)
    for dy in range(-half, half + 1):
        rolled = xp.roll(a, dy, axis=0)
        for dx in range(-half, half + 1):
            out += xp.roll(rolled, dx, axis=1)
    return out


class LatticePeak:
    """The strongest lattice-band peak of a crop's power spectrum.

    Attributes
    ----------
    iy, ix : int
        FFT bin of the peak (array indices).
    ky, kx : float
        Sub-bin frequency of the peak, bins (signed, ``fftfreq * box``).
    energy : float
        Energy of the 3x3 bins around the peak, noise floor removed (counts^2).
    floor : float
        Noise floor: the mean noise power per bin in the band (counts^2), estimated robustly as
        the band's median power over ln 2 (the power of complex Gaussian noise is exponentially
        distributed: its median is ln 2 times its mean).
    ratio : float
        Peak energy over the noise expected in 3x3 bins (no unit; about 2-4 for noise alone).
    """

    __slots__ = ("iy", "ix", "ky", "kx", "energy", "floor", "ratio")

    def __init__(self, iy: int, ix: int, ky: float, kx: float, energy: float, floor: float, ratio: float):
        self.iy, self.ix, self.ky, self.kx = iy, ix, ky, kx
        self.energy, self.floor, self.ratio = energy, floor, ratio

    def radius(self) -> float:
        return math.hypot(self.ky, self.kx)


def lattice_peak(power, band) -> LatticePeak:
    """Find the strongest peak of ``power`` (full FFT layout) inside the boolean ``band`` mask.

    The power is summed over 3x3 bins first (a lattice peak of a 2 nm particle in a 160 px box is
    about 3 bins wide): a matched filter that also makes the score insensitive to where the peak
    falls between bins.
    """
    xp = array_namespace(power)
    s = box_sum(power, 1)
    inband = xp.where(band, s, -1.0)
    j = int(xp.argmax(inband))
    n0, n1 = power.shape
    iy, ix = divmod(j, n1)
    floor = noise_floor(power, band)
    peak = float(s[iy, ix])
    dy, dx = subpixel_peak(s, iy, ix)
    ky = ((iy + n0 // 2) % n0 - n0 // 2) + dy
    kx = ((ix + n1 // 2) % n1 - n1 // 2) + dx
    noise = 9.0 * max(floor, 1e-30)
    return LatticePeak(iy, ix, ky, kx, max(peak - noise, 0.0), floor, peak / noise)


def noise_floor(power, band) -> float:
    """Mean noise power per bin of ``power`` over the boolean ``band``: its median / ln 2.

    The band's bins hold noise except at a few peaks; the noise power of each bin is
    exponentially distributed, whose median is ln 2 times the mean (the plain median would
    underestimate the noise by 31 % and so overstate weak peaks, more at lower dose).
    """
    xp = array_namespace(power)
    return float(xp.median(power[band])) / math.log(2.0)


def subpixel_peak(a, iy: int, ix: int) -> tuple[float, float]:
    """Sub-bin offset (dy, dx) of the maximum at (iy, ix): a Gaussian (log-parabola) through the
    three values along each axis, periodic at the edges; within [-0.5, 0.5]."""
    n0, n1 = a.shape

    def fit(m, c, p):
        m, c, p = (math.log(max(float(v), 1e-30)) for v in (m, c, p))
        d = m - 2.0 * c + p
        if d >= 0:
            return 0.0
        return float(min(0.5, max(-0.5, 0.5 * (m - p) / d)))

    dy = fit(a[(iy - 1) % n0, ix], a[iy, ix], a[(iy + 1) % n0, ix])
    dx = fit(a[iy, (ix - 1) % n1], a[iy, ix], a[iy, (ix + 1) % n1])
    return dy, dx


def fringe_modulation(energy: float, mean_counts: float, n_pixels: int, area_px: float) -> float:
    """Fringe modulation ``m = 2 sqrt(E / (N S)) / I0`` of a peak of energy ``E`` (see the module).

    Parameters
    ----------
    energy : float
        Peak energy above the noise floor, counts^2 (unnormalised FFT).
    mean_counts : float
        Mean counts per pixel ``I0`` around the particle.
    n_pixels : int
        Pixels ``N`` of the transformed box.
    area_px : float
        Projected area ``S`` of the particle, px.
    """
    if mean_counts <= 0 or area_px <= 0 or energy <= 0:
        return 0.0
    return 2.0 * math.sqrt(energy / (n_pixels * area_px)) / mean_counts


def peak_pair_mask(shape: tuple[int, int], ky: float, kx: float, radius: float, xp=np):
    """Boolean mask of two discs of ``radius`` bins around the peak (ky, kx) and its Friedel mate."""
    fy = frequency_index(shape[0], xp)[:, None]
    fx = frequency_index(shape[1], xp)[None, :]

    def disc(cy, cx):
        # periodic distance in bins
        dy = (fy - cy + shape[0] / 2) % shape[0] - shape[0] / 2
        dx = (fx - cx + shape[1] / 2) % shape[1] - shape[1] / 2
        return dy * dy + dx * dx <= radius * radius

    return disc(ky, kx) | disc(-ky, -kx)


def domain_image(spectrum, mask):
    """The crystal domain of one set of fringes: ``|ifft(spectrum * mask)|``, float32.

    Where the lattice of the masked reflection is, the image is bright (its fringes' envelope);
    elsewhere it holds only the noise that passes the mask.
    """
    xp = array_namespace(spectrum)
    fft = fft_module(xp)
    return xp.abs(fft.ifft2(spectrum * mask)).astype(xp.float32)


def bilateral_filter(image, sigma_space: float = 2.0, sigma_range: float | None = None, radius: int = 3):
    """Edge-preserving smoothing (Tomasi & Manduchi 1998), periodic edges.

    Each pixel becomes the mean of its ``(2 radius + 1)^2`` neighbours weighted by
    ``exp(-d^2 / 2 sigma_space^2) * exp(-(I_q - I_p)^2 / 2 sigma_range^2)``; ``sigma_range`` defaults
    to the image's standard deviation.
    """
    xp = array_namespace(image)
    img = image.astype(xp.float32)
    if sigma_range is None:
        sigma_range = float(img.std()) or 1.0
    num = xp.zeros_like(img)
    den = xp.zeros_like(img)
    inv_r = np.float32(-0.5 / sigma_range**2)
    for dy in range(-radius, radius + 1):
        rolled = xp.roll(img, dy, axis=0)
        for dx in range(-radius, radius + 1):
            q = xp.roll(rolled, dx, axis=1)
            ws = math.exp(-(dy * dy + dx * dx) / (2.0 * sigma_space**2))
            diff = q - img
            w = np.float32(ws) * xp.exp(diff * diff * inv_r)
            num += w * q
            den += w
    return num / den


def otsu_threshold(values=None, *, hist=None, edges=None, bins: int = 256) -> tuple[float, float]:
    """Otsu's threshold (1979) of ``values``, or of a histogram given as ``hist`` and ``edges``.

    Returns
    -------
    threshold : float
        The value between the two classes (a bin edge).
    separability : float
        Otsu's effectiveness ``eta = sigma_between^2 / sigma_total^2`` in [0, 1]: near 1 for two
        well separated modes, low for a single mode (then the threshold means little).
    """
    if hist is None:
        xp = array_namespace(values)
        v = values[xp.isfinite(values)]
        if v.size < 2:
            raise ValueError(f"Otsu needs at least 2 finite values, got {int(v.size)}")
        hist, edges = xp.histogram(v, bins=bins)
    else:
        xp = array_namespace(hist)
    h = hist.astype(xp.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    total = h.sum()
    if total <= 0:
        raise ValueError("Otsu needs a histogram with counts")
    w0 = xp.cumsum(h)
    w1 = total - w0
    s0 = xp.cumsum(h * centres)
    mu0 = s0 / xp.maximum(w0, 1e-300)
    mu1 = (s0[-1] - s0) / xp.maximum(w1, 1e-300)
    between = w0 * w1 * (mu0 - mu1) ** 2 / (total * total)
    between = xp.where((w0 > 0) & (w1 > 0), between, 0.0)
    k = int(xp.argmax(between))
    mean = s0[-1] / total
    var = float(((centres - mean) ** 2 * h).sum() / total)
    eta = float(between[k]) / var if var > 0 else 0.0
    return float(edges[k + 1]), eta


def weighted_centroid(weights) -> tuple[float, float]:
    """Centre of mass (x, y) of non-negative ``weights``, px; NaN where the weights sum to 0."""
    xp = array_namespace(weights)
    total = float(weights.sum())
    if not total > 0:
        return math.nan, math.nan
    yy = xp.arange(weights.shape[0], dtype=xp.float32)[:, None]
    xx = xp.arange(weights.shape[1], dtype=xp.float32)[None, :]
    return float((weights * xx).sum()) / total, float((weights * yy).sum()) / total


def masked_correlation(a, b, mask) -> float:
    """Pearson correlation of ``a`` and ``b`` over the weights ``mask`` (NaN if either is flat)."""
    xp = array_namespace(a, b)
    w = mask / mask.sum()
    da = a - (a * w).sum()
    db = b - (b * w).sum()
    va, vb = float((w * da * da).sum()), float((w * db * db).sum())
    # flat (to rounding) relative to its own level: no correlation to speak of
    if va <= 1e-10 * float((w * a * a).sum()) or vb <= 1e-10 * float((w * b * b).sum()):
        return math.nan
    return float((w * da * db).sum()) / math.sqrt(va * vb)


def lattice_parameter(kr_bins: float, box: int, pixel_size_A: float, lattice_A: float = PT_LATTICE_A
                      ) -> tuple[float, tuple[int, int, int]]:
    """Lattice parameter (A) from a peak at radius ``kr_bins`` in a ``box``-px crop, and the
    reflection it was assigned to (the nearest of {111}, {200}, {220} in log spacing)."""
    if kr_bins <= 0:
        return math.nan, (0, 0, 0)
    d = box * pixel_size_A / kr_bins
    hkl = nearest_reflection(d, lattice_A)
    return d * math.sqrt(sum(h * h for h in hkl)), hkl


def nearest_reflection(d_A: float, lattice_A: float = PT_LATTICE_A) -> tuple[int, int, int]:
    """The reflection of :data:`LATTICE_PLANES` whose spacing is nearest ``d_A`` (in log spacing)."""
    return min(LATTICE_PLANES, key=lambda p: abs(math.log(d_A / d_spacing(p, lattice_A))))


def fringe_truth(particle_image, box: int, pixel_size_A: float, area_px: float,
                 lattice_A: float = PT_LATTICE_A) -> tuple[float, float, float]:
    """Fringe modulation, in-plane angle (deg) and spacing (A) of a noise-free particle image.

    The simulator's truth for the lattice score: ``particle_image`` is the particle's image with
    vacuum = 1 (any square size); it is centred in a ``box``-px square (zero-padded or cut) so that
    its peaks have the shape a ``box``-px crop gives them, and scored with :func:`lattice_peak`
    and :func:`fringe_modulation` (noise floor 0).
    """
    xp = array_namespace(particle_image)
    fft = fft_module(xp)
    f = particle_image.astype(xp.float32) - 1.0
    n = f.shape[0]
    if n >= box:
        o = (n - box) // 2
        f = f[o : o + box, o : o + box]
    else:
        o = (box - n) // 2
        g = xp.zeros((box, box), dtype=xp.float32)
        g[o : o + n, o : o + n] = f
        f = g
    power = xp.abs(fft.fft2(f)) ** 2
    r_in, r_out = band_radii(box, pixel_size_A, lattice_A)
    fy = frequency_index(box, xp)[:, None]
    fx = frequency_index(box, xp)[None, :]
    k = xp.sqrt(fy * fy + fx * fx)
    s = box_sum(power, 1)
    j = int(xp.argmax(xp.where((k >= r_in) & (k <= r_out), s, -1.0)))
    iy, ix = divmod(j, box)
    dy, dx = subpixel_peak(s, iy, ix)
    ky = ((iy + box // 2) % box - box // 2) + dy
    kx = ((ix + box // 2) % box - box // 2) + dx
    m = fringe_modulation(float(s[iy, ix]), 1.0, box * box, area_px)
    kr = math.hypot(ky, kx)
    return m, math.degrees(math.atan2(ky, kx)) % 180.0, box * pixel_size_A / kr if kr > 0 else math.nan
