"""Accuracy of the per-frame analysis against a simulated recording's truth.

Used by the accuracy tests and ``tools/report_frames.py`` (numbers in ``docs/accuracy.md``).
The truth is ``truth/frames.csv`` (centre, focus, geometric visibility, projected diameter) and
``truth/lattice.csv`` (fringe modulation, angle and spacing of each particle's noise-free image).

Lattice truth: a frame shows the lattice when the noise-free image's fringe modulation is at
least :data:`VISIBLE_M` (the score ``fft_peak`` estimates the same quantity). Frames whose truth
lies in the band ``AMBIGUOUS_M`` are near the line either way; the *clear-frame* F1 leaves them out,
the plain F1 keeps them.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from btomo.kernels.frames import nearest_reflection

__all__ = ["VISIBLE_M", "AMBIGUOUS_M", "frame_accuracy"]

VISIBLE_M = 0.12
AMBIGUOUS_M = (0.08, 0.16)
PT_A = 3.92


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _f(v: str) -> float:
    return float(v) if v not in ("", None) else math.nan


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    fn = int(np.sum(~pred & truth))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan


def frame_accuracy(frames_csv: str | Path, recording: str | Path, *, pixel_size_A: float,
                   skip_s: float = 0.0) -> dict[str, Any]:
    """Compare a run's ``frames.csv`` with a simulated recording's truth.

    Parameters
    ----------
    frames_csv : path
    recording : path
        The simulated recording (its ``truth/`` is read).
    pixel_size_A : float
    skip_s : float
        Leave out the first seconds (the tracker's start and the threshold's warm-up).

    Returns
    -------
    dict
        ``tracking_rms_A_lattice``, ``tracking_rms_A_in_focus``, ``tracking_median_A``,
        ``coverage`` (truth particle-frames with a tracked row), ``f1``, ``f1_clear``,
        ``f1_geometric``, ``f1_zone_axis``, ``precision``, ``recall``, ``diameter_median_error_nm``,
        ``diameter_median_bias_nm``, ``lattice_A_median``, ``lattice_A_error`` (against 3.92 A),
        ``lattice_A_image_median`` and ``lattice_A_error_vs_image`` (against the noise-free image),
        ``angle_median_error_deg``, ``lattice_fraction`` and ``truth_lattice_fraction``, and counts.
    """
    truth_dir = Path(recording) / "truth"
    truth = _read(truth_dir / "frames.csv")
    lat = {(int(r["frame"]), int(r["particle"])): r for r in _read(truth_dir / "lattice.csv")}
    by_frame: dict[int, list[dict[str, str]]] = {}
    for r in truth:
        by_frame.setdefault(int(r["frame"]), []).append(r)
    rows = _read(frames_csv)
    err, err_lat, err_focus = [], [], []
    pred, m_true, geo, zone = [], [], [], []
    d_err, lat_a, ang_err, img_a = [], [], [], []
    matched = set()
    for r in rows:
        f = int(r["frame"])
        if not by_frame.get(f):
            continue
        t_s = _f(r["t_s"])
        x, y = _f(r["x_px"]), _f(r["y_px"])
        cand = by_frame[f]
        best = min(cand, key=lambda t: (float(t["x_px"]) - x) ** 2 + (float(t["y_px"]) - y) ** 2)
        e = math.hypot(float(best["x_px"]) - x, float(best["y_px"]) - y) * pixel_size_A
        if t_s < skip_s:
            continue
        p = int(best["particle"])
        if (f, p) in matched:
            continue  # a second track on the same particle: not a new match
        matched.add((f, p))
        lt = lat.get((f, p))
        m = float(lt["fringe_modulation"]) if lt else math.nan
        err.append(e)
        if int(best["in_focus"]):
            err_focus.append(e)
        if m >= VISIBLE_M:
            err_lat.append(e)
        is_lat = r["lattice"] == "1"
        pred.append(is_lat)
        m_true.append(m)
        geo.append(int(best["lattice_visible"]))
        zone.append(int(best["zone_axis_visible"]) and int(best["in_focus"]))
        if is_lat and m >= VISIBLE_M:
            d = _f(r["diameter_nm"])
            if math.isfinite(d):
                d_err.append(d - float(best["projected_diameter_nm"]))
            a = _f(r["lattice_A"])
            if math.isfinite(a):
                lat_a.append(a)
                if lt:
                    d = _f(lt["fringe_d_A"])
                    img_a.append(d * math.sqrt(sum(i * i for i in nearest_reflection(d))))
            ang = _f(r["angle_deg"])
            if lt and math.isfinite(ang) and abs(_f(lt["fringe_d_A"]) * math.sqrt(
                    sum(int(c) ** 2 for c in r["reflection"])) - a) < 0.15:
                da = abs(ang - float(lt["fringe_angle_deg"])) % 180.0
                ang_err.append(min(da, 180.0 - da))
    n_truth = sum(1 for r in truth if float(r["t_s"]) >= skip_s)
    pred_a, m_a = np.array(pred, bool), np.array(m_true, float)
    vis = m_a >= VISIBLE_M
    clear = (m_a < AMBIGUOUS_M[0]) | (m_a >= AMBIGUOUS_M[1])
    tp = int(np.sum(pred_a & vis))

    def rms(v: list[float]) -> float:
        return float(np.sqrt(np.mean(np.square(v)))) if v else math.nan

    return {
        "rows": len(pred), "truth_rows": n_truth,
        "coverage": len(pred) / n_truth if n_truth else math.nan,
        "tracking_rms_A_lattice": rms(err_lat),
        "tracking_rms_A_in_focus": rms(err_focus),
        "tracking_median_A": float(np.median(err)) if err else math.nan,
        "f1": _f1(pred_a, vis),
        "f1_clear": _f1(pred_a[clear], vis[clear]),
        "clear_fraction": float(clear.mean()) if len(clear) else math.nan,
        "f1_geometric": _f1(pred_a, np.array(geo, bool)),
        "f1_zone_axis": _f1(pred_a, np.array(zone, bool)),
        "precision": tp / max(int(pred_a.sum()), 1),
        "recall": tp / max(int(vis.sum()), 1),
        "lattice_fraction": float(pred_a.mean()) if len(pred_a) else math.nan,
        "truth_lattice_fraction": float(vis.mean()) if len(vis) else math.nan,
        "diameter_median_error_nm": float(np.median(np.abs(d_err))) if d_err else math.nan,
        "diameter_median_bias_nm": float(np.median(d_err)) if d_err else math.nan,
        "lattice_A_median": float(np.median(lat_a)) if lat_a else math.nan,
        "lattice_A_error": abs(float(np.median(lat_a)) - PT_A) if lat_a else math.nan,
        # the noise-free image's own fringes: finite size, shape and defocus move them off bulk Pt
        "lattice_A_image_median": float(np.median(img_a)) if img_a else math.nan,
        "lattice_A_error_vs_image": abs(float(np.median(lat_a)) - float(np.median(img_a))) if img_a else math.nan,
        "angle_median_error_deg": float(np.median(ang_err)) if ang_err else math.nan,
        "lattice_rows_scored": len(lat_a),
    }
