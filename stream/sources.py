"""Frame sources on disk: a btomo recording, an MRC or TIFF stack, a Zarr array.

Every source is read lazily, one frame at a time (memory-mapped where the format allows), and
describes itself the same way: frame count, shape, dtype, pixel size (A/px) and frame rate
(frames/s). Stacks hold frames as (N, rows, columns) (``../shared/contracts.md``).

Pixel size and frame rate come from the file where it has them (a recording: always; MRC: the
voxel size; TIFF: ImageJ ``finterval`` and the resolution tags with an nm or A unit; Zarr: the
``pixel_size_A`` and ``fps`` attributes), else from what the caller gives (``--pixel-size``,
``--fps``), else from the configuration, with a warning that says so.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .messages import DTYPES

log = logging.getLogger(__name__)

__all__ = ["SourceError", "FrameSource", "open_source"]


class SourceError(ValueError):
    """A source that cannot be read; the message names the file and what is wrong."""


@dataclass
class FrameSource:
    """A stack of frames on disk, read one at a time.

    Attributes
    ----------
    path : Path
    kind : {"recording", "mrc", "tiff", "zarr"}
    shape : (rows, columns)
    dtype : numpy dtype
    pixel_size_A : float
        A/px.
    fps : float
        Frames/s.
    frame_index : (n,) int64
        Acquisition index of each frame (0..n-1 for stacks).
    t_ns : (n,) int64
        Acquisition time of each frame, ns (index / fps for stacks).
    series : str
        A name for the series (the recording's series id, else the file name).
    """

    path: Path
    kind: str
    shape: tuple[int, int]
    dtype: np.dtype
    pixel_size_A: float
    fps: float
    frame_index: np.ndarray
    t_ns: np.ndarray
    series: str
    _read: Any = field(repr=False, default=None)
    _close: Any = field(repr=False, default=None)

    def __len__(self) -> int:
        return len(self.frame_index)

    def read(self, i: int) -> np.ndarray:
        """The ``i``-th frame, (rows, columns), in a dtype the stream protocols carry."""
        return _wire_dtype(np.asarray(self._read(i)))

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(acquisition index, acquisition time ns, frame) for every frame in order."""
        for i in range(len(self)):
            yield int(self.frame_index[i]), int(self.t_ns[i]), self.read(i)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_WIRE_DTYPES = frozenset(d.str for d in DTYPES.values())


def _wire_dtype(a: np.ndarray) -> np.ndarray:
    if a.dtype.str in _WIRE_DTYPES:
        return a
    if a.dtype.kind == "f":
        return a.astype("<f4")
    if a.dtype.kind in "ui" and a.dtype.byteorder == ">":
        return a.astype(a.dtype.newbyteorder("<"))
    raise SourceError(f"frames of dtype {a.dtype} cannot be streamed; expected one of "
                      f"{sorted({d.name for d in DTYPES.values()})}")


def _number(value: Any) -> float | None:
    """A positive finite number from file metadata, or None for anything else."""
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return x if np.isfinite(x) and x > 0 else None


def _pick(name: str, from_file: Any, given: float | None, default: float, where: Path, unit: str) -> float:
    """File metadata, else the caller's value, else the configured default (with a warning)."""
    if from_file is not None and _number(from_file) is None:
        log.warning("%s: ignoring its %s %r, which is not a positive number", where, name, from_file)
    from_file = _number(from_file)
    if from_file is not None:
        if given is not None and not np.isclose(given, from_file, rtol=1e-3):
            log.warning("%s: the file says %s = %g %s; using the %g %s given", where, name, from_file, unit, given, unit)
            return float(given)
        return float(from_file)
    if given is not None:
        return float(given)
    log.warning("%s has no %s; using the configured %g %s (give it with --%s)", where, name, default, unit,
                name.replace("_", "-"))
    return float(default)


def _stack(path: Path, kind: str, data: Any, *, pixel_file: float | None, fps_file: float | None,
           pixel_size_A: float | None, fps: float | None, defaults: tuple[float, float],
           close: Any = None) -> FrameSource:
    if data.ndim == 2:
        data = _OneFrame(data)
    if data.ndim != 3:
        raise SourceError(f"{path}: expected frames as (N, rows, columns), got shape {tuple(data.shape)}")
    n = int(data.shape[0])
    if n == 0:
        raise SourceError(f"{path}: holds no frames")
    px = _pick("pixel_size", pixel_file, pixel_size_A, defaults[0], path, "A/px")
    rate = _pick("fps", fps_file, fps, defaults[1], path, "frames/s")
    index = np.arange(n, dtype=np.int64)
    t_ns = np.round(index * 1e9 / rate).astype(np.int64)
    dtype = _wire_dtype(np.zeros(0, data.dtype)).dtype
    return FrameSource(path, kind, (int(data.shape[1]), int(data.shape[2])), dtype, px, rate, index, t_ns,
                       path.stem, _read=lambda i: data[i], _close=close)


def open_source(path: str | Path, *, pixel_size_A: float | None = None, fps: float | None = None,
                defaults: tuple[float, float] | None = None) -> FrameSource:
    """Open a recording directory, ``.mrc``/``.mrcs``, ``.tif``/``.tiff`` or Zarr array or group.

    Parameters
    ----------
    path : path
    pixel_size_A, fps : float, optional
        Given by the user (``--pixel-size``, ``--fps``): used where the file has none, and over
        the file's value (with a warning) where they disagree.
    defaults : (pixel_size_A, fps), optional
        The configuration's values, for files that say nothing and a user who gave nothing
        (default: those of :class:`~btomo.stream.config.AcquisitionConfig`).
    """
    if defaults is None:
        from .config import AcquisitionConfig  # noqa: PLC0415

        acq = AcquisitionConfig()
        defaults = (acq.pixel_size_A, acq.fps)
    p = Path(path)
    if not p.exists():
        raise SourceError(f"source not found: {p}")
    try:
        return _open(p, pixel_size_A, fps, defaults)
    except SourceError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:  # odd files of every kind
        raise SourceError(f"{p}: cannot be read as frames ({type(exc).__name__}: {exc})") from None


def _open(p: Path, pixel_size_A: float | None, fps: float | None, defaults: tuple[float, float]) -> FrameSource:
    if p.is_dir() and (p / "recording.json").exists():
        return _open_recording(p, pixel_size_A, fps)
    if p.is_dir() and ((p / "zarr.json").exists() or p.suffix == ".zarr"):
        return _open_zarr(p, pixel_size_A, fps, defaults)
    suffix = p.suffix.lower()
    if suffix in (".mrc", ".mrcs", ".st", ".map"):
        return _open_mrc(p, pixel_size_A, fps, defaults)
    if suffix in (".tif", ".tiff"):
        return _open_tiff(p, pixel_size_A, fps, defaults)
    raise SourceError(f"{p}: expected a recording directory, an MRC or TIFF stack, or a Zarr array")


def _open_recording(p: Path, pixel_size_A: float | None, fps: float | None) -> FrameSource:
    from .recording import Recording  # noqa: PLC0415

    rec = Recording(p)
    if len(rec) == 0:
        rec.close()
        raise SourceError(f"{p}: the recording holds no complete frame")
    if not rec.complete:
        log.warning("%s: recording was not closed cleanly; reading its %d complete frames", p, len(rec))
    px = _pick("pixel_size", rec.pixel_size_A, pixel_size_A, rec.pixel_size_A, p, "A/px")
    rate = _pick("fps", rec.fps, fps, rec.fps, p, "frames/s")
    series = str(rec.meta.get("series", p.name))
    return FrameSource(p, "recording", tuple(rec.shape), rec.dtype, px, rate, rec.frame_index, rec.t_ns, series,
                       _read=rec.read, _close=rec.close)


def _open_mrc(p: Path, pixel_size_A: float | None, fps: float | None, defaults: tuple[float, float]) -> FrameSource:
    import mrcfile  # noqa: PLC0415

    try:
        mrc = mrcfile.mmap(p, mode="r", permissive=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SourceError(f"{p}: not a readable MRC file ({exc})") from None
    if mrc.data is None:
        mrc.close()
        raise SourceError(f"{p}: the MRC file has no data (truncated?)")
    vx = float(mrc.voxel_size.x)
    return _stack(p, "mrc", mrc.data, pixel_file=vx if vx > 0 else None, fps_file=None,
                  pixel_size_A=pixel_size_A, fps=fps, defaults=defaults, close=mrc.close)


_UNITS_A = {"nm": 10.0, "nanometer": 10.0, "\\u00c5": 1.0, "\u00c5": 1.0, "a": 1.0, "angstrom": 1.0,
            "um": 1e4, "micron": 1e4, "\\u00b5m": 1e4, "\u00b5m": 1e4}


def _open_tiff(p: Path, pixel_size_A: float | None, fps: float | None, defaults: tuple[float, float]) -> FrameSource:
    import tifffile  # noqa: PLC0415

    try:
        tif = tifffile.TiffFile(p)
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise SourceError(f"{p}: not a readable TIFF file ({exc})") from None
    if not tif.series:
        tif.close()
        raise SourceError(f"{p}: not a readable TIFF file (no image series)")
    try:
        series = tif.series[0]
        ij = tif.imagej_metadata or {}
        px_file = fps_file = None
        unit = str(ij.get("unit", "")).lower()
        page = series.pages[0]
        xres = page.tags.get("XResolution") if page is not None else None
        if xres is not None and unit in _UNITS_A:
            num, den = xres.value
            if num > 0:
                px_file = den / num * _UNITS_A[unit]
        interval = _number(ij.get("finterval"))
        if interval is not None:
            fps_file = 1.0 / interval
        try:
            data = tifffile.memmap(p, mode="r")
        except ValueError:  # compressed or not contiguous: read page by page
            pages = series.pages
            if len(series.shape) == 3 and len(pages) == series.shape[0]:
                data = _PagedStack(pages, series.shape, series.dtype)
            else:
                log.warning("%s: reading the whole stack into memory (%s)", p, series.shape)
                data = series.asarray()
    except Exception:
        tif.close()
        raise
    return _stack(p, "tiff", data, pixel_file=px_file, fps_file=fps_file, pixel_size_A=pixel_size_A, fps=fps,
                  defaults=defaults, close=tif.close)


class _OneFrame:
    """A single 2-D frame seen as a stack of one."""

    def __init__(self, frame: Any):
        self.frame, self.shape, self.dtype, self.ndim = frame, (1, *frame.shape), frame.dtype, 3

    def __getitem__(self, i: int) -> np.ndarray:
        if i != 0:
            raise IndexError(i)
        return np.asarray(self.frame[...])


class _PagedStack:
    """A TIFF series read one page (frame) at a time."""

    def __init__(self, pages: Any, shape: tuple[int, ...], dtype: Any):
        self.pages, self.shape, self.dtype, self.ndim = pages, tuple(shape), np.dtype(dtype), len(shape)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.pages[i].asarray()


def _open_zarr(p: Path, pixel_size_A: float | None, fps: float | None, defaults: tuple[float, float]) -> FrameSource:
    import zarr  # noqa: PLC0415

    try:
        node = zarr.open(p, mode="r")
    except Exception as exc:  # zarr raises many kinds for a store that is not one
        raise SourceError(f"{p}: not a readable Zarr store ({type(exc).__name__}: {exc})") from None
    attrs = dict(node.attrs)
    if isinstance(node, zarr.Group):
        if "frames" not in node:
            raise SourceError(f"{p}: Zarr group without a 'frames' array (expected (N, rows, columns) frames)")
        group, node = node, node["frames"]
        attrs = {**attrs, **dict(node.attrs)}
    else:
        group = None
    src = _stack(p, "zarr", node, pixel_file=attrs.get("pixel_size_A"), fps_file=attrs.get("fps"),
                 pixel_size_A=pixel_size_A, fps=fps, defaults=defaults)
    if group is not None and "t_s" in group and "frame" in group:  # a window of a windows.zarr store
        src.t_ns = np.round(np.asarray(group["t_s"][:], dtype=np.float64) * 1e9).astype(np.int64)
        src.frame_index = np.asarray(group["frame"][:], dtype=np.int64)
    return src
