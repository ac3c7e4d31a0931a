"""`btomo analyze` end to end: a run directory of real MRC/XYZ files and frames.csv, and atom files."""
import csv
import json

import mrcfile
import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from btomo.analysis.structure import BondOrder, cube_symmetric_fraction
from btomo.kernels.crystal import coordination_numbers, fcc_cluster
from btomo.kernels.superpose import signed_permutations
from btomo.reconstruct.atoms import model_map
from btomo.stream.cli import main

VOXEL, BOX = 0.716, 40


def _etch(atoms, n, rng):
    """Remove the ``n`` least-coordinated atoms (ties at random) and jiggle the surface a little."""
    cn = coordination_numbers(atoms) + rng.uniform(0, 0.5, len(atoms))
    gone = np.argsort(cn)[:n]
    keep = np.setdiff1d(np.arange(len(atoms)), gone)
    return atoms[keep], gone, keep


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Three windows of one particle losing 6 then 8 atoms, each reconstruction in its own
    lattice-equivalent frame (as independent reconstructions are), plus frames.csv."""
    rng = np.random.default_rng(4)
    run = tmp_path_factory.mktemp("run")
    truth = [fcc_cluster(1.5, "irregular", seed=9)]
    removed = []
    for n in (6, 8):
        nxt, gone, _ = _etch(truth[-1], n, rng)
        truth.append(nxt)
        removed.append(n)
    frames_of = [signed_permutations()[k] for k in (0, 13, 40)]
    spans = [(0.0, 1.0), (1.5, 2.5), (3.0, 4.0)]
    for k, (atoms, g, span) in enumerate(zip(truth, frames_of, spans)):
        d = run / "recon" / f"p0_w{k:04d}"
        d.mkdir(parents=True)
        seen = atoms @ g.T + rng.normal(0, 0.3, 3)  # the frame this reconstruction happened to fix
        write(d / "atoms.xyz", Atoms("Pt" * len(seen), positions=seen), format="xyz")
        with mrcfile.new(str(d / "map.mrc")) as m:
            m.set_data(model_map(seen, BOX, VOXEL, 1.5).astype(np.float32))
            m.voxel_size = VOXEL
        (d / "reconstruction.json").write_text(json.dumps({"window": d.name, "t_start_s": span[0],
                                                           "t_end_s": span[1]}))
    with open(run / "frames.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "t_s", "particle", "x_px", "y_px", "fft_peak", "lattice", "diameter_nm", "window"])
        for i in range(1800):
            lat = (i // 200) % 2 == 0
            w.writerow([i, i / 400, 0, 100, 100, 5.0 if lat else 1.0, int(lat), 1.6 if lat else "", ""])
    return run, truth, removed


def test_analyze_run_dir(run_dir, capsys):
    run, truth, removed = run_dir
    assert main(["analyze", str(run)]) == 0
    out = run / "analysis"
    printed = capsys.readouterr().out
    assert "p0_w0000 -> p0_w0001" in printed
    for k, atoms in enumerate(truth):
        rows = list(csv.DictReader(open(out / f"atoms_p0_w{k:04d}.csv")))
        assert len(rows) == len(atoms)
        assert {"x", "y", "z", "cn", "q4", "q6", "w6", "crystalline"} <= set(rows[0])
        # the per-atom numbers are the structure's own (a rigid motion changes none of them)
        bo = BondOrder().compute(atoms)
        assert np.allclose([float(r["q6"]) for r in rows], bo.ql(6), atol=1e-5)
    trans = list(csv.DictReader(open(out / "transitions.csv")))
    assert len(trans) == 2
    per = {r["name"]: r for r in csv.DictReader(open(out / "structures.csv"))}
    for k, atoms in enumerate(truth):  # the structure's own shape, in whatever frame it was fixed
        assert float(per[f"p0_w{k:04d}"]["cube_symmetric_atoms"]) == pytest.approx(cube_symmetric_fraction(atoms))
    for t, n in zip(trans, removed):
        assert t["alignment"] == "maps" and float(t["alignment_correlation"]) > 0.9  # maps differ by the etched atoms
        assert int(t["removed"]) == n and int(t["rearranged"]) == 0
        assert float(t["displacement_max_A"]) < 0.05  # same atoms, no displacement planted
    assert float(trans[0]["etch_rate_atoms_s"]) == pytest.approx(6 / 1.5)
    assert (out / "disorder_fit.json").is_file()
    summary = json.loads((out / "analysis.json").read_text())
    assert summary["traces"][0]["lattice_frames"] == 1000
    for fig in ("trace_p0.png", "q4_q6.png", "q6_vs_r.png", "gr.png", "disorder_vs_diameter.png", "displacements.png",
                "displacement_vs_cn.png", "cn_of_removed.png", "s6.png", "w6.png", "radial_strain.png"):
        assert (out / fig).stat().st_size > 5000, fig
    assert (out / "local_cc_p0_w0000__p0_w0001.mrc").is_file()
    corr = list(csv.DictReader(open(out / "correspondence_p0_w0000__p0_w0001.csv")))
    assert sum(r["status"] == "removed" for r in corr) == 6


def test_analyze_atom_files(tmp_path, capsys):
    a = fcc_cluster(1.4, "truncated_octahedron")
    b = a[3:] + [0.0, 0.0, 0.1]
    write(tmp_path / "first.xyz", Atoms("Pt" * len(a), positions=a), format="xyz")
    write(tmp_path / "second.pdb", Atoms("Pt" * len(b), positions=b, cell=[0, 0, 0]), format="proteindatabank")
    out = tmp_path / "out"
    assert main(["analyze", str(tmp_path / "first.xyz"), str(tmp_path / "second.pdb"), "--out", str(out),
                 "--no-figures"]) == 0
    rows = list(csv.DictReader(open(out / "atoms_first.csv")))
    assert len(rows) == len(a) and set("x y z cn q4 q6 w6 crystalline".split()) <= set(rows[0])
    assert all(r["crystalline"] == "1" for r in rows)  # a truncated octahedron is fully crystalline
    trans = list(csv.DictReader(open(out / "transitions.csv")))
    assert trans[0]["alignment"] == "atoms" and int(trans[0]["removed"]) == 3
    assert not list(out.glob("*.png"))


@pytest.mark.parametrize("content, expect", [("", "empty"), ("3\nPt\nPt 0 0 x\n", "not a readable"),
                                             ("2\n\nPt 0 0 0\nPt nan 0 0\n", "NaN")])
def test_bad_atom_files_are_one_line_errors(tmp_path, capsys, content, expect):
    f = tmp_path / "bad.xyz"
    f.write_text(content)
    assert main(["analyze", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert expect in err and err.count("\n") == 1


def test_analysis_of_the_simulators_etching_truth_finds_each_etched_atom(tmp_path, capsys):
    """The simulator's truth (one extended-XYZ image per etching step, atom ids stable): between
    consecutive steps exactly the etched atom is 'removed', nothing else changes."""
    from ase.io import read

    rec = tmp_path / "rec"
    assert main(["simulate", str(rec), "--frames", "120", "--shape", "192x192", "--set", "frames.box_px=128",
                 "--set", "sample.diameter_nm=1.4", "--etch-rate", "80", "--no-progress"]) == 0
    truth = rec / "truth" / "atoms_p0.xyz"
    images = read(str(truth), index=":")
    assert len(images) >= 4  # a few etching steps happened
    out = tmp_path / "out"
    assert main(["analyze", str(truth), "--out", str(out), "--no-figures"]) == 0
    trans = list(csv.DictReader(open(out / "transitions.csv")))
    assert len(trans) == len(images) - 1
    for k, t in enumerate(trans):
        gone = set(images[k].arrays["id"]) - set(images[k + 1].arrays["id"])
        assert int(t["removed"]) == len(gone) and int(t["rearranged"]) == 0, t
        assert float(t["displacement_max_A"]) < 1e-6
        corr = list(csv.DictReader(open(out / f"correspondence_atoms_p0_{k}__atoms_p0_{k + 1}.csv")))
        removed_ids = {int(images[k].arrays["id"][int(r["index_before"])]) for r in corr if r["status"] == "removed"}
        assert removed_ids == gone
    assert float(trans[0]["etch_rate_atoms_s"]) > 0
