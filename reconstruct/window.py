"""Read one window of a ``windows.zarr`` store, checking its layout (``../shared/contracts.md``).

A window is a Zarr v3 group with ``frames`` (N x box x box) and the per-frame arrays ``frame``,
``t_s``, ``x_px``, ``y_px``, ``fft_peak``, and the attributes ``particle``, ``t_start_s``,
``t_end_s``, ``pixel_size_A``, ``coverage``, ``complete`` (``diameter_nm`` optional). Another
tool may have written it: only these are relied on, and every violation is a
:class:`WindowError` that says what was expected and what was found.

A damaged store is one such violation: metadata that is not valid JSON or not a Zarr v3 array,
a dtype or shape that its chunks do not match, a chunk file that is missing (``frames``: it would
read back as fill values, not as crops), truncated or garbled. The error names the window, the
array and, where one is at fault, the chunk file, on one line.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["WindowError", "Window", "read_window", "split_window_path", "REQUIRED_ARRAYS", "REQUIRED_ATTRS"]

#: per-frame arrays a window must hold besides ``frames``
REQUIRED_ARRAYS = ("frame", "t_s", "x_px", "y_px", "fft_peak")
#: attributes a window must carry
REQUIRED_ATTRS = ("particle", "t_start_s", "t_end_s", "pixel_size_A", "coverage", "complete")


class WindowError(ValueError):
    """A window that is missing, torn or not of the contracted layout."""


@dataclass
class Window:
    """One window, in memory.

    Attributes
    ----------
    name : str
        Subgroup name (``p<particle>_w<number>``).
    frames : ndarray (n, box, box) float32
        The crops.
    meta : dict of ndarray
        The per-frame arrays (``frame``, ``t_s``, ``x_px``, ``y_px``, ``fft_peak``), length n.
    attrs : dict
        The group's attributes.
    """

    name: str
    frames: np.ndarray
    meta: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def pixel_size_A(self) -> float:
        return float(self.attrs["pixel_size_A"])

    @property
    def n(self) -> int:
        return int(self.frames.shape[0])


def split_window_path(path: str | Path) -> tuple[Path, str]:
    """``STORE.zarr/WINDOW_ID`` -> (store, window id)."""
    p = Path(path)
    if p.parent.suffix != ".zarr":
        raise WindowError(f"expected STORE.zarr/WINDOW_ID, got {str(path)!r}")
    return p.parent, p.name


def read_window(store: str | Path, name: str, *, allow_incomplete: bool = False, load_frames: bool = True
                ) -> Window:
    """Open window ``name`` of ``store`` read-only and check it.

    Parameters
    ----------
    store : path
        The ``windows.zarr`` directory.
    name : str
        The window's subgroup.
    allow_incomplete : bool
        Accept a window whose ``complete`` attribute is false (torn by a crash, or still being
        written); by default that is an error.
    load_frames : bool
        Read the crops (else ``frames`` is an empty (0, box, box) array).
    """
    import zarr  # noqa: PLC0415

    store = Path(store)
    if not store.is_dir():
        raise WindowError(f"no window store at {store}")
    try:
        root = zarr.open_group(str(store), mode="r", zarr_format=3)
    except Exception as exc:  # noqa: BLE001 - zarr raises several kinds for a non-store
        raise WindowError(f"{store} is not a Zarr v3 group ({_one_line(exc)})") from None
    if not (store / name / "zarr.json").is_file() and (store / name).is_dir():
        raise WindowError(f"window {name}: expected group metadata {store / name / 'zarr.json'}, got no such file")
    try:
        g = root[name]
    except KeyError:
        raise WindowError(f"window {name!r} not in {store} (it holds {_groups(root)})") from None
    except Exception as exc:  # noqa: BLE001 - a damaged zarr.json: JSON, Zarr metadata or type errors
        raise WindowError(f"window {name}: its group metadata ({store / name / 'zarr.json'}) is unreadable: expected "
                          f"a Zarr v3 group, got {_one_line(exc)}") from None
    if not isinstance(g, zarr.Group):
        raise WindowError(f"window {name}: expected a Zarr group, got an array ({store / name})")
    attrs = dict(g.attrs)
    if not attrs.get("complete", False) and not allow_incomplete:
        raise WindowError(f"window {name} is not complete (torn by a crash or still being written)")
    missing = [a for a in REQUIRED_ATTRS if a not in attrs and not (allow_incomplete and a == "t_end_s")]
    if missing:
        raise WindowError(f"window {name}: attributes missing: {missing}")
    if not (isinstance(attrs["pixel_size_A"], (int, float)) and math.isfinite(attrs["pixel_size_A"])
            and attrs["pixel_size_A"] > 0):
        raise WindowError(f"window {name}: pixel_size_A must be a positive number, got {attrs['pixel_size_A']!r}")
    missing = [a for a in ("frames", *REQUIRED_ARRAYS) if not (store / name / a / "zarr.json").is_file()]
    if missing:
        raise WindowError(f"window {name}: arrays missing: {missing}")
    opened = {key: _open_array(g, store, name, key) for key in ("frames", *REQUIRED_ARRAYS)}
    fr = opened["frames"]
    if len(fr.shape) != 3 or fr.shape[1] != fr.shape[2]:
        raise WindowError(f"window {name}: array frames: expected shape (n, box, box), got {fr.shape}")
    if fr.dtype.kind not in "fiu":
        raise WindowError(f"window {name}: array frames: expected numbers, got dtype {fr.dtype}")
    n = fr.shape[0]
    meta = {}
    for key in REQUIRED_ARRAYS:
        if opened[key].shape != (n,):
            raise WindowError(f"window {name}: array {key}: expected shape ({n},) like frames, got "
                              f"{opened[key].shape}")
        meta[key] = _read_array(opened[key], store, name, key)
    if load_frames:
        _check_chunks_present(fr, store, name, "frames", torn_ok=allow_incomplete and not attrs.get("complete"))
        frames = np.asarray(_read_array(fr, store, name, "frames"), dtype=np.float32)
    else:
        frames = np.zeros((0, *fr.shape[1:]), np.float32)
    return Window(name, frames, meta, attrs)


# -- a damaged store: one clear line each --------------------------------------------------------
def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of ``exc`` on one line, at most ``limit`` characters."""
    if "checksum do not match" in str(exc):  # zarr's Crc32cCodec: say what it means, not the bytes
        return "a CRC-32C mismatch (the chunk's bytes changed after it was written)"
    text = re.sub(r"\s+", " ", f"{type(exc).__name__}: {exc}").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _groups(root: Any) -> list[str]:
    try:
        return sorted(root.group_keys())[:10]
    except Exception:  # noqa: BLE001 - a sibling's damaged metadata: the listing is only a hint
        return []


def _describe(arr: Any) -> str:
    """What an array's metadata promises: dtype, shape, chunks, codecs."""
    try:
        codecs = "+".join(type(c).__name__.removesuffix("Codec").lower() for c in arr.metadata.codecs)
    except Exception:  # noqa: BLE001 - only a description
        codecs = "?"
    return f"{arr.dtype} values, shape {list(arr.shape)} in chunks of {list(arr.chunks)}, codecs {codecs}"


def _open_array(g: Any, store: Path, name: str, key: str) -> Any:
    """Array ``key`` of window group ``g``, or a :class:`WindowError` naming its metadata file."""
    import zarr  # noqa: PLC0415

    meta = store / name / key / "zarr.json"
    try:
        arr = g[key]
    except Exception as exc:  # noqa: BLE001 - JSON, Zarr metadata (dtype, codecs, grid) or type errors
        raise WindowError(f"window {name}: array {key}: its metadata ({meta}) is unreadable: expected a Zarr v3 "
                          f"array, got {_one_line(exc)}") from None
    if not isinstance(arr, zarr.Array):
        raise WindowError(f"window {name}: array {key}: expected a Zarr array, got a group ({store / name / key})")
    return arr


def _chunk_file(arr: Any, store: Path, name: str, key: str, coords: tuple[int, ...]) -> Path:
    return store / name / key / arr.metadata.encode_chunk_key(coords)


def _check_chunks_present(arr: Any, store: Path, name: str, key: str, *, torn_ok: bool) -> None:
    """Every chunk (shard) file of ``arr`` exists: a missing one would read back as fill values.

    A window's writer writes every chunk it resizes over; an array of crops never has an all-fill
    chunk to leave out. ``torn_ok``: a window torn by a crash may lack its last ones (a warning).
    """
    import logging  # noqa: PLC0415

    grid = getattr(arr, "shards", None) or arr.chunks
    counts = tuple(-(-s // c) for s, c in zip(arr.shape, grid, strict=True))
    missing = [c for c in np.ndindex(*counts) if not _chunk_file(arr, store, name, key, c).is_file()]
    if not missing:
        return
    first = missing[0]
    span = f"entries {first[0] * grid[0]} to {min((first[0] + 1) * grid[0], arr.shape[0]) - 1}"
    msg = (f"window {name}: array {key}: expected {int(np.prod(counts))} chunk files, got "
           f"{int(np.prod(counts)) - len(missing)}; missing {len(missing)}, the first "
           f"{_chunk_file(arr, store, name, key, first)} ({span}), which would read as fill value "
           f"{np.asarray(arr.fill_value).item()!r}, not data")
    if torn_ok:
        logging.getLogger(__name__).warning("%s (the window is incomplete)", msg)
        return
    raise WindowError(msg)


def _read_array(arr: Any, store: Path, name: str, key: str) -> np.ndarray:
    """All of ``arr``; a chunk that does not decode to what the metadata says is a :class:`WindowError`
    naming the array and the first bad chunk file."""
    try:
        return np.asarray(arr[...])
    except Exception as exc:  # noqa: BLE001 - codec errors (blosc, zstd), size or dtype mismatches
        first_error = exc
    step = (getattr(arr, "shards", None) or arr.chunks)[0] if arr.ndim else 1
    for i in range(0, arr.shape[0] if arr.ndim else 0, step):  # find the first bad chunk (only now)
        try:
            arr[i:i + step]
        except Exception as exc:  # noqa: BLE001
            coords = (i // step,) + (0,) * (arr.ndim - 1)
            raise WindowError(
                f"window {name}: array {key}: chunk {_chunk_file(arr, store, name, key, coords)} (entries {i} to "
                f"{min(i + step, arr.shape[0]) - 1}) is damaged or does not match the metadata: expected "
                f"{_describe(arr)}, got {_one_line(exc)}") from None
    raise WindowError(f"window {name}: array {key} cannot be read: expected {_describe(arr)}, got "
                      f"{_one_line(first_error)}") from None
