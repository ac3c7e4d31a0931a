"""Settings of the structure analysis (paper, Methods "Structure analysis")."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AnalysisConfig"]


@dataclass
class AnalysisConfig:
    """Structure-analysis defaults of the paper.

    Attributes
    ----------
    cutoff_A : float
        Neighbour cutoff, A (first minimum of g(r) of Pt: 3.41 A).
    s6_threshold : float
        A bond is crystalline when s6 exceeds this (0.8).
    match_cutoff_A : float
        Largest distance at which two atoms of consecutive maps are the same atom, A
        (below the 2.77 A nearest-neighbour distance).
    lattice_A : float
        Reference FCC lattice constant for the radial strain, A (Pt: 3.92).
    gr_max_A : float
        Largest distance of g(r), A.
    gr_bin_A : float
        Bin width of g(r), A.
    trace_window_frames : int
        Moving average of the lattice-score trace, frames (paper Fig. 1d: 100).
    align_coarse_A : float
        Gaussian blur (A) of the maps while ranking the 48 lattice-equivalent starting
        orientations of a map alignment.
    align_max_shift_A : float
        Largest translation between consecutive maps, A.
    local_cc_sigma_A : float
        Gaussian window of the local cross-correlation of aligned maps, A.
    """

    cutoff_A: float = 3.41
    s6_threshold: float = 0.8
    match_cutoff_A: float = 2.0
    lattice_A: float = 3.92
    gr_max_A: float = 12.0
    gr_bin_A: float = 0.05
    trace_window_frames: int = 100
    align_coarse_A: float = 1.5
    align_max_shift_A: float = 5.0
    local_cc_sigma_A: float = 1.5

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line reason for an invalid value."""
        if self.cutoff_A <= 0:
            raise ValueError(f"analysis.cutoff_A must be > 0 A, got {self.cutoff_A}")
        if not 0 < self.s6_threshold < 1:
            raise ValueError(f"analysis.s6_threshold must be in (0, 1), got {self.s6_threshold}")
        if self.match_cutoff_A <= 0:
            raise ValueError(f"analysis.match_cutoff_A must be > 0 A, got {self.match_cutoff_A}")
        for name in ("lattice_A", "gr_max_A", "gr_bin_A", "align_coarse_A", "align_max_shift_A", "local_cc_sigma_A"):
            if not getattr(self, name) > 0:
                raise ValueError(f"analysis.{name} must be > 0, got {getattr(self, name)}")
        if self.gr_bin_A >= self.gr_max_A:
            raise ValueError(f"analysis.gr_bin_A must be below gr_max_A, got {self.gr_bin_A} >= {self.gr_max_A}")
        if self.trace_window_frames < 1:
            raise ValueError(f"analysis.trace_window_frames must be >= 1, got {self.trace_window_frames}")
