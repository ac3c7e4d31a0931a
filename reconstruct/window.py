"""Read one window of a ``windows.zarr`` store, checking its layout (``../shared/contracts.md``).

A window is a Zarr v3 group with ``frames`` (N x box x box) and the per-frame arrays ``frame``,
``t_s``, ``x_px``, ``y_px``, ``fft_peak``, and the attributes ``particle``, ``t_start_s``,
``t_end_s``, ``pixel_size_A``, ``coverage``, ``complete`` (``diameter_nm`` optional). Another
tool may have written it: only these are relied on, and every violation is a
:class:`WindowError` that says what was expected and what was found.
"""
from __future__ import annotations

import math
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
        raise WindowError(f"{store} is not a Zarr v3 group ({type(exc).__name__}: {exc})") from None
    if name not in root:
        raise WindowError(f"window {name!r} not in {store} (it holds {sorted(root.group_keys())[:10]})")
    g = root[name]
    attrs = dict(g.attrs)
    if not attrs.get("complete", False) and not allow_incomplete:
        raise WindowError(f"window {name} is not complete (torn by a crash or still being written)")
    missing = [a for a in REQUIRED_ATTRS if a not in attrs and not (allow_incomplete and a == "t_end_s")]
    if missing:
        raise WindowError(f"window {name}: attributes missing: {missing}")
    if not (isinstance(attrs["pixel_size_A"], (int, float)) and math.isfinite(attrs["pixel_size_A"])
            and attrs["pixel_size_A"] > 0):
        raise WindowError(f"window {name}: pixel_size_A must be a positive number, got {attrs['pixel_size_A']!r}")
    arrays = set(g.array_keys())
    missing = [a for a in ("frames", *REQUIRED_ARRAYS) if a not in arrays]
    if missing:
        raise WindowError(f"window {name}: arrays missing: {missing}")
    fr = g["frames"]
    if len(fr.shape) != 3 or fr.shape[1] != fr.shape[2]:
        raise WindowError(f"window {name}: frames must be (n, box, box), got shape {fr.shape}")
    if fr.dtype.kind not in "fiu":
        raise WindowError(f"window {name}: frames must be numeric, got dtype {fr.dtype}")
    n = fr.shape[0]
    meta = {}
    for key in REQUIRED_ARRAYS:
        a = np.asarray(g[key][...])
        if a.shape != (n,):
            raise WindowError(f"window {name}: {key} must have shape ({n},) like frames, got {a.shape}")
        meta[key] = a
    frames = np.asarray(fr[...], dtype=np.float32) if load_frames else np.zeros((0, *fr.shape[1:]), np.float32)
    return Window(name, frames, meta, attrs)
