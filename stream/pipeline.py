"""The pipeline runner behind ``btomo live`` and ``btomo process``.

``live`` takes frames from the ingest queue (:mod:`.ingest`), ``process`` reads them from a
recording or stack (:mod:`.sources`) without sockets; both hand the same
:class:`~btomo.stream.messages.Frame` records to the same :class:`Pipeline`, so the same frames
give the same results. A pipeline is a list of stages (house style: small classes with
``prepare(series)``, ``process(frame)`` and ``finish()``), run in order on every frame.

The stages by default (:func:`default_stages`): the per-frame analysis
(:class:`~btomo.stream.frames.FrameAnalysis`: tracking, lattice score, diameter, orientation,
SNR, into ``frames.csv``) and the denoiser of the tracked crops
(:class:`~btomo.stream.denoise.DenoiseStage`: the model of ``denoiser.model``, else the
classical fallback; off the frame loop, bounded backlog) and the rolling windows of lattice
crops with their orientation coverage (:class:`~btomo.stream.windows.WindowStage`, into
``windows.zarr``; only with a run directory), which hands every closed window to a
reconstruction job on Dask (:mod:`.jobs`). ``summary.json`` says which stages ran and the jobs'
states.
"""
from __future__ import annotations

import json
import logging
import platform
import signal
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .config import RunConfig, write_config
from .messages import Frame, SeriesStart
from .progress import NullReporter

log = logging.getLogger(__name__)

__all__ = ["Stage", "Pipeline", "default_stages", "run_live", "run_process", "versions"]


class Stage(Protocol):
    """One step of the per-frame pipeline."""

    name: str

    def prepare(self, series: SeriesStart) -> None: ...
    def process(self, frame: Frame) -> None: ...
    def finish(self) -> dict[str, Any]: ...


def default_stages(cfg: RunConfig, run_dir: Path | None, *, offline: bool = False) -> tuple[Stage, ...]:
    """The stages ``btomo live`` and ``btomo process`` run, in order (``offline``: the frames come
    from a file, which can wait for a stage that falls behind)."""
    from .denoise import DenoiseStage  # noqa: PLC0415 - torch is imported only when a pipeline runs
    from .frames import FrameAnalysis  # noqa: PLC0415

    from .windows import WindowStage  # noqa: PLC0415

    frames = FrameAnalysis(cfg, run_dir)
    denoise = DenoiseStage(cfg, frames, offline=offline)
    if run_dir is None:
        return (frames, denoise)
    return (frames, denoise, WindowStage(cfg, run_dir, denoise))


def versions() -> dict[str, str]:
    """Versions of btomo and the libraries a result depends on (for ``summary.json``)."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    out = {"python": platform.python_version()}
    for pkg in ("btomo", "numpy", "scipy", "pyzmq", "zarr", "numcodecs", "torch", "dask", "mrcfile", "tifffile"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


class Pipeline:
    """Run ``stages`` on every frame; count what went through.

    Parameters
    ----------
    cfg : RunConfig
    stages : sequence of Stage
    """

    def __init__(self, cfg: RunConfig, stages: tuple[Stage, ...] = ()):
        self.cfg = cfg
        self.stages = list(stages)
        self.frames = 0
        self.series: list[str] = []
        self.series_count = 0

    MAX_SERIES_LISTED = 100

    def series_start(self, ev: SeriesStart) -> None:
        self.series_count += 1
        self.series.append(ev.series)
        del self.series[: -self.MAX_SERIES_LISTED]  # the most recent ids; series_count counts them all
        for stage in self.stages:
            stage.prepare(ev)

    def process(self, frame: Frame) -> None:
        if not self.series or self.series[-1] != frame.series:
            self.series_start(SeriesStart(frame.series, tuple(frame.data.shape), frame.data.dtype,
                                          frame.pixel_size_A))
        for stage in self.stages:
            stage.process(frame)
        self.frames += 1

    def finish(self) -> dict[str, Any]:
        return {stage.name: stage.finish() for stage in self.stages}

    def status(self) -> dict[str, Any]:
        """The stages' live numbers (those with a ``status()``), for the progress display."""
        out: dict[str, Any] = {}
        for stage in self.stages:
            fn = getattr(stage, "status", None)
            if fn is not None:
                out.update(fn())
        return out


class _Status:
    """The pipeline's live numbers for the reporter, at most every ``every_s`` (else nothing)."""

    def __init__(self, pipeline: Pipeline, every_s: float = 0.5):
        self.pipeline, self.every_s = pipeline, every_s
        self.last = time.monotonic()
        self.state: dict[str, Any] = {}

    def due(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            try:
                self.state = self.pipeline.status()
            except Exception:  # noqa: BLE001 - the display never stops the pipeline
                log.debug("status failed", exc_info=True)
        return self.state


def _summary(run_dir: Path, cfg: RunConfig, counters: dict[str, Any], pipeline: Pipeline, seconds: float,
             stop_reason: str, extra: dict[str, Any], *, finished: bool = True) -> dict[str, Any]:
    built = [s.name for s in pipeline.stages]
    # first: the stages' last rows, windows and jobs land here (not when stopped at once)
    results = pipeline.finish() if finished else {}
    summary = {
        "frames_received": counters.get("frames_received", pipeline.frames),
        "frames_processed": pipeline.frames,
        "frames_dropped": counters.get("frames_dropped", {}),
        "frame_gaps": counters.get("frame_gaps", 0),
        "messages_malformed": counters.get("messages_malformed", {}),
        # filled by the stages that compute them; null while those stages are not built
        "lattice_frames": (results.get("frames") or {}).get("lattice_frames"),
        "windows_closed": (results.get("windows") or {}).get("windows_closed"),
        "reconstructions_done": ((results.get("windows") or {}).get("jobs") or {}).get("reconstructions_done"),
        "jobs": ((results.get("windows") or {}).get("jobs") or {}).get("states"),
        "wall_seconds": seconds,
        "stop_reason": stop_reason,
        "finished": finished,
        "series": pipeline.series,
        "series_count": pipeline.series_count,
        "stages": built,
        "stage_results": results,
        "ingest": counters,
        "versions": versions(),
        **extra,
    }
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=_json_default))
    tmp.replace(run_dir / "summary.json")
    return summary


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _announce(pipeline: Pipeline) -> None:
    if not pipeline.stages:
        log.warning("no stages: frames are received, checked and counted only; no frames.csv is written")
    else:
        log.info("stages: %s (closed windows go to reconstruction jobs on Dask)",
                 ", ".join(s.name for s in pipeline.stages))


def _attach(reporter: Any, pipeline: Pipeline, counters: Any) -> None:
    """Give a reporter that reads the pipeline (the dashboard) its stages and counters."""
    fn = getattr(reporter, "attach", None)
    if fn is not None:
        fn(pipeline=pipeline, counters=counters)


def _finishing(reporter: Any, what: str) -> None:
    fn = getattr(reporter, "finishing", None)
    if fn is not None:
        fn(what)
    else:
        log.info("%s", what)


def run_live(cfg: RunConfig, run_dir: Path, *, reporter: Any = None, context: Any = None,
             stages: tuple[Stage, ...] | None = None) -> dict[str, Any]:
    """Receive ``cfg.stream`` and run the pipeline on it until a stop; write ``summary.json``.

    ``stages`` default to :func:`default_stages` (``()`` runs none: ingest only). A first
    SIGINT / SIGTERM (or the dashboard's q) stops the receiver; what was accepted is processed,
    the open windows are closed and the jobs waited for. A second signal stops at once
    (``KeyboardInterrupt``), still writing ``summary.json`` with what was counted."""
    from .ingest import Ingest  # noqa: PLC0415

    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir)
    pipeline = Pipeline(cfg, default_stages(cfg, run_dir) if stages is None else stages)
    _announce(pipeline)
    ingest = Ingest(cfg, context=context)
    t0 = time.perf_counter()
    reporter = reporter or NullReporter()
    _attach(reporter, pipeline, ingest.counters)
    reporter.start(cfg.stream.max_frames or None, "live")
    status = _Status(pipeline)
    extra = {"source": cfg.stream.source, "protocol": cfg.stream.protocol}

    ingest.start()
    metrics = None
    if cfg.stream.metrics_every_s:
        from .metrics import MetricsWriter  # noqa: PLC0415

        jobs = next((s.jobs.counts for s in pipeline.stages if hasattr(getattr(s, "jobs", None), "counts")), None)
        metrics = MetricsWriter(run_dir / "metrics.jsonl", cfg.stream.metrics_every_s, ingest.counters, jobs).start()
    at_once = False
    try:
        with ingest.stop_on_signals():  # a first Ctrl-C / SIGTERM stops the receiver; the loop drains
            for rec in ingest.records():
                if isinstance(rec, Frame):
                    pipeline.process(rec)
                    ingest.counters.processed(rec)
                    reporter.update(1, **status.due())
                elif isinstance(rec, SeriesStart):
                    pipeline.series_start(rec)
    except KeyboardInterrupt:  # the second signal
        at_once = True
        raise
    finally:
        ingest.close()
        try:
            reason = _stop_reason(ingest.receiver.stop_reason or "stopped at once", reporter)
            summary = _finish(run_dir, cfg, lambda: ingest.counters.snapshot(), pipeline, t0, reason, extra,
                              reporter, at_once)
        finally:
            if metrics is not None:
                metrics.close()  # a last line, with the jobs' end states
            reporter.end()  # after the jobs: the dashboard shows them finish
    if ingest.receiver.error is not None:
        raise ingest.receiver.error
    return summary


def run_process(cfg: RunConfig, source: Any, run_dir: Path, *, reporter: Any = None,
                stages: tuple[Stage, ...] | None = None) -> dict[str, Any]:
    """Run the pipeline on every frame of a :class:`~btomo.stream.sources.FrameSource`
    (``stages`` and the stop signals as in :func:`run_live`: the first stops reading after the
    current frame, the second at once)."""
    from .signals import first_stops_second_interrupts  # noqa: PLC0415

    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.acquisition.pixel_size_A = source.pixel_size_A
    cfg.acquisition.fps = source.fps
    write_config(cfg, run_dir)
    pipeline = Pipeline(cfg, default_stages(cfg, run_dir, offline=True) if stages is None else stages)
    _announce(pipeline)
    t0 = time.perf_counter()
    pipeline.series_start(SeriesStart(source.series, source.shape, source.dtype, source.pixel_size_A, source.fps,
                                      cfg.acquisition.dose_e_per_A2, len(source)))
    reporter = reporter or NullReporter()
    _attach(reporter, pipeline, None)
    reporter.start(len(source), f"process {source.path.name}")
    status = _Status(pipeline)
    signals: list[int] = []

    def on_signal(signum: int) -> None:
        signals.append(signum)
        log.warning("%s: stopping after this frame; finishing what was read (send it again to stop at once)",
                    signal.Signals(signum).name)

    stop_reason, at_once = "end of source", False
    try:
        with first_stops_second_interrupts(on_signal):
            for index, t_ns, data in source:
                pipeline.process(Frame(source.series, index, t_ns, data, pixel_size_A=source.pixel_size_A,
                                       dose_e_per_A2=cfg.acquisition.dose_e_per_A2))
                reporter.update(1, **status.due())
                if signals:
                    stop_reason = "interrupted"
                    break
    except KeyboardInterrupt:
        stop_reason, at_once = "stopped at once", True
        raise
    finally:
        try:
            summary = _finish(run_dir, cfg, dict, pipeline, t0, _stop_reason(stop_reason, reporter),
                              {"source": str(source.path), "source_kind": source.kind}, reporter, at_once)
        finally:
            reporter.end()
    return summary


def _stop_reason(reason: str, reporter: Any) -> str:
    """"quit" when the interruption was the dashboard's q (the run ends normally, exit 0)."""
    return "quit" if reason == "interrupted" and getattr(reporter, "quit_requested", False) else reason


def _finish(run_dir: Path, cfg: RunConfig, counters: Any, pipeline: Pipeline, t0: float, stop_reason: str,
            extra: dict[str, Any], reporter: Any, at_once: bool) -> dict[str, Any]:
    """Finish the stages (close windows, wait for jobs) and write ``summary.json``. Stopped at
    once (a second signal, before or during this), the stages are left as they are and the
    summary holds what was counted (``stage_results`` empty, ``finished`` false)."""
    from .signals import handling_stop_signals  # noqa: PLC0415

    def at_once_handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if not at_once:
        _finishing(reporter, "finishing: closing windows, waiting for reconstruction jobs")
        try:
            with handling_stop_signals(at_once_handler):
                return _summary(run_dir, cfg, counters(), pipeline, time.perf_counter() - t0, stop_reason, extra)
        except KeyboardInterrupt:
            log.warning("stopped at once: open windows stay incomplete, jobs are abandoned")
            _summary(run_dir, cfg, counters(), pipeline, time.perf_counter() - t0, "stopped at once", extra,
                     finished=False)
            raise
    return _summary(run_dir, cfg, counters(), pipeline, time.perf_counter() - t0, "stopped at once", extra,
                    finished=False)
