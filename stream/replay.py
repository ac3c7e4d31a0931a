"""``btomo replay``: send a recording or a stack as a live stream, paced by its timestamps.

The sender binds a PUSH socket, as a detector does, and the receiver connects. Frames go out at
``rate`` times acquisition speed, frame ``i`` at ``(t_i - t_0) / rate`` after the first, using the
recorded acquisition times (stacks: ``index / fps``), or as fast as the receiver takes them
(``rate=None``, "max"). PUSH blocks when the receiver's buffers are full, so a receiver with the
``block`` policy slows the replay down instead of losing frames; the replay reports how late it
fell behind its schedule.

Protocols: ``btomo`` (``docs/protocol.md``), ``dectris1`` (DECTRIS stream v1) and ``dectris2``
(stream v2, CBOR) so that btomo can stand in for a detector.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import zmq

from .messages import SeriesStart
from .progress import NullReporter
from .sources import FrameSource
from .wire import frame_message, series_end_message, series_start_message

log = logging.getLogger(__name__)

__all__ = ["ReplayResult", "BtomoEncoder", "make_encoder", "replay", "send_messages"]


@dataclass
class ReplayResult:
    """What a replay sent.

    Attributes
    ----------
    frames : int
    bytes : int
        Bytes of frame data sent (after the protocol's encoding).
    seconds : float
        From the first frame sent to the last, s.
    max_late_s : float
        Most a frame left after its scheduled time, s (0 for ``max``).
    late_frames : int
        Frames that left more than one frame period late.
    """

    frames: int
    bytes: int
    seconds: float
    max_late_s: float
    late_frames: int

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


class BtomoEncoder:
    """Messages of the btomo wire protocol for one series."""

    protocol = "btomo"

    def __init__(self, series: str, *, shape: tuple[int, int], dtype: Any, pixel_size_A: float, fps: float,
                 dose_e_per_A2: float | None = None, n_frames: int | None = None, meta: dict | None = None):
        self.series = series
        self.start = SeriesStart(series, tuple(shape), np.dtype(dtype), pixel_size_A, fps, dose_e_per_A2, n_frames,
                                 meta or {})

    def start_messages(self) -> list[list[Any]]:
        return [series_start_message(self.start)]

    def frame_messages(self, index: int, t_ns: int, data: np.ndarray, wall_ns: int | None = None) -> list[list[Any]]:
        """``wall_ns``: Unix time of the frame's acquisition (its schedule), default now."""
        return [frame_message(self.series, index, t_ns, data, wall_ns=wall_ns or time.time_ns(),
                              pixel_size_A=self.start.pixel_size_A, dose_e_per_A2=self.start.dose_e_per_A2)]

    def end_messages(self, n_frames: int) -> list[list[Any]]:
        return [series_end_message(self.series, n_frames)]


def make_encoder(protocol: str, source: FrameSource, *, series: str | None = None,
                 dose_e_per_A2: float | None = None, **options: Any):
    """The encoder that sends ``source`` in ``protocol`` (``btomo``, ``dectris1``, ``dectris2``)."""
    kw = dict(shape=source.shape, dtype=source.dtype, pixel_size_A=source.pixel_size_A, fps=source.fps,
              n_frames=len(source))
    name = series or source.series
    if protocol == "btomo":
        return BtomoEncoder(name, dose_e_per_A2=dose_e_per_A2, meta={"source": str(source.path), "kind": source.kind},
                            **kw)
    from .dectris import Stream1Encoder, Stream2Encoder  # noqa: PLC0415

    if protocol == "dectris1":
        return Stream1Encoder(name, **kw, **options)
    if protocol == "dectris2":
        return Stream2Encoder(name, **kw, **options)
    raise ValueError(f"expected protocol btomo, dectris1 or dectris2, got {protocol!r}")


def send_messages(sock: zmq.Socket, messages: Iterable[list[Any]], stop: threading.Event | None = None) -> int:
    """Send whole multipart messages without copying; wait (interruptibly) while PUSH is full."""
    nbytes = 0
    for parts in messages:
        while True:
            try:
                sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
                break
            except zmq.Again:  # no receiver yet, or its buffers are full: wait, but not deaf to stop
                if stop is not None and stop.is_set():
                    raise InterruptedError("replay stopped") from None
                sock.poll(200, zmq.POLLOUT)
        nbytes += sum(memoryview(p).nbytes for p in parts)
    return nbytes


def replay(source: FrameSource, stream: Any, *, to: str, protocol: str = "btomo", rate: float | None = 1.0,
           series: str | None = None, dose_e_per_A2: float | None = None, reporter: Any = None,
           context: zmq.Context | None = None, stop: threading.Event | None = None,
           encoder_options: dict | None = None) -> ReplayResult:
    """Send every frame of ``source`` to whoever connects to ``to``.

    Parameters
    ----------
    source : FrameSource
    stream : StreamConfig
        Socket high-water mark, linger, CURVE keys.
    to : str
        Address to bind.
    protocol : {"btomo", "dectris1", "dectris2"}
    rate : float or None
        Times acquisition speed; None = as fast as possible.
    series : str, optional
        Series id to send (default: the source's).
    reporter : progress reporter, optional
    stop : threading.Event, optional
        Set to stop early (the series end is still sent).
    """
    from .ingest import is_loopback  # noqa: PLC0415
    from .security import configure_curve_server  # noqa: PLC0415

    if rate is not None and not rate > 0:
        raise ValueError(f"expected a rate > 0 or None (max), got {rate}")
    reporter = reporter or NullReporter()
    context = context or zmq.Context.instance()
    encoder = make_encoder(protocol, source, series=series, dose_e_per_A2=dose_e_per_A2, **(encoder_options or {}))
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, stream.socket_hwm)
    sock.setsockopt(zmq.LINGER, int(stream.linger_s * 1000))
    auth = configure_curve_server(sock, stream, context)
    if not is_loopback(to) and not stream.curve_secret_key:
        log.warning("sending on a non-local address %s without CURVE: anyone who can reach it can read the stream", to)
    sent = nbytes = late = 0
    max_late = 0.0
    t_first = t_last = 0.0
    started = False
    try:
        sock.bind(to)
        log.info("replaying %d frames of %s as %s on %s at %s", len(source), source.path, protocol, to,
                 "max speed" if rate is None else f"{rate:g}x acquisition speed")
        reporter.start(len(source), f"replay {source.path.name}")
        started = True
        send_messages(sock, encoder.start_messages(), stop)  # waits for a receiver to connect
        t0_ns = int(source.t_ns[0]) if len(source) else 0
        period = 1.0 / source.fps
        t_first = time.perf_counter()
        wall_first = time.time_ns()
        for index, t_ns, frame in source:
            if stop is not None and stop.is_set():
                log.info("replay stopped after %d frames", sent)
                break
            wall_ns = None  # "acquired" now, at max speed
            if rate is not None:
                # the frame is "acquired" on its schedule; a late send shows in the receiver's latency
                wall_ns = wall_first + round((t_ns - t0_ns) / rate)
                due = t_first + (t_ns - t0_ns) * 1e-9 / rate
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                else:
                    max_late = max(max_late, -wait)
                    late += -wait > period / rate
            nbytes += send_messages(sock, encoder.frame_messages(index, t_ns, frame, wall_ns), stop)
            sent += 1
            reporter.update(1)
        t_last = time.perf_counter()
        send_messages(sock, encoder.end_messages(sent), stop)
    except InterruptedError:
        t_last = time.perf_counter()
        log.info("replay stopped while waiting for the receiver, after %d frames", sent)
    finally:
        if started:
            reporter.end()
        sock.close()  # lingers up to stream.linger_s for the receiver to take the last messages
        if auth is not None:
            auth.stop()
    result = ReplayResult(sent, nbytes, t_last - t_first, max_late, late)
    log.info("sent %d frames in %.2f s (%.1f frames/s)%s", sent, result.seconds, result.fps,
             f"; {late} frames more than one period late (max {1e3 * max_late:.1f} ms)" if late else "")
    return result
