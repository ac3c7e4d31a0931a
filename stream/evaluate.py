"""Accuracy of the per-frame analysis, the denoiser and the windows against a simulated recording's truth.

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

__all__ = ["VISIBLE_M", "AMBIGUOUS_M", "frame_accuracy", "psnr", "ssim", "snr_db_from_correlation", "denoise_quality",
           "view_error_deg", "window_accuracy"]

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


# -- denoiser quality --------------------------------------------------------------------------
def psnr(estimate: np.ndarray, clean: np.ndarray) -> float:
    """Peak SNR, dB: ``10 log10(L^2 / MSE)`` with ``L`` the clean image's range (max - min)."""
    clean = np.asarray(clean, np.float64)
    mse = float(np.mean((np.asarray(estimate, np.float64) - clean) ** 2))
    rng = float(clean.max() - clean.min())
    return 10.0 * math.log10(rng * rng / mse) if mse > 0 and rng > 0 else math.inf


def ssim(estimate: np.ndarray, clean: np.ndarray, sigma: float = 1.5, mask: np.ndarray | None = None) -> float:
    """Structural similarity (Wang et al. 2004; Gaussian window of ``sigma`` px, K1 0.01, K2 0.03,
    dynamic range the clean image's max - min), the mean over the image (or over ``mask``)."""
    from scipy.ndimage import gaussian_filter  # noqa: PLC0415

    x = np.asarray(estimate, np.float64)
    y = np.asarray(clean, np.float64)
    rng = float(y.max() - y.min()) or 1.0
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    mx, my = gaussian_filter(x, sigma), gaussian_filter(y, sigma)
    vx = gaussian_filter(x * x, sigma) - mx * mx
    vy = gaussian_filter(y * y, sigma) - my * my
    cxy = gaussian_filter(x * y, sigma) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s[mask].mean() if mask is not None else s.mean())


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either image is flat (to rounding)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    scale = max(abs(a.mean()), abs(b.mean()), 1e-30)
    a, b = a - a.mean(), b - b.mean()
    if a.std() <= 1e-7 * scale or b.std() <= 1e-7 * scale:
        return math.nan
    return float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))


def snr_db_from_correlation(p: float) -> float:
    """``10 log10(p / (1 - p))`` (reference.md); NaN outside 0 < p < 1."""
    return 10.0 * math.log10(p / (1.0 - p)) if 0.0 < p < 1.0 else math.nan


def denoise_quality(recording: str | Path, methods: dict[str, Any], *, first: int, samples: int = 40,
                    crop: int = 96, margin: int = 32, context: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    """PSNR, SSIM (against the clean truth) and adjacent-frame SNR of denoising methods on a
    simulated recording saved with its clean frames (``btomo simulate --clean``).

    Parameters
    ----------
    recording : path
    methods : dict
        Name -> callable taking ``(n, context, H, W)`` count stacks and returning ``(n, H, W)``.
        ``raw`` (the centre frame), ``flat`` (its mean everywhere) and ``clean (truth)`` (the
        ceiling of the adjacent-frame SNR) are always added.
    first : int
        Only centre frames from here on (the held-out part of the recording).
    samples : int
        Pairs of consecutive centre frames (t, t + 1) evaluated, each a ``crop`` px square around
        that frame's true particle centre (as tracked crops are), denoised from stacks ``margin``
        px larger on every side.
    """
    from .recording import Recording  # noqa: PLC0415

    rec_dir = Path(recording)
    truth = {int(r["frame"]): r for r in _read(rec_dir / "truth" / "frames.csv") if r["particle"] == "0"}
    clean_dir = rec_dir / "truth" / "clean"
    if not (clean_dir / "recording.json").exists():
        raise FileNotFoundError(f"{rec_dir}: no clean frames (simulate with --clean)")
    raw, clean = Recording(rec_dir), Recording(clean_dir)
    k = context // 2
    side = crop + 2 * margin
    rng = np.random.default_rng(seed)
    cands = [t for t in range(max(first, k), len(raw) - k - 1) if t in truth]
    if not cands:
        raise ValueError(f"{rec_dir}: no frames from {first} on to evaluate")
    picks = sorted(rng.choice(cands, size=min(samples, len(cands)), replace=False).tolist())
    stacks, cleans, masks = [], [], []
    h, w = raw.read(0).shape
    yy, xx = np.mgrid[:crop, :crop]
    for t in picks:
        for c in (t, t + 1):  # the pair: each frame cut around its own centre (a tracked crop)
            if c not in truth:
                c = t
            x = int(round(float(truth[c]["x_px"]))) - side // 2
            y = int(round(float(truth[c]["y_px"]))) - side // 2
            x, y = min(max(x, 0), w - side), min(max(y, 0), h - side)
            # the particle's disc (projected diameter + 3 px)
            r_px = 5.0 * float(truth[c]["projected_diameter_nm"]) / raw.pixel_size_A + 3.0
            cx = float(truth[c]["x_px"]) - (x + margin)
            cy = float(truth[c]["y_px"]) - (y + margin)
            masks.append((xx - cx) ** 2 + (yy - cy) ** 2 <= r_px**2)
            stacks.append(np.stack([raw.read(i)[y:y + side, x:x + side] for i in range(c - k, c + k + 1)]).astype(np.float32))
            cleans.append(clean.read(c)[y + margin:y + margin + crop, x + margin:x + margin + crop].astype(np.float32))
    stacks_a = np.stack(stacks)
    inner = (slice(margin, margin + crop), slice(margin, margin + crop))
    results: dict[str, dict[str, float]] = {}
    # "flat": the crop's mean everywhere. The simulated particle is a few % of the counts, so a
    # flat image already scores a high PSNR: a denoiser must beat it to have found structure.
    all_methods = {"raw": lambda s: s[:, k],
                   "flat": lambda s: np.broadcast_to(s[:, k].mean(axis=(1, 2), keepdims=True), s[:, k].shape).copy()}
    all_methods |= dict(methods)
    # the truth itself: the ceiling of the adjacent-frame SNR (the particle moves and turns)
    clean_a = np.stack(cleans)
    all_methods["clean (truth)"] = lambda s: np.pad(clean_a, ((0, 0), (margin, margin), (margin, margin)))
    flat_out = all_methods["flat"](stacks_a)[:, inner[0], inner[1]]
    flat_mse = np.array([np.mean((o[m] - c[m]) ** 2) for o, c, m in zip(flat_out, cleans, masks)])
    for name, fn in all_methods.items():
        out = np.asarray(fn(stacks_a))[:, inner[0], inner[1]]
        ps = [psnr(o, c) for o, c in zip(out, cleans)]
        ss = [ssim(o, c) for o, c in zip(out, cleans)]
        pp = [psnr(o[m], c[m]) for o, c, m in zip(out, cleans, masks)]
        sp = [ssim(o, c, mask=m) for o, c, m in zip(out, cleans, masks)]
        mse = np.array([np.mean((o[m] - c[m]) ** 2) for o, c, m in zip(out, cleans, masks)])
        corr = [_corr(out[i], out[i + 1]) for i in range(0, len(out), 2)]
        p = float(np.nanmean(corr)) if np.isfinite(corr).any() else math.nan
        corr_d = [_corr(out[i][masks[i]], out[i + 1][masks[i]]) for i in range(0, len(out), 2)]
        p_d = float(np.nanmean(corr_d)) if np.isfinite(corr_d).any() else math.nan
        results[name] = {"psnr_db": float(np.mean(ps)), "ssim": float(np.mean(ss)),
                         "psnr_particle_db": float(np.mean(pp)), "ssim_particle": float(np.mean(sp)),
                         "adjacent_p": p, "adjacent_snr_db": snr_db_from_correlation(p),
                         "adjacent_p_particle": p_d, "adjacent_snr_particle_db": snr_db_from_correlation(p_d),
                         "pairs": len(corr)}
        m = float(np.mean(mse))
        results[name]["gain_over_flat_db"] = float(10.0 * np.log10(np.mean(flat_mse) / m)) if m > 0 else math.inf
    return results


def view_error_deg(estimated: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Angle between view directions (n, 3) modulo the cubic point group and the antipode, deg:
    what one lattice frame can tell of the view of an FCC particle."""
    from btomo.kernels.coverage import cubic_rotations  # noqa: PLC0415

    ops = cubic_rotations()
    mates = np.einsum("sij,nj->nsi", ops, np.asarray(estimated, dtype=np.float64))
    cos = np.abs(np.einsum("nsi,ni->ns", mates, np.asarray(true, dtype=np.float64))).max(axis=1)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def window_accuracy(store: str | Path, recording: str | Path, *, directions: int = 2500, angle_deg: float = 15.0,
                    every: int = 25) -> list[dict[str, Any]]:
    """Each window's coverage and coarse orientations against the truth.

    The true coverage of a window is that of the true view directions of **all** its frames (the
    simulator's orientation of each frame, ``truth/frames.csv``), with the same grid and angle;
    it is followed frame by frame next to the window's own ``coverage`` array (the estimate once
    each frame had joined). The orientation error is that of the filter's view on the frames it
    updated on (``orientation`` not NaN), modulo the cubic group (:func:`view_error_deg`).

    Returns
    -------
    list of dict
        Per window: ``window``, ``frames``, ``t_start_s``, ``t_end_s``, ``closed_by``,
        ``coverage`` (estimated, final), ``coverage_true`` (final), ``max_gap`` (largest
        ``|estimated - true|`` over the window, sampled every ``every`` frames and at the end),
        ``updates`` and ``median_error_deg`` / ``p75_error_deg`` of the coarse orientations.
    """
    import zarr  # noqa: PLC0415

    from btomo.kernels.coverage import Coverage, view_directions  # noqa: PLC0415

    truth: dict[tuple[int, int], np.ndarray] = {}
    for r in _read(Path(recording) / "truth" / "frames.csv"):
        truth[(int(r["particle"]), int(r["frame"]))] = np.array([_f(r[k]) for k in ("qw", "qx", "qy", "qz")])
    root = zarr.open_group(str(store), mode="r")
    out = []
    for name in sorted(root.group_keys()):
        g = root[name]
        particle = int(g.attrs["particle"])
        frames = g["frame"][:]
        est_cov = g["coverage"][:] if "coverage" in g else np.full(len(frames), np.nan)
        true_q = np.array([truth[(particle, int(f))] for f in frames])
        true_v = view_directions(true_q)
        cov = Coverage(directions, angle_deg)
        gaps = []
        for i in range(len(frames)):
            cov.add(true_v[i])
            if (i + 1) % every == 0 or i == len(frames) - 1:
                gaps.append(abs(float(est_cov[i]) - cov.fraction))
        rec: dict[str, Any] = {
            "window": name, "frames": len(frames), "t_start_s": float(g.attrs["t_start_s"]),
            "t_end_s": float(g.attrs.get("t_end_s", math.nan)), "closed_by": g.attrs.get("closed_by"),
            "coverage": float(g.attrs["coverage"]), "coverage_true": cov.fraction,
            "max_gap": max(gaps) if gaps else math.nan}
        if "orientation" in g:
            q = g["orientation"][:]
            ok = np.isfinite(q).all(axis=1)
            err = view_error_deg(view_directions(q[ok].astype(np.float64)), true_v[ok]) if ok.any() else np.array([])
            rec.update(updates=int(ok.sum()), median_error_deg=float(np.median(err)) if len(err) else math.nan,
                       p75_error_deg=float(np.percentile(err, 75)) if len(err) else math.nan)
        out.append(rec)
    return out
