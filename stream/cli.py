"""The ``btomo`` command line (``../shared/contracts.md``: every command, every flag).

Each command exits 0 on success and non-zero with a one-line reason on failure: no traceback for
a user error (a missing file, a malformed option, an invalid setting). Commands whose stage has
not been built yet say so plainly and exit 3; they never print made-up output.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import zmq

from .config import ConfigError, RunConfig, load_config, write_config
from .recording import RecordingError
from .security import CurveError

log = logging.getLogger("btomo")

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in what the user asked for; reported as one line, exit code 2."""


def default_run_dir() -> Path:
    """``runs/<UTC timestamp>`` (contracts: the default run directory)."""
    return Path("runs") / _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# --------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong, and where to look)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="TOML", help="configuration file (see config.toml of any run)")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                   help="override one setting, e.g. --set sample.morphology=truncated_octahedron")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _stream_opts(p: argparse.ArgumentParser, *, source: bool = True) -> None:
    if source:
        p.add_argument("--source", metavar="URL", help="ZeroMQ address to connect to (default tcp://127.0.0.1:9999)")
    p.add_argument("--protocol", choices=["btomo", "dectris1", "dectris2"], help="stream protocol")


def _jobs_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler for the reconstruction jobs, e.g. tcp://host:8786 (default: a LocalCluster "
                        "that btomo starts and stops; the workers must see the run directory at the same path)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="btomo",
        description="Microscope-side streaming processor for time-resolved Brownian tomography.",
    )
    parser.add_argument("--version", action="version", version=f"btomo {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="simulate a short etching session and run the pipeline on it")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds of acquisition to simulate (default 2)")
    p.add_argument("--run-dir", type=Path, help="run directory (default runs/<UTC timestamp>)")
    p.add_argument("--shape", help="frame shape HxW (default 512x512 for the demo)")
    p.add_argument("--no-dashboard", action="store_true", help="plain log lines instead of the progress display")
    _jobs_opts(p)
    _common(p)

    p = sub.add_parser(
        "simulate", help="write a synthetic recording with its ground truth",
        description="Simulate a GLC TEM session of etching Pt nanocrystals (docs/simulator.md) and write it as a "
                    "recording: OUT/recording.json, frames.bin, index.bin, config.toml, and truth/ with the true "
                    "centre, orientation, focus, lattice visibility and atoms of every frame (docs/recording.md).")
    p.add_argument("out", type=Path, help="new recording directory")
    p.add_argument("--frames", type=int, help="frames to write (default 2000)")
    p.add_argument("--fps", type=float, help="frame rate, frames/s (default 400)")
    p.add_argument("--shape", help="frame shape HxW, px (default 1920x1728)")
    p.add_argument("--diameter-nm", type=float, help="initial particle diameter (equal volume), nm (default 2.0)")
    p.add_argument("--dose", type=float, help="dose per frame, e/A^2 (default 15)")
    p.add_argument("--etch-rate", type=float, help="etching rate, atoms/s (default 7)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--particles", type=int, help="particles in the field of view (default 1)")
    p.add_argument("--morphology", choices=["sphere", "truncated_octahedron"], help="particle shape")
    p.add_argument("--rot-diffusion", type=float, help="rotational diffusion D_r, rad^2/s (default 0.3)")
    p.add_argument("--viscosity", type=float, help="viscosity, Pa s: D_r from Stokes-Einstein-Debye instead")
    p.add_argument("--workers", type=int, help="rendering processes (default: one per core)")
    p.add_argument("--clean", action="store_true", help="also write noise-free expected counts (truth/clean)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)

    p = sub.add_parser(
        "live", help="receive a stream and run the pipeline on it",
        description="Connect to a stream (btomo, DECTRIS stream v1 or v2) and run the pipeline on it into a run "
                    "directory; stops after --max-frames, --idle-timeout or Ctrl-C, flushing in every case.")
    _stream_opts(p)
    p.add_argument("--run-dir", type=Path, help="run directory (default runs/<UTC timestamp>)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="stop after S seconds without a frame")
    p.add_argument("--no-dashboard", action="store_true", help="plain log lines instead of the progress display")
    _jobs_opts(p)
    _common(p)

    p = sub.add_parser(
        "replay", help="send a recording or a stack file as a live stream",
        description="Bind a PUSH socket, as a detector does, and send every frame of SOURCE to the receiver that "
                    "connects, paced by the recorded acquisition times (docs/protocol.md).")
    p.add_argument("source", type=Path, help="recording directory or stack file (MRC, TIFF, Zarr)")
    p.add_argument("--to", metavar="URL", help="address to bind (default tcp://127.0.0.1:9999)")
    _stream_opts(p, source=False)
    p.add_argument("--rate", default="1", help="X times acquisition speed (default 1), or 'max'")
    p.add_argument("--compression", choices=["bslz4", "lz4", "none"], default="bslz4",
                   help="image compression of the DECTRIS protocols (default bslz4, as detectors send)")
    p.add_argument("--pixel-size", type=float, metavar="A", help="pixel size, A/px, for stacks that do not say")
    p.add_argument("--fps", type=float, help="frame rate, frames/s, for stacks that do not say")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)

    p = sub.add_parser(
        "record", help="write a stream to disk losslessly",
        description="Receive a stream and write it, losslessly and nothing else, as a btomo recording "
                    "(docs/recording.md); stops after --max-frames, --idle-timeout or Ctrl-C, flushing in every case.")
    p.add_argument("out", type=Path, help="new recording directory")
    _stream_opts(p)
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="stop after S seconds without a frame")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)

    p = sub.add_parser(
        "process", help="the live pipeline, offline, on a recording or stack file",
        description="Run the pipeline on every frame of a recording or stack (MRC, TIFF, Zarr) without sockets, "
                    "as fast as the machine allows, into a run directory.")
    p.add_argument("source", type=Path, help="recording directory or stack file")
    p.add_argument("--run-dir", type=Path, help="run directory (default runs/<UTC timestamp>)")
    p.add_argument("--pixel-size", type=float, metavar="A", help="pixel size, A/px, for stacks that do not say")
    p.add_argument("--fps", type=float, help="frame rate, frames/s, for stacks that do not say")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _jobs_opts(p)
    _common(p)

    p = sub.add_parser(
        "train-denoiser", help="train the self-supervised denoiser",
        description="Train the blind-spot denoiser (Noise2Void, no clean data) on crops around the particles "
                    "tracked in a recording or stack. Architecture and schedule: the [denoiser] settings.")
    p.add_argument("source", type=Path, help="recording directory or stack file")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL", help="model file to write")
    p.add_argument("--max-minutes", type=float, metavar="M", help="stop after M minutes at the latest")
    p.add_argument("--resume", action="store_true", help="continue from MODEL.ckpt if it exists")
    p.add_argument("--pixel-size", type=float, metavar="A", help="pixel size, A/px, for stacks that do not say")
    p.add_argument("--fps", type=float, help="frame rate, frames/s, for stacks that do not say")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)

    p = sub.add_parser("denoise", help="denoise every frame of a recording or stack offline")
    p.add_argument("source", type=Path, help="recording directory or stack file")
    p.add_argument("--model", type=Path, required=True, help="model file from train-denoiser")
    p.add_argument("--out", type=Path, required=True, help="output stack: .mrc or .zarr")
    p.add_argument("--pixel-size", type=float, metavar="A", help="pixel size, A/px, for stacks that do not say")
    p.add_argument("--fps", type=float, help="frame rate, frames/s, for stacks that do not say")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)

    p = sub.add_parser("reconstruct", help="reconstruct one window (3D map and atoms)")
    p.add_argument("window", help="STORE.zarr/WINDOW_ID")
    p.add_argument("--out", type=Path, help="output directory (default: the run's recon/WINDOW_ID)")
    p.add_argument("--rounds", type=int, help="refinement rounds (default 5)")
    p.add_argument("--directions", type=int, help="projection directions searched (default 2500)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the orientation search runs (cuda needs CuPy: pip install 'btomo[gpu]')")
    p.add_argument("--initial-model", type=Path, metavar="ATOMS",
                   help="start from these atoms (XYZ/PDB/CIF, read with ASE; e.g. the previous window's atoms.xyz) "
                   "instead of a spherical FCC particle")
    _common(p)

    p = sub.add_parser("analyze", help="structure and time-series analysis with tables and figures",
                       description="btomo analyze RUN_DIR [--out DIR]: every reconstruction of a run (recon/) and "
                       "its frames.csv; btomo analyze ATOMS_FILE... --out DIR: XYZ/PDB/CIF files (read with ASE), "
                       "per structure and between consecutive files. Writes CSV tables and PNG figures "
                       "(docs/analysis.md).")
    p.add_argument("inputs", nargs="+", type=Path, help="RUN_DIR, or ATOMS_FILE...")
    p.add_argument("--out", type=Path, help="output directory (default for a run: RUN_DIR/analysis)")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    _common(p)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("btomo")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def config_from_args(args: argparse.Namespace, flag_map: dict[str, str]) -> RunConfig:
    """Defaults, then ``--config``, then ``--set``, then the command's own flags."""
    overrides: dict[str, object] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    for attr, dotted in flag_map.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[dotted] = value
    return load_config(args.config, overrides)


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------
SIMULATE_FLAGS = {
    "frames": "simulate.frames", "fps": "acquisition.fps", "shape": "acquisition.shape",
    "diameter_nm": "sample.diameter_nm", "dose": "acquisition.dose_e_per_A2",
    "etch_rate": "sample.etch_rate_atoms_s", "seed": "simulate.seed", "particles": "sample.particles",
    "morphology": "sample.morphology", "rot_diffusion": "sample.rot_diffusion_rad2_s",
    "viscosity": "sample.viscosity_pa_s", "workers": "simulate.workers",
}


def _reporter(quiet: bool, unit: str = "frames"):
    """A progress bar for a task (plain log lines with ``quiet`` or when stderr is not a terminal)."""
    from .progress import LogReporter, RichReporter  # noqa: PLC0415

    if quiet or not sys.stderr.isatty():
        return LogReporter(log)
    from rich.console import Console  # noqa: PLC0415

    return RichReporter(Console(stderr=True), unit=unit)


def _dashboard(quiet: bool):
    """The live dashboard for a pipeline run (plain log lines every few seconds with ``quiet`` or
    when stderr is not a terminal: no escape codes in files)."""
    from .progress import LogReporter  # noqa: PLC0415

    if quiet or not sys.stderr.isatty():
        return LogReporter(log)
    from rich.console import Console  # noqa: PLC0415

    from .dashboard import Dashboard  # noqa: PLC0415

    return Dashboard(Console(stderr=True))


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulator import simulate  # noqa: PLC0415

    cfg = config_from_args(args, SIMULATE_FLAGS)
    if args.clean:
        cfg.simulate.save_clean = True
    if (args.out / "frames.bin").exists():
        raise UserError(f"{args.out} already holds a recording; choose a new directory")
    result = simulate(cfg, args.out, reporter=_reporter(args.no_progress))
    print(f"wrote {result.frames} frames ({result.shape[0]}x{result.shape[1]}) to {result.path} "
          f"in {result.seconds:.1f} s ({result.fps:.1f} frames/s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console  # noqa: PLC0415
    from rich.panel import Panel  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from .simulator import simulate  # noqa: PLC0415

    if not 0 < args.seconds <= 60:  # also refuses NaN
        raise UserError(f"--seconds must be in (0, 60], got {args.seconds}")
    run_dir = args.run_dir or default_run_dir()
    cfg = config_from_args(args, {"shape": "acquisition.shape", "scheduler": "jobs.scheduler"})
    if args.shape is None and args.config is None:
        cfg.acquisition.shape = (512, 512)
    cfg.simulate.frames = max(1, round(args.seconds * cfg.acquisition.fps))
    if args.config is None and not any(s.startswith("reconstruct.") for s in args.set):
        # a demo's windows reconstruct quickly: 2 rounds over 500 directions (defaults: 5 and 2500)
        cfg.reconstruct.rounds, cfg.reconstruct.directions = 2, 500
    cfg.validate()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir)
    _log_to_file(run_dir / "btomo.log")
    console = Console()
    console.print(Panel.fit(
        f"btomo demo: simulating {args.seconds:g} s of a GLC TEM session "
        f"({cfg.simulate.frames} frames of {cfg.acquisition.shape[0]}x{cfg.acquisition.shape[1]} at "
        f"{cfg.acquisition.fps:g} frames/s)\n"
        "Built so far: the synthetic microscope with ground truth, the stream edge (replay over ZeroMQ "
        "into the ingest queue and the pipeline runner), per-frame analysis (frames.csv), the denoiser (its "
        "classical fallback without a model), rolling windows with orientation coverage (windows.zarr) and "
        "their hand-off to reconstruction jobs on a Dask LocalCluster, where each window is reconstructed "
        "(map, atoms; 2 quick rounds in the demo), then analysed (`btomo analyze`: tables and figures).",
        title="btomo"))
    t0 = time.perf_counter()
    result = simulate(cfg, run_dir / "recording", reporter=_reporter(args.no_dashboard))
    stream = _demo_stream(cfg, result.path, run_dir, quiet=args.no_dashboard)
    table = Table(title="what the simulator made, and how it streamed")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("frames", f"{result.frames} ({result.shape[0]}x{result.shape[1]} uint16)")
    table.add_row("acquisition time", f"{result.frames / cfg.acquisition.fps:.2f} s at {cfg.acquisition.fps:g} frames/s")
    table.add_row("mean counts per pixel", f"{result.mean_counts:.3f} e (dose x pixel area = "
                  f"{cfg.acquisition.dose_e_per_A2 * cfg.acquisition.pixel_size_A**2:.3f}, less the water)")
    for p in range(len(result.atoms_start)):
        table.add_row(f"particle {p}: atoms", f"{result.atoms_start[p]} -> {result.atoms_end[p]} "
                      f"({result.etch_events[p]} etched)")
        table.add_row(f"particle {p}: lattice-visible frames", f"{100 * result.lattice_visible_fraction[p]:.1f} %")
    table.add_row("recording on disk", f"{result.bytes_written / 1e6:.1f} MB")
    ing = stream["ingest"]
    lat = ing["latency"]
    table.add_row("streamed over ZeroMQ (btomo protocol)",
                  f"{ing['frames_accepted']}/{result.frames} frames accepted, {sum(ing['frames_dropped'].values())} "
                  f"dropped, {ing['frame_gaps']} missing")
    if lat.get("count"):
        table.add_row("latency, acquisition -> pipeline", f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms")
    win = (stream.get("stage_results") or {}).get("windows") or {}
    if stream.get("lattice_frames") is not None:
        table.add_row("lattice frames found", f"{stream['lattice_frames']}")
    for c in win.get("closed", []):
        table.add_row(f"window {c['window']}", f"{c['lattice_frames']} lattice frames, {c['t_start_s']:.2f}-"
                      f"{c['t_end_s']:.2f} s, coverage {c['coverage']:.2f} ({c['closed_by']})")
    jobs = win.get("jobs") or {}
    if jobs.get("jobs"):
        states = ", ".join(f"{v} {k}" for k, v in jobs["states"].items() if v)
        table.add_row("reconstruction jobs", f"{states}; 3D maps made: {jobs['reconstructions_done']} "
                      f"(in {run_dir / 'recon'})")
        for j in jobs["jobs"]:
            if j["state"] == "done" and j.get("atoms") is not None:
                table.add_row(f"  {j['window']}", f"{j['atoms']} atoms, FSC 0.143 at {j['resolution_A']:.2f} A")
            elif j["state"] == "failed":
                table.add_row(f"  {j['window']}", f"failed: {str(j.get('reason', ''))[:90]}")
    if (run_dir / "frames.csv").is_file():
        from btomo.analysis.run import AnalysisError, analyze_run  # noqa: PLC0415

        try:
            a = analyze_run(run_dir, None, cfg.analysis)
            for r in a["structures"]:
                if r.get("atoms"):
                    table.add_row(f"  analysis {r['name']}",
                                  f"{r['atoms']} atoms, crystalline {r['crystalline_fraction']:.2f}, "
                                  f"mean CN {r['mean_cn']:.1f}, NN {r['nn_peak_A']:.2f} A")
            table.add_row("analysis", f"{len(a['figures'])} figures, tables in {run_dir / 'analysis'}")
        except (AnalysisError, ValueError) as exc:  # the demo still reports what it made
            log.warning("analysis of the demo run failed: %s", exc)
            table.add_row("analysis", f"failed: {str(exc)[:90]}")
    table.add_row("time taken", f"{time.perf_counter() - t0:.1f} s ({result.fps:.0f} frames/s)")
    console.print(table)
    console.print(f"run directory: [bold]{run_dir}[/]  (recording: {result.path}, truth: {result.path / 'truth'})")
    return 0


def _demo_stream(cfg: RunConfig, recording: Path, run_dir: Path, *, quiet: bool) -> dict:
    """Replay the demo's recording over ZeroMQ (ports of its own) into the live pipeline."""
    from .ingest import free_tcp_address  # noqa: PLC0415
    from .pipeline import run_live  # noqa: PLC0415
    from .replay import replay  # noqa: PLC0415
    from .sources import open_source  # noqa: PLC0415

    cfg.stream.source = free_tcp_address()
    cfg.stream.side_channel = free_tcp_address()
    source = open_source(recording)
    cfg.stream.max_frames = len(source)
    cfg.stream.idle_timeout_s = 30.0
    failure: list[BaseException] = []

    def send() -> None:
        try:
            replay(source, cfg.stream, to=cfg.stream.source, rate=None)
        except BaseException as exc:  # reported below; the live side then stops on its idle timeout
            failure.append(exc)
        finally:
            source.close()

    sender = threading.Thread(target=send, name="btomo-demo-replay", daemon=True)
    sender.start()
    summary = run_live(cfg, run_dir, reporter=_dashboard(quiet))
    sender.join(30)
    if failure:
        raise failure[0]
    return summary


STREAM_FLAGS = {"protocol": "stream.protocol", "source": "stream.source", "max_frames": "stream.max_frames",
                "idle_timeout": "stream.idle_timeout_s", "to": "stream.source", "scheduler": "jobs.scheduler"}


def _open(args: argparse.Namespace, cfg: RunConfig):
    from .sources import SourceError, open_source  # noqa: PLC0415

    try:
        return open_source(args.source, pixel_size_A=args.pixel_size, fps=args.fps,
                           defaults=(cfg.acquisition.pixel_size_A, cfg.acquisition.fps))
    except SourceError as exc:
        raise UserError(str(exc)) from None


def _check_stack_flags(args: argparse.Namespace) -> None:
    for name in ("pixel_size", "fps"):
        value = getattr(args, name, None)
        if value is not None and not 0 < value < float("inf"):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")


def _parse_rate(text: str) -> float | None:
    if text.strip().lower() == "max":
        return None
    try:
        rate = float(text)
    except ValueError:
        raise UserError(f"--rate expects a number > 0 or 'max', got {text!r}") from None
    if not 0 < rate < float("inf"):
        raise UserError(f"--rate expects a number > 0 or 'max', got {text!r}")
    return rate


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import replay  # noqa: PLC0415

    rate = _parse_rate(args.rate)
    _check_stack_flags(args)
    cfg = config_from_args(args, {k: v for k, v in STREAM_FLAGS.items() if k in ("protocol", "to")})
    options = {} if cfg.stream.protocol == "btomo" else {"compression": args.compression}
    with _open(args, cfg) as source:
        try:
            result = replay(source, cfg.stream, to=cfg.stream.source, protocol=cfg.stream.protocol, rate=rate,
                            dose_e_per_A2=cfg.acquisition.dose_e_per_A2, reporter=_reporter(args.no_progress),
                            encoder_options=options)
        except ValueError as exc:  # what the protocol cannot carry (signed frames as DECTRIS v1, ...)
            raise UserError(f"{args.source}: {exc}") from None
    print(f"sent {result.frames} frames ({result.bytes / 1e6:.1f} MB) in {result.seconds:.2f} s "
          f"({result.fps:.1f} frames/s) as {cfg.stream.protocol} on {cfg.stream.source}"
          + (f"; {result.late_frames} frames left more than a frame period late" if result.late_frames else ""))
    return 0


def _counter_line(c: dict) -> str:
    drops = sum(c["frames_dropped"].values())
    bad = sum(c["messages_malformed"].values())
    lat = c["latency"]
    line = (f"{c['frames_accepted']} frames accepted, {drops} dropped, {c['frame_gaps']} missing (gaps), "
            f"{bad} malformed messages")
    if lat.get("count"):
        line += f"; latency p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms"
    return line


def cmd_record(args: argparse.Namespace) -> int:
    from .record import record  # noqa: PLC0415

    cfg = config_from_args(args, STREAM_FLAGS)
    result = record(cfg, args.out, reporter=_reporter(args.no_progress))
    print(f"recorded {result.frames} frames ({result.bytes_written / 1e6:.1f} MB on disk) to {result.path} in "
          f"{result.seconds:.1f} s; stopped by {result.stop_reason}; {_counter_line(result.counters)}")
    return _interrupted("record") if result.stop_reason == "interrupted" else 0


def _interrupted(command: str) -> int:
    print(f"btomo {command}: interrupted; what was written so far is kept", file=sys.stderr)
    return 130


def cmd_live(args: argparse.Namespace) -> int:
    from .pipeline import run_live  # noqa: PLC0415

    cfg = config_from_args(args, STREAM_FLAGS)
    run_dir = args.run_dir or default_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    _log_to_file(run_dir / "btomo.log")
    summary = run_live(cfg, run_dir, reporter=_dashboard(args.no_dashboard))
    print(f"run directory: {run_dir}; {summary['frames_processed']} frames processed; stopped by "
          f"{summary['stop_reason']}; {_counter_line(summary['ingest'])}")
    return _interrupted("live") if summary["stop_reason"] == "interrupted" else 0


def cmd_process(args: argparse.Namespace) -> int:
    from .pipeline import run_process  # noqa: PLC0415

    _check_stack_flags(args)
    cfg = config_from_args(args, {"scheduler": "jobs.scheduler"})
    run_dir = args.run_dir or default_run_dir()
    with _open(args, cfg) as source:
        run_dir.mkdir(parents=True, exist_ok=True)
        _log_to_file(run_dir / "btomo.log")
        summary = run_process(cfg, source, run_dir, reporter=_dashboard(args.no_progress))
    rate = summary["frames_processed"] / max(summary["wall_seconds"], 1e-9)
    print(f"run directory: {run_dir}; {summary['frames_processed']} frames of {args.source} processed in "
          f"{summary['wall_seconds']:.1f} s ({rate:.0f} frames/s); stopped by {summary['stop_reason']}")
    return _interrupted("process") if summary["stop_reason"] == "interrupted" else 0


def cmd_train_denoiser(args: argparse.Namespace) -> int:
    from .denoise import DenoiserError, train_denoiser  # noqa: PLC0415

    _check_stack_flags(args)
    if args.max_minutes is not None and not 0 < args.max_minutes < float("inf"):
        raise UserError(f"--max-minutes must be a finite number > 0, got {args.max_minutes}")
    cfg = config_from_args(args, {})
    with _open(args, cfg) as source:
        cfg.acquisition.pixel_size_A, cfg.acquisition.fps = source.pixel_size_A, source.fps
        try:
            s = train_denoiser(cfg, source, args.out, max_minutes=args.max_minutes, resume=args.resume,
                               reporter=_reporter(args.no_progress, unit="steps"))
        except DenoiserError as exc:
            raise UserError(str(exc)) from None
    print(f"wrote {args.out}: {s['steps']} steps in {s['seconds']:.0f} s on {s['device']}, "
          f"loss {s['loss_first']:.4f} -> {s['loss_final']:.4f}")
    return 0


def cmd_denoise(args: argparse.Namespace) -> int:
    from .denoise import Denoiser, DenoiserError, denoise_source  # noqa: PLC0415

    _check_stack_flags(args)
    cfg = config_from_args(args, {})
    try:
        den = Denoiser.from_file(args.model, cfg.denoiser.device, cfg.denoiser.batch, cfg.denoiser.bf16)
        with _open(args, cfg) as source:
            s = denoise_source(den, source, args.out, reporter=_reporter(args.no_progress))
    except DenoiserError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {s['out']}: {s['frames']} denoised frames in {s['seconds']:.1f} s")
    return 0


def _read_atoms(path: Path) -> np.ndarray:
    """Atom positions (n, 3), A, of an XYZ/PDB/CIF file (ASE), or a :class:`UserError` saying why not."""
    from btomo.analysis.run import AnalysisError, load_atoms  # noqa: PLC0415

    try:
        return load_atoms(path)
    except AnalysisError as exc:
        raise UserError(f"cannot read the initial model: {exc}") from None


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from btomo.reconstruct.run import reconstruct_window  # noqa: PLC0415
    from btomo.reconstruct.window import WindowError, split_window_path  # noqa: PLC0415

    cfg = config_from_args(args, {"rounds": "reconstruct.rounds", "directions": "reconstruct.directions"})
    xp = np
    if args.device == "cuda":
        from btomo.kernels.xp import require_cupy  # noqa: PLC0415

        try:
            xp = require_cupy()
        except RuntimeError as exc:
            raise UserError(str(exc)) from None
    initial = None if args.initial_model is None else _read_atoms(args.initial_model)
    try:
        store, window = split_window_path(args.window)
        s = reconstruct_window(store, window, args.out, cfg.reconstruct, xp=xp, initial_atoms_A=initial)
    except (WindowError, ValueError) as exc:
        raise UserError(str(exc)) from None
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"btomo reconstruct {window}")
    for col in ("round", "orientation change", "score", "frames in map", "atoms", "kept", "FSC 0.143", "map-model",
                "s"):
        table.add_column(col, justify="right")
    for r in s["rounds"]:
        table.add_row(str(r["round"]), f"{r['median_change_deg']:.2f} deg", f"{r['mean_score']:.4f}",
                      str(r["frames_in_map"]), str(r["atoms"]),
                      str(r["atoms_kept"]), f"{r['fsc_resolution_A']:.2f} A", f"{r['model_correlation']:.3f}",
                      f"{r['seconds']:.1f}")
    Console().print(table)
    print(f"{s['frames_in_map']} of {s['frames']} frames in the map, box {s['box']} at {s['voxel_A']:.3f} A, diameter "
          f"{s['diameter_A']:.1f} A ({s['diameter_source']}); {s['atoms']} atoms; wrote {s['out']}")
    if s["cube_symmetric_atoms"] is not None:
        print(f"{s['cube_symmetric_atoms']:.2f} of the atoms have all 24 cube mates among the atoms (1: the cube's "
              "shape; a particle's own is about 0.5-0.6 at 2 nm; docs/reconstruct.md)")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from btomo.analysis.run import AnalysisError, analyze_atom_files, analyze_run  # noqa: PLC0415

    cfg = config_from_args(args, {})
    inputs: list[Path] = args.inputs
    missing = [p for p in inputs if not p.exists()]
    if missing:
        raise UserError(f"no such run directory or atoms file: {missing[0]}")
    try:
        if len(inputs) == 1 and inputs[0].is_dir():
            s = analyze_run(inputs[0], args.out, cfg.analysis, figures=not args.no_figures)
            out = args.out or inputs[0] / "analysis"
        else:
            dirs = [p for p in inputs if p.is_dir()]
            if dirs:
                raise UserError(f"expected one RUN_DIR or atom files, got directories among several inputs: {dirs[0]}")
            if args.out is None:
                raise UserError("atom files need --out DIR (where the tables and figures go)")
            s = analyze_atom_files(inputs, args.out, cfg.analysis, figures=not args.no_figures)
            out = args.out
    except (AnalysisError, ValueError) as exc:
        raise UserError(str(exc)) from None
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="btomo analyze")
    for col in ("structure", "atoms", "diameter", "crystalline", "mean CN", "NN peak", "mean Q6"):
        table.add_column(col, justify="right")
    for r in s["structures"]:
        if r.get("atoms", 0) == 0:
            table.add_row(r["name"], "0", "", "", "", "", "")
            continue
        table.add_row(r["name"], str(r["atoms"]), f"{r['diameter_nm']:.2f} nm", f"{r['crystalline_fraction']:.3f}",
                      f"{r['mean_cn']:.2f}", f"{r['nn_peak_A']:.3f} A", f"{r['mean_q6']:.3f}")
    Console().print(table)
    for t in s["transitions"]:
        rate = t["etch_rate_atoms_s"]
        rate_s = f"etch rate {rate:.1f} atoms/s" if math.isfinite(rate) else "no times, no etch rate"
        print(f"{t['before']} -> {t['after']}: {t['persistent']} persistent, {t['removed']} removed, "
              f"{t['rearranged']} rearranged, median displacement {t['displacement_median_A']:.2f} A, "
              f"{rate_s} ({t['alignment']} alignment)")
    fit = s.get("disorder_fit")
    if fit and "A" in fit:
        print(f"disordered fraction = 1 - {fit['A']:.3g} (d - {fit['d_c_nm']:.2f} nm)^-({fit['n']:.2f}); "
              f"complete disorder at {fit['complete_disorder_nm']:.2f} nm")
    print(f"wrote {out} ({len(s['figures'])} figures)")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cmd_demo,
    "simulate": cmd_simulate,
    "replay": cmd_replay,
    "record": cmd_record,
    "live": cmd_live,
    "process": cmd_process,
    "train-denoiser": cmd_train_denoiser,
    "denoise": cmd_denoise,
    "reconstruct": cmd_reconstruct,
    "analyze": cmd_analyze,
}


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def _logging(level: str):
    """The command's logging: one handler on the root logger into ``sys.stderr`` at ``level``
    (and the run directory's ``btomo.log``, :func:`_log_to_file`). The root logger's own handlers
    and level come back when the command ends, and the command's handlers are closed: a command
    called from Python (a notebook, a test) leaves no handler on a stream or file of its own behind,
    where later records of the same process would go."""
    root = logging.getLogger()
    saved, saved_level = root.handlers[:], root.level
    for h in saved:
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    try:
        yield
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
            if h not in saved:
                h.close()
        for h in saved:
            root.addHandler(h)
        root.setLevel(saved_level)


def _log_to_file(path: Path) -> None:
    """Also log into the run directory's ``btomo.log`` (contracts: the run directory)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``btomo`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with _logging(getattr(args, "log_level", "INFO")):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; user errors become one line on stderr and an exit code."""
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, UserError, RecordingError, CurveError) as exc:
        print(f"btomo {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except zmq.ZMQError as exc:  # an address in use or unreachable, a socket option refused
        print(f"btomo {args.command}: error: ZeroMQ: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # a missing file, no permission, a full disk: one line, no traceback
        path = exc.filename or getattr(args, "run_dir", None) or getattr(args, "out", None)  # a write says no file
        where = f": {path}" if path else ""
        print(f"btomo {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return _interrupted(args.command)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame) -> None:
    """SIGTERM stops a command the way Ctrl-C does: flushing what it has written."""
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
