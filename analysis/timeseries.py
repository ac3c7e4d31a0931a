"""Across a run: the lattice-score trace of the frames (paper Fig. 1d) and the disordered
fraction against the diameter with its fit (paper Fig. 4f).
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import optimize

log = logging.getLogger(__name__)

__all__ = ["moving_average", "LatticeTrace", "read_frames_csv", "DisorderFit", "fit_disorder"]


def moving_average(values, window: int) -> np.ndarray:
    """Centred moving average over ``window`` samples; NaNs are skipped (the mean of the finite
    values in the window), and the ends average the samples there are."""
    v = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError(f"expected a window of at least 1 sample, got {window}")
    ok = np.isfinite(v)
    kernel = np.ones(window)
    s = np.convolve(np.where(ok, v, 0.0), kernel, mode="same")
    c = np.convolve(ok.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def read_frames_csv(path: str | Path) -> dict[str, np.ndarray]:
    """``frames.csv`` of a run as columns (numbers as float, empty cells as NaN, ``window`` as
    str). Raises ``ValueError`` naming the missing columns."""
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"frame", "t_s", "particle", "fft_peak", "lattice", "diameter_nm"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: expected columns {sorted(need)}, missing {sorted(missing)}")
        rows = list(reader)
    cols: dict[str, np.ndarray] = {}
    for name in reader.fieldnames or []:
        raw = [r[name] for r in rows]
        if name == "window":
            cols[name] = np.array(raw, dtype=object)
            continue
        try:
            cols[name] = np.array([float(x) if x not in ("", None) else np.nan for x in raw])
        except ValueError:
            cols[name] = np.array(raw, dtype=object)
    return cols


@dataclass
class LatticeTrace:
    """One particle's lattice score over time (paper Fig. 1d).

    Attributes
    ----------
    t_s, fft_peak, lattice, diameter_nm : arrays per frame (time order)
    fft_peak_avg : the ``window``-frame centred moving average of the score
    threshold : the score above which frames counted as lattice frames (the smallest score of a
        lattice frame; NaN without lattice frames)
    """

    particle: int
    t_s: np.ndarray
    fft_peak: np.ndarray
    lattice: np.ndarray
    diameter_nm: np.ndarray
    fft_peak_avg: np.ndarray
    diameter_avg_nm: np.ndarray
    threshold: float

    @classmethod
    def from_columns(cls, cols: dict[str, np.ndarray], particle: int, window: int = 100) -> "LatticeTrace":
        sel = cols["particle"] == particle
        if not np.any(sel):
            raise ValueError(f"particle {particle} has no frame in the table")
        order = np.argsort(cols["t_s"][sel], kind="stable")
        t = cols["t_s"][sel][order]
        peak = cols["fft_peak"][sel][order]
        lat = cols["lattice"][sel][order] > 0.5
        diam = cols["diameter_nm"][sel][order]
        thr = float(np.nanmin(peak[lat])) if np.any(lat) else math.nan
        return cls(particle, t, peak, lat, diam, moving_average(peak, window), moving_average(diam, window), thr)

    def summary(self) -> dict:
        return {"particle": self.particle, "frames": len(self.t_s), "lattice_frames": int(self.lattice.sum()),
                "lattice_fraction": float(self.lattice.mean()) if len(self.lattice) else math.nan,
                "t_start_s": float(self.t_s[0]), "t_end_s": float(self.t_s[-1]),
                "diameter_first_nm": float(self.diameter_avg_nm[np.isfinite(self.diameter_avg_nm)][0])
                if np.any(np.isfinite(self.diameter_avg_nm)) else math.nan,
                "diameter_last_nm": float(self.diameter_avg_nm[np.isfinite(self.diameter_avg_nm)][-1])
                if np.any(np.isfinite(self.diameter_avg_nm)) else math.nan}


@dataclass
class DisorderFit:
    """``N_disordered / N = 1 - A (d - d_c)^(-n)`` fitted to (diameter, fraction) points (paper
    Fig. 4f, d in nm).

    With n < 0 the curve rises to 1 as d falls to d_c: ``d_c`` is then the extrapolated diameter of
    complete disorder (paper: about 1.3 nm). With n > 0 it never reaches 1 above d_c and
    ``complete_disorder_nm`` is NaN.
    """

    A: float
    d_c_nm: float
    n: float
    rms: float
    points: int

    def __call__(self, d_nm) -> np.ndarray:
        d = np.asarray(d_nm, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > self.d_c_nm, 1.0 - self.A * np.power(np.maximum(d - self.d_c_nm, 1e-12), -self.n),
                            np.nan)

    @property
    def complete_disorder_nm(self) -> float:
        return self.d_c_nm if self.n < 0 else math.nan


def fit_disorder(diameters_nm, fractions, *, d_c_bounds: tuple[float, float] | None = None) -> DisorderFit:
    """Least-squares fit of :class:`DisorderFit` (three parameters: needs at least 3 points; with
    exactly 3 it passes through them). ``d_c`` is bounded below the smallest diameter."""
    d = np.asarray(diameters_nm, dtype=np.float64)
    f = np.asarray(fractions, dtype=np.float64)
    ok = np.isfinite(d) & np.isfinite(f)
    d, f = d[ok], f[ok]
    if len(d) < 3:
        raise ValueError(f"need at least 3 structures with a diameter and a fraction to fit, got {len(d)}")
    lo, hi = d_c_bounds or (0.0, float(d.min()) - 1e-3)
    best = None
    for d_c0 in np.linspace(lo, hi, 7)[:-1] + 0.5 * (hi - lo) / 7:
        for n0 in (-2.0, -1.0, -0.5, 0.5, 1.0):
            x = np.maximum(d - d_c0, 1e-9)
            # for fixed d_c and n the best A is linear least squares
            basis = np.power(x, -n0)
            a0 = float(np.dot(basis, 1.0 - f) / max(np.dot(basis, basis), 1e-30))

            def resid(p):
                return 1.0 - p[0] * np.power(np.maximum(d - p[1], 1e-9), -p[2]) - f

            try:
                res = optimize.least_squares(resid, [a0, d_c0, n0], bounds=([0.0, lo, -20.0], [np.inf, hi, 20.0]))
            except ValueError:
                continue
            rms = float(np.sqrt(np.mean(res.fun ** 2)))
            if best is None or rms < best[0] - 1e-12:
                best = (rms, res.x)
    if best is None:
        raise ValueError("the disorder fit did not converge from any start")
    rms, (a, d_c, n) = best
    return DisorderFit(float(a), float(d_c), float(n), rms, len(d))
