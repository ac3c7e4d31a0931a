"""``btomo analyze``: from a run's reconstructions and frame table, or from atom files, to the
paper's tables and figures.

``analyze_run(RUN_DIR, OUT)`` reads ``RUN_DIR/recon/<window>/`` (``atoms.xyz``, ``map.mrc``,
``reconstruction.json`` for the window's time span and particle) and ``RUN_DIR/frames.csv``;
``analyze_atom_files(FILES, OUT)`` reads XYZ/PDB/CIF files with ASE. Both write, into OUT:

``atoms_<name>.csv``       per atom, input order: x, y, z, cn, q4, q6, w6 (coarse-grained, eq. 6-10),
                           q4_local, q6_local, w6_local, crystalline_bonds, crystalline (0/1),
                           mean_nn_A, r_centre_A, radial_strain
``structures.csv``         per structure: atoms, diameters, crystalline and disordered fractions,
                           mean CN, the nearest-neighbour peak (centre, width), mean Q4/Q6,
                           mean radial strain, the fraction of atoms whose 24 cube images are
                           all atoms (1: the cube's shape; a symmetrised map), window span
``gr.csv``                 g(r) of every structure
``transitions.csv``        per consecutive pair (per particle, in time order): the alignment (map or
                           atoms), persistent / removed / rearranged atoms, displacements, etch rate
``correspondence_<a>__<b>.csv``  every atom of the pair: persistent / removed / rearranged,
                           positions in the first structure's frame, displacement, CN before
``local_cc_<a>__<b>.mrc``  local cross-correlation of the aligned maps (when both maps exist)
``disorder_fit.json``      fit of the disordered fraction against the diameter (>= 3 structures)
``trace_p<k>.csv``         the lattice-score trace with its moving average (runs with frames.csv)
``analysis.json``          everything above in one summary, with the settings used
and the figures (:mod:`btomo.analysis.figures`).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .compare import (Correspondence, align_atoms, align_maps, etch_rate_atoms_per_s, local_correlation,
                      transform_map)
from .config import AnalysisConfig
from .structure import (BondOrder, LocalGeometry, RadialDistribution, check_positions, cluster_volume_A3,
                        cube_symmetric_fraction)
from .timeseries import LatticeTrace, fit_disorder, read_frames_csv

log = logging.getLogger(__name__)

__all__ = ["Structure", "load_atoms", "load_atom_images", "load_run_structures", "analyze_structures", "analyze_run",
           "analyze_atom_files", "AnalysisError"]


class AnalysisError(ValueError):
    """An input that cannot be analysed (missing, truncated, wrong layout); one line."""


@dataclass
class Structure:
    """One atomic map and where it came from.

    Attributes
    ----------
    name : str
    atoms_A : (n, 3)
        x, y, z in A (about the map's centre for reconstructions).
    particle : int or None
    t_start_s, t_end_s : float
        The window's time span (NaN when unknown).
    map : (box, box, box) or None
        The density map, ``[z, y, x]``.
    voxel_A : float or None
    """

    name: str
    atoms_A: np.ndarray
    particle: int | None = None
    t_start_s: float = math.nan
    t_end_s: float = math.nan
    map: np.ndarray | None = None
    voxel_A: float | None = None


def load_atom_images(path: str | Path) -> list:
    """Every image (ASE ``Atoms``) of an XYZ/extended-XYZ/PDB/CIF/... file readable by ASE; a
    one-line :class:`AnalysisError` for a missing, empty or malformed file or NaN coordinates."""
    from ase.io import read  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"{path}: no such atoms file")
    if path.stat().st_size == 0:
        raise AnalysisError(f"{path}: the file is empty")
    try:
        images = read(str(path), index=":")
    except Exception as exc:  # ASE raises many kinds for a malformed file
        raise AnalysisError(f"{path}: not a readable atoms file ({type(exc).__name__}: {exc})") from None
    if not images:
        raise AnalysisError(f"{path}: no atoms in the file")
    for k, atoms in enumerate(images):
        pos = atoms.get_positions()
        if len(pos) and not np.all(np.isfinite(pos)):
            raise AnalysisError(f"{path}: image {k}: {int(np.sum(~np.isfinite(pos).all(axis=1)))} atoms have "
                                f"NaN/inf coordinates")
    return images


def load_atoms(path: str | Path) -> np.ndarray:
    """Atom positions (A) of the last image of an atoms file (see :func:`load_atom_images`)."""
    return np.asarray(load_atom_images(path)[-1].get_positions(), dtype=np.float64)


def _read_map(path: Path) -> tuple[np.ndarray, float]:
    import mrcfile  # noqa: PLC0415

    try:
        with mrcfile.open(str(path), permissive=False) as m:
            vol = np.asarray(m.data, dtype=np.float64)
            voxel = float(m.voxel_size.x)
    except Exception as exc:
        raise AnalysisError(f"{path}: not a readable MRC map ({type(exc).__name__}: {exc})") from None
    return vol, voxel


def load_run_structures(run_dir: str | Path) -> list[Structure]:
    """Every reconstruction of a run (``recon/<window>/atoms.xyz`` with its map and summary), in
    time order. Reconstructions without ``atoms.xyz`` (not finished) are skipped with a warning."""
    run = Path(run_dir)
    recon = run / "recon"
    out: list[Structure] = []
    if not recon.is_dir():
        return out
    for d in sorted(p for p in recon.iterdir() if p.is_dir()):
        if not (d / "atoms.xyz").is_file():
            log.warning("%s: no atoms.xyz (reconstruction unfinished or failed): left out", d)
            continue
        atoms = load_atoms(d / "atoms.xyz")
        info = {}
        if (d / "reconstruction.json").is_file():
            try:
                info = json.loads((d / "reconstruction.json").read_text())
            except json.JSONDecodeError as exc:
                log.warning("%s: unreadable reconstruction.json (%s): no times for this structure", d, exc)
        vol = voxel = None
        if (d / "map.mrc").is_file():
            vol, voxel = _read_map(d / "map.mrc")
        m = re.match(r"p(\d+)_", d.name)
        particle = int(info.get("particle", m.group(1) if m else 0))
        out.append(Structure(d.name, atoms, particle, float(info.get("t_start_s", math.nan)),
                             float(info.get("t_end_s", math.nan)), vol, voxel))
    out.sort(key=lambda s: (s.particle if s.particle is not None else -1,
                            s.t_start_s if math.isfinite(s.t_start_s) else math.inf, s.name))
    return out


# --------------------------------------------------------------------------------------------
# per structure
# --------------------------------------------------------------------------------------------
ATOM_COLUMNS = ["index", "x", "y", "z", "cn", "q4", "q6", "w6", "q4_local", "q6_local", "w6_local",
                "crystalline_bonds", "crystalline", "mean_nn_A", "r_centre_A", "radial_strain"]


def _per_structure(s: Structure, cfg: AnalysisConfig) -> tuple[dict[str, np.ndarray], dict,
                                                               RadialDistribution | None, np.ndarray]:
    """Per-atom columns, the structure's summary, its g(r) and the s6 of its bonds."""
    p = check_positions(s.atoms_A, f"atoms of {s.name}")
    n = len(p)
    if n == 0:
        cols = {c: np.zeros(0) for c in ATOM_COLUMNS}
        summary = {"name": s.name, "particle": s.particle, "atoms": 0}
        return cols, summary, None, np.zeros(0)
    bo = BondOrder(cutoff_A=cfg.cutoff_A, ls=(4, 6), s6_threshold=cfg.s6_threshold).compute(p)
    geo = LocalGeometry(cutoff_A=cfg.cutoff_A, lattice_A=cfg.lattice_A).compute(p)
    gr = RadialDistribution(r_max_A=cfg.gr_max_A, bin_A=cfg.gr_bin_A).compute(p) if n >= 4 else None
    cols = {"index": np.arange(n), "x": p[:, 0], "y": p[:, 1], "z": p[:, 2], "cn": bo.cn,
            "q4": bo.ql(4), "q6": bo.ql(6), "w6": bo.wl(6),
            "q4_local": bo.ql(4, coarse=False), "q6_local": bo.ql(6, coarse=False), "w6_local": bo.wl(6, coarse=False),
            "crystalline_bonds": bo.crystalline_bonds, "crystalline": bo.crystalline.astype(int),
            "mean_nn_A": geo.mean_neighbour_distance_A, "r_centre_A": geo.centre_distance_A,
            "radial_strain": geo.radial_strain}
    peak, width = gr.first_peak(cfg.cutoff_A) if gr is not None else (math.nan, math.nan)
    hull_d = math.nan
    if n >= 4:
        try:
            hull_d = 2.0 * (3.0 * cluster_volume_A3(p) / (4.0 * math.pi)) ** (1.0 / 3.0) / 10.0
        except Exception:  # a flat or degenerate set has no hull volume
            hull_d = math.nan
    summary = {
        "name": s.name, "particle": s.particle, "t_start_s": s.t_start_s, "t_end_s": s.t_end_s, "atoms": n,
        "diameter_nm": geo.diameter_A / 10.0, "hull_diameter_nm": hull_d,
        "crystalline_fraction": bo.crystalline_fraction, "disordered_fraction": 1.0 - bo.crystalline_fraction,
        "mean_cn": float(np.mean(bo.cn)), "nn_peak_A": peak, "nn_width_A": width,
        "mean_q4": float(np.nanmean(bo.ql(4))) if n > 1 else math.nan,
        "mean_q6": float(np.nanmean(bo.ql(6))) if n > 1 else math.nan,
        "mean_radial_strain": float(np.nanmean(geo.radial_strain)) if np.any(np.isfinite(geo.radial_strain))
        else math.nan,
        "cube_symmetric_atoms": cube_symmetric_fraction(p),
    }
    return cols, summary, gr, bo.s6


def _write_columns(path: Path, cols: dict[str, np.ndarray], order: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(order)
        n = len(cols[order[0]]) if order else 0
        for k in range(n):
            w.writerow([_fmt(cols[c][k]) for c in order])
    tmp.replace(path)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else f"{float(v):.6g}"
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    return str(v)


def _write_rows(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for r in rows:
            w.writerow([_fmt(r.get(k, "")) for k in keys])
    tmp.replace(path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "structure"


# --------------------------------------------------------------------------------------------
# between consecutive structures
# --------------------------------------------------------------------------------------------
def _transition(a: Structure, b: Structure, cols_a: dict, cfg: AnalysisConfig, out: Path) -> tuple[dict, dict]:
    """Align ``b`` on ``a`` (maps when both have one of the same shape and voxel, else atoms),
    pair the atoms and write the pair's tables; returns the summary row and the displacements."""
    t0 = time.perf_counter()
    use_maps = (a.map is not None and b.map is not None and a.map.shape == b.map.shape
                and a.voxel_A is not None and b.voxel_A is not None and abs(a.voxel_A - b.voxel_A) < 1e-4)
    if use_maps:
        al = align_maps(a.map, b.map, a.voxel_A, max_shift_A=cfg.align_max_shift_A, coarse_A=cfg.align_coarse_A)
        b_atoms = al.apply_to_atoms(b.atoms_A)
        how = {"alignment": "maps", "alignment_correlation": al.correlation, "inverted": al.inverted}
    else:
        sup = align_atoms(a.atoms_A, b.atoms_A)
        b_atoms = sup.aligned
        how = {"alignment": "atoms", "alignment_correlation": math.nan, "inverted": sup.inverted,
               "alignment_rmsd_A": sup.rmsd_A}
    corr = Correspondence(cutoff_A=cfg.match_cutoff_A).compute(a.atoms_A, b_atoms)
    row = {"before": a.name, "after": b.name, "particle": a.particle, **how, **corr.summary()}
    try:
        row["etch_rate_atoms_s"] = etch_rate_atoms_per_s(len(a.atoms_A), len(b.atoms_A), (a.t_start_s, a.t_end_s),
                                                         (b.t_start_s, b.t_end_s))
        row["removal_rate_atoms_s"] = len(corr.removed) / (0.5 * (b.t_start_s + b.t_end_s - a.t_start_s - a.t_end_s))
    except ValueError:
        row["etch_rate_atoms_s"] = row["removal_rate_atoms_s"] = math.nan
    # every atom of the pair, in a's frame
    i, j = corr.pairs
    d = corr.displacements_A
    cn = cols_a["cn"]
    rows = []
    for k in range(len(i)):
        rows.append({"status": "persistent", "index_before": int(i[k]), "index_after": int(j[k]),
                     "x": a.atoms_A[i[k], 0], "y": a.atoms_A[i[k], 1], "z": a.atoms_A[i[k], 2],
                     "dx": d[k, 0], "dy": d[k, 1], "dz": d[k, 2], "displacement_A": float(np.linalg.norm(d[k])),
                     "cn_before": int(cn[i[k]]), "r_centre_before_A": float(cols_a["r_centre_A"][i[k]])})
    for k in corr.removed:
        rows.append({"status": "removed", "index_before": int(k), "index_after": "",
                     "x": a.atoms_A[k, 0], "y": a.atoms_A[k, 1], "z": a.atoms_A[k, 2],
                     "cn_before": int(cn[k]), "r_centre_before_A": float(cols_a["r_centre_A"][k])})
    for k in corr.rearranged:
        rows.append({"status": "rearranged", "index_before": "", "index_after": int(k),
                     "x": b_atoms[k, 0], "y": b_atoms[k, 1], "z": b_atoms[k, 2]})
    tag = f"{_safe(a.name)}__{_safe(b.name)}"
    _write_rows(out / f"correspondence_{tag}.csv", rows)
    if use_maps:
        moved = transform_map(b.map, al.matrix, al.translation_A, a.voxel_A)
        lcc = local_correlation(a.map, moved, a.voxel_A, sigma_A=cfg.local_cc_sigma_A)
        _write_mrc(out / f"local_cc_{tag}.mrc", lcc.astype(np.float32), a.voxel_A)
        inside = a.map > np.percentile(a.map, 99.0) * 0.2
        row["local_cc_mean_in_particle"] = float(lcc[inside].mean()) if np.any(inside) else math.nan
    row["seconds"] = time.perf_counter() - t0
    log.info("%s -> %s: %s alignment, %d persistent, %d removed, %d rearranged, median displacement %.2f A",
             a.name, b.name, row["alignment"], row["persistent"], row["removed"], row["rearranged"],
             row["displacement_median_A"])
    return row, {"before": a.name, "after": b.name, "displacements_A": corr.displacement_lengths_A,
                 "cn_before": cn[i], "r_centre_before_A": cols_a["r_centre_A"][i], "cn_removed": cn[corr.removed],
                 "cn_all": cn}


def _write_mrc(path: Path, vol: np.ndarray, voxel_A: float) -> None:
    import mrcfile  # noqa: PLC0415

    tmp = path.with_name(path.name + ".tmp")
    with mrcfile.new(str(tmp), overwrite=True) as m:
        m.set_data(vol)
        m.voxel_size = voxel_A
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# the whole analysis
# --------------------------------------------------------------------------------------------
def analyze_structures(structures: list[Structure], out: str | Path, cfg: AnalysisConfig | None = None, *,
                       frames: dict[str, np.ndarray] | None = None, figures: bool = True) -> dict:
    """Per-structure, between-structure and across-run analysis of ``structures`` (time order
    within each particle); writes the tables and figures of the module into ``out`` and returns
    the summary (also ``out/analysis.json``)."""
    cfg = cfg or AnalysisConfig()
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    names = [s.name for s in structures]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise AnalysisError(f"two structures share the name(s) {sorted(dup)}: rename the files")
    per: list[dict] = []
    cols_of: dict[str, dict] = {}
    grs: dict[str, RadialDistribution] = {}
    s6: dict[str, np.ndarray] = {}
    for s in structures:
        cols, summ, gr, s6[s.name] = _per_structure(s, cfg)
        _write_columns(out / f"atoms_{_safe(s.name)}.csv", cols, ATOM_COLUMNS)
        per.append(summ)
        cols_of[s.name] = cols
        if gr is not None:
            grs[s.name] = gr
        log.info("%s: %d atoms, crystalline fraction %.3f", s.name, summ["atoms"], summ.get("crystalline_fraction", 0))
    _write_rows(out / "structures.csv", per)
    if grs:
        first = next(iter(grs.values()))
        _write_columns(out / "gr.csv", {"r_A": first.r, **{n: g.g for n, g in grs.items()}}, ["r_A", *grs])
    transitions, disp = [], []
    by_particle: dict = {}
    for s in structures:
        by_particle.setdefault(s.particle, []).append(s)
    for group in by_particle.values():
        for a, b in zip(group[:-1], group[1:]):
            if len(a.atoms_A) == 0 or len(b.atoms_A) == 0:
                log.warning("%s -> %s: a structure without atoms, no comparison", a.name, b.name)
                continue
            row, d = _transition(a, b, cols_of[a.name], cfg, out)
            transitions.append(row)
            disp.append(d)
    if transitions:
        _write_rows(out / "transitions.csv", transitions)
    fit = None
    usable = [r for r in per if r.get("atoms", 0) >= 4]
    if len(usable) >= 3:
        try:
            f = fit_disorder([r["diameter_nm"] for r in usable], [r["disordered_fraction"] for r in usable])
            fit = {**asdict(f), "complete_disorder_nm": f.complete_disorder_nm}
            (out / "disorder_fit.json").write_text(json.dumps(fit, indent=2))
        except ValueError as exc:
            log.warning("disorder fit: %s", exc)
            fit = {"error": str(exc)}
    traces = []
    if frames is not None and "particle" in frames:
        for p in sorted({int(v) for v in frames["particle"][np.isfinite(frames["particle"])]}):
            tr = LatticeTrace.from_columns(frames, p, cfg.trace_window_frames)
            cols = {"t_s": tr.t_s, "fft_peak": tr.fft_peak, "fft_peak_avg": tr.fft_peak_avg,
                    "lattice": tr.lattice.astype(int), "diameter_nm": tr.diameter_nm,
                    "diameter_avg_nm": tr.diameter_avg_nm}
            _write_columns(out / f"trace_p{p}.csv", cols, list(cols))
            traces.append(tr)
    written = []
    if figures:
        from .figures import write_figures  # noqa: PLC0415

        written = write_figures(out, structures, cols_of, grs, disp, per, fit, traces, cfg, s6)
    summary = {"structures": per, "transitions": transitions, "disorder_fit": fit,
               "traces": [t.summary() for t in traces], "figures": written, "settings": asdict(cfg),
               "seconds": time.perf_counter() - t0}
    (out / "analysis.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    return summary


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def analyze_run(run_dir: str | Path, out: str | Path | None = None, cfg: AnalysisConfig | None = None, *,
                figures: bool = True) -> dict:
    """Analyse a run directory (contracts: ``recon/``, ``frames.csv``); ``out`` defaults to the
    run's ``analysis/``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise AnalysisError(f"{run}: no such run directory")
    has_recon, has_frames = (run / "recon").is_dir(), (run / "frames.csv").is_file()
    if not (has_recon or has_frames):
        raise AnalysisError(f"{run}: expected a run directory with recon/ or frames.csv, found neither")
    frames = read_frames_csv(run / "frames.csv") if has_frames else None
    structures = load_run_structures(run)
    log.info("run %s: %d structures, %s", run, len(structures), "frames.csv" if has_frames else "no frames.csv")
    return analyze_structures(structures, out if out is not None else run / "analysis", cfg, frames=frames,
                              figures=figures)


def analyze_atom_files(paths: list[str | Path], out: str | Path, cfg: AnalysisConfig | None = None, *,
                       figures: bool = True) -> dict:
    """Per-structure analysis of each atoms file, and between consecutive structures (in the order
    given), aligned by their atoms. A file of several images (extended XYZ, such as the
    simulator's etching truth ``atoms_p<P>.xyz``) gives one structure per image, named
    ``<stem>_<k>`` (k the ``step`` of its comment line when there is one), timed by its ``t_s``."""
    structures = []
    stems = [Path(p).stem for p in paths]
    for p in paths:
        images = load_atom_images(p)
        # files of the same name from different folders (truth/atoms.xyz, recon/atoms.xyz) keep apart
        stem = Path(p).stem if stems.count(Path(p).stem) == 1 else f"{Path(p).parent.name}_{Path(p).stem}"
        for k, atoms in enumerate(images):
            info = atoms.info
            name = stem if len(images) == 1 else f"{stem}_{int(info.get('step', k))}"
            t = float(info["t_s"]) if "t_s" in info else math.nan
            structures.append(Structure(name, np.asarray(atoms.get_positions(), dtype=np.float64), particle=0,
                                        t_start_s=t, t_end_s=t))
    return analyze_structures(structures, out, cfg, figures=figures)
