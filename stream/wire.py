"""btomo wire protocol v1: ZeroMQ multipart ``[JSON header, frame bytes]`` (``docs/protocol.md``).

Three messages, each a ZeroMQ multipart message whose first part is a UTF-8 JSON object with
``"btomo": 1`` (the protocol version) and a ``"type"``:

``series_start`` (1 part)
    ``series``, and optionally ``shape`` [rows, columns], ``dtype``, ``pixel_size_A``, ``fps``,
    ``dose_e_per_A2``, ``n_frames``, ``meta`` (an object).
``frame`` (2 parts: header, frame bytes)
    ``series``, ``frame`` (acquisition index), ``t_ns`` (acquisition time, ns), ``shape``
    [rows, columns], ``dtype`` (``uint16``, ...), and optionally ``wall_ns`` (Unix time of
    acquisition, ns), ``pixel_size_A``, ``dose_e_per_A2``. The second part is the frame, C order,
    little-endian, exactly rows x columns x itemsize bytes.
``series_end`` (1 part)
    ``series``, and optionally ``n_frames`` (frames sent).

The sender sends the frame part without copying it (``copy=False``); the receiver reads it into
a NumPy array without copying (``np.frombuffer``).
"""
from __future__ import annotations

import json
import math
import sys
from typing import Any, Sequence

import numpy as np

from .messages import (
    INT64,
    Frame,
    Malformed,
    SeriesEnd,
    SeriesStart,
    check_dtype,
    check_finite,
    check_int,
    check_shape,
    frame_from_buffer,
    show,
)

__all__ = ["VERSION", "MAX_HEADER_BYTES", "BtomoDecoder", "series_start_message", "frame_message",
           "series_end_message", "parse_json"]

VERSION = 1
MAX_HEADER_BYTES = 64 << 10


def parse_json(part: Any, what: str = "header", limit: int = MAX_HEADER_BYTES, *,
               allow_nan: bool = False) -> dict[str, Any]:
    """A JSON object from one message part of at most ``limit`` bytes; ``header_too_large`` /
    ``bad_json`` otherwise. NaN / Infinity literals (not JSON) are ``bad_json`` unless
    ``allow_nan`` (DECTRIS v1, whose detector software may write them)."""
    buf = memoryview(part)
    if buf.nbytes > limit:
        raise Malformed("header_too_large", f"expected a {what} of at most {limit} bytes, got {buf.nbytes}")
    try:
        obj = json.loads(buf.tobytes().decode("utf-8"), parse_constant=None if allow_nan else _no_constant)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, NaN, nesting too deep, a 5000-digit number
        raise Malformed("bad_json", f"expected a UTF-8 JSON {what}: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise Malformed("bad_json", f"expected a JSON object as {what}, got {type(obj).__name__}")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _int(h: dict[str, Any], key: str, *, minimum: int = INT64[0], required: bool = True) -> int | None:
    v = h.get(key)
    if v is None and not required:
        return None
    return check_int(v, repr(key), minimum=minimum)


def _number(h: dict[str, Any], key: str) -> float | None:
    v = h.get(key)
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > sys.float_info.max:
        v = math.inf  # an integer beyond any float: refused below like inf
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise Malformed("bad_field", f"expected a finite number >= 0 for {show(key)}, got {show(v)}")
    return float(v)


def _series(h: dict[str, Any]) -> str:
    v = h.get("series")
    if isinstance(v, bool) or not isinstance(v, (str, int)) or v == "" or len(str(v)) > 256:
        raise Malformed("bad_field", f"expected a series id (string or integer), got {show(v)}")
    return str(v)


class BtomoDecoder:
    """Decode btomo v1 messages into :class:`SeriesStart`, :class:`Frame`, :class:`SeriesEnd`.

    Parameters
    ----------
    max_shape : (rows, columns)
        Largest frame a header may declare, px.
    max_header_bytes : int
        Largest header part, bytes (``stream.max_header_kb``).
    """

    protocol = "btomo"
    max_parts = 2

    def __init__(self, *, max_shape: tuple[int, int], max_header_bytes: int = MAX_HEADER_BYTES):
        self.max_shape = max_shape
        self.max_header_bytes = max_header_bytes

    def decode(self, parts: Sequence[Any]) -> list[SeriesStart | Frame | SeriesEnd]:
        """One whole ZeroMQ message (its parts) into records; :class:`Malformed` if it is bad."""
        if not parts:
            raise Malformed("wrong_part_count", "expected 1 or 2 parts, got 0")
        h = parse_json(parts[0], limit=self.max_header_bytes)
        version = h.get("btomo")
        if type(version) is not int or version != VERSION:  # not true, not 1.0
            raise Malformed("unknown_version", f"expected 'btomo': {VERSION}, got {show(version)}")
        kind = h.get("type")
        expected_parts = {"series_start": 1, "frame": 2, "series_end": 1}.get(kind) if isinstance(kind, str) else None
        if expected_parts is None:
            raise Malformed("unknown_type", f"expected type series_start, frame or series_end, got {show(kind)}")
        if len(parts) != expected_parts:
            raise Malformed("wrong_part_count", f"expected {expected_parts} part(s) for {kind}, got {len(parts)}")
        series = _series(h)
        if kind == "frame":
            shape = check_shape(h.get("shape"), self.max_shape)
            dtype = check_dtype(h.get("dtype"))
            index = _int(h, "frame", minimum=0)
            t_ns = _int(h, "t_ns")
            wall_ns = _int(h, "wall_ns", required=False)
            data = frame_from_buffer(parts[1], shape, dtype)
            check_finite(data)
            return [Frame(series, index, t_ns, data, wall_ns=wall_ns, pixel_size_A=_number(h, "pixel_size_A"),
                          dose_e_per_A2=_number(h, "dose_e_per_A2"), nbytes_wire=data.nbytes)]
        if kind == "series_start":
            shape = check_shape(h["shape"], self.max_shape) if h.get("shape") is not None else None
            dtype = check_dtype(h["dtype"]) if h.get("dtype") is not None else None
            meta = h.get("meta") or {}
            if not isinstance(meta, dict):
                raise Malformed("bad_field", f"expected an object for 'meta', got {type(meta).__name__}")
            return [SeriesStart(series, shape, dtype, _number(h, "pixel_size_A"), _number(h, "fps"),
                                _number(h, "dose_e_per_A2"), _int(h, "n_frames", minimum=0, required=False), meta)]
        return [SeriesEnd(series, _int(h, "n_frames", minimum=0, required=False))]


# --- the sender's side -----------------------------------------------------------------------
def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def series_start_message(start: SeriesStart) -> list[bytes]:
    """The one-part ``series_start`` message for ``start``."""
    h: dict[str, Any] = {"btomo": VERSION, "type": "series_start", "series": start.series}
    if start.shape is not None:
        h["shape"] = [int(s) for s in start.shape]
    if start.dtype is not None:
        h["dtype"] = np.dtype(start.dtype).name
    for key in ("pixel_size_A", "fps", "dose_e_per_A2", "n_frames"):
        value = getattr(start, key)
        if value is not None:
            h[key] = value
    if start.meta:
        h["meta"] = start.meta
    return [_dumps(h)]


def frame_message(series: str, index: int, t_ns: int, data: np.ndarray, *, wall_ns: int | None = None,
                  pixel_size_A: float | None = None, dose_e_per_A2: float | None = None) -> list[Any]:
    """The two-part ``frame`` message; the second part is ``data`` itself (sent without a copy)."""
    data = np.ascontiguousarray(data)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    h: dict[str, Any] = {"btomo": VERSION, "type": "frame", "series": series, "frame": int(index),
                         "t_ns": int(t_ns), "shape": list(data.shape), "dtype": data.dtype.name}
    if wall_ns is not None:
        h["wall_ns"] = int(wall_ns)
    if pixel_size_A is not None:
        h["pixel_size_A"] = float(pixel_size_A)
    if dose_e_per_A2 is not None:
        h["dose_e_per_A2"] = float(dose_e_per_A2)
    return [_dumps(h), data]


def series_end_message(series: str, n_frames: int | None = None) -> list[bytes]:
    """The one-part ``series_end`` message."""
    h: dict[str, Any] = {"btomo": VERSION, "type": "series_end", "series": series}
    if n_frames is not None:
        h["n_frames"] = int(n_frames)
    return [_dumps(h)]
