"""The latest-frame side channel: a conflated ZeroMQ PUB that viewers can subscribe to.

The receiver only stores a reference to the frame it accepted last; a separate thread publishes
that frame, while at least one viewer is connected, at most ``rate_hz`` times a second on a PUB socket with ``ZMQ_CONFLATE`` (each
subscriber holds one message, the newest) and never blocks (``NOBLOCK``; a full pipe drops).
So a slow, stalled or absent viewer can never slow the data path, and a viewer always sees the
newest frame rather than a backlog.

Message (one part, because conflation does not keep multipart messages whole)::

    b"BTOMOLF1" | uint32 LE header length | JSON header | frame bytes

The JSON header holds ``series``, ``frame``, ``t_ns``, ``shape``, ``dtype`` and ``published_ns``.
"""
from __future__ import annotations

import json
import logging
import struct
import threading
import time
from typing import Any, Callable

import numpy as np
import zmq

log = logging.getLogger(__name__)

__all__ = ["MAGIC", "LatestFramePublisher", "LatestFrameSubscriber", "encode_latest", "decode_latest"]

MAGIC = b"BTOMOLF1"


def encode_latest(frame: Any) -> bytearray:
    """One side-channel message for a :class:`~btomo.stream.messages.Frame`."""
    header = json.dumps({"series": frame.series, "frame": frame.frame, "t_ns": frame.t_ns,
                         "shape": list(frame.data.shape), "dtype": frame.data.dtype.str,
                         "published_ns": time.time_ns()}).encode()
    head = MAGIC + struct.pack("<I", len(header)) + header
    msg = bytearray(len(head) + frame.data.nbytes)  # one copy of the frame, no more
    msg[: len(head)] = head
    np.copyto(np.frombuffer(msg, dtype=frame.data.dtype, offset=len(head)).reshape(frame.data.shape), frame.data)
    return msg


def decode_latest(msg: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """Header and frame of a side-channel message; ValueError if it is not one."""
    if msg[:8] != MAGIC or len(msg) < 12:
        raise ValueError(f"expected a message starting with {MAGIC!r}, got {bytes(msg[:8])!r}")
    (n,) = struct.unpack_from("<I", msg, 8)
    header = json.loads(bytes(msg[12 : 12 + n]))
    data = np.frombuffer(msg, dtype=np.dtype(header["dtype"]), offset=12 + n)
    return header, data.reshape(header["shape"])


class LatestFramePublisher:
    """Publish the newest accepted frame at a bounded rate, from its own thread.

    Parameters
    ----------
    url : str
        Address to bind (default config: tcp://127.0.0.1:9998).
    latest : callable
        Returns the newest frame or None; must be cheap (a reference read).
    rate_hz : float
        Most messages a second.
    """

    def __init__(self, url: str, latest: Callable[[], Any], *, rate_hz: float = 10.0,
                 context: zmq.Context | None = None):
        self.url = url
        self._latest = latest
        self.period_s = 1.0 / rate_hz
        self.context = context or zmq.Context.instance()
        self.published = 0
        self.peers = 0  # viewers connected now
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._run, name="btomo-side-channel", daemon=True)

    def start(self) -> "LatestFramePublisher":
        self._thread.start()
        self._bound.wait(5)
        if self.error is not None:
            log.warning("side channel off: could not bind %s (%s)", self.url, self.error)
        return self

    def _run(self) -> None:
        try:
            sock = self.context.socket(zmq.PUB)
            sock.setsockopt(zmq.CONFLATE, 1)
            sock.setsockopt(zmq.SNDHWM, 1)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(self.url)
        except zmq.ZMQError as exc:  # the port is taken: the data path goes on without it
            self.error = exc
            self._bound.set()
            return
        self._bound.set()
        monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        last = None
        try:
            while not self._stop.wait(self.period_s):
                self._count_peers(monitor)
                frame = self._latest()
                if not self.peers or frame is None or frame is last:
                    continue  # nobody watching: no copy at all
                last = frame
                try:
                    sock.send(encode_latest(frame), zmq.NOBLOCK, copy=False)
                    self.published += 1
                except zmq.Again:
                    pass
        except Exception:  # noqa: BLE001 - the data path goes on without its viewers
            log.exception("side channel stopped")
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)

    def _count_peers(self, monitor: zmq.Socket) -> None:
        from zmq.utils.monitor import recv_monitor_message  # noqa: PLC0415

        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            self.peers += 1 if event == zmq.EVENT_ACCEPTED else -1
        self.peers = max(self.peers, 0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class LatestFrameSubscriber:
    """Subscribe to a side channel; :meth:`latest` returns the newest frame published."""

    def __init__(self, url: str, *, context: zmq.Context | None = None):
        self.context = context or zmq.Context.instance()
        self.sock = self.context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.CONFLATE, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(url)

    def latest(self, timeout_s: float = 1.0) -> tuple[dict[str, Any], np.ndarray] | None:
        """(header, frame), or None if nothing came within ``timeout_s``."""
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return decode_latest(self.sock.recv())

    def close(self) -> None:
        self.sock.close(linger=0)
