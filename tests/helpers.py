"""Helpers shared by the tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""
from __future__ import annotations

from btomo.stream.config import RunConfig, load_config


def small_config(**overrides) -> RunConfig:
    """A validated config for fast tests: 192x192 frames, a 1.5 nm particle, one worker."""
    base = {
        "acquisition.shape": "192x192",
        "frames.box_px": 128,
        "sample.diameter_nm": 1.5,
        "simulate.frames": 16,
        "simulate.workers": 1,
        "simulate.block_frames": 8,
    }
    base.update(overrides)
    return load_config(overrides=base)
