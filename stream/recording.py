"""The btomo recording: a lossless, append-only frame store that survives a crash.

Layout of a recording directory (see ``docs/recording.md``)::

    recording.json   format, frame shape and dtype, pixel size, frame rate, codec, series id,
                     and at a clean close ``complete: true`` with the frame count
    frames.bin       a chain of blocks; each block = header | frame table | payload
    index.bin        the block index: one fixed record per block, appended after the block
                     itself is on disk
    config.toml      how the recording was made (simulated recordings)
    truth/           ground truth (simulated recordings)

A block holds many frames and is written in one go, then flushed (and fsynced when
``durable``): the block is the unit of crash safety. A crash can leave a torn block at the end of
``frames.bin``, or a block that ``index.bin`` does not list yet; :class:`Recording` uses the
index, continues by scanning block headers past it, checks CRC-32s, and stops at the first torn
block, reporting how many bytes it skipped. Everything before it reads back bit-identical.

A write that fails (a full disk, a file-size limit, an I/O error) takes its partly written block
back (the files are truncated to where the block began), so that the recording ends at its last
complete block, and raises :class:`RecordingWriteError`, which says why, where, and what is kept.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .signals import handling_stop_signals

try:  # the same CRC-32 as zlib's (the format does not change), with SIMD: ~15x faster
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - zlib-ng is a dependency; zlib is the fallback
    from zlib import crc32

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "RecordingError",
    "RecordingWriteError",
    "RecordingWriter",
    "Recording",
    "encode_frame",
    "decode_frame",
    "crc32",
]

FORMAT = "btomo-recording"
VERSION = 1
BLOCK_MAGIC = b"BTOMOBLK"
INDEX_MAGIC = b"BTOMOIDX"
CODEC_IDS = {"raw": 0, "blosc-lz4": 1}
CODEC_NAMES = {v: k for k, v in CODEC_IDS.items()}

# magic, version, codec, n_frames, first ordinal, table bytes, payload bytes, table crc, header crc
_BLOCK_HEADER = struct.Struct("<8sHHIQIQII")
# acquisition frame index, acquisition time ns, payload offset, encoded bytes, crc32, flags
_FRAME_ENTRY = struct.Struct("<qqQQII")
# block offset, block bytes, n frames, first ordinal, first frame, last frame, first t, last t
_INDEX_ENTRY = struct.Struct("<QQIQqqqq")
_INDEX_HEADER = struct.Struct("<8sHH4x")


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT and SIGTERM while a block is written and accounted for.

    A Ctrl-C between writing a block and clearing it from the queue would let the next flush
    write it again. Python runs signal handlers in the main thread whichever thread the signal
    reached, so the handlers are swapped for one that only notes the signal; the original
    handlers get it as soon as the block is done. (Off the main thread this does nothing, and
    the rollback below still prevents partial blocks.)
    """
    held: list[tuple[int, Any]] = []

    def note(signum: int, frame: Any) -> None:
        held.append((signum, frame))

    with handling_stop_signals(note) as previous:
        yield
    for signum, frame in held:  # handlers restored: deliver what came meanwhile
        h = previous[signum]
        if callable(h):
            h(signum, frame)
        elif h == signal.SIG_DFL:
            os.kill(os.getpid(), signum)


class RecordingError(RuntimeError):
    """A recording that cannot be read or written; the message says what and where."""


class RecordingWriteError(OSError, RecordingError):
    """Writing a recording failed: a full disk, a file-size limit, an I/O error.

    An :class:`OSError` (``errno`` and ``filename`` are the failed write's) and a
    :class:`RecordingError`; ``str()`` is one line: the file, then why and what is kept.
    """

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


#: what a failed write means, by errno (else the system's own words)
_WRITE_FAILURES = {
    errno.ENOSPC: "disk full (no space left on device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit reached (file too large for this process or file system)",
}


def _write_all(fd: int, buffers: list[Any]) -> None:
    """Write every byte of ``buffers`` to ``fd`` at its position, in as few system calls as possible.

    A short write (a disk filling up) is continued until the system refuses with an error.
    """
    views = [memoryview(b).cast("B") for b in buffers]
    views = [v for v in views if len(v)]
    i = 0
    while i < len(views):
        if _writev is not None:
            n = _writev(fd, views[i:i + _IOV_MAX])
        else:  # pragma: no cover - platforms without writev
            n = os.write(fd, views[i])
        if n <= 0:
            raise OSError(errno.EIO, f"write returned {n} with {sum(len(v) for v in views[i:])} bytes left")
        while n and i < len(views):
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


_writev = getattr(os, "writev", None)
_IOV_MAX = 1024  # buffers per writev call (Linux's and macOS's IOV_MAX)


def _blosc():
    import numcodecs  # noqa: PLC0415 - only the blosc codec needs it

    return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)


def encode_frame(frame: np.ndarray, codec: str) -> bytes:
    """Encode one frame losslessly (``raw`` bytes or Blosc lz4 with bitshuffle)."""
    data = np.ascontiguousarray(frame)
    if codec == "raw":
        return data.tobytes()
    if codec == "blosc-lz4":
        return bytes(_blosc().encode(data))
    raise RecordingError(f"unknown codec {codec!r}, expected one of {sorted(CODEC_IDS)}")


def decode_frame(buf: bytes, codec: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`encode_frame`; checks that the size matches ``shape`` and ``dtype``."""
    if codec == "blosc-lz4":
        buf = _blosc().decode(buf)
    arr = np.frombuffer(buf, dtype=dtype)
    if arr.size != int(np.prod(shape)):
        raise RecordingError(f"expected {int(np.prod(shape))} values per frame, got {arr.size}")
    return arr.reshape(shape)


@dataclass
class _Pending:
    frame: int
    t_ns: int
    data: bytes
    crc: int


class RecordingWriter:
    """Append frames to a new recording, block by block.

    Parameters
    ----------
    path : path
        Recording directory; created, and it must not hold a recording already.
    shape : (rows, columns)
        Frame shape, px.
    dtype : numpy dtype
        Frame dtype (``uint16`` for detector counts).
    pixel_size_A, fps : float
        Pixel size (A/px) and frame rate (frames/s), kept in ``recording.json``.
    codec : {"raw", "blosc-lz4"}
    block_frames : int
        Frames per block; a block is also written once it holds ``block_bytes``.
    block_bytes : int
        Encoded bytes that close a block early (large frames).
    durable : bool
        fsync each block and its index record (the crash-safety guarantee).
    meta : dict
        More fields for ``recording.json`` (series id, source, ...).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        shape: tuple[int, int],
        dtype: Any = np.uint16,
        pixel_size_A: float,
        fps: float,
        codec: str = "blosc-lz4",
        block_frames: int = 64,
        block_bytes: int = 64 << 20,
        durable: bool = True,
        meta: dict[str, Any] | None = None,
    ):
        if codec not in CODEC_IDS:
            raise RecordingError(f"unknown codec {codec!r}, expected one of {sorted(CODEC_IDS)}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if (self.path / "frames.bin").exists():
            raise RecordingError(f"{self.path} already holds a recording (frames.bin exists)")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.codec = codec
        self.block_frames = int(block_frames)
        self.block_bytes = int(block_bytes)
        self.durable = durable
        self._meta = {
            "format": FORMAT,
            "version": VERSION,
            "shape": list(self.shape),
            "dtype": self.dtype.str,
            "pixel_size_A": float(pixel_size_A),
            "fps": float(fps),
            "codec": codec,
            "complete": False,
            **(meta or {}),
        }
        self._write_meta()
        # unbuffered: a block goes to the system in one writev, and a failed one can be cut off exactly
        self._data = open(self.path / "frames.bin", "wb", buffering=0)
        self._index = open(self.path / "index.bin", "wb", buffering=0)
        try:
            _write_all(self._index.fileno(), [_INDEX_HEADER.pack(INDEX_MAGIC, VERSION, 0)])
        except OSError as exc:
            self._data.close()
            self._index.close()
            raise self._write_error(exc, self.path / "index.bin", "the index header") from exc
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self.frames_written = 0
        self.blocks_written = 0
        self.bytes_written = 0
        self._closed = False

    def _write_meta(self) -> None:
        tmp = self.path / "recording.json.tmp"
        try:
            tmp.write_text(json.dumps(self._meta, indent=2))
            os.replace(tmp, self.path / "recording.json")
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise self._write_error(exc, self.path / "recording.json", "the description") from exc

    def _write_error(self, exc: OSError, path: Path, what: str) -> RecordingWriteError:
        """The one-line :class:`RecordingWriteError` for ``exc``, raised writing ``what`` to ``path``."""
        reason = _WRITE_FAILURES.get(exc.errno, exc.strerror or f"{type(exc).__name__}: {exc}")
        kept = getattr(self, "frames_written", 0)
        blocks = getattr(self, "blocks_written", 0)
        return RecordingWriteError(
            exc.errno or errno.EIO,
            f"{reason} while writing {what}; the {kept} frames in the {blocks} complete blocks before it are kept "
            "and read back intact", str(path))

    def append(self, frame: np.ndarray, *, frame_index: int, t_ns: int) -> None:
        """Encode and queue one frame; writes a block when one is full."""
        if tuple(frame.shape) != self.shape or frame.dtype != self.dtype:
            raise RecordingError(
                f"expected a {self.shape} {self.dtype} frame, got {tuple(frame.shape)} {frame.dtype}"
            )
        if self.codec == "raw":  # no copy: the block write reads the frame's own buffer
            data: Any = memoryview(np.ascontiguousarray(frame)).cast("B")
        else:
            data = encode_frame(frame, self.codec)
        self.append_encoded(data, crc32(data), frame_index=frame_index, t_ns=t_ns)

    def update_meta(self, **fields: Any) -> None:
        """Add or change fields of ``recording.json`` now (written atomically)."""
        self._meta.update(fields)
        self._write_meta()

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self._meta)

    @property
    def pending_frames(self) -> int:
        """Frames queued for the next block (not on disk yet)."""
        return len(self._pending)

    def append_encoded(self, data: bytes, crc: int, *, frame_index: int, t_ns: int) -> None:
        """Queue a frame already encoded with this writer's codec (e.g. by a worker process)."""
        if self._closed:
            raise RecordingError(f"{self.path}: recording is closed")
        self._pending.append(_Pending(int(frame_index), int(t_ns), data, int(crc)))
        self._pending_bytes += len(data)
        if len(self._pending) >= self.block_frames or self._pending_bytes >= self.block_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the queued frames as one block, then its index record."""
        if not self._pending:
            return
        with _signals_deferred():
            self._write_block()

    def _write_block(self) -> None:
        """Write one block and its index record, then account for it."""
        table = bytearray()
        offset = 0
        for p in self._pending:
            table += _FRAME_ENTRY.pack(p.frame, p.t_ns, offset, len(p.data), p.crc, 0)
            offset += len(p.data)
        head = _BLOCK_HEADER.pack(
            BLOCK_MAGIC, VERSION, CODEC_IDS[self.codec], len(self._pending), self.frames_written,
            len(table), offset, crc32(table), 0,
        )
        head = head[:-4] + struct.pack("<I", crc32(head[:-4]))
        nbytes = len(head) + len(table) + offset
        first, last = self._pending[0], self._pending[-1]
        block_offset = self._data.tell()
        index_offset = self._index.tell()
        target = self.path / "frames.bin"
        try:
            _write_all(self._data.fileno(), [head, table, *(p.data for p in self._pending)])
            if self.durable:
                os.fsync(self._data.fileno())
            target = self.path / "index.bin"
            _write_all(self._index.fileno(), [
                _INDEX_ENTRY.pack(block_offset, nbytes, len(self._pending), self.frames_written,
                                  first.frame, last.frame, first.t_ns, last.t_ns)])
            if self.durable:
                os.fsync(self._index.fileno())
        except BaseException as exc:
            # interrupted (a signal, a full disk) part-way: take the block back so that a later
            # flush writes it exactly once; if even that fails, the reader sees a torn tail
            self._rollback(block_offset, index_offset)
            if isinstance(exc, OSError):
                what = (f"block {self.blocks_written + 1} (frames {first.frame} to {last.frame}, "
                        f"{len(self._pending)} frames, {nbytes} bytes)")
                raise self._write_error(exc, target, what) from exc
            raise
        self.frames_written += len(self._pending)
        self.blocks_written += 1
        self.bytes_written += nbytes
        self._pending.clear()
        self._pending_bytes = 0

    def _rollback(self, block_offset: int, index_offset: int) -> None:
        """Cut both files back to where the failed block began (frees what it took of the disk)."""
        for fh, pos in ((self._data, block_offset), (self._index, index_offset)):
            try:
                os.ftruncate(fh.fileno(), pos)
                os.lseek(fh.fileno(), pos, os.SEEK_SET)
            except OSError as exc:  # the reader then finds a torn tail and skips it
                log.error("%s: could not cut off a partly written block at byte %d (%s); readers skip it as a "
                          "torn tail", fh.name, pos, exc)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, **extra_meta: Any) -> None:
        """Flush, close the files, and mark the recording complete in ``recording.json``."""
        if self._closed:
            return
        self.flush()
        self._data.close()
        self._index.close()
        self._closed = True
        self._meta.update(extra_meta, complete=True, frames=self.frames_written)
        self._write_meta()

    def __enter__(self) -> "RecordingWriter":
        return self

    def abandon(self) -> None:
        """Stop writing after a failure: flush what is queued, close, do not claim completeness.

        A queued block that cannot be written (the disk is still full) is given up with a
        warning; every block written before stays readable.
        """
        if self._closed:
            return
        try:
            self.flush()
        except RecordingWriteError as exc:
            log.warning("%s: %d queued frames not written (%s)", self.path, len(self._pending), exc)
        finally:
            self._data.close()
            self._index.close()
            self._closed = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # keep what is durable; do not claim completeness
            self.abandon()


@dataclass(frozen=True)
class _Block:
    offset: int
    n_frames: int
    table: np.ndarray  # structured: frame, t_ns, offset, nbytes, crc
    payload_offset: int


_TABLE_DTYPE = np.dtype(
    [("frame", "<i8"), ("t_ns", "<i8"), ("offset", "<u8"), ("nbytes", "<u8"), ("crc", "<u4"), ("flags", "<u4")]
)


class Recording:
    """Read a recording written by :class:`RecordingWriter` (``btomo simulate`` or ``record``).

    Attributes
    ----------
    shape, dtype, pixel_size_A, fps, codec, meta
        From ``recording.json``.
    frame_index : (n,) int64
        Acquisition index of each stored frame.
    t_ns : (n,) int64
        Acquisition time of each stored frame, ns.
    torn_tail_bytes : int
        Bytes at the end of ``frames.bin`` that belong to no complete block (0 for a clean file).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "recording.json"
        try:
            self.meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise RecordingError(f"{self.path} is not a btomo recording (no recording.json)") from None
        except json.JSONDecodeError as exc:
            raise RecordingError(f"{meta_path}: not valid JSON ({exc})") from None
        if self.meta.get("format") != FORMAT:
            raise RecordingError(f"{meta_path}: expected format {FORMAT!r}, got {self.meta.get('format')!r}")
        self.shape = tuple(self.meta["shape"])
        self.dtype = np.dtype(self.meta["dtype"])
        self.pixel_size_A = float(self.meta["pixel_size_A"])
        self.fps = float(self.meta["fps"])
        self.codec = self.meta["codec"]
        self._file = open(self.path / "frames.bin", "rb")
        self._blocks = self._scan()
        tables = [b.table for b in self._blocks]
        table = np.concatenate(tables) if tables else np.zeros(0, _TABLE_DTYPE)
        self.frame_index = table["frame"].copy()
        self.t_ns = table["t_ns"].copy()
        self._starts = np.cumsum([0] + [b.n_frames for b in self._blocks])
        if self.torn_tail_bytes:
            log.warning("%s: torn tail of %d bytes after %d complete frames skipped",
                        self.path, self.torn_tail_bytes, len(self))

    # --- scanning -------------------------------------------------------------------------
    def _index_offsets(self) -> list[int]:
        try:
            raw = (self.path / "index.bin").read_bytes()
        except FileNotFoundError:
            return []
        if len(raw) < _INDEX_HEADER.size or raw[:8] != INDEX_MAGIC:
            log.warning("%s: index.bin unreadable; scanning blocks instead", self.path)
            return []
        body = raw[_INDEX_HEADER.size :]
        n = len(body) // _INDEX_ENTRY.size  # a torn last record is ignored
        return [_INDEX_ENTRY.unpack_from(body, i * _INDEX_ENTRY.size)[0] for i in range(n)]

    def _read_block(self, offset: int, size: int, ordinal: int) -> _Block | None:
        """Block at ``offset`` if it is whole and its header and table check out, else None."""
        self._file.seek(offset)
        head = self._file.read(_BLOCK_HEADER.size)
        if len(head) < _BLOCK_HEADER.size:
            return None
        magic, _ver, codec, n, first, tbytes, pbytes, tcrc, hcrc = _BLOCK_HEADER.unpack(head)
        if magic != BLOCK_MAGIC or crc32(head[:-4]) != hcrc:
            return None
        if first != ordinal:  # a block repeated or out of place is not part of the chain
            return None
        if CODEC_NAMES.get(codec) != self.codec or tbytes != n * _FRAME_ENTRY.size:
            return None
        if offset + _BLOCK_HEADER.size + tbytes + pbytes > size:
            return None
        tbl = self._file.read(tbytes)
        if len(tbl) != tbytes or crc32(tbl) != tcrc:
            return None
        table = np.frombuffer(tbl, dtype=_TABLE_DTYPE)
        if n and int(table["offset"][-1] + table["nbytes"][-1]) != pbytes:
            return None
        return _Block(offset, n, table, offset + _BLOCK_HEADER.size + tbytes)

    def _block_end(self, b: _Block) -> int:
        return b.payload_offset + int(b.table["offset"][-1] + b.table["nbytes"][-1]) if b.n_frames else b.payload_offset

    def _scan(self) -> list[_Block]:
        size = os.fstat(self._file.fileno()).st_size
        blocks: list[_Block] = []
        pos = count = 0
        for off in self._index_offsets():
            if off != pos:
                break  # index disagrees with the chain: trust the chain from here
            b = self._read_block(off, size, count)
            if b is None:
                break
            blocks.append(b)
            pos, count = self._block_end(b), count + b.n_frames
        while pos < size:  # blocks written after the last index record, if any
            b = self._read_block(pos, size, count)
            if b is None:
                break
            blocks.append(b)
            pos, count = self._block_end(b), count + b.n_frames
        # the last block is the one a crash can tear inside its payload: verify it whole
        if blocks and not self._payload_ok(blocks[-1]):
            pos = blocks.pop().offset
        self.torn_tail_bytes = size - pos
        return blocks

    def _payload_ok(self, b: _Block) -> bool:
        self._file.seek(b.payload_offset)
        data = self._file.read(self._block_end(b) - b.payload_offset)
        return all(
            crc32(data[int(e["offset"]) : int(e["offset"] + e["nbytes"])]) == int(e["crc"]) for e in b.table
        )

    # --- reading --------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def complete(self) -> bool:
        """True when the writer closed cleanly (``recording.json`` says so)."""
        return bool(self.meta.get("complete"))

    @property
    def t_s(self) -> np.ndarray:
        """Acquisition times in s from the first stored frame."""
        return (self.t_ns - (self.t_ns[0] if len(self.t_ns) else 0)) * 1e-9

    def read(self, i: int) -> np.ndarray:
        """The ``i``-th stored frame (0-based position, not the acquisition index)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"frame position {i} out of range for {n} frames")
        i %= n
        bi = int(np.searchsorted(self._starts, i, side="right") - 1)
        b = self._blocks[bi]
        e = b.table[i - self._starts[bi]]
        self._file.seek(b.payload_offset + int(e["offset"]))
        data = self._file.read(int(e["nbytes"]))
        if crc32(data) != int(e["crc"]):
            raise RecordingError(f"{self.path}: frame {int(e['frame'])} fails its CRC check")
        return decode_frame(data, self.codec, self.shape, self.dtype)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read(i)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.read(i)

    def read_all(self) -> np.ndarray:
        """All frames as one (n, rows, columns) array."""
        out = np.empty((len(self), *self.shape), dtype=self.dtype)
        for i in range(len(self)):
            out[i] = self.read(i)
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
