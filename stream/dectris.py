"""DECTRIS detector streams over ZeroMQ: SIMPLON stream v1 (JSON multipart) and v2 (CBOR).

Both decode into the records of :mod:`.messages`, so that a DECTRIS detector (or its
simulator) pointed at btomo just works; the encoders let ``btomo replay`` stand in for one.
References (``docs/protocol.md``): DECTRIS ``documentation/stream_v2`` (README, ``client.py``,
``stream2.c``), the CBOR compression tag spec, and the v1 parts as recorded from an EIGER2 and
read by DECTRIS's and Diamond's receivers.

Stream v1, part by part (a header may also arrive split over several ZeroMQ messages)::

    dheader-1.0 {series, header_detail}  [+ detector config JSON]      (basic)
                                         [+ 3 x (JSON, blob) tables]   (all)   [+ appendix]
    dimage-1.0 {series, frame, hash} | dimage_d-1.0 {shape [x, y], type, encoding, size}
        | blob | dconfig-1.0 {start_time, stop_time, real_time (ns)}            [+ appendix]
    dseries_end-1.0 {series}

``shape`` is [x, y] (columns, rows): reversed for NumPy. Encodings ``<`` (raw), ``lz4<`` (one
LZ4 block, no size prefix) and ``bs8|bs16|bs32-lz4<`` (bitshuffle + LZ4 in the HDF5 filter's
framing: 8-byte big-endian size, 4-byte big-endian block size in bytes, then per block a 4-byte
big-endian compressed length and an LZ4 block; the last ``n % 8`` elements raw).

Stream v2: one CBOR item per message (self-describe tag 55799), a map whose ``type`` is
``start``, ``image`` or ``end``. Image data are ``40([[rows, columns], typed array])``, the typed
array (RFC 8746 tags 64-87, 69 = uint16 LE) wrapping the bytes or a compression tag
``56500(["bslz4" | "lz4", elem_size, bytes])`` (both in the 12-byte HDF5 framing). Times are
rationals ``[numerator, denominator]`` in s since ``series_date``.

Decompression is done with python-lz4's bounds-checked block decoder and bitshuffle's
bit-transpose, after the framing has been checked against the declared sizes: nothing is
allocated beyond the declared frame, nor beyond what the blob can decode to (LZ4 expands at most
255-fold), and a hostile blob cannot make the decoder read or write out of bounds. Nor can a
header make the decoder work for long: CBOR map keys must be strings (integer keys that share a
hash would make building the map quadratic), tags whose decoding is superlinear are left
undecoded, times must be 64-bit rationals, and numbers beyond int64 or float range are dropped
from what a series start carries.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
import uuid
import zlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .messages import INT64, Frame, Malformed, SeriesEnd, SeriesStart, show
from .messages import check_dtype, check_finite, check_int, check_shape, frame_from_buffer
from .wire import MAX_HEADER_BYTES, parse_json

__all__ = [
    "Stream1Decoder",
    "Stream2Decoder",
    "Stream1Encoder",
    "Stream2Encoder",
    "bslz4_compress",
    "bslz4_decompress",
    "lz4h5_compress",
    "lz4h5_decompress",
]


# --------------------------------------------------------------------------------------------
# codecs
# --------------------------------------------------------------------------------------------
_H5_HEADER = struct.Struct(">QI")


def _default_block_elements(itemsize: int) -> int:
    """bitshuffle's default block: 8192 bytes, a multiple of 8 elements, at least 128."""
    return max((8192 // itemsize) // 8 * 8, 128)


def bslz4_compress(data: np.ndarray, block_elements: int = 0) -> bytes:
    """Bitshuffle + LZ4 with the 12-byte HDF5-filter header (DECTRIS ``bs<N>-lz4<``, v2 ``bslz4``)."""
    import bitshuffle  # noqa: PLC0415

    flat = np.ascontiguousarray(data).reshape(-1)
    block = block_elements or _default_block_elements(flat.itemsize)
    body = bitshuffle.compress_lz4(flat, block)
    return _H5_HEADER.pack(flat.nbytes, block * flat.itemsize) + body.tobytes()


_MIN_BLOCK_BYTES = 64  # DECTRIS's own tests use 64-byte blocks; detectors send 8192
_MAX_BLOCK_BYTES = 1 << 24
# An LZ4 block never decodes to more than 255 times its size: the longest output per input byte
# is a match-length extension byte (255 bytes of output); every sequence costs at least 3 more.
_LZ4_MAX_RATIO = 255


def _h5_header(buf: memoryview, nbytes: int, what: str, span: int | None = None, raw: int = 0) -> int:
    """Check the 12-byte HDF5-filter header against the expected decoded size; the block size.

    ``span`` of the ``nbytes`` are in LZ4 blocks (all by default), and ``raw`` bytes are stored
    after them as they are (bslz4 keeps the last ``n % 8`` elements so, and has no block at all
    for fewer than 8 elements).

    The work a blob can ask for is bounded by its own size: every block costs at least 4 bytes of
    the blob, a block is at least 64 bytes, and LZ4 expands at most 255-fold, so nothing is
    allocated or looped over for blocks the blob cannot hold.
    """
    span = nbytes if span is None else span
    if buf.nbytes < _H5_HEADER.size:
        raise Malformed("bad_compression", f"expected a 12-byte {what} header, got {buf.nbytes} bytes")
    total, block_bytes = _H5_HEADER.unpack_from(buf)
    if total != nbytes:
        raise Malformed("size_mismatch", f"expected {nbytes} decoded bytes, the {what} header says {total}")
    if not _MIN_BLOCK_BYTES <= block_bytes <= _MAX_BLOCK_BYTES:
        raise Malformed("bad_compression", f"expected a {what} block size of {_MIN_BLOCK_BYTES} bytes to 16 MiB, "
                                           f"got {block_bytes}")
    blocks = -(-span // block_bytes)
    room = buf.nbytes - _H5_HEADER.size - raw  # for the blocks: 4-byte lengths and LZ4 data
    if blocks * 4 > room:
        raise Malformed("bad_compression", f"a {what} blob of {buf.nbytes} bytes cannot hold the "
                                           f"{blocks} blocks its header announces")
    if span > _LZ4_MAX_RATIO * (room - 4 * blocks):
        raise Malformed("bad_compression", f"a {what} blob of {buf.nbytes} bytes cannot decode to {nbytes} bytes")
    return block_bytes


def _h5_blocks(buf: memoryview, block_bytes: int, span: int, out: bytearray, what: str, *, stored_raw: bool) -> int:
    """Decode the blocks covering ``out[:span]`` of an HDF5-framed LZ4 blob; the offset after them.

    Each block is a 4-byte big-endian length and an LZ4 block that decodes to ``block_bytes``
    (the last one to the rest); ``stored_raw``: a block as long as its decoded size is stored
    uncompressed (the HDF5 LZ4 filter's convention).
    """
    import lz4.block  # noqa: PLC0415

    pos = _H5_HEADER.size
    try:
        for dst in range(0, span, block_bytes):
            size = min(block_bytes, span - dst)
            if pos + 4 > buf.nbytes:
                raise Malformed("bad_compression", f"{what} blob ends after {dst} of {span} bytes")
            (clen,) = struct.unpack_from(">I", buf, pos)
            pos += 4
            if clen > buf.nbytes - pos:
                raise Malformed("bad_compression", f"{what} block of {clen} bytes runs past the blob's end")
            piece = buf[pos : pos + clen]
            chunk = piece if stored_raw and clen == size else lz4.block.decompress(piece, uncompressed_size=size)
            if len(chunk) != size:
                raise Malformed("bad_compression", f"{what} block decoded to {len(chunk)} bytes, expected {size}")
            out[dst : dst + size] = chunk
            pos += clen
    except lz4.block.LZ4BlockError as exc:
        raise Malformed("bad_compression", f"{what} block does not decode ({exc})") from None
    return pos


def bslz4_decompress(blob: Any, nbytes: int, itemsize: int) -> Any:
    """Inverse of :func:`bslz4_compress`: a buffer of ``nbytes`` decoded bytes, or :class:`Malformed`.

    The framing is checked first (declared size, block size, room for the blocks); each LZ4
    block is decoded with a bounds-checked decoder into its slot, then the whole buffer is
    bit-unshuffled in one call (bitshuffle's own LZ4 path does not bounds-check hostile input).
    """
    import bitshuffle  # noqa: PLC0415

    buf = memoryview(blob).cast("B")
    n = nbytes // itemsize
    leftover = (n % 8) * itemsize  # the last n % 8 elements are stored raw after the blocks
    block_bytes = _h5_header(buf, nbytes, "bslz4", span=nbytes - leftover, raw=leftover)
    if block_bytes % (8 * itemsize):
        raise Malformed("bad_compression", f"expected a block size that is a multiple of {8 * itemsize} bytes, "
                                           f"got {block_bytes}")
    out = bytearray(nbytes)
    pos = _h5_blocks(buf, block_bytes, nbytes - leftover, out, "bslz4", stored_raw=False)
    if buf.nbytes - pos != leftover:
        raise Malformed("bad_compression", f"expected {leftover} trailing raw bytes after the bslz4 blocks, "
                                           f"got {buf.nbytes - pos}")
    out[nbytes - leftover :] = buf[pos:]
    arr = np.frombuffer(out, dtype=f"u{itemsize}")
    return bitshuffle.bitunshuffle(arr, block_bytes // itemsize) if n else out


def lz4h5_compress(data: np.ndarray, block_bytes: int = 1 << 20) -> bytes:
    """LZ4 in the HDF5 framing (DECTRIS v2 ``lz4``): header, then per block length + LZ4 block."""
    import lz4.block  # noqa: PLC0415

    raw = memoryview(np.ascontiguousarray(data)).cast("B")
    parts = [_H5_HEADER.pack(raw.nbytes, block_bytes)]
    for start in range(0, raw.nbytes, block_bytes):
        piece = raw[start : start + block_bytes]
        c = lz4.block.compress(piece, store_size=False)
        if len(c) >= len(piece):  # incompressible: stored raw, as the HDF5 filter does
            c = bytes(piece)
        parts += [struct.pack(">I", len(c)), c]
    return b"".join(parts)


def lz4h5_decompress(blob: Any, nbytes: int) -> bytearray:
    """Inverse of :func:`lz4h5_compress`, with the framing checked; :class:`Malformed` if bad."""
    buf = memoryview(blob).cast("B")
    block_bytes = _h5_header(buf, nbytes, "lz4")
    out = bytearray(nbytes)
    pos = _h5_blocks(buf, block_bytes, nbytes, out, "lz4", stored_raw=True)
    if pos != buf.nbytes:
        raise Malformed("bad_compression", f"{buf.nbytes - pos} unexpected bytes after the lz4 blocks")
    return out


def _lz4_raw_decompress(blob: Any, nbytes: int) -> bytes:
    import lz4.block  # noqa: PLC0415

    if nbytes > _LZ4_MAX_RATIO * memoryview(blob).nbytes:
        raise Malformed("bad_compression", f"an lz4 blob of {memoryview(blob).nbytes} bytes cannot decode to "
                                           f"{nbytes} bytes")
    try:
        out = lz4.block.decompress(blob, uncompressed_size=nbytes)
    except lz4.block.LZ4BlockError as exc:
        raise Malformed("bad_compression", f"lz4 blob does not decode ({exc})") from None
    if len(out) != nbytes:
        raise Malformed("size_mismatch", f"expected {nbytes} decoded bytes, lz4 gave {len(out)}")
    return out


# --------------------------------------------------------------------------------------------
# what both streams read from a detector's headers
# --------------------------------------------------------------------------------------------
def _json(part: Any, what: str = "header", limit: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """:func:`.wire.parse_json` with NaN / Infinity literals allowed (detector software may write them)."""
    return parse_json(part, what, limit, allow_nan=True)


def _fps(frame_time: Any) -> float | None:
    """Frames per second from a frame time in s, when that is a number > 0 with a finite inverse."""
    if isinstance(frame_time, bool) or not isinstance(frame_time, (int, float)) or not frame_time > 0:
        return None
    try:
        fps = 1.0 / frame_time
    except OverflowError:  # an integer beyond float range
        return None
    return fps if math.isfinite(fps) and fps > 0 else None


def _count(n: Any) -> int | None:
    """A frame count that fits in int64 (a SeriesStart's ``n_frames``), else None."""
    return n if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= INT64[1] else None


def _meta(header: Mapping[str, Any], keep: Sequence[str], *, bools: bool) -> dict[str, Any]:
    """The ``keep`` fields of a header that are plain values: strings, integers that fit in int64,
    finite floats (and booleans if ``bools``); anything else -- a CBOR bignum of a million digits,
    NaN -- would break whoever writes the metadata out as JSON."""
    out = {}
    for k in keep:
        v = header.get(k)
        if isinstance(v, bool):
            ok = bools
        elif isinstance(v, int):
            ok = INT64[0] <= v <= INT64[1]
        elif isinstance(v, float):
            ok = math.isfinite(v)
        else:
            ok = isinstance(v, str)
        if ok:
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------
# stream v1
# --------------------------------------------------------------------------------------------
_V1_TOP = ("dheader-1.0", "dimage-1.0", "dseries_end-1.0")
_V1_HEADER_PARTS = {"none": 1, "basic": 2, "all": 8}


def _head(part: Any, limit: int = MAX_HEADER_BYTES) -> dict[str, Any] | None:
    """A part (of at most ``limit`` bytes) as a JSON object with a string ``htype``, or None for
    any other part."""
    buf = memoryview(part)
    if buf.nbytes == 0 or bytes(buf[:1]) != b"{":
        return None  # a blob: not worth parsing
    try:
        h = _json(buf, limit=limit)
    except Malformed:
        return None
    return h if isinstance(h.get("htype"), str) else None


def _v1_series(h: Mapping[str, Any]) -> str:
    return str(check_int(h.get("series"), "'series'"))


class Stream1Decoder:
    """DECTRIS stream v1, read part by part.

    Parts are collected into a pending group until the group its first part announces is
    whole; a new message that starts with a top-level htype while a group is pending means the
    pending one was short (``wrong_part_count``). Appendix parts after a whole group, in the same
    message, are ignored.
    """

    protocol = "dectris1"
    max_parts = 9

    def __init__(self, *, max_shape: tuple[int, int], max_header_bytes: int = MAX_HEADER_BYTES):
        self.max_shape = max_shape
        self.max_header_bytes = max_header_bytes  # every JSON part (stream.max_header_kb)
        self._pending: list[Any] = []
        self._group_head: dict[str, Any] = {}

    def decode(self, parts: Sequence[Any]) -> list[SeriesStart | Frame | SeriesEnd | Malformed]:
        """Records of the groups this message completes; rejections come as :class:`Malformed` items."""
        if not parts:
            raise Malformed("wrong_part_count", "expected at least one part, got 0")
        out: list[SeriesStart | Frame | SeriesEnd | Malformed] = []
        head = _head(parts[0], self.max_header_bytes)
        first = head["htype"] if head is not None else None
        if self._pending and first in _V1_TOP:
            out.append(Malformed("wrong_part_count", f"a group of parts ended after {len(self._pending)} part(s); "
                                                     "expected more"))
            self._pending = []
        if not self._pending and first not in _V1_TOP:
            out.append(Malformed("unexpected_part", "expected a dheader, dimage or dseries_end part, got "
                                                    f"{'htype ' + repr(first) if first else 'a non-JSON part'}"))
            return out
        if not self._pending:
            self._group_head = head  # the part that opens a group, parsed once
        self._pending.extend(parts)
        if len(self._pending) > self.max_parts:
            self._pending = []
            out.append(Malformed("too_many_parts", f"expected at most {self.max_parts} parts in a group"))
            return out
        try:
            out += self._try_group()
        except Malformed as exc:
            self._pending = []
            out.append(exc)
        except BaseException:  # counted by the receiver as decode_error; start afresh
            self._pending = []
            raise
        return out

    def _needed(self, head: dict[str, Any]) -> int:
        kind = head.get("htype")
        if kind == "dheader-1.0":
            detail = head.get("header_detail", "basic")
            if not isinstance(detail, str) or detail not in _V1_HEADER_PARTS:
                raise Malformed("bad_field", f"expected header_detail all, basic or none, got {show(detail)}")
            return _V1_HEADER_PARTS[detail]
        return {"dimage-1.0": 4, "dseries_end-1.0": 1}[kind]

    def _try_group(self) -> list[SeriesStart | Frame | SeriesEnd]:
        head = self._group_head
        need = self._needed(head)
        if len(self._pending) < need:
            return []  # the rest comes in the next message(s)
        extra = len(self._pending) - need
        if extra > 1:
            self._pending = []
            raise Malformed("wrong_part_count", f"expected {need} part(s) (+1 appendix) for {head['htype']}, got "
                                                f"{need + extra}")
        group, self._pending = self._pending[:need], []
        kind = head["htype"]
        if kind == "dseries_end-1.0":
            return [SeriesEnd(_v1_series(head))]
        if kind == "dheader-1.0":
            return [self._header(head, group)]
        return [self._image(head, group)]

    def _header(self, head: dict[str, Any], group: list[Any]) -> SeriesStart:
        series = _v1_series(head)
        config = _json(group[1], "detector config", self.max_header_bytes) if len(group) > 1 else {}
        fps = _fps(config.get("frame_time"))
        n, ntrigger = _count(config.get("nimages")), _count(config.get("ntrigger", 1))
        n_frames = _count(n * ntrigger) if n is not None and ntrigger else None
        shape = None
        x, y = config.get("x_pixels_in_detector"), config.get("y_pixels_in_detector")
        if isinstance(x, int) and isinstance(y, int) and not config.get("roi_mode"):
            try:
                shape = check_shape([y, x], self.max_shape)
            except Malformed:
                shape = None  # the frames' own shapes are checked when they come
        keep = ("description", "detector_number", "software_version", "count_time", "frame_time", "nimages",
                "ntrigger", "trigger_mode", "compression", "bit_depth_image", "data_collection_date")
        meta = {"protocol": "dectris1", "header_detail": head.get("header_detail", "basic"),
                **_meta(config, keep, bools=True)}
        return SeriesStart(series, shape, None, None, fps, None, n_frames, meta)

    def _image(self, head: dict[str, Any], group: list[Any]) -> Frame:
        series = _v1_series(head)
        index = check_int(head.get("frame"), "'frame'", minimum=0)
        d = _json(group[1], "dimage_d part", self.max_header_bytes)
        if d.get("htype") != "dimage_d-1.0":
            raise Malformed("unexpected_part", f"expected a dimage_d-1.0 part, got htype {show(d.get('htype'))}")
        xy = d.get("shape")
        if not isinstance(xy, list) or len(xy) != 2:
            raise Malformed("bad_shape", f"expected shape [x, y], got {show(xy)}")
        shape = check_shape(xy[::-1], self.max_shape)
        dtype = check_dtype(d.get("type"))
        blob = group[2]
        size = memoryview(blob).nbytes
        if d.get("size") is not None and d.get("size") != size:
            raise Malformed("size_mismatch", f"dimage_d says {d.get('size')} bytes, the blob has {size}")
        data = frame_from_buffer(self._decode_blob(blob, d.get("encoding"), shape, dtype), shape, dtype)
        check_finite(data)
        cfg = _json(group[3], "dconfig part", self.max_header_bytes)
        if cfg.get("htype") != "dconfig-1.0":
            raise Malformed("unexpected_part", f"expected a dconfig-1.0 part, got htype {show(cfg.get('htype'))}")
        t = check_int(cfg.get("start_time"), "start_time (ns)")
        return Frame(series, index, t, data, nbytes_wire=size)

    @staticmethod
    def _decode_blob(blob: Any, encoding: Any, shape: tuple[int, int], dtype: np.dtype) -> Any:
        nbytes = shape[0] * shape[1] * dtype.itemsize
        if encoding == "<":
            return blob
        if encoding == "lz4<":
            return _lz4_raw_decompress(blob, nbytes)
        if isinstance(encoding, str) and encoding.startswith("bs") and encoding.endswith("-lz4<"):
            bits = encoding[2:-5]
            if bits not in ("8", "16", "32") or int(bits) != 8 * dtype.itemsize:
                raise Malformed("unknown_encoding", f"expected bs{8 * dtype.itemsize}-lz4< for {dtype.name}, "
                                                    f"got {show(encoding)}")
            return bslz4_decompress(blob, nbytes, dtype.itemsize)
        raise Malformed("unknown_encoding", f"expected encoding '<', 'lz4<' or 'bs<N>-lz4<', got {show(encoding)}")


def _series_number(series: str) -> int:
    """DECTRIS numbers series: a numeric id as it is, any other mapped to a stable number."""
    return int(series) if str(series).isdigit() else zlib.crc32(str(series).encode()) & 0x7FFFFFFF


class Stream1Encoder:
    """Messages of DECTRIS stream v1 for one series (``btomo replay --protocol dectris1``).

    Parameters
    ----------
    series : str
        Series id; v1 numbers series, so a non-numeric id is mapped to a number.
    compression : {"bslz4", "lz4", "none"}
        Image encoding (``bs<N>-lz4<``, ``lz4<``, ``<``).
    header_detail : {"basic", "none", "all"}
    """

    protocol = "dectris1"

    def __init__(self, series: str, *, shape: tuple[int, int], dtype: Any, pixel_size_A: float, fps: float,
                 n_frames: int | None = None, compression: str = "bslz4", header_detail: str = "basic"):
        self.series = _series_number(series)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "u":
            raise ValueError(f"DECTRIS streams carry unsigned integer frames, got {self.dtype}")
        self.fps = fps
        self.n_frames = n_frames
        if compression not in ("bslz4", "lz4", "none") or header_detail not in _V1_HEADER_PARTS:
            raise ValueError(f"expected compression bslz4|lz4|none and header_detail all|basic|none, "
                             f"got {compression!r}, {header_detail!r}")
        self.encoding = compression
        self.header_detail = header_detail
        self._t0: int | None = None

    def start_messages(self) -> list[list[Any]]:
        head = {"htype": "dheader-1.0", "series": self.series, "header_detail": self.header_detail}
        parts: list[Any] = [json.dumps(head).encode()]
        if self.header_detail != "none":
            rows, cols = self.shape
            parts.append(json.dumps({
                "description": "btomo replay", "frame_time": 1.0 / self.fps, "count_time": 1.0 / self.fps,
                "nimages": self.n_frames or 0, "ntrigger": 1, "trigger_mode": "ints",
                "x_pixels_in_detector": cols, "y_pixels_in_detector": rows, "roi_mode": "",
                "bit_depth_image": 8 * self.dtype.itemsize, "bit_depth_readout": 8 * self.dtype.itemsize,
                "compression": self.encoding,
                "data_collection_date": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "software_version": "btomo",
            }).encode())
        if self.header_detail == "all":
            for htype, table in (("dflatfield-1.0", np.ones(self.shape, "<f4")),
                                 ("dpixelmask-1.0", np.zeros(self.shape, "<u4")),
                                 ("dcountrate_table-1.0", np.zeros((2, 1000), "<f4"))):
                parts += [json.dumps({"htype": htype, "shape": list(table.shape[::-1]), "type": table.dtype.name}).encode(),
                          table.tobytes()]
        return [parts]

    def frame_messages(self, index: int, t_ns: int, data: np.ndarray, wall_ns: int | None = None) -> list[list[Any]]:
        """One image message (``wall_ns`` is not part of stream v1)."""
        data = np.ascontiguousarray(data, dtype=self.dtype.newbyteorder("<"))
        if self._t0 is None:
            self._t0 = int(t_ns)
        if self.encoding == "bslz4":
            blob: Any = bslz4_compress(data)
            enc = f"bs{8 * self.dtype.itemsize}-lz4<"
        elif self.encoding == "lz4":
            import lz4.block  # noqa: PLC0415

            blob, enc = lz4.block.compress(data, store_size=False), "lz4<"
        else:
            blob, enc = data, "<"
        size = memoryview(blob).nbytes
        start = int(t_ns) - self._t0
        exposure = round(1e9 / self.fps)
        return [[
            json.dumps({"htype": "dimage-1.0", "series": self.series, "frame": int(index),
                        "hash": hashlib.md5(memoryview(blob).cast("B")).hexdigest()}).encode(),
            json.dumps({"htype": "dimage_d-1.0", "shape": [data.shape[1], data.shape[0]], "type": self.dtype.name,
                        "encoding": enc, "size": size}).encode(),
            blob,
            json.dumps({"htype": "dconfig-1.0", "start_time": start, "stop_time": start + exposure,
                        "real_time": exposure}).encode(),
        ]]

    def end_messages(self, n_frames: int) -> list[list[Any]]:
        return [[json.dumps({"htype": "dseries_end-1.0", "series": self.series}).encode()]]


# --------------------------------------------------------------------------------------------
# stream v2 (CBOR)
# --------------------------------------------------------------------------------------------
# RFC 8746 typed arrays, little-endian and single-byte ones (what DECTRIS sends)
_TYPED = {64: "u1", 68: "u1", 69: "<u2", 70: "<u4", 72: "i1", 77: "<i2", 78: "<i4", 85: "<f4", 86: "<f8"}
_TYPED_TAG = {np.dtype(v).str: k for k, v in _TYPED.items() if k != 64}


def _tag(obj: Any, number: int, what: str) -> Any:
    import cbor2  # noqa: PLC0415

    if not isinstance(obj, cbor2.CBORTag) or obj.tag != number:
        raise Malformed("bad_field", f"expected CBOR tag {number} ({what}), got {type(obj).__name__}"
                                     f"{' ' + str(obj.tag) if isinstance(obj, cbor2.CBORTag) else ''}")
    return obj.value


def _rational_ns(value: Any, key: str) -> int:
    """A time ``[numerator, denominator]`` in s, as ns. Both are 64-bit numbers on the wire; bigger ones
    are refused before any arithmetic (dividing two integers of a million digits takes seconds)."""
    if (not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or not 0 < value[1] < 1 << 64 or not -(1 << 64) < value[0] < 1 << 64):
        raise Malformed("bad_field", f"expected {key} as a rational [numerator, 0 < denominator] of 64-bit "
                                     f"integers, got {show(value)}")
    return check_int(value[0] * 1_000_000_000 // value[1], f"{key} in ns")


def _inert(tag: int, value: Any, immutable: bool = False) -> Any:
    import cbor2  # noqa: PLC0415

    return cbor2.CBORTag(tag, value)


# Tags DECTRIS does not send whose standard decoding costs time that grows faster than the message:
# decimal fractions (4), bigfloats (5) and rationals (30) of big integers (quadratic: seconds for a
# few hundred kB), regular expressions (35, compiled) and MIME messages (36, parsed). They are left
# as CBORTag, which no field accepts.
_INERT_TAGS = (4, 5, 30, 35, 36)


@functools.cache
def _cbor_options() -> dict[str, Any]:
    """What :func:`cbor2.loads` is given, as far as the installed cbor2 supports it:
    ``strict_hashable_types`` (map keys and set members must be strings: integer keys chosen to share
    one hash make building the dict quadratic -- seconds for a few hundred kB; DECTRIS maps are keyed
    by strings), and :data:`_INERT_TAGS` left undecoded."""
    import cbor2  # noqa: PLC0415

    options: dict[str, Any] = {}
    try:
        cbor2.loads(b"\xa1\x01\x00", strict_hashable_types=True)
    except cbor2.CBORDecodeError:
        options["strict_hashable_types"] = True
    except TypeError:  # an older cbor2
        pass
    inert = {tag: functools.partial(_inert, tag) for tag in _INERT_TAGS}
    try:
        if cbor2.loads(cbor2.dumps(cbor2.CBORTag(30, [1, 3])), semantic_decoders=inert) == cbor2.CBORTag(30, [1, 3]):
            options["semantic_decoders"] = inert
    except (TypeError, cbor2.CBORDecodeError):  # an older cbor2: another interface, or none
        pass
    return options


class Stream2Decoder:
    """DECTRIS stream v2: one CBOR message -> records."""

    protocol = "dectris2"
    max_parts = 1

    def __init__(self, *, max_shape: tuple[int, int]):
        self.max_shape = max_shape

    def decode(self, parts: Sequence[Any]) -> list[SeriesStart | Frame | SeriesEnd]:
        import cbor2  # noqa: PLC0415

        if len(parts) != 1:
            raise Malformed("wrong_part_count", f"expected 1 part (one CBOR item), got {len(parts)}")
        buf = memoryview(parts[0])  # its size is bounded by the socket's ZMQ_MAXMSGSIZE
        try:
            msg = cbor2.loads(buf, **_cbor_options())
        except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise Malformed("bad_cbor", f"expected one CBOR item: {exc}") from None
        if isinstance(msg, cbor2.CBORTag) and msg.tag == 55799:  # older cbor2 keeps the tag
            msg = msg.value
        if not isinstance(msg, Mapping):
            raise Malformed("bad_cbor", f"expected a CBOR map, got {type(msg).__name__}")
        kind = msg.get("type")
        series = msg.get("series_unique_id")
        if not isinstance(series, str) or not series or len(series) > 256:
            if series is not None:
                raise Malformed("bad_field", f"expected series_unique_id as a string of 1-256 characters, "
                                             f"got {show(series)}")
            series = str(check_int(msg.get("series_id"), "series_id"))
        if kind == "start":
            return [self._start(msg, series)]
        if kind == "image":
            return [self._image(msg, series)]
        if kind == "end":
            return [SeriesEnd(series)]
        raise Malformed("unknown_type", f"expected type start, image or end, got {show(kind)}")

    def _start(self, msg: Mapping[str, Any], series: str) -> SeriesStart:
        x, y = msg.get("image_size_x"), msg.get("image_size_y")
        shape = check_shape([y, x], self.max_shape) if isinstance(x, int) and isinstance(y, int) else None
        dtype = None
        if isinstance(msg.get("image_dtype"), str):
            dtype = check_dtype(msg["image_dtype"])
        fps = _fps(msg.get("frame_time"))
        keep = ("series_id", "detector_description", "detector_serial_number", "count_time", "frame_time",
                "number_of_images", "incident_energy", "saturation_value")
        meta = {"protocol": "dectris2", **_meta(msg, keep, bools=False)}
        if isinstance(msg.get("arm_date"), datetime):
            meta["arm_date"] = msg["arm_date"].isoformat()
        return SeriesStart(series, shape, dtype, None, fps, None, _count(msg.get("number_of_images")), meta)

    def _image(self, msg: Mapping[str, Any], series: str) -> Frame:
        index = check_int(msg.get("image_id"), "image_id", minimum=0)
        t_ns = _rational_ns(msg.get("start_time"), "start_time")
        channels = msg.get("data")
        if not isinstance(channels, Mapping) or not channels:
            raise Malformed("bad_field", "expected 'data' as a map of channels to images")
        value = next(iter(channels.values()))  # the first threshold channel
        dims, typed = self._md_array(value)
        shape = check_shape(dims if isinstance(dims, (list, tuple)) else None, self.max_shape)  # not list(bytes)
        tag_number, inner = self._typed(typed)
        dtype = np.dtype(_TYPED[tag_number])
        nbytes = shape[0] * shape[1] * dtype.itemsize
        wire = nbytes
        import cbor2  # noqa: PLC0415

        if isinstance(inner, cbor2.CBORTag):
            algorithm, elem_size, blob = self._compression(inner)
            wire = len(blob)
            if algorithm == "bslz4":
                if elem_size != dtype.itemsize:
                    raise Malformed("bad_compression", f"expected elem_size {dtype.itemsize} for {dtype.name}, "
                                                       f"got {elem_size}")
                inner = bslz4_decompress(blob, nbytes, dtype.itemsize)
            elif algorithm == "lz4":
                inner = lz4h5_decompress(blob, nbytes)
            else:
                raise Malformed("unknown_encoding", f"expected compression bslz4 or lz4, got {show(algorithm)}")
        elif not isinstance(inner, (bytes, bytearray)):
            raise Malformed("bad_field", f"expected the image bytes, got {type(inner).__name__}")
        data = frame_from_buffer(inner, shape, dtype)
        check_finite(data)
        return Frame(series, index, t_ns, data, nbytes_wire=wire)

    @staticmethod
    def _md_array(value: Any) -> tuple[Sequence[int], Any]:
        body = _tag(value, 40, "multi-dimensional array, row major")
        if not isinstance(body, Sequence) or len(body) != 2 or not isinstance(body[0], Sequence):
            raise Malformed("bad_field", "expected tag 40 to hold [[rows, columns], typed array]")
        return body[0], body[1]

    @staticmethod
    def _typed(typed: Any) -> tuple[int, Any]:
        import cbor2  # noqa: PLC0415

        if not isinstance(typed, cbor2.CBORTag) or typed.tag not in _TYPED:
            raise Malformed("unknown_dtype", f"expected a typed-array tag in {sorted(_TYPED)}, got "
                                             f"{typed.tag if isinstance(typed, cbor2.CBORTag) else type(typed).__name__}")
        return typed.tag, typed.value

    @staticmethod
    def _compression(tag: Any) -> tuple[str, int, bytes]:
        body = _tag(tag, 56500, "DECTRIS compression")
        if (not isinstance(body, Sequence) or len(body) != 3 or not isinstance(body[0], str)
                or not isinstance(body[1], int) or not isinstance(body[2], (bytes, bytearray))):
            raise Malformed("bad_compression", "expected tag 56500 to hold [algorithm, elem_size, bytes]")
        return body[0], body[1], body[2]


class Stream2Encoder:
    """Messages of DECTRIS stream v2 (CBOR) for one series.

    Parameters
    ----------
    compression : {"bslz4", "lz4", "none"}
    """

    protocol = "dectris2"

    def __init__(self, series: str, *, shape: tuple[int, int], dtype: Any, pixel_size_A: float, fps: float,
                 n_frames: int | None = None, compression: str = "bslz4"):
        self.series_id = _series_number(series)
        self.unique = f"btomo-{series}-{uuid.uuid4().hex[:12]}"
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if self.dtype.str not in _TYPED_TAG:
            raise ValueError(f"no CBOR typed-array tag for {self.dtype}")
        if compression not in ("bslz4", "lz4", "none"):
            raise ValueError(f"expected compression bslz4, lz4 or none, got {compression!r}")
        self.fps = fps
        self.n_frames = n_frames
        self.compression = compression
        self.date = datetime.now(timezone.utc)
        self._t0: int | None = None

    def _dumps(self, obj: dict[str, Any]) -> bytes:
        import cbor2  # noqa: PLC0415

        return cbor2.dumps(cbor2.CBORTag(55799, obj))

    def start_messages(self) -> list[list[Any]]:
        import cbor2  # noqa: PLC0415

        rows, cols = self.shape
        return [[self._dumps({
            "type": "start", "series_id": self.series_id, "series_unique_id": self.unique,
            "arm_date": cbor2.CBORTag(0, self.date.isoformat()), "channels": ["threshold_1"],
            "count_time": 1.0 / self.fps, "frame_time": 1.0 / self.fps, "detector_description": "btomo replay",
            "image_size_x": cols, "image_size_y": rows, "image_dtype": self.dtype.name,
            "number_of_images": self.n_frames or 0,
        })]]

    def frame_messages(self, index: int, t_ns: int, data: np.ndarray, wall_ns: int | None = None) -> list[list[Any]]:
        """One image message (``wall_ns`` is not part of stream v2)."""
        import cbor2  # noqa: PLC0415

        data = np.ascontiguousarray(data, dtype=self.dtype)
        if self._t0 is None:
            self._t0 = int(t_ns)
        if self.compression == "bslz4":
            payload: Any = cbor2.CBORTag(56500, ["bslz4", data.itemsize, bslz4_compress(data)])
        elif self.compression == "lz4":
            payload = cbor2.CBORTag(56500, ["lz4", 0, lz4h5_compress(data)])
        else:
            payload = data.tobytes()
        start = int(t_ns) - self._t0
        exposure = round(1e9 / self.fps)
        return [[self._dumps({
            "type": "image", "series_id": self.series_id, "series_unique_id": self.unique, "image_id": int(index),
            "series_date": cbor2.CBORTag(0, self.date.isoformat()),
            "start_time": [start, 1_000_000_000], "stop_time": [start + exposure, 1_000_000_000],
            "real_time": [exposure, 1_000_000_000],
            "data": {"threshold_1": cbor2.CBORTag(40, [list(data.shape),
                                                       cbor2.CBORTag(_TYPED_TAG[self.dtype.str], payload)])},
        })]]

    def end_messages(self, n_frames: int) -> list[list[Any]]:
        return [[self._dumps({"type": "end", "series_id": self.series_id, "series_unique_id": self.unique})]]
