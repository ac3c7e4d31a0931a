"""What every stream protocol is decoded into, and the checks every message passes.

The btomo wire protocol and DECTRIS stream v1 / v2 (``docs/protocol.md``) all decode into the
same three records: :class:`SeriesStart`, :class:`Frame` and :class:`SeriesEnd`. A message that
fails a check raises :class:`Malformed` with a short machine-readable ``reason`` (the key under
which the receiver counts it) and a human-readable detail (what was expected, what came).

The checks run before anything is allocated for a frame: the declared shape is bounded, the
dtype is one of :data:`DTYPES`, and the blob size must agree with shape x dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "DTYPES",
    "INT64",
    "show",
    "Malformed",
    "SeriesStart",
    "Frame",
    "SeriesEnd",
    "check_int",
    "check_dtype",
    "check_shape",
    "check_finite",
    "frame_from_buffer",
]

# dtypes a frame may have on the wire, by the names protocols use for them; all little-endian
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for names, code in (
        (("uint8", "u1", "|u1", "<u1"), "<u1"),
        (("uint16", "u2", "<u2"), "<u2"),
        (("uint32", "u4", "<u4"), "<u4"),
        (("int8", "i1", "|i1", "<i1"), "<i1"),
        (("int16", "i2", "<i2"), "<i2"),
        (("int32", "i4", "<i4"), "<i4"),
        (("float32", "f4", "<f4"), "<f4"),
        (("float64", "f8", "<f8"), "<f8"),
    )
    for name in names
}


INT64 = (-(1 << 63), (1 << 63) - 1)  # what an index or a time on the wire must fit in


def show(value: Any, _depth: int = 0) -> str:
    """A short, bounded description of a value that came off the wire, for error messages.

    ``repr`` is not safe there: a few hundred bytes of CBOR with shared references can describe a
    structure whose ``repr`` is gigabytes, and a JSON integer can have thousands of digits.
    """
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"<integer of {value.bit_length()} bits>"
    if isinstance(value, str):
        return repr(value[:60]) + ("..." if len(value) > 60 else "")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, tuple, Mapping)):
        if _depth >= 2:
            return "[...]" if not isinstance(value, Mapping) else "{...}"
        if isinstance(value, Mapping):
            items = [f"{show(k, 2)}: {show(value[k], _depth + 1)}" for k in list(value)[:4]]
            return "{" + ", ".join(items) + (", ..." if len(value) > 4 else "") + "}"
        items = [show(v, _depth + 1) for v in value[:4]]
        return "[" + ", ".join(items) + (", ..." if len(value) > 4 else "") + "]"
    return f"<{type(value).__name__}>"


class Malformed(ValueError):
    """A message the receiver rejects.

    Parameters
    ----------
    reason : str
        Short key under which the rejection is counted (``bad_json``, ``size_mismatch``, ...).
    detail : str
        What was expected and what came.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class SeriesStart:
    """A series (one acquisition) begins.

    Attributes
    ----------
    series : str
        Series id as the sender names it (DECTRIS: the series number, or v2's unique id).
    shape : (rows, columns) or None
        Frame shape when the header says it, px.
    dtype : numpy dtype or None
    pixel_size_A : float or None
        Pixel size at the specimen, A/px.
    fps : float or None
        Frame rate, frames/s.
    dose_e_per_A2 : float or None
        Dose per frame, e/A^2.
    n_frames : int or None
        Frames the sender announces.
    meta : dict
        Everything else the header carried (JSON-serialisable).
    """

    series: str
    shape: tuple[int, int] | None = None
    dtype: np.dtype | None = None
    pixel_size_A: float | None = None
    fps: float | None = None
    dose_e_per_A2: float | None = None
    n_frames: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Frame:
    """One frame as it came off the wire.

    Attributes
    ----------
    series : str
        Series it belongs to.
    frame : int
        Acquisition index within the series (0-based).
    t_ns : int
        Acquisition time on the sender's clock, ns (any epoch; monotonic within a series).
    data : numpy array, (rows, columns)
        The frame, read-only; a view of the received message where no decoding was needed.
    wall_ns : int or None
        Unix time of acquisition, ns, when the sender says (btomo protocol; a replay gives the
        frame's scheduled time); the receiver uses it for the end-to-end latency.
    pixel_size_A, dose_e_per_A2 : float or None
        When the message says them.
    received_ns : int
        Unix time at which the receiver accepted it, ns.
    nbytes_wire : int
        Bytes the frame took on the wire (compressed size for compressed encodings).
    acq_wall_ns : int
        Unix time of acquisition, ns: ``wall_ns`` when the sender gives it, else the sender's
        clock mapped onto the receiver's (set by the receiver; 0 = unknown).
    """

    series: str
    frame: int
    t_ns: int
    data: np.ndarray
    wall_ns: int | None = None
    pixel_size_A: float | None = None
    dose_e_per_A2: float | None = None
    received_ns: int = 0
    nbytes_wire: int = 0
    acq_wall_ns: int = 0


@dataclass
class SeriesEnd:
    """A series ends; ``n_frames`` is what the sender says it sent, when it says."""

    series: str
    n_frames: int | None = None


def check_int(value: Any, key: str, *, minimum: int = INT64[0]) -> int:
    """An integer field that fits in int64 (and is >= ``minimum``), or ``bad_field``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= INT64[1]:
        raise Malformed("bad_field", f"expected {key} as an integer in [{minimum}, 2^63), got {show(value)}")
    return value


def check_dtype(name: Any) -> np.dtype:
    """The dtype a protocol names, or :class:`Malformed` ``unknown_dtype``."""
    if not isinstance(name, str) or name not in DTYPES:
        raise Malformed("unknown_dtype", f"expected one of {sorted(set(DTYPES))}, got {show(name)}")
    return DTYPES[name]


def check_shape(shape: Any, max_shape: tuple[int, int]) -> tuple[int, int]:
    """A declared (rows, columns) frame shape, bounded by ``max_shape``.

    Raises :class:`Malformed` ``bad_shape`` (not two positive integers) or ``shape_too_large``.
    """
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise Malformed("bad_shape", f"expected two positive integers (rows, columns), got {show(shape)}")
    rows, cols = int(shape[0]), int(shape[1])
    if rows > max_shape[0] or cols > max_shape[1]:
        raise Malformed("shape_too_large",
                        f"expected at most {max_shape[0]}x{max_shape[1]} px, got {show(rows)}x{show(cols)}")
    return rows, cols


def check_finite(data: np.ndarray) -> None:
    """Float frames must hold no NaN or inf (``non_finite``); integer frames always pass."""
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise Malformed("non_finite", f"expected finite values, got {bad} NaN or inf of {data.size}")


def frame_from_buffer(buf: Any, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """Zero-copy read-only view of ``buf`` as a frame; ``size_mismatch`` when sizes disagree."""
    expected = shape[0] * shape[1] * dtype.itemsize
    got = memoryview(buf).nbytes
    if got != expected:
        raise Malformed("size_mismatch",
                        f"expected {expected} bytes for {shape[0]}x{shape[1]} {dtype.name}, got {got}")
    arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
    arr.flags.writeable = False
    return arr
