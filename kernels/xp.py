"""Array-module selection: one code path for NumPy and CuPy.

Kernels take their array module from the data they are given (house style: LiberTEM's
``UDF.xp``, zarr-python's ``buffer/gpu.py``). CuPy is never imported at module level; it is
imported lazily, only when an array that already lives on a GPU is passed in, or when a GPU path
is asked for explicitly.
"""
from __future__ import annotations

import types

import numpy as np

__all__ = ["array_namespace", "fft_module", "require_cupy", "to_numpy"]


def array_namespace(*arrays) -> types.ModuleType:
    """Return the array module (``numpy`` or ``cupy``) of the given arrays.

    Parameters
    ----------
    *arrays
        Arrays (or scalars). Scalars and NumPy arrays select NumPy.

    Raises
    ------
    TypeError
        If NumPy and CuPy arrays are mixed.
    """
    mods = set()
    for a in arrays:
        mod = type(a).__module__.split(".", 1)[0]
        mods.add("cupy" if mod == "cupy" else "numpy")
    if len(mods) > 1:
        raise TypeError("expected arrays of one backend, got both numpy and cupy arrays")
    if mods == {"cupy"}:
        return require_cupy()
    return np


def require_cupy() -> types.ModuleType:
    """Import CuPy, failing with a clear message where it is not installed or has no GPU."""
    try:
        import cupy  # noqa: PLC0415  (lazy by design)
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "a GPU path was asked for but CuPy is not installed: pip install 'btomo[gpu]'"
        ) from exc
    return cupy


def to_numpy(a) -> np.ndarray:
    """Return ``a`` as a NumPy array (copies from the GPU when ``a`` is a CuPy array)."""
    if type(a).__module__.split(".", 1)[0] == "cupy":
        return a.get()
    return np.asarray(a)


def fft_module(xp: types.ModuleType) -> types.ModuleType:
    """FFTs for ``xp``: ``scipy.fft`` for NumPy (it keeps complex64 in single precision, where
    ``numpy.fft`` computes in double), ``cupy.fft`` for CuPy."""
    if xp is np:
        import scipy.fft  # noqa: PLC0415

        return scipy.fft
    return xp.fft
