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
    """

    cutoff_A: float = 3.41
    s6_threshold: float = 0.8
    match_cutoff_A: float = 2.0

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line reason for an invalid value."""
        if self.cutoff_A <= 0:
            raise ValueError(f"analysis.cutoff_A must be > 0 A, got {self.cutoff_A}")
        if not 0 < self.s6_threshold < 1:
            raise ValueError(f"analysis.s6_threshold must be in (0, 1), got {self.s6_threshold}")
        if self.match_cutoff_A <= 0:
            raise ValueError(f"analysis.match_cutoff_A must be > 0 A, got {self.match_cutoff_A}")
