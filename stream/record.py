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

import collections
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from .config import RunConfig, write_config
from .ingest import Ingest, RateLimitedLog
from .messages import Frame, SeriesEnd, SeriesStart
from .progress import NullReporter
from .recording import RecordingError, RecordingWriteError, RecordingWriter

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

    MAX_GEOMETRIES = 4  # recordings (frame shapes and dtypes) one record run opens at most
    MAX_SERIES_LISTED = 1000  # series entries per recording.json
    MAX_STARTS = 64  # series starts remembered

    def __init__(self, out: Path, cfg: RunConfig, counters: Any = None):
        self.out = Path(out)
        self.cfg = cfg
        self.counters = counters
        self.writers: dict[tuple, RecordingWriter] = {}
        self.series: dict[tuple, list[dict[str, Any]]] = {}
        self._starts: collections.OrderedDict[str, SeriesStart] = collections.OrderedDict()
        self._current: dict[tuple, str | None] = {}
        self.frames = 0
        self.series_not_listed = 0
        self._rlog = RateLimitedLog(log)

    def _writer(self, f: Frame) -> tuple[tuple, RecordingWriter] | None:
        key = (tuple(f.data.shape), f.data.dtype.str)
        w = self.writers.get(key)
        if w is None and len(self.writers) >= self.MAX_GEOMETRIES:
            return None
        if w is None:
            path = self.out if not self.writers else self.out / f"geometry-{len(self.writers)}"
            if self.writers:
                log.warning("series %s has %s %s frames, unlike the first series: writing it to %s",
                            f.series, f.data.shape, f.data.dtype, path)
            start = self._starts.get(f.series)
            s = self.cfg.stream
            w = RecordingWriter(
                path, shape=f.data.shape, dtype=f.data.dtype,
                pixel_size_A=f.pixel_size_A,  # the receiver filled it from the series start or the config
                fps=(start.fps if start and start.fps else None) or self.cfg.acquisition.fps,
                codec=s.record_codec, block_frames=s.record_block_frames,
                meta={"source": s.source, "protocol": s.protocol, "series": f.series, "written_by": "btomo record",
                      "dose_e_per_A2": f.dose_e_per_A2})
            if path == self.out:
                write_config(self.cfg, path)
            self.writers[key] = w
            self.series[key] = []
        if self._current.get(key) != f.series:  # a series (or a restart of one) begins in this recording
            self._current[key] = f.series
            self._list(key, w, f)
        return key, w

    def _list(self, key: tuple, w: RecordingWriter, f: Frame) -> None:
        """Add the series of ``f`` to ``series_list`` in ``recording.json`` (bounded)."""
        if len(self.series[key]) >= self.MAX_SERIES_LISTED:
            self.series_not_listed += 1
            return
        start = self._starts.get(f.series)
        entry: dict[str, Any] = {"series": f.series, "first_position": w.frames_written + w.pending_frames,
                                 "first_frame": f.frame}
        if start is not None:
            entry.update({k: v for k, v in (("fps", start.fps), ("n_frames", start.n_frames)) if v})
            if start.meta and len(json.dumps(start.meta, default=str)) <= 4096:
                entry["meta"] = start.meta
        self.series[key].append(entry)
        w.update_meta(series_list=self.series[key])

    def consume(self, rec: SeriesStart | Frame | SeriesEnd) -> bool:
        """Write one record; True for a frame written."""
        if isinstance(rec, SeriesStart):
            self._starts[rec.series] = rec
            self._starts.move_to_end(rec.series)
            while len(self._starts) > self.MAX_STARTS:
                self._starts.popitem(last=False)
            for key in self._current:  # the next frame of this series opens a new series_list entry
                if self._current[key] == rec.series:
                    self._current[key] = None
            return False
        if isinstance(rec, SeriesEnd):
            return False
        found = self._writer(rec)
        if found is None:
            if self.counters is not None:
                self.counters.dropped("geometry_limit")
            self._rlog.warning("geometry", "series %s: %s %s frames would open a recording beyond the %d allowed; "
                               "frame dropped", rec.series, rec.data.shape, rec.data.dtype, self.MAX_GEOMETRIES)
            return False
        _, w = found
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
            except Exception as exc:  # keep closing the others  # noqa: BLE001
                errors.append(exc)
                self._abandon(w)
                self._update_meta(w, {**meta, "stop_reason": _failure(exc)})
        if errors:
            raise errors[0]

    def abandon(self, **meta: Any) -> None:
        """Stop after a failure: keep what is durable, never claim completeness; add ``meta``."""
        for w in self.writers.values():
            self._abandon(w)
            self._update_meta(w, meta)

    @staticmethod
    def _update_meta(w: RecordingWriter, meta: dict[str, Any]) -> None:
        try:
            w.update_meta(**meta)
        except OSError as exc:  # the disk is full: what is on it stays readable without these fields
            log.warning("%s: recording.json not updated (%s)", w.path, exc)

    @staticmethod
    def _abandon(w: RecordingWriter) -> None:
        try:
            w.abandon()
        except Exception:  # noqa: BLE001 - the blocks already on disk stay readable
            log.exception("%s: could not flush the last frames", w.path)


def _failure(exc: BaseException) -> str:
    """``stop_reason`` of a recording stopped by ``exc``."""
    if isinstance(exc, RecordingWriteError):
        return f"write failed: {exc}"
    return f"stopped at once ({type(exc).__name__})"


def record(cfg: RunConfig, out: str | Path, *, reporter: Any = None, context: zmq.Context | None = None
           ) -> RecordResult:
    """Receive ``cfg.stream`` and write it into a new recording at ``out``.

    Stops after ``stream.max_frames`` frames, ``stream.idle_timeout_s`` without a frame, or
    SIGINT / SIGTERM (``stop_reason`` "interrupted"); in every case what was accepted is written
    and the recording closed. A second signal stops at once (KeyboardInterrupt), keeping every
    complete block.
    """
    out = Path(out)
    if (out / "frames.bin").exists():
        raise RecordingError(f"{out} already holds a recording; choose a new directory")
    ingest = Ingest(cfg, context=context)
    recorder = Recorder(out, cfg, ingest.counters)
    t0 = time.perf_counter()
    reporter = reporter or NullReporter()
    reporter.start(cfg.stream.max_frames or None, f"record {out.name}")

    ingest.start()
    try:
        with ingest.stop_on_signals():  # a first Ctrl-C / SIGTERM stops the receiver; the loop drains
            for rec in ingest.records():
                if recorder.consume(rec):
                    ingest.counters.processed(rec)
                    reporter.update(1)
    except BaseException as exc:  # a second signal, a full disk, a bug: keep every complete block
        ingest.close()
        recorder.abandon(ingest=ingest.counters.snapshot(), stop_reason=_failure(exc))
        raise
    finally:
        reporter.end()
    ingest.close()
    counters = ingest.counters.snapshot()
    extra = {"series_not_listed": recorder.series_not_listed} if recorder.series_not_listed else {}
    recorder.close(ingest=counters, stop_reason=ingest.receiver.stop_reason, **extra)
    if ingest.receiver.error is not None:
        raise ingest.receiver.error
    seconds = time.perf_counter() - t0
    if recorder.frames == 0:
        log.warning("no frame was received: nothing was written to %s", out)
    return RecordResult(out, recorder.frames, recorder.bytes_written, seconds, counters, ingest.receiver.stop_reason)
