"""The ingest runtime: receive, validate, enqueue; nothing else.

One thread (:class:`Receiver`) owns the ZeroMQ PULL socket. It reads each message part by part
(at most a protocol's number of parts; the rest of an over-long message is drained and counted),
decodes it with the protocol's decoder (:mod:`.wire`, :mod:`.dectris`), checks the frame index
against its series (:class:`SeriesTracker`), and puts accepted frames into a bounded
:class:`FrameQueue`. The consumer (the recorder, the pipeline) takes them from the queue in
another thread.

Queue policy (``stream.queue_policy``):

``block``
    When the queue is full the receiver stops reading; libzmq's buffers fill (bounded by
    ``stream.socket_hwm``) and the sender's ``send`` blocks: backpressure, no loss.
``drop-oldest``
    When the queue is full the oldest queued frame is dropped and counted
    (``frames_dropped["queue_full"]``): the newest frames always get through.

Every frame that was accepted reaches the consumer: at a stop the receiver stops reading and the
consumer drains the queue. Every rejected message is counted by reason and logged, rate-limited.
"""
from __future__ import annotations

import bisect
import collections
import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import zmq

from .messages import Frame, Malformed, SeriesEnd, SeriesStart
from .signals import first_stops_second_interrupts

log = logging.getLogger(__name__)

__all__ = ["FrameQueue", "LatencyStats", "IngestCounters", "SeriesTracker", "Receiver", "Ingest",
           "RateLimitedLog", "make_decoder", "is_loopback", "free_tcp_address", "STOP"]

STOP = object()  # the queue's end-of-stream marker


# --------------------------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------------------------
class RateLimitedLog:
    """Log the first few events of each kind, then one summary line per ``interval_s``."""

    def __init__(self, logger: logging.Logger, *, first: int = 5, interval_s: float = 10.0):
        self.logger = logger
        self.first = first
        self.interval_s = interval_s
        self._seen: collections.Counter[str] = collections.Counter()
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()

    def warning(self, key: str, msg: str, *args: Any) -> None:
        self._seen[key] += 1
        now = time.monotonic()
        if self._seen[key] <= self.first:
            self.logger.warning(msg, *args)
            self._last[key] = now
            return
        self._suppressed[key] += 1
        if now - self._last.get(key, 0.0) >= self.interval_s:
            self.logger.warning(msg + " (and %d more like it since the last report)", *args, self._suppressed[key] - 1)
            self._suppressed[key] = 0
            self._last[key] = now


class LatencyStats:
    """Latencies in a fixed log-spaced histogram (1 us .. 1000 s, 40 bins per decade, 6 % wide).

    Memory stays constant however long the run; percentiles are read off the histogram.
    """

    BINS_PER_DECADE = 40
    LO_S = 1e-6

    def __init__(self) -> None:
        n = 9 * self.BINS_PER_DECADE
        self._edges = [self.LO_S * 10 ** (i / self.BINS_PER_DECADE) for i in range(n + 1)]
        self._counts = [0] * (n + 2)
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0

    def add(self, seconds: float) -> None:
        seconds = min(max(seconds, 0.0), 1e6)  # a sender's clock can be anything
        self._counts[bisect.bisect_right(self._edges, seconds)] += 1
        self.count += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100), s; the upper edge of its bin (NaN when empty)."""
        if not self.count:
            return math.nan
        rank = q / 100 * self.count
        acc = 0
        for i, c in enumerate(self._counts):
            acc += c
            if acc >= rank and c:
                return min(self._edges[min(i, len(self._edges) - 1)], self.max_s)
        return self.max_s

    def counts(self) -> list[int]:
        """A copy of the histogram, for :meth:`since`."""
        return list(self._counts)

    def since(self, counts: list[int] | None) -> "LatencyStats":
        """The latencies added after ``counts`` (from :meth:`counts`; None: all of them), as a
        histogram of their own (its mean and max are bin edges: the sums are not kept per bin)."""
        out = LatencyStats()
        out._counts = [a - b for a, b in zip(self._counts, counts)] if counts else list(self._counts)
        out.count = sum(out._counts)
        top = max((i for i, c in enumerate(out._counts) if c), default=None)
        if top is not None:
            out.max_s = min(self._edges[min(top, len(self._edges) - 1)], self.max_s)
            out.total_s = sum(c * self._edges[min(i, len(self._edges) - 1)] for i, c in enumerate(out._counts))
        return out

    def summary(self) -> dict[str, float]:
        """Count, mean, p50, p90, p99, p99.9 and max, ms."""
        if not self.count:
            return {"count": 0}
        return {"count": self.count, "mean_ms": 1e3 * self.total_s / self.count,
                **{f"p{q:g}_ms": 1e3 * self.percentile(q) for q in (50, 90, 99, 99.9)},
                "max_ms": 1e3 * self.max_s}


class IngestCounters:
    """Everything the receiver and the consumer count; :meth:`snapshot` is safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages_received = 0
        self.bytes_received = 0
        self.frames_received = 0
        self.frames_accepted = 0
        self.frames_processed = 0
        self.frames_dropped: collections.Counter[str] = collections.Counter()
        self.messages_malformed: collections.Counter[str] = collections.Counter()
        self.out_of_order = 0
        self.series_started = 0
        self.series_ended = 0
        self.series_restarted = 0
        self.series_joined_midway = 0
        self.series_incomplete = 0
        self.peer_connects = 0
        self.peer_disconnects = 0
        self.handshake_failures = 0
        self.throttled_s = 0.0  # time the receiver waited under stream.max_messages_per_s
        self.latency = LatencyStats()  # acquisition -> processed
        self.queue_latency = LatencyStats()  # accepted -> processed
        self.queue_depth = 0
        self.queue_high_water = 0
        self.queue_limit = 0  # frames; set with the policy by the queue's owner
        self.queue_policy = ""
        self.t_start = time.time()
        self.gaps = lambda: 0  # set by the series tracker

    def malformed(self, reason: str) -> None:
        with self._lock:
            self.messages_malformed[reason] += 1

    def dropped(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.frames_dropped[reason] += n

    def processed(self, frame: Frame) -> None:
        """The consumer is done with ``frame``: count it and its latencies."""
        now_ns = time.time_ns()
        with self._lock:
            self.frames_processed += 1
            if frame.acq_wall_ns:
                self.latency.add((now_ns - frame.acq_wall_ns) * 1e-9)
            if frame.received_ns:
                self.queue_latency.add((now_ns - frame.received_ns) * 1e-9)

    def latency_since(self, counts: list[int] | None) -> tuple[LatencyStats, list[int]]:
        """The latencies recorded after ``counts`` (an earlier second return value; None: all),
        and the histogram now, for the next call."""
        with self._lock:
            return self.latency.since(counts), self.latency.counts()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of every counter (the ``summary.json`` names where they exist)."""
        with self._lock:
            return {
                "messages_received": self.messages_received,
                "bytes_received": self.bytes_received,
                "frames_received": self.frames_received,
                "frames_accepted": self.frames_accepted,
                "frames_processed": self.frames_processed,
                "frames_dropped": dict(self.frames_dropped),
                "frame_gaps": int(self.gaps()),
                "out_of_order": self.out_of_order,
                "messages_malformed": dict(self.messages_malformed),
                "series_started": self.series_started,
                "series_ended": self.series_ended,
                "series_restarted": self.series_restarted,
                "series_joined_midway": self.series_joined_midway,
                "series_incomplete": self.series_incomplete,
                "peer_connects": self.peer_connects,
                "peer_disconnects": self.peer_disconnects,
                "handshake_failures": self.handshake_failures,
                "throttled_s": round(self.throttled_s, 3),
                "queue_depth": self.queue_depth,
                "queue_high_water": self.queue_high_water,
                "queue_limit": self.queue_limit,
                "queue_policy": self.queue_policy,
                "latency": self.latency.summary(),
                "queue_latency": self.queue_latency.summary(),
                "wall_seconds": time.time() - self.t_start,
            }


# --------------------------------------------------------------------------------------------
# series bookkeeping: gaps, duplicates, order, restarts
# --------------------------------------------------------------------------------------------
@dataclass
class _Series:
    key: str
    start: SeriesStart | None
    first: int = -1
    last: int = -1  # highest index seen
    unique: int = 0
    ended: bool = False
    announced: int | None = None
    offset_ns: int | None = None  # min(received - t): sender clock -> Unix time

    def missing(self) -> int:
        """Holes in the index range, and (once ended) frames announced but never received.

        The announced count is the series end's, else the series start's (DECTRIS ends say none).
        """
        announced = self.announced
        if announced is None and self.start is not None:
            announced = self.start.n_frames
        if self.unique == 0:
            return (announced or 0) if self.ended else 0
        span = self.last - self.first + 1
        if self.ended and announced is not None:
            span = max(span, announced - self.first)
        return max(span - self.unique, 0)


class SeriesTracker:
    """Per-series frame-index bookkeeping, bounded in memory.

    Duplicates are recognised within the last ``window`` indices of a series (older indices
    cannot be told apart and count as out of order); at most ``max_series`` series are kept,
    the least recently used is retired (counted incomplete if it never ended).
    """

    def __init__(self, counters: IngestCounters, *, window: int = 1 << 16, max_series: int = 8):
        self.counters = counters
        self.window = window
        self.max_series = max_series
        self._series: collections.OrderedDict[str, _Series] = collections.OrderedDict()
        self._seen: dict[str, set[int]] = {}
        self._retired_missing = 0
        counters.gaps = self.gaps

    def gaps(self) -> int:
        """Frames missing so far: holes in the index ranges, and announced frames never sent."""
        return self._retired_missing + sum(s.missing() for s in list(self._series.values()))

    def _new(self, key: str, start: SeriesStart | None) -> _Series:
        old = self._series.pop(key, None)
        if old is not None:
            self._retire(old)
        while len(self._series) >= self.max_series:
            self._retire(self._series.popitem(last=False)[1])
        s = _Series(key, start)
        self._series[key] = s
        self._seen[key] = set()
        return s

    def _retire(self, s: _Series) -> None:
        self._retired_missing += s.missing()
        self._seen.pop(s.key, None)
        if not s.ended:
            self.counters.series_incomplete += 1

    def start(self, ev: SeriesStart) -> None:
        old = self._series.get(ev.series)
        if old is not None and not old.ended:
            self.counters.series_restarted += 1
            log.warning("series %s started again before it ended: the sender restarted; a new series begins",
                        ev.series)
        else:
            log.info("series %s started", ev.series)
        self.counters.series_started += 1
        self._new(ev.series, ev)

    def end(self, ev: SeriesEnd) -> bool:
        """Mark a series ended; False for a series never started here or ended already."""
        s = self._series.get(ev.series)
        if s is None or s.ended:
            return False
        s.ended, s.announced = True, ev.n_frames
        self.counters.series_ended += 1
        log.info("series %s ended: %d frames received%s", ev.series, s.unique,
                 f" of {ev.n_frames} sent" if ev.n_frames is not None else "")
        return True

    def accept(self, f: Frame) -> _Series | None:
        """Check ``f``'s index against its series: the series, or None for a duplicate (dropped)."""
        s = self._series.get(f.series)
        if s is None:
            self.counters.series_joined_midway += 1
            log.warning("series %s: first frame seen is %d, without a series start (joined midway or the "
                        "receiver restarted)", f.series, f.frame)
            s = self._new(f.series, None)
        else:
            self._series.move_to_end(f.series)
        seen = self._seen[f.series]
        if f.frame in seen:
            return None
        if s.unique == 0:
            s.first = s.last = f.frame
        elif f.frame < s.last:
            self.counters.out_of_order += 1
            s.first = min(s.first, f.frame)
        s.last = max(s.last, f.frame)
        s.unique += 1
        seen.add(f.frame)
        if len(seen) > 2 * self.window:  # forget indices far behind the newest
            floor = s.last - self.window
            self._seen[f.series] = {i for i in seen if i >= floor}
        # sender clock -> Unix time: the smallest (received - sent) seen is the best estimate
        if f.wall_ns is None:
            off = f.received_ns - f.t_ns
            s.offset_ns = off if s.offset_ns is None else min(s.offset_ns, off)
            f.acq_wall_ns = f.t_ns + s.offset_ns
        else:
            f.acq_wall_ns = f.wall_ns
        return s

    def close(self) -> None:
        """At the end of a run: retire every series (those not ended count as incomplete)."""
        while self._series:
            self._retire(self._series.popitem(last=False)[1])


# --------------------------------------------------------------------------------------------
# the bounded queue
# --------------------------------------------------------------------------------------------
class FrameQueue:
    """Bounded FIFO between the receiver and the consumer, by frame count and by bytes.

    Parameters
    ----------
    max_items : int
        Most queued frames.
    max_bytes : int
        Most queued frame bytes (one frame is always admitted into an empty queue).
    policy : {"block", "drop-oldest"}
    counters : IngestCounters
        Where drops and depth are counted.
    """

    def __init__(self, max_items: int, max_bytes: int, policy: str, counters: IngestCounters):
        if policy not in ("block", "drop-oldest"):
            raise ValueError(f"expected policy 'block' or 'drop-oldest', got {policy!r}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.policy = policy
        self.counters = counters
        self._items: collections.deque[Any] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self._abandoned = False

    @staticmethod
    def _size(item: Any) -> int:
        return item.data.nbytes if isinstance(item, Frame) else 0

    def _full(self, nbytes: int) -> bool:
        return len(self._items) >= self.max_items or (self._items and self._bytes + nbytes > self.max_bytes)

    def put(self, item: Any) -> bool:
        """Queue ``item``; False when the consumer has gone (the item was not queued)."""
        n = self._size(item)
        with self._cond:
            if self.policy == "block":
                while self._full(n) and not self._abandoned:
                    self._cond.wait(0.1)
            else:
                while self._full(n) and not self._abandoned:
                    # the oldest frame; if only series records are queued (a flood of them), the oldest
                    victim = next((i for i, x in enumerate(self._items) if isinstance(x, Frame)), 0)
                    old = self._items[victim]
                    del self._items[victim]
                    self._bytes -= self._size(old)
                    self.counters.dropped("queue_full")
            if self._abandoned:
                return False
            self._items.append(item)
            self._bytes += n
            depth = len(self._items)
            self.counters.queue_depth = depth
            self.counters.queue_high_water = max(self.counters.queue_high_water, depth)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Any:
        """Next item, :data:`STOP` once closed and empty, or None after ``timeout`` s."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    return STOP
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            item = self._items.popleft()
            self._bytes -= self._size(item)
            self.counters.queue_depth = len(self._items)
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more items will come; :meth:`get` returns :data:`STOP` once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abandon(self) -> int:
        """The consumer stops reading: release a blocked producer; return frames left unread."""
        with self._cond:
            self._abandoned = True
            left = sum(isinstance(x, Frame) for x in self._items)
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()
            return left



# --------------------------------------------------------------------------------------------
# the receiver
# --------------------------------------------------------------------------------------------
def make_decoder(protocol: str, max_shape: tuple[int, int], max_header_bytes: int = 64 << 10):
    """The decoder of a protocol (``btomo``, ``dectris1``, ``dectris2``) that rejects frames
    larger than ``max_shape`` and headers larger than ``max_header_bytes``."""
    if protocol == "btomo":
        from .wire import BtomoDecoder  # noqa: PLC0415

        return BtomoDecoder(max_shape=max_shape, max_header_bytes=max_header_bytes)
    from .dectris import Stream1Decoder, Stream2Decoder  # noqa: PLC0415

    if protocol == "dectris1":
        return Stream1Decoder(max_shape=max_shape, max_header_bytes=max_header_bytes)
    if protocol == "dectris2":
        return Stream2Decoder(max_shape=max_shape)
    raise ValueError(f"expected protocol btomo, dectris1 or dectris2, got {protocol!r}")


def free_tcp_address() -> str:
    """``tcp://127.0.0.1:PORT`` with a port nobody listens on now (for demos, tests, benchmarks)."""
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def is_loopback(url: str) -> bool:
    """True for ``ipc://``, ``inproc://`` and tcp addresses on 127.0.0.0/8, ::1 or localhost."""
    scheme, _, rest = url.partition("://")
    if scheme != "tcp":
        return True
    host = rest.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class Receiver:
    """The receiving thread: socket -> decode -> check -> queue.

    Parameters
    ----------
    stream : StreamConfig
        Address, protocol, bind or connect, bounds, CURVE keys, limits.
    queue : FrameQueue
    counters : IngestCounters
    defaults : dict
        ``pixel_size_A``, ``dose_e_per_A2`` for frames whose protocol does not carry them.
    context : zmq.Context, optional
    """

    def __init__(self, stream: Any, queue: FrameQueue, counters: IngestCounters, *,
                 defaults: dict[str, float] | None = None, context: zmq.Context | None = None):
        self.cfg = stream
        self.queue = queue
        self.counters = counters
        self.defaults = defaults or {}
        self.context = context or zmq.Context.instance()
        self.decoder = make_decoder(stream.protocol, tuple(stream.max_shape), stream.max_header_kb << 10)
        self.tracker = SeriesTracker(counters)
        self.latest: Frame | None = None  # read by the side channel; never waited on
        self.stop_reason = ""
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="btomo-receiver", daemon=True)
        self._rlog = RateLimitedLog(log)
        self._last_frame = time.monotonic()
        # the largest part a valid message can have: a max_shape float64 frame, plus headers
        rows, cols = stream.max_shape
        self.max_part_bytes = rows * cols * 8 + (1 << 20)
        # stream.max_messages_per_s: a token bucket holding at most 0.1 s of messages
        self._rate = float(stream.max_messages_per_s)
        self._burst = max(1.0, 0.1 * self._rate)
        self._tokens, self._t_tokens = self._burst, time.monotonic()

    # --- control ---------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "Receiver":
        self._thread.start()
        self._ready.wait(timeout)
        if self.error is not None:
            raise self.error
        return self

    def stop(self, reason: str = "stopped") -> None:
        """Stop reading (the consumer drains what was accepted)."""
        if not self._stop.is_set():
            self.stop_reason = self.stop_reason or reason
            self._stop.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # --- the loop --------------------------------------------------------------------------
    def _socket(self) -> tuple[zmq.Socket, zmq.Socket | None]:
        from .security import configure_curve_client  # noqa: PLC0415

        sock = self.context.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, self.cfg.socket_hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_part_bytes)
        sock.setsockopt(zmq.LINGER, 0)
        configure_curve_client(sock, self.cfg)
        monitor = None
        try:
            monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
                                              | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        except (zmq.ZMQError, AttributeError):  # pragma: no cover - libzmq without monitoring
            monitor = None
        if not is_loopback(self.cfg.source):
            log.warning("receiving from a non-local address %s%s", self.cfg.source,
                        "" if self.cfg.curve_server_public_key else " without CURVE authentication")
        if self.cfg.bind:
            sock.bind(self.cfg.source)
        else:
            sock.connect(self.cfg.source)
        log.info("%s %s (%s protocol, queue %d frames / %d MiB, policy %s)",
                 "bound" if self.cfg.bind else "connected to", self.cfg.source, self.cfg.protocol,
                 self.queue.max_items, self.queue.max_bytes >> 20, self.queue.policy)
        return sock, monitor

    def _run(self) -> None:
        sock = monitor = None
        try:
            sock, monitor = self._socket()
            self._ready.set()
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            if monitor is not None:
                poller.register(monitor, zmq.POLLIN)
            while not self._stop.is_set():
                events = dict(poller.poll(100))
                if monitor is not None and monitor in events:
                    self._monitor_event(monitor)
                if sock in events:
                    self._receive(sock)
                # checked on every turn: messages that are not frames do not keep a run alive
                if self.cfg.idle_timeout_s and time.monotonic() - self._last_frame > self.cfg.idle_timeout_s:
                    log.info("no frame for %g s: stopping", self.cfg.idle_timeout_s)
                    self.stop("idle timeout")
        except BaseException as exc:  # a bug or a socket that cannot be opened: report, never hide
            self.error = exc
            self.stop_reason = self.stop_reason or f"receiver failed: {exc}"
            if self._ready.is_set():  # set-up errors (keys, address) are raised by start() instead
                log.exception("receiver failed")
        finally:
            self._ready.set()
            if monitor is not None:
                try:
                    sock.disable_monitor()
                except zmq.ZMQError:  # pragma: no cover
                    pass
                monitor.close(linger=0)
            if sock is not None:
                sock.close(linger=0)
            self.queue.close()

    def _monitor_event(self, monitor: zmq.Socket) -> None:
        from zmq.utils.monitor import recv_monitor_message  # noqa: PLC0415

        while monitor.poll(0):
            ev = recv_monitor_message(monitor)["event"]
            if ev in (zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED):
                self.counters.peer_connects += 1
                log.info("sender connected")
            elif ev == zmq.EVENT_DISCONNECTED:
                self.counters.peer_disconnects += 1
                log.info("sender disconnected")
            else:
                self.counters.handshake_failures += 1
                self._rlog.warning("handshake", "a peer failed the ZeroMQ handshake (wrong or missing CURVE keys?)")

    def _recv_parts(self, sock: zmq.Socket) -> tuple[list[zmq.Frame], int]:
        """One message, part by part: at most the protocol's parts + 1 kept, the rest drained
        (released as they come); (parts, total)."""
        parts: list[zmq.Frame] = []
        total = 0
        keep = self.decoder.max_parts + 1
        part = sock.recv(zmq.NOBLOCK, copy=False)  # zmq.Again: nothing waiting
        while True:
            total += 1
            if len(parts) < keep:
                parts.append(part)
            if not part.more:
                return parts, total
            part = sock.recv(copy=False)  # the rest of a message is already here

    def _receive(self, sock: zmq.Socket) -> None:
        # take what is waiting, but come back to the loop regularly to see a stop request
        for _ in range(64):
            if self._stop.is_set() or not self._admit():
                return
            try:
                parts, total = self._recv_parts(sock)
            except zmq.Again:
                return
            self.counters.messages_received += 1
            self.counters.bytes_received += sum(len(p) for p in parts)
            if total > self.decoder.max_parts + 1:
                self._reject(Malformed("too_many_parts",
                                       f"expected at most {self.decoder.max_parts} parts, got {total}"))
                continue
            try:
                records = self.decoder.decode(parts)
            except Malformed as exc:
                self._reject(exc)
                continue
            except Exception as exc:  # a decoder bug must not stop the stream: count, log, go on
                self.counters.malformed("decode_error")
                self._rlog.warning("decode_error", "message could not be decoded (%s: %s)", type(exc).__name__, exc)
                continue
            for rec in records:  # a decoder may report rejections among its records
                if isinstance(rec, Malformed):
                    self._reject(rec)
                else:
                    self._handle(rec)

    def _admit(self) -> bool:
        """Whether one more message may be taken now under ``max_messages_per_s``; if not, wait
        (at most 50 ms) for the next token, leaving the message queued in ZeroMQ."""
        if not self._rate:
            return True
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._t_tokens) * self._rate)
        self._t_tokens = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        wait = min(0.05, (1.0 - self._tokens) / self._rate)
        time.sleep(wait)
        self.counters.throttled_s += wait
        return False

    def _reject(self, exc: Malformed) -> None:
        self.counters.malformed(exc.reason)
        self._rlog.warning(exc.reason, "rejected a message: %s", exc)

    def _handle(self, rec: SeriesStart | Frame | SeriesEnd) -> None:
        if isinstance(rec, SeriesStart):
            self.tracker.start(rec)
            self.queue.put(rec)
            return
        if isinstance(rec, SeriesEnd):
            if self.tracker.end(rec):
                self.queue.put(rec)
            else:
                self._reject(Malformed("unknown_series", f"end of series {rec.series!r}, which never started here"))
            return
        if self._stop.is_set():  # stopped (max frames) while a message still held frames: not accepted
            self.counters.dropped("after_stop")
            return
        now = time.time_ns()
        rec.received_ns = now
        self._last_frame = time.monotonic()
        self.counters.frames_received += 1
        series = self.tracker.accept(rec)
        if series is None:
            self.counters.dropped("duplicate")
            self._rlog.warning("duplicate", "series %s: frame %d received again; the copy is dropped",
                               rec.series, rec.frame)
            return
        start = series.start
        if rec.pixel_size_A is None:
            rec.pixel_size_A = (start.pixel_size_A if start else None) or self.defaults.get("pixel_size_A")
        if rec.dose_e_per_A2 is None:
            rec.dose_e_per_A2 = (start.dose_e_per_A2 if start else None) or self.defaults.get("dose_e_per_A2")
        self.counters.frames_accepted += 1
        if not self.queue.put(rec):
            self.counters.dropped("consumer_stopped")
            return
        self.latest = rec
        if self.cfg.max_frames and self.counters.frames_accepted >= self.cfg.max_frames:
            log.info("%d frames received: stopping", self.counters.frames_accepted)
            self.stop("max frames")


# --------------------------------------------------------------------------------------------
# receiver + queue + counters, as one thing to consume from
# --------------------------------------------------------------------------------------------
class Ingest:
    """A running receiver and its queue: iterate :meth:`records` to consume.

    Parameters
    ----------
    cfg : RunConfig
        ``stream`` for the receiver, ``acquisition`` for the pixel size and dose of protocols
        that do not send them.
    context : zmq.Context, optional

    Examples
    --------
    >>> with Ingest(cfg) as ingest:                               # doctest: +SKIP
    ...     for rec in ingest.records():
    ...         if isinstance(rec, Frame):
    ...             use(rec.data)
    ...             ingest.counters.processed(rec)
    """

    def __init__(self, cfg: Any, *, context: zmq.Context | None = None):
        s = cfg.stream
        self.counters = IngestCounters()
        self.queue = FrameQueue(s.queue_frames, s.queue_mb << 20, s.queue_policy, self.counters)
        self.counters.queue_limit, self.counters.queue_policy = s.queue_frames, s.queue_policy
        self.receiver = Receiver(s, self.queue, self.counters, context=context, defaults={
            "pixel_size_A": cfg.acquisition.pixel_size_A, "dose_e_per_A2": cfg.acquisition.dose_e_per_A2})
        self.side_channel = None
        if s.side_channel:
            from .sidechannel import LatestFramePublisher  # noqa: PLC0415

            self.side_channel = LatestFramePublisher(s.side_channel, lambda: self.receiver.latest,
                                                     rate_hz=s.side_channel_hz, context=context)

    def start(self) -> "Ingest":
        self.receiver.start()
        if self.side_channel is not None:
            self.side_channel.start()
        return self

    def records(self) -> Iterator[SeriesStart | Frame | SeriesEnd]:
        """Everything accepted, in order, until the receiver stops and the queue is drained."""
        while True:
            item = self.queue.get(timeout=0.2)
            if item is STOP:
                return
            if item is not None:
                yield item

    def stop(self, reason: str = "stopped") -> None:
        self.receiver.stop(reason)

    def close(self) -> None:
        """Stop the receiver and the side channel; count what was never consumed."""
        self.receiver.stop()
        left = self.queue.abandon()
        if left:
            self.counters.dropped("consumer_stopped", left)
            log.error("%d accepted frames were not consumed", left)
        self.receiver.join(5)
        if not self.receiver.alive:  # the tracker belongs to the receiver's thread until then
            self.receiver.tracker.close()
        if self.side_channel is not None:
            self.side_channel.close()

    @contextlib.contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """SIGINT / SIGTERM stop the receiver, so that the consumer drains what was accepted and
        finishes normally (``stop_reason`` "interrupted"); a second signal raises
        KeyboardInterrupt at once. Main thread only; elsewhere this does nothing."""
        def first(signum: int) -> None:
            log.warning("%s: stopping; writing everything accepted (send it again to stop at once)",
                        signal.Signals(signum).name)
            self.stop("interrupted")

        with first_stops_second_interrupts(first):
            yield

    def __enter__(self) -> "Ingest":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
