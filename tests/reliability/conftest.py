"""Shared by the reliability tests: one simulated session whose particle shows its lattice often
enough that windows open and close within a second of frames."""
from __future__ import annotations

import pytest

from btomo.stream.config import load_config
from btomo.stream.simulator import simulate

@pytest.fixture(scope="session")
def lattice_rec(tmp_path_factory):
    """400 frames (288x288, 1 s at 400 frames/s) of a simulated 2 nm particle; ~100 lattice frames."""
    out = tmp_path_factory.mktemp("reliability") / "rec"
    simulate(load_config(overrides={"acquisition.shape": "288x288", "simulate.frames": 400, "simulate.seed": 5,
                                    "simulate.workers": 2}), out)
    return out
