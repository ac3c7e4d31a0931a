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

log = logging.getLogger(__name__)

__all__ = ["write_figures", "FCC_Q4_Q6", "HCP_Q4_Q6", "ICOSAHEDRAL_W6"]

#: (Q4, Q6) of a perfect FCC and ideal HCP environment (12 neighbours; ../shared/reference.md)
FCC_Q4_Q6 = (0.19094, 0.57452)
HCP_Q4_Q6 = (0.09722, 0.48476)
#: normalised W6 of an icosahedron's centre
ICOSAHEDRAL_W6 = -0.16975


def _plt():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(fig, path: Path, written: list[str]) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    fig.clf()
    written.append(path.name)


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
        ax.set_xlabel("Q4")
        ax.set_ylabel("Q6")
        ax.legend(fontsize=7)
        _save(fig, out / "q4_q6.png", written)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, s in enumerate(named):
            c = cols_of[s.name]
            ax.plot(c["r_centre_A"], c["q6"], "o", ms=3, alpha=0.6, color=colours[k % len(colours)], label=s.name)
        ax.axhline(FCC_Q4_Q6[1], color="k", lw=0.8, ls="--")
        ax.set_xlabel("distance from the centre (A)")
        ax.set_ylabel("Q6")
        ax.legend(fontsize=7)
        _save(fig, out / "q6_vs_r.png", written)
        plt.close(fig)
    if grs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, (name, g) in enumerate(grs.items()):
            ax.plot(g.r, g.g + 2.0 * k, "-", lw=1, color=colours[k % len(colours)], label=name)
        ax.set_xlabel("r (A)")
        ax.set_ylabel("g(r), offset per structure")
        ax.legend(fontsize=7)
        _save(fig, out / "gr.png", written)
        plt.close(fig)
    usable = [r for r in per if r.get("atoms", 0) >= 4]
    if usable:
        fig, ax = plt.subplots(figsize=(5, 4))
        d = np.array([r["diameter_nm"] for r in usable])
        f = np.array([r["disordered_fraction"] for r in usable])
        ax.plot(d, f, "o", color="k", label="structures")
        if fit and "A" in fit:
            from .timeseries import DisorderFit  # noqa: PLC0415

            model = DisorderFit(fit["A"], fit["d_c_nm"], fit["n"], fit["rms"], fit["points"])
            x = np.linspace(max(model.d_c_nm + 1e-3, 0.5 * d.min()), d.max() * 1.1, 200)
            ax.plot(x, model(x), "-", color="tab:red",
                    label=f"1 - A(d - d_c)^-n: d_c {model.d_c_nm:.2f} nm, n {model.n:.2f}")
        ax.set_xlabel("diameter (nm)")
        ax.set_ylabel("N disordered / N")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=7)
        _save(fig, out / "disorder_vs_diameter.png", written)
        plt.close(fig)
    if disp:
        fig, axes = plt.subplots(1, len(disp), figsize=(3.2 * len(disp), 3), squeeze=False)
        for ax, dd in zip(axes[0], disp):
            ax.hist(dd["displacements_A"], bins=np.arange(0, max(2.0, float(np.max(dd["displacements_A"], initial=0)))
                                                          + 0.1, 0.1), color="tab:blue")
            ax.set_title(f"{dd['before']} -> {dd['after']}", fontsize=8)
            ax.set_xlabel("displacement (A)")
        axes[0][0].set_ylabel("atoms")
        _save(fig, out / "displacements.png", written)
        plt.close(fig)
    if disp:
        fig, ax = plt.subplots(figsize=(5, 4))
        for k, dd in enumerate(disp):
            jitter = (k - 0.5 * (len(disp) - 1)) * 0.12
            ax.plot(dd["cn_before"] + jitter, dd["displacements_A"], "o", ms=3, alpha=0.6,
                    color=colours[k % len(colours)], label=f"{dd['before']} -> {dd['after']}")
        ax.set_xlabel("coordination number before")
        ax.set_ylabel("displacement (A)")
        ax.legend(fontsize=7)
        _save(fig, out / "displacement_vs_cn.png", written)
        plt.close(fig)
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
        for k, (name, v) in enumerate(s6.items()):
            if len(v):
                ax.hist(v, bins=np.linspace(-0.5, 1.0, 61), histtype="step", color=colours[k % len(colours)],
                        label=name, density=True)
        ax.axvline(cfg.s6_threshold, color="k", ls="--", lw=0.8)
        ax.set_xlabel("s6 of a bond")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
        _save(fig, out / "s6.png", written)
        plt.close(fig)
    if named:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for k, s in enumerate(named):
            w6 = cols_of[s.name]["w6"]
            w6 = w6[np.isfinite(w6)]
            if len(w6):
                ax.hist(w6, bins=np.linspace(-0.2, 0.2, 81), histtype="step", color=colours[k % len(colours)],
                        label=s.name)
        ax.axvline(ICOSAHEDRAL_W6, color="k", ls="--", lw=0.8, label="icosahedral centre")
        ax.axvline(-0.01316, color="0.5", ls=":", lw=0.8, label="FCC")
        ax.set_xlabel("W6 (normalised, coarse-grained)")
        ax.set_ylabel("atoms")
        ax.legend(fontsize=7)
        _save(fig, out / "w6.png", written)
        plt.close(fig)
    strain = {s.name: cols_of[s.name]["radial_strain"] for s in named}
    strain = {k: v[np.isfinite(v)] for k, v in strain.items()}
    if any(len(v) for v in strain.values()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for k, (name, v) in enumerate(strain.items()):
            if len(v):
                ax.hist(100 * v, bins=40, histtype="step", color=colours[k % len(colours)], label=name)
        ax.set_xlabel("radial strain (%)")
        ax.set_ylabel("atoms")
        ax.legend(fontsize=7)
        _save(fig, out / "radial_strain.png", written)
        plt.close(fig)
    log.info("figures: %s", ", ".join(written) or "none")
    return written
