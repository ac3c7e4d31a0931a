"""Settings of the reconstruction of one window (paper, Methods "Time-resolved Brownian tomography")."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ReconstructConfig"]


@dataclass
class ReconstructConfig:
    """Reconstruction defaults of the paper and of SIMPLE/SINGLE's nano mode.

    Attributes
    ----------
    lowpass_A : float
        Low-pass limit of the reconstruction, A (paper: 1.5 A).
    directions : int
        Discrete projection directions searched (paper: 2500).
    rounds : int
        Rounds of orientation refinement -> atoms -> simulated map (paper: 5).
    local_search_deg : float
        Half-width of the local orientation search around the best peaks, deg (SIMPLE: 10).
    shift_px : float
        Largest shift of the particle from the crop's centre searched, px of the window (SIMPLE:
        5). The search tries a half-voxel grid within it: the trials grow as its square.
    atom_min_separation_A : float
        Smallest distance between two atoms found in a map, A (about 2.2 A).
    peaks : int
        Best directions of the coarse search refined locally (SIMPLE keeps 3).
    band_low_A : float
        Longest period compared in the orientation search, A: coarser detail (the particle's
        outline, uneven liquid) is left out.
    kernel_width : int
        Width of the Fourier insertion's Kaiser-Bessel kernel on the 2x oversampled grid, grid
        points (2, 3 or 4; SIMPLE uses 1.5). At the paper's dose 2 and 3 give the same atoms
        (1000 frames: 0.993 / 0.923 / 0.152 A against 0.990 / 0.923 / 0.152 A) and 2 inserts
        2.4x faster.
    frame_fpr : float
        False-positive rate of each round's frame significance test: a frame goes into the map
        only if its best match scores higher than all but this fraction of phase-randomised
        images of the same window do against the same reference. Keeps frames whose orientation
        the data determine, and keeps noise from reproducing the reference (Einstein from
        noise). 1 keeps every frame.
    null_images : int
        Phase-randomised images searched per round for that test.
    min_frames : int
        Fewest frames a map is made of: when fewer pass the test, the most significant ones are
        taken (and a warning logged).
    occupancy_rounds : int
        Rounds, counted from the first and never the last, after which the next reference is
        the lattice occupancy of largest marginal likelihood over the cube's 24 mates
        (:mod:`btomo.reconstruct.occupancy`) instead of the map's atoms: a way to break the
        symmetry of the spherical initial model. 0 (the default) turns it off. With the contrast
        transfer and the mate pass it recovers every atom where the frames tell the mates apart
        (CI-size window; an irregular 2 nm crystal at 100x the paper's dose: 0.90 / 0.87 ->
        1.00 / 1.00); at the paper's dose it lifts a crystal without symmetry (0.88 / 0.82 ->
        0.94 / 0.87 recall / precision) but lowers a nearly cubic one (0.99 / 0.94 -> 0.97 /
        0.87; docs/accuracy.md), so it is opt-in.
    mates : bool
        After the local search, score every frame at the 24 cube mates of its best orientation
        (exactly, every in-plane angle and shift) against the reference and keep the best
        (:class:`~btomo.reconstruct.search.OrientationSearch`): the coarse peaks hold a few mates
        at best, so without it each frame's mate is chance and the map stays cube-symmetrised
        even when the reference is not (CI-size window with the occupancy stage: precision 1.00
        with, 0.95 without).
    continuity : bool
        Chain each frame's mate to its neighbours' in time (:mod:`~btomo.reconstruct.continuity`;
        needs the window's acquisition frame indices and ``mates``): frames a few ms apart are a
        few degrees apart, mates at least 90 deg, so frames can share one mate without any of
        them telling mates apart; each chained segment's mate is then chosen from its frames'
        summed scores. A window whose orientations do not follow one rotation (independent
        frames) is left as it is. At CI size (100 e/A^2) it puts 0.98-1.00 of the map's frames on
        one mate (0.06 without) and leaves the removed surface sites empty. On Brownian windows
        of the 2 nm truncated octahedron it raised precision and lowered the RMSD in all four
        measured at the paper's dose (0.92-0.95 -> 0.93-0.97, 0.14-0.17 -> 0.09-0.14 A), and from
        twice that dose it finds the particle rather than its cube-symmetrised shape (4x:
        1.000 / 0.993 / 0.075 A against 0.935 without); an irregular crystal at the paper's
        dose trades recall for precision (0.91 / 0.82 -> 0.84 / 0.89), at 4x gains both
        (docs/accuracy.md). The only cost is the linking (under 0.5 s per 1000 frames), so it is
        on; ``False`` reconstructs every frame on its own best mate.
    continuity_neighbours : int
        Later lattice frames each frame is linked to.
    continuity_max_residual_deg : float
        Largest angle between a frame's orientation and its neighbour's nearest candidate for a
        link, deg.
    continuity_margin_deg : float
        How much nearer than the next candidate the nearest must be for a link, deg.
    continuity_bootstrap_frames : int
        From the spherical start, the first round's map is made of the largest chained segment
        alone when it has at least this many frames: its frames share one mate, so the next
        reference is no longer cube-symmetric (0: never).
    recentre : bool
        Centre each next reference on its atoms' centroid, as the crops are on the tracked
        particle's, and insert a frame that continuity moves onto another mate at the shift that
        keeps its lattice in phase (:func:`~btomo.reconstruct.refine.mate_shift`, about the
        lattice's symmetry centre). Otherwise the map keeps its lattice's centre where the
        spherical model's site put it, at the map's centre, and a crystal whose centroid is off
        that centre (an irregular one: 1.07 A) sits off the crops' centre, beyond the shift
        search for some frames. Measured on Brownian windows (docs/accuracy.md): an irregular
        crystal at 4x the dose 0.910 / 0.927 -> 0.940 / 0.981; at the paper's dose, over four
        irregular windows, recall +0.037 and precision -0.010 on average, over five
        truncated-octahedron windows precision -0.005; at twice the dose the truncated octahedron
        lower in both windows (0.990 -> 0.960, 0.960 -> 0.935), so it is opt-in.
    ctf : str
        The microscope's contrast transfer (:mod:`~btomo.reconstruct.ctf`): "auto" compares the
        frames with the reference's sections through the transfer of the optics the window
        records (its ``optics`` attribute, the run's ``microscope`` settings); a window without
        optics is reconstructed without (a warning). "none": the frames are taken as projections
        of the potential.
    """

    lowpass_A: float = 1.5
    directions: int = 2500
    rounds: int = 5
    local_search_deg: float = 10.0
    shift_px: float = 3.0
    atom_min_separation_A: float = 2.2
    peaks: int = 3
    band_low_A: float = 10.0
    kernel_width: int = 2
    frame_fpr: float = 0.05
    null_images: int = 256
    min_frames: int = 20
    occupancy_rounds: int = 0
    mates: bool = True
    continuity: bool = True
    continuity_neighbours: int = 12
    continuity_max_residual_deg: float = 25.0
    continuity_margin_deg: float = 8.0
    continuity_bootstrap_frames: int = 100
    recentre: bool = False
    ctf: str = "auto"

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line reason for an invalid value."""
        if self.lowpass_A <= 0:
            raise ValueError(f"reconstruct.lowpass_A must be > 0 A, got {self.lowpass_A}")
        if self.directions < 10:
            raise ValueError(f"reconstruct.directions must be >= 10, got {self.directions}")
        if self.rounds < 1:
            raise ValueError(f"reconstruct.rounds must be >= 1, got {self.rounds}")
        if not 0 < self.local_search_deg <= 90:
            raise ValueError(f"reconstruct.local_search_deg must be in (0, 90], got {self.local_search_deg}")
        if self.shift_px < 0:
            raise ValueError(f"reconstruct.shift_px must be >= 0, got {self.shift_px}")
        if self.peaks < 1:
            raise ValueError(f"reconstruct.peaks must be >= 1, got {self.peaks}")
        if self.band_low_A <= 2 * self.lowpass_A:
            raise ValueError(f"reconstruct.band_low_A must be > 2 x lowpass_A ({2 * self.lowpass_A} A), "
                             f"got {self.band_low_A}")
        if self.kernel_width not in (2, 3, 4):
            raise ValueError(f"reconstruct.kernel_width must be 2, 3 or 4, got {self.kernel_width}")
        if not 0 < self.frame_fpr <= 1:
            raise ValueError(f"reconstruct.frame_fpr must be in (0, 1], got {self.frame_fpr}")
        if self.null_images < 20:
            raise ValueError(f"reconstruct.null_images must be >= 20, got {self.null_images}")
        if self.min_frames < 2:
            raise ValueError(f"reconstruct.min_frames must be >= 2, got {self.min_frames}")
        if self.occupancy_rounds < 0:
            raise ValueError(f"reconstruct.occupancy_rounds must be >= 0, got {self.occupancy_rounds}")
        if self.continuity_neighbours < 1:
            raise ValueError(f"reconstruct.continuity_neighbours must be >= 1, got {self.continuity_neighbours}")
        if not 0 < self.continuity_max_residual_deg < 90:
            raise ValueError(f"reconstruct.continuity_max_residual_deg must be in (0, 90) deg, got "
                             f"{self.continuity_max_residual_deg}")
        if self.continuity_margin_deg < 0:
            raise ValueError(f"reconstruct.continuity_margin_deg must be >= 0 deg, got {self.continuity_margin_deg}")
        if self.continuity_bootstrap_frames < 0:
            raise ValueError(f"reconstruct.continuity_bootstrap_frames must be >= 0, got "
                             f"{self.continuity_bootstrap_frames}")
        if self.ctf not in ("auto", "none"):
            raise ValueError(f"reconstruct.ctf must be 'auto' or 'none', got {self.ctf!r}")
        if self.atom_min_separation_A <= 0:
            raise ValueError(
                f"reconstruct.atom_min_separation_A must be > 0 A, got {self.atom_min_separation_A}"
            )
