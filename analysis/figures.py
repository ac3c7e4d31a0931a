"""The figures of ``btomo analyze`` (PNG, matplotlib's Agg backend: no display needed).

* ``trace_p<k>.png``: lattice score of every frame, its moving average, the threshold, the
  reconstructed windows, and the projected diameter (paper Fig. 1d);
* ``q4_q6.png``: Q4 against Q6 of every atom per structure, with FCC and HCP (paper Fig. 4c);
* ``q6_vs_r.png``: Q6 against the distance from the centre (Fig. 4d);
* ``gr.png``: g(r) per structure (Fig. 4b);
* ``disorder_vs_diameter.png``: disordered fraction against diameter with the fit (Fig. 4f);
* ``displacements.png``: histograms of the displacements of persistent atoms per transition (Fig. 3b-d);
* ``displacement_vs_cn.png``: displacement against the coordination before (Fig. 3g, Supp. Fig. 19);
* ``cn_of_removed.png``: coordination of the removed atoms against all atoms (Supp. Fig. 17);
* ``s6.png``: distribution of the bond order s6 with the 0.8 threshold (Supp. Fig. 20c);
* ``w6.png``: distribution of the atoms' normalised W6 with the icosahedral value (Supp. Fig. 20b);
* ``radial_strain.png``: histograms of the atoms' radial strain (Supp. Fig. 21d).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from .timeseries import DisorderFit

log = logging.getLogger(__name__)

__all__ = ["write_figures", "FCC_Q4_Q6", "HCP_Q4_Q6", "ICOSAHEDRAL_W6"]

#: (Q4, Q6) of a perfect FCC and ideal HCP environment (12 neighbours; ../shared/reference.md)
FCC_Q4_Q6 = (0.19094, 0.57452)
HCP_Q4_Q6 = (0.09722, 0.48476)
#: normalised W6 of an icosahedron's centre and of FCC
ICOSAHEDRAL_W6 = -0.16975
FCC_W6 = -0.01316


def _plt():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(fig, path: Path, written: list[str]) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    fig.clf()
    written.append(path.name)


def _finish(plt, fig, ax, xlabel: str, ylabel: str, path: Path, written: list[str]) -> None:
    """Label, add the legend, write and close a one-panel figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    _save(fig, path, written)
    plt.close(fig)


def _step_histograms(ax, series: dict, bins, colours, **kw) -> None:
    """One step histogram per structure (empty series left out)."""
    for k, (name, v) in enumerate(series.items()):
        if len(v):
            ax.hist(v, bins=bins, histtype="step", color=colours[k % len(colours)], label=name, **kw)


def write_figures(out: Path, structures, cols_of, grs, disp, per, fit, traces, cfg, s6=None) -> list[str]:
    """Write every figure there is data for into ``out``; returns the file names."""
    plt = _plt()
    written: list[str] = []
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for tr in traces:
        fig, ax = plt.subplots(figsize=(9, 3.4))
        ax.plot(tr.t_s[~tr.lattice], tr.fft_peak[~tr.lattice], ".", ms=2, color="0.6", label="frames")
        ax.plot(tr.t_s[tr.lattice], tr.fft_peak[tr.lattice], ".", ms=2, color="tab:blue", label="lattice frames")
        ax.plot(tr.t_s, tr.fft_peak_avg, "-", color="k", lw=1, label=f"{cfg.trace_window_frames}-frame average")
        if math.isfinite(tr.threshold):
            ax.axhline(tr.threshold, color="tab:red", lw=0.8, ls="--", label="threshold")
        for s in structures:
            if s.particle == tr.particle and math.isfinite(s.t_start_s) and math.isfinite(s.t_end_s):
                ax.axvspan(s.t_start_s, s.t_end_s, color="tab:green", alpha=0.12)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("max FFT peak (lattice score)")
        ax.set_title(f"particle {tr.particle}: lattice score (windows shaded)")
        if np.any(np.isfinite(tr.diameter_avg_nm)):
            ax2 = ax.twinx()
            ax2.plot(tr.t_s, tr.diameter_avg_nm, "-", color="tab:orange", lw=1.2)
            ax2.set_ylabel("projected diameter (nm)", color="tab:orange")
        ax.legend(loc="upper right", fontsize=7, markerscale=3)
        _save(fig, out / f"trace_p{tr.particle}.png", written)
        plt.close(fig)
    named = [s for s in structures if len(cols_of[s.name]["x"]) > 0]
    if named:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        for k, s in enumerate(named):
            c = cols_of[s.name]
            ax.plot(c["q4"], c["q6"], "o", ms=3, alpha=0.6, color=colours[k % len(colours)], label=s.name)
        ax.plot(*FCC_Q4_Q6, "*", ms=14, color="k", label="FCC")
        ax.plot(*HCP_Q4_Q6, "^", ms=10, mfc="none", mec="k", label="HCP")
        _finish(plt, fig, ax, "Q4", "Q6", out / "q4_q6.png", written)
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, s in enumerate(named):
            c = cols_of[s.name]
            ax.plot(c["r_centre_A"], c["q6"], "o", ms=3, alpha=0.6, color=colours[k % len(colours)], label=s.name)
        ax.axhline(FCC_Q4_Q6[1], color="k", lw=0.8, ls="--")
        _finish(plt, fig, ax, "distance from the centre (A)", "Q6", out / "q6_vs_r.png", written)
    if grs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, (name, g) in enumerate(grs.items()):
            ax.plot(g.r, g.g + 2.0 * k, "-", lw=1, color=colours[k % len(colours)], label=name)
        _finish(plt, fig, ax, "r (A)", "g(r), offset per structure", out / "gr.png", written)
    usable = [r for r in per if r.get("atoms", 0) >= 4]
    if usable:
        fig, ax = plt.subplots(figsize=(5, 4))
        d = np.array([r["diameter_nm"] for r in usable])
        f = np.array([r["disordered_fraction"] for r in usable])
        ax.plot(d, f, "o", color="k", label="structures")
        if fit and "A" in fit:
            model = DisorderFit(fit["A"], fit["d_c_nm"], fit["n"], fit["rms"], fit["points"])
            x = np.linspace(max(model.d_c_nm + 1e-3, 0.5 * d.min()), d.max() * 1.1, 200)
            ax.plot(x, model(x), "-", color="tab:red",
                    label=f"1 - A(d - d_c)^-n: d_c {model.d_c_nm:.2f} nm, n {model.n:.2f}")
        ax.set_ylim(-0.05, 1.05)
        _finish(plt, fig, ax, "diameter (nm)", "N disordered / N", out / "disorder_vs_diameter.png", written)
    if disp:
        fig, axes = plt.subplots(1, len(disp), figsize=(3.2 * len(disp), 3), squeeze=False)
        for ax, dd in zip(axes[0], disp):
            top = max(2.0, float(np.max(dd["displacements_A"], initial=0)))
            ax.hist(dd["displacements_A"], bins=np.arange(0, top + 0.1, 0.1), color="tab:blue")
            ax.set_title(f"{dd['before']} -> {dd['after']}", fontsize=8)
            ax.set_xlabel("displacement (A)")
        axes[0][0].set_ylabel("atoms")
        _save(fig, out / "displacements.png", written)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(5, 4))
        for k, dd in enumerate(disp):
            jitter = (k - 0.5 * (len(disp) - 1)) * 0.12
            ax.plot(dd["cn_before"] + jitter, dd["displacements_A"], "o", ms=3, alpha=0.6,
                    color=colours[k % len(colours)], label=f"{dd['before']} -> {dd['after']}")
        _finish(plt, fig, ax, "coordination number before", "displacement (A)", out / "displacement_vs_cn.png", written)
        fig, axes = plt.subplots(1, len(disp), figsize=(3.2 * len(disp), 3), squeeze=False)
        for ax, dd in zip(axes[0], disp):
            bins = np.arange(-0.5, 13.5, 1.0)
            ax.hist(dd["cn_all"], bins=bins, color="0.75", label="all atoms")
            ax.hist(dd["cn_removed"], bins=bins, color="tab:red", label="removed")
            ax.set_title(f"{dd['before']} -> {dd['after']}", fontsize=8)
            ax.set_xlabel("coordination number")
        axes[0][0].set_ylabel("atoms")
        axes[0][0].legend(fontsize=7)
        _save(fig, out / "cn_of_removed.png", written)
        plt.close(fig)
    if s6 and any(len(v) for v in s6.values()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        _step_histograms(ax, s6, np.linspace(-0.5, 1.0, 61), colours, density=True)
        ax.axvline(cfg.s6_threshold, color="k", ls="--", lw=0.8)
        _finish(plt, fig, ax, "s6 of a bond", "density", out / "s6.png", written)
    finite = {name: {k: c[k][np.isfinite(c[k])] for k in ("w6", "radial_strain")} for name, c in
              ((s.name, cols_of[s.name]) for s in named)}
    if any(len(v["w6"]) for v in finite.values()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        _step_histograms(ax, {n: v["w6"] for n, v in finite.items()}, np.linspace(-0.2, 0.2, 81), colours)
        ax.axvline(ICOSAHEDRAL_W6, color="k", ls="--", lw=0.8, label="icosahedral centre")
        ax.axvline(FCC_W6, color="0.5", ls=":", lw=0.8, label="FCC")
        _finish(plt, fig, ax, "W6 (normalised, coarse-grained)", "atoms", out / "w6.png", written)
    if any(len(v["radial_strain"]) for v in finite.values()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        _step_histograms(ax, {n: 100 * v["radial_strain"] for n, v in finite.items()}, 40, colours)
        _finish(plt, fig, ax, "radial strain (%)", "atoms", out / "radial_strain.png", written)
    log.info("figures: %s", ", ".join(written) or "none")
    return written
