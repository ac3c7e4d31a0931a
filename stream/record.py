"""``btomo record``: write a stream to disk losslessly, nothing else.

The frames go into a btomo recording (``docs/recording.md``), the format ``btomo simulate``
writes: append-only blocks of ``stream.record_block_frames`` frames (at most 64 MiB), each
checksummed and fsynced as a unit, with a block index. A crash keeps every complete block; the
reader detects and skips a torn tail.

Every series the stream carries goes into the same recording while its frames have the same
shape and dtype; ``recording.json`` lists the series with the position of their first frame.
A series with another frame geometry goes into a recording of its own inside the first one,
``OUT/geometry-<k>/``, listed there too. At the end ``recording.json`` also holds the ingest
counters (``ingest``): what was received, dropped, malformed, missing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from .config import RunConfig, write_config
from .ingest import Ingest
from .messages import Frame, SeriesEnd, SeriesStart
from .recording import RecordingError, RecordingWriter

log = logging.getLogger(__name__)

__all__ = ["RecordResult", "Recorder", "record"]


@dataclass
class RecordResult:
    """What ``record`` wrote: frames, bytes on disk, seconds, and the ingest counters."""

    path: Path
    frames: int
    bytes_written: int
    seconds: float
    counters: dict[str, Any]
    stop_reason: str


class Recorder:
    """Consume ingest records into recordings under ``out`` (one per frame geometry).

    Parameters
    ----------
    out : path
        Recording directory (new).
    cfg : RunConfig
        ``stream.record_codec`` and ``record_block_frames``; the source and protocol go into
        ``recording.json``.
    """

    def __init__(self, out: Path, cfg: RunConfig):
        self.out = Path(out)
        self.cfg = cfg
        self.writers: dict[tuple, RecordingWriter] = {}
        self.series: dict[tuple, list[dict[str, Any]]] = {}
        self._starts: dict[str, SeriesStart] = {}
        self._current: dict[tuple, str] = {}
        self.frames = 0

    def _writer(self, f: Frame) -> tuple[tuple, RecordingWriter]:
        key = (tuple(f.data.shape), f.data.dtype.str)
        w = self.writers.get(key)
        if w is None:
            path = self.out if not self.writers else self.out / f"geometry-{len(self.writers)}"
            if self.writers:
                log.warning("series %s has %s %s frames, unlike the first series: writing it to %s",
                            f.series, f.data.shape, f.data.dtype, path)
            start = self._starts.get(f.series)
            s = self.cfg.stream
            w = RecordingWriter(
                path, shape=f.data.shape, dtype=f.data.dtype,
                pixel_size_A=f.pixel_size_A or self.cfg.acquisition.pixel_size_A,
                fps=(start.fps if start and start.fps else None) or self.cfg.acquisition.fps,
                codec=s.record_codec, block_frames=s.record_block_frames,
                meta={"source": s.source, "protocol": s.protocol, "series": f.series, "written_by": "btomo record",
                      "dose_e_per_A2": f.dose_e_per_A2})
            if path == self.out:
                write_config(self.cfg, path)
            self.writers[key] = w
            self.series[key] = []
        if self._current.get(key) != f.series:  # a new series begins in this recording
            self._current[key] = f.series
            start = self._starts.get(f.series)
            entry: dict[str, Any] = {"series": f.series, "first_position": w.frames_written + len(w._pending),
                                     "first_frame": f.frame}
            if start is not None:
                entry.update({k: v for k, v in (("fps", start.fps), ("n_frames", start.n_frames),
                                                ("meta", start.meta)) if v})
            self.series[key].append(entry)
            w.update_meta(series_list=self.series[key])
        return key, w

    def consume(self, rec: SeriesStart | Frame | SeriesEnd) -> bool:
        """Write one record; True for a frame written."""
        if isinstance(rec, SeriesStart):
            self._starts[rec.series] = rec
            return False
        if isinstance(rec, SeriesEnd):
            return False
        _, w = self._writer(rec)
        w.append(rec.data, frame_index=rec.frame, t_ns=rec.t_ns)
        self.frames += 1
        return True

    @property
    def bytes_written(self) -> int:
        return sum(w.bytes_written for w in self.writers.values())

    def close(self, **meta: Any) -> None:
        """Flush and close every recording, marking it complete, with ``meta`` added."""
        errors = []
        for w in self.writers.values():
            try:
                w.close(**meta)
            except (OSError, RecordingError) as exc:  # keep closing the others
                errors.append(exc)
                w.abandon()
        if errors:
            raise errors[0]

    def abandon(self) -> None:
        for w in self.writers.values():
            w.abandon()


def record(cfg: RunConfig, out: str | Path, *, reporter: Any = None, context: zmq.Context | None = None,
           on_start: Any = None) -> RecordResult:
    """Receive ``cfg.stream`` and write it into a new recording at ``out``.

    Stops after ``stream.max_frames`` frames, ``stream.idle_timeout_s`` without a frame, or
    KeyboardInterrupt (SIGINT, SIGTERM through the CLI); in every case what was accepted is
    written and the recording closed. A second interrupt while draining stops at once, keeping
    every complete block.
    """
    out = Path(out)
    if (out / "frames.bin").exists():
        raise RecordingError(f"{out} already holds a recording; choose a new directory")
    recorder = Recorder(out, cfg)
    ingest = Ingest(cfg, context=context)
    t0 = time.perf_counter()
    if reporter is not None:
        reporter.start(cfg.stream.max_frames or None, f"record {out.name}")

    def consume_all() -> None:
        for rec in ingest.records():
            if recorder.consume(rec):
                ingest.counters.processed(rec)
                if reporter is not None:
                    reporter.update(1)

    ingest.start()
    if on_start is not None:
        on_start(ingest)
    try:
        try:
            consume_all()
        except KeyboardInterrupt:
            log.info("interrupted: writing the %d frames already accepted, then stopping", len(ingest.queue))
            ingest.stop("interrupted")
            consume_all()  # drain: every accepted frame reaches the recording
            raise
    except BaseException:
        ingest.close()
        try:
            recorder.close(ingest=ingest.counters.snapshot(), stop_reason=ingest.receiver.stop_reason or "error")
        except BaseException:
            recorder.abandon()
            raise
        raise
    finally:
        if reporter is not None:
            reporter.end()
    ingest.close()
    counters = ingest.counters.snapshot()
    if ingest.receiver.error is not None:
        recorder.close(ingest=counters, stop_reason=ingest.receiver.stop_reason)
        raise ingest.receiver.error
    recorder.close(ingest=counters, stop_reason=ingest.receiver.stop_reason)
    seconds = time.perf_counter() - t0
    if recorder.frames == 0:
        log.warning("no frame was received: nothing was written to %s", out)
    return RecordResult(out, recorder.frames, recorder.bytes_written, seconds, counters, ingest.receiver.stop_reason)
