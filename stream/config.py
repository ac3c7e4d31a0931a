"""The one typed configuration of a btomo run.

Every section is a dataclass with the physical defaults of the paper (``reference.md``). A run
reads it from TOML (``--config FILE``), takes CLI flags on top, checks it once at start
(:meth:`RunConfig.validate`, a one-line reason for the first bad value) and writes it whole as
``config.toml`` into its run or recording directory, so that every result says how it was made.
There is no global configuration object: the config is passed to what needs it.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from btomo.analysis.config import AnalysisConfig
from btomo.reconstruct.config import ReconstructConfig

__all__ = [
    "ConfigError",
    "AcquisitionConfig",
    "MicroscopeConfig",
    "SampleConfig",
    "SimulateConfig",
    "DenoiserConfig",
    "StreamConfig",
    "FrameConfig",
    "WindowConfig",
    "JobsConfig",
    "RunConfig",
    "parse_shape",
    "load_config",
    "write_config",
]

PROTOCOLS = ("btomo", "dectris1", "dectris2")
QUEUE_POLICIES = ("block", "drop-oldest")
BACKLOG_POLICIES = ("auto", "wait", "skip")
MORPHOLOGIES = ("sphere", "truncated_octahedron", "irregular")
CODECS = ("raw", "blosc-lz4")


class ConfigError(ValueError):
    """An invalid configuration value; its message is the one-line reason."""


def parse_shape(text: str) -> tuple[int, int]:
    """Parse ``"HxW"`` (rows x columns) into ``(H, W)``."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"expected a frame shape as HxW (e.g. 1920x1728), got {text!r}")
    return int(parts[0]), int(parts[1])


def _check_address(name: str, url: str) -> None:
    """A ZeroMQ endpoint: ``tcp://host:port``, ``ipc://path`` or ``inproc://name``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc") or not rest:
        raise ConfigError(f"{name} must be a ZeroMQ address like tcp://127.0.0.1:9999, got {url!r}")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not (port.isdigit() or port == "*"):
            raise ConfigError(f"{name} must name a host and a port, like tcp://127.0.0.1:9999, got {url!r}")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass
class AcquisitionConfig:
    """What the detector delivers (paper, Methods "Data acquisition").

    Attributes
    ----------
    shape : (int, int)
        Frame shape (rows, columns), px.
    pixel_size_A : float
        Pixel size at the specimen, A/px.
    fps : float
        Frame rate, frames/s.
    dose_e_per_A2 : float
        Electron dose per frame, e/A^2.
    """

    shape: tuple[int, int] = (1920, 1728)
    pixel_size_A: float = 0.358
    fps: float = 400.0
    dose_e_per_A2: float = 15.0

    def validate(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 16:
            raise ConfigError(f"acquisition.shape must be two sizes >= 16 px, got {self.shape}")
        _positive("acquisition.pixel_size_A", self.pixel_size_A)
        _positive("acquisition.fps", self.fps)
        _positive("acquisition.dose_e_per_A2", self.dose_e_per_A2)
        if self.dose_e_per_A2 * self.pixel_size_A**2 > 1000:
            raise ConfigError(
                f"acquisition.dose_e_per_A2 ({self.dose_e_per_A2}) gives "
                f"{self.dose_e_per_A2 * self.pixel_size_A**2:.0f} e/px per frame; uint16 counting frames "
                "need at most 1000"
            )


@dataclass
class MicroscopeConfig:
    """Electron optics of the microscope (TEAM I, paper Methods): the simulator images with them,
    the window stage writes them into every window (attribute ``optics``) and the reconstruction
    compares frames with its reference through their contrast transfer. For a real microscope,
    set them to its values.

    Attributes
    ----------
    voltage_kv : float
        Accelerating voltage, kV.
    cs_um : float
        Third-order spherical aberration, um (negative: corrected, -11 um in the paper).
    defocus_A : float
        Defocus at the focal plane, A, Kirkland's sign (> 0 underfocus). The default -57 A is a
        slight overfocus that balances Cs = -11 um (``-sqrt(1.5 |Cs| lambda)``): white atoms.
        The paper's "slight positive focus" is a negative value here.
    convergence_mrad : float
        Illumination semi-angle, mrad. With the partial-coherence envelope it sets the depth of
        focus: at 4 mrad the Pt lattice fades beyond about 20-30 nm from the focal plane (a
        converged beam: 15 e/A^2 in 2.5 ms is 6000 e/A^2/s).
    focal_spread_A : float
        Focal spread, A (small: TEAM I corrects chromatic aberration).
    detector_blur_px : float
        Gaussian sigma of the detector point-spread beyond pixel integration, px.
    """

    voltage_kv: float = 300.0
    cs_um: float = -11.0
    defocus_A: float = -57.0
    convergence_mrad: float = 4.0
    focal_spread_A: float = 20.0
    detector_blur_px: float = 0.4

    def validate(self) -> None:
        _positive("microscope.voltage_kv", self.voltage_kv)
        _positive("microscope.convergence_mrad", self.convergence_mrad, allow_zero=True)
        _positive("microscope.focal_spread_A", self.focal_spread_A, allow_zero=True)
        _positive("microscope.detector_blur_px", self.detector_blur_px, allow_zero=True)
        for name in ("cs_um", "defocus_A"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"microscope.{name} must be finite, got {getattr(self, name)}")


@dataclass
class SampleConfig:
    """The particles and the liquid around them.

    Attributes
    ----------
    particles : int
        Particles in the field of view.
    diameter_nm : float
        Initial particle diameter, nm (sphere: cut diameter; truncated octahedron: diameter of
        the sphere of equal volume). The paper's particles were 1-3 nm.
    morphology : {"sphere", "truncated_octahedron", "irregular"}
        Shape the particle is cut as from the FCC lattice ("irregular": {111}/{100} facets at
        random distances, see ``btomo.kernels.crystal.fcc_cluster``).
    lattice_A : float
        FCC lattice constant, A (Pt: 3.92).
    b_factor_A2 : float
        Debye-Waller factor of the atoms, A^2.
    rot_diffusion_rad2_s : float
        Rotational diffusion constant D_r, rad^2/s (unit-vector correlation exp(-2 D_r t)).
        Used when ``viscosity_pa_s`` is 0.
    viscosity_pa_s : float
        If > 0, D_r comes from Stokes-Einstein-Debye, ``kT / (8 pi eta r^3)``, with r from the
        current atom count, so that a particle turns faster as it etches. The GLC's effective
        viscosity is far above water's (1e-3 Pa s): rotation there is retarded.
    temperature_K : float
        Temperature for Stokes-Einstein-Debye, K.
    diffusion_xy_A2_s, diffusion_z_A2_s : float
        Translational diffusion constants in the image plane and along the beam, A^2/s.
    z_range_nm : float
        Depth of the pocket the particle wanders in along the beam, centred on the focal plane,
        nm (reflecting walls).
    etch_rate_atoms_s : float
        Mean rate of oxidative etching, atoms/s (paper: 5-9 atoms/s); a Poisson process.
    etch_selectivity : float
        Atoms leave with probability proportional to ``exp(-selectivity * CN)``: low-coordination
        surface atoms (islands, kinks, steps) first.
    min_atoms : int
        Etching stops at this many atoms.
    liquid_thickness_nm : float
        Mean water thickness in the beam path, nm (paper: about 10 nm where imaged).
    liquid_variation : float
        Relative standard deviation of the smooth random thickness map.
    liquid_mfp_nm : float
        Mean free path of 300 kV electrons in water for scattering out of the image, nm.
    liquid_texture : float
        Strength of the water's amorphous phase texture relative to liquid water (1); 0 gives
        a structureless liquid (attenuation only).
    visibility_angle_deg : float
        Tolerance for a lattice plane (or zone axis) to count as edge-on (aligned) in the truth,
        deg; 0 means size-dependent: 0.64 d_hkl/D rad for a crystal of diameter D, where the
        sphere's shape transform falls to half.
    """

    particles: int = 1
    diameter_nm: float = 2.0
    morphology: str = "sphere"
    lattice_A: float = 3.92
    b_factor_A2: float = 0.5
    rot_diffusion_rad2_s: float = 0.3
    viscosity_pa_s: float = 0.0
    temperature_K: float = 298.0
    diffusion_xy_A2_s: float = 100.0
    diffusion_z_A2_s: float = 5000.0
    z_range_nm: float = 80.0
    etch_rate_atoms_s: float = 7.0
    etch_selectivity: float = 2.0
    min_atoms: int = 13
    liquid_thickness_nm: float = 10.0
    liquid_variation: float = 0.2
    liquid_mfp_nm: float = 300.0
    liquid_texture: float = 1.0
    visibility_angle_deg: float = 0.0

    def validate(self) -> None:
        if self.particles < 1:
            raise ConfigError(f"sample.particles must be >= 1, got {self.particles}")
        if not 0.5 <= self.diameter_nm <= 6.0:
            raise ConfigError(f"sample.diameter_nm must be in [0.5, 6] nm, got {self.diameter_nm}")
        if self.morphology not in MORPHOLOGIES:
            raise ConfigError(f"sample.morphology must be one of {MORPHOLOGIES}, got {self.morphology!r}")
        _positive("sample.lattice_A", self.lattice_A)
        _positive("sample.temperature_K", self.temperature_K)
        _positive("sample.liquid_mfp_nm", self.liquid_mfp_nm)
        for name in (
            "b_factor_A2", "rot_diffusion_rad2_s", "viscosity_pa_s", "diffusion_xy_A2_s",
            "diffusion_z_A2_s", "z_range_nm", "etch_rate_atoms_s", "etch_selectivity",
            "liquid_thickness_nm", "liquid_variation", "liquid_texture", "visibility_angle_deg",
        ):
            _positive(f"sample.{name}", getattr(self, name), allow_zero=True)
        if self.min_atoms < 1:
            raise ConfigError(f"sample.min_atoms must be >= 1, got {self.min_atoms}")


@dataclass
class SimulateConfig:
    """How ``btomo simulate`` runs.

    Attributes
    ----------
    frames : int
        Frames to write.
    seed : int
        Seed: the same seed gives the same recording, bit for bit, with any number of workers.
    workers : int
        Rendering processes; 0 means one per core.
    oversample : int
        Sub-pixel sampling of the exit wave (pixel integration is then exact binning).
    patch_px : int
        Side of the neighbourhood rendered at full cost around each particle, px; 0 = automatic.
    codec : {"raw", "blosc-lz4"}
        Lossless frame compression of the recording (blosc-lz4 with bitshuffle).
    block_frames : int
        Frames per recording block (the unit of flushing and of crash safety).
    save_clean : bool
        Also write the noise-free expected counts (float32) as ``truth/clean``.
    """

    frames: int = 2000
    seed: int = 0
    workers: int = 0
    oversample: int = 2
    patch_px: int = 0
    codec: str = "blosc-lz4"
    block_frames: int = 64
    save_clean: bool = False

    def validate(self) -> None:
        if self.frames < 1:
            raise ConfigError(f"simulate.frames must be >= 1, got {self.frames}")
        if self.seed < 0:
            raise ConfigError(f"simulate.seed must be >= 0, got {self.seed}")
        if not 0 <= self.workers <= 256:
            raise ConfigError(f"simulate.workers must be in [0, 256], got {self.workers}")
        if self.oversample not in (1, 2, 3, 4):
            raise ConfigError(f"simulate.oversample must be 1-4, got {self.oversample}")
        if self.patch_px < 0:
            raise ConfigError(f"simulate.patch_px must be >= 0, got {self.patch_px}")
        if self.codec not in CODECS:
            raise ConfigError(f"simulate.codec must be one of {CODECS}, got {self.codec!r}")
        if self.block_frames < 1:
            raise ConfigError(f"simulate.block_frames must be >= 1, got {self.block_frames}")


@dataclass
class StreamConfig:
    """Where frames come from and how the ingest queue behaves.

    Attributes
    ----------
    protocol : {"btomo", "dectris1", "dectris2"}
        Wire protocol of the stream: btomo's own, or a DECTRIS detector's stream v1 / v2.
    source : str
        ZeroMQ address the receiver connects to (the sender binds, as a detector does).
    queue_frames : int
        Bound of the ingest queue, frames.
    queue_policy : {"block", "drop-oldest"}
        ``block`` applies backpressure to the sender; ``drop-oldest`` drops and counts.
    max_frames : int
        Stop after this many frames; 0 = no limit.
    idle_timeout_s : float
        Stop after this long without a frame, s; 0 = never.
    bind : bool
        The receiver binds ``source`` instead of connecting to it (for senders that connect).
    queue_mb : int
        Second bound of the ingest queue, MiB of frame data (whichever bound is reached first).
        256 MiB holds ~40 full 1920x1728 frames (100 ms at 400 frames/s); a deeper queue of large
        frames costs throughput (fresh pages for every buffered frame: ``btomo record`` ran at
        0.3 instead of 0.5 GB/s with 2 GiB here) and only delays the backpressure.
    max_shape : (int, int)
        Largest frame (rows, columns) a message may declare, px; larger ones are rejected before
        anything is allocated for them, and ZeroMQ refuses any part larger than such a frame in
        float64 plus 1 MiB.
    socket_hwm : int
        ZeroMQ high-water mark of the receiving socket, messages (bounds what libzmq buffers).
    max_header_kb : int
        Largest JSON part a message may carry, KiB (btomo headers, DECTRIS v1 parts); larger
        ones are rejected before they are parsed (btomo: ``header_too_large``; DECTRIS v1: not
        a part of a group). A DECTRIS v2 message is one CBOR item, bounded with its image by
        ``max_shape`` and by the CBOR decoder's own limits.
    max_messages_per_s : float
        Most messages per second the receiver takes off the socket; 0 = no limit. Above it the
        receiver waits, so the sender is held back by ZeroMQ's high-water mark: nothing is
        dropped, and a flooding sender cannot take more than this share of the machine.
    side_channel : str
        Address the latest-frame side channel binds (a conflated PUB); empty = off.
    side_channel_hz : float
        Most frames per second published on the side channel.
    record_codec : {"raw", "blosc-lz4"}
        How ``btomo record`` stores frames (both lossless; Blosc lz4 with bitshuffle is smaller).
    record_block_frames : int
        Frames per recording block (the unit of crash safety), at most 64 MiB per block.
    linger_s : float
        How long a sender waits at the end for the receiver to take the last frames, s.
    curve_server_public_key : str
        Path of the sender's public CURVE certificate (``zmq.auth.create_certificates``); set it
        on the receiver to require an encrypted, authenticated stream. Empty = no CURVE.
    curve_secret_key : str
        Path of this side's secret CURVE certificate: the receiver's own (client) or the sender's
        (server). Empty = no CURVE.
    curve_authorized_dir : str
        Sender side: directory of client public certificates allowed to connect; empty = any
        client that knows the server key.
    metrics_every_s : float
        ``btomo live`` appends a line to ``metrics.jsonl`` in the run directory this often, s:
        the counters, the queue, latency percentiles over the interval, resident memory,
        threads and open files (what a long session and ``tools/soak.py`` watch); 0 = off.
    """

    protocol: str = "btomo"
    source: str = "tcp://127.0.0.1:9999"
    queue_frames: int = 256
    queue_policy: str = "block"
    max_frames: int = 0
    idle_timeout_s: float = 0.0
    bind: bool = False
    queue_mb: int = 256
    max_shape: tuple[int, int] = (8192, 8192)
    socket_hwm: int = 64
    max_header_kb: int = 64
    max_messages_per_s: float = 0.0
    side_channel: str = "tcp://127.0.0.1:9998"
    side_channel_hz: float = 10.0
    record_codec: str = "blosc-lz4"
    record_block_frames: int = 64
    linger_s: float = 60.0
    curve_server_public_key: str = ""
    curve_secret_key: str = ""
    curve_authorized_dir: str = ""
    metrics_every_s: float = 10.0

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"stream.protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.queue_policy not in QUEUE_POLICIES:
            raise ConfigError(
                f"stream.queue_policy must be one of {QUEUE_POLICIES}, got {self.queue_policy!r}"
            )
        if self.queue_frames < 1:
            raise ConfigError(f"stream.queue_frames must be >= 1, got {self.queue_frames}")
        if self.max_frames < 0:
            raise ConfigError(f"stream.max_frames must be >= 0, got {self.max_frames}")
        _positive("stream.idle_timeout_s", self.idle_timeout_s, allow_zero=True)
        _check_address("stream.source", self.source)
        if self.side_channel:
            _check_address("stream.side_channel", self.side_channel)
            if self.side_channel == self.source:
                raise ConfigError(f"stream.side_channel must differ from stream.source, both are {self.source!r}")
        if self.queue_mb < 1:
            raise ConfigError(f"stream.queue_mb must be >= 1, got {self.queue_mb}")
        if len(self.max_shape) != 2 or min(self.max_shape) < 1:
            raise ConfigError(f"stream.max_shape must be two sizes >= 1 px, got {self.max_shape}")
        if self.socket_hwm < 1:
            raise ConfigError(f"stream.socket_hwm must be >= 1, got {self.socket_hwm}")
        if not 1 <= self.max_header_kb <= 1 << 20:
            raise ConfigError(f"stream.max_header_kb must be 1 to 1048576 KiB, got {self.max_header_kb}")
        _positive("stream.max_messages_per_s", self.max_messages_per_s, allow_zero=True)
        _positive("stream.metrics_every_s", self.metrics_every_s, allow_zero=True)
        _positive("stream.side_channel_hz", self.side_channel_hz)
        _positive("stream.linger_s", self.linger_s, allow_zero=True)
        if self.record_codec not in CODECS:
            raise ConfigError(f"stream.record_codec must be one of {CODECS}, got {self.record_codec!r}")
        if self.record_block_frames < 1:
            raise ConfigError(f"stream.record_block_frames must be >= 1, got {self.record_block_frames}")
        if self.curve_server_public_key and not self.curve_secret_key:
            raise ConfigError("stream.curve_server_public_key needs stream.curve_secret_key (the receiver's own "
                              "secret certificate) as well")


@dataclass
class FrameConfig:
    """Per-frame analysis (paper, Methods "2D image analysis").

    Attributes
    ----------
    box_px : int
        Crop box around each particle, px (paper: 160).
    tracking_lowpass_A : float
        Low-pass cutoff for tracking, A (paper: 2.3).
    snr_window : int
        Frames in the sliding window of the adjacent-frame SNR.
    particle_diameter_nm : float
        Expected projected diameter before one is measured, nm (sizes the detection filter and
        the score's mask until the particle's own diameter is known).
    max_particles : int
        Particles tracked at once at most.
    detect_bin : int
        Binning of the full frame for detection (8 x 0.358 A = 2.9 A px: the low-pass).
    detect_stride, detect_frames, detect_every : int
        Every ``detect_stride``-th frame is binned; ``detect_frames`` binned frames are averaged;
        detection runs every ``detect_every`` frames.
    detect_snr : float
        Detection threshold (robust z-score of the blob filter).
    track_diffusion_A2_s : float
        Lateral diffusion coefficient the tracking filter assumes, A^2/s.
    lost_frames : int
        Consecutive frames without a particle signal after which a track goes dormant.
    reacquire_nm : float
        A new detection within this distance of a dormant track revives its id, nm.
    track_memory_s : float
        How long a dormant track is remembered, s.
    track_smoothing_frames : int
        Fixed-lag (Rauch-Tung-Striebel) smoothing of the tracked centre: a row of ``frames.csv``
        leaves the stage this many frames late, its position informed by the frames after it
        (20 frames = 50 ms at 400 fps; 0: the causal filter, no delay).
    lattice_threshold : float
        Fixed lattice threshold on the fringe modulation (0: Otsu on the running histogram).
    lattice_threshold_initial : float
        Threshold used until the running histogram is bimodal (fringe modulation).
    otsu_min_frames : int
        Scores needed before Otsu's threshold is used.
    otsu_min_separability : float
        Otsu's effectiveness (between-class over total variance) needed to trust a new threshold
        (one Gaussian mode gives 2/pi = 0.64; the simulated runs' two modes 0.8).
    otsu_halflife_s : float
        Half-life of the running histogram, s (old scores fade so the threshold follows the run).
    domain_mask_bins : float
        Radius of the Fourier mask around a lattice peak for the domain centre, bins (0: the
        box over the particle's diameter).
    diameter_method : str
        How a lattice frame's projected diameter is measured from its crystal domain:
        ``"moment"`` (second moment of the noise-subtracted fringe intensity: the same at any
        dose) or ``"otsu"`` (the paper's bilateral filter + Otsu area: grows as the dose falls).
    write_every_s : float
        ``frames.csv`` is flushed at least this often, s.
    """

    box_px: int = 160
    tracking_lowpass_A: float = 2.3
    snr_window: int = 50
    particle_diameter_nm: float = 2.0
    max_particles: int = 8
    detect_bin: int = 8
    detect_stride: int = 2
    detect_frames: int = 16
    detect_every: int = 32
    detect_snr: float = 5.0
    track_diffusion_A2_s: float = 100.0
    lost_frames: int = 40
    reacquire_nm: float = 10.0
    track_memory_s: float = 10.0
    track_smoothing_frames: int = 20
    lattice_threshold: float = 0.0
    lattice_threshold_initial: float = 0.1
    otsu_min_frames: int = 400
    otsu_min_separability: float = 0.7
    otsu_halflife_s: float = 10.0
    domain_mask_bins: float = 0.0
    diameter_method: str = "moment"
    write_every_s: float = 1.0

    def validate(self) -> None:
        if self.box_px < 16 or self.box_px % 2:
            raise ConfigError(f"frames.box_px must be an even size >= 16 px, got {self.box_px}")
        _positive("frames.tracking_lowpass_A", self.tracking_lowpass_A)
        if self.snr_window < 2:
            raise ConfigError(f"frames.snr_window must be >= 2, got {self.snr_window}")
        for name in ("particle_diameter_nm", "track_diffusion_A2_s", "reacquire_nm", "track_memory_s",
                     "lattice_threshold_initial", "otsu_halflife_s", "write_every_s", "detect_snr"):
            _positive(f"frames.{name}", getattr(self, name))
        for name in ("lattice_threshold", "domain_mask_bins"):
            _positive(f"frames.{name}", getattr(self, name), allow_zero=True)
        for name in ("max_particles", "detect_bin", "detect_stride", "detect_frames", "detect_every",
                     "lost_frames", "otsu_min_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"frames.{name} must be >= 1, got {getattr(self, name)}")
        if self.diameter_method not in ("moment", "otsu"):
            raise ConfigError(f"frames.diameter_method must be 'moment' or 'otsu', got {self.diameter_method!r}")
        if self.track_smoothing_frames < 0:
            raise ConfigError(f"frames.track_smoothing_frames must be >= 0, got {self.track_smoothing_frames}")
        if not 0 <= self.otsu_min_separability <= 1:
            raise ConfigError(f"frames.otsu_min_separability must be in [0, 1], got {self.otsu_min_separability}")


@dataclass
class DenoiserConfig:
    """The self-supervised denoiser (paper, Methods "Model architectures", "Training details").

    Attributes
    ----------
    model : str
        Model file for the live pipeline ("": none; the classical fallback is used and said).
    context : int
        Frames the network sees (the frame and its neighbours); paper: 5.
    channels, blocks : int
        Architecture: feature channels and feature-fusion blocks; paper: 24 and 14.
    neighbour_kernel : int
        Kernel of the neighbours' first convolution, px; paper: 3.
    train_crop_px : int
        Side of the random training crops, px (paper: 256 on a GPU; smaller trains faster on a CPU).
    train_batch : int
        Crops per step; paper: 16.
    train_lr : float
        Peak learning rate of RAdam; paper: 1e-3.
    train_steps : int
        Optimiser steps (shortened to fit ``--max-minutes``; the cosine schedule then ends on time).
    train_warmup_steps : int
        Linear warm-up steps before the cosine decay.
    train_samples : int
        Frame stacks cut around tracked particles for training (the held-out ones come after).
    train_holdout : float
        Fraction of the recording's frames, at its end, kept out of training.
    checkpoint_every_s : float
        A resumable checkpoint is written at least this often, s.
    fallback_sigma_px : float
        Without a model: the 5-frame average is smoothed by a Gaussian of this sigma, px.
    batch : int
        Crops per inference batch.
    backlog : int
        Crops waiting for inference at most (see ``backlog_policy``).
    backlog_policy : {"auto", "wait", "skip"}
        What a full backlog does. "skip": the new crop is skipped (a lattice crop displaces the
        oldest non-lattice one instead), counted by reason, so that the frame loop keeps up
        with a microscope that cannot wait. "wait": the frame loop waits for room, nothing is
        skipped, which a file can afford. "auto" (default): "wait" for ``btomo process``,
        "skip" for ``btomo live``.
    device : str
        "auto" (CUDA when available), "cpu" or "cuda".
    bf16 : bool
        Inference in bf16 autocast (same PSNR/SSIM as fp32 on simulated frames; 2.9x faster on
        this project's CPU, which has bf16 instructions; a CPU without them may be slower).
    """

    model: str = ""
    context: int = 5
    channels: int = 24
    blocks: int = 14
    neighbour_kernel: int = 3
    train_crop_px: int = 96
    train_batch: int = 16
    train_lr: float = 1e-3
    train_steps: int = 3000
    train_warmup_steps: int = 100
    train_samples: int = 2000
    train_holdout: float = 0.1
    checkpoint_every_s: float = 60.0
    fallback_sigma_px: float = 1.5
    batch: int = 8
    backlog: int = 64
    backlog_policy: str = "auto"
    device: str = "auto"
    bf16: bool = True

    def validate(self) -> None:
        if self.context < 1 or self.context % 2 == 0:
            raise ConfigError(f"denoiser.context must be an odd number of frames, got {self.context}")
        if self.neighbour_kernel < 1 or self.neighbour_kernel % 2 == 0:
            raise ConfigError(f"denoiser.neighbour_kernel must be odd, got {self.neighbour_kernel}")
        for name in ("channels", "train_batch", "train_steps", "train_samples", "batch", "backlog"):
            if getattr(self, name) < 1:
                raise ConfigError(f"denoiser.{name} must be >= 1, got {getattr(self, name)}")
        if self.backlog_policy not in BACKLOG_POLICIES:
            raise ConfigError(f"denoiser.backlog_policy must be one of {BACKLOG_POLICIES}, got {self.backlog_policy!r}")
        if self.blocks < 0 or self.train_warmup_steps < 0:
            raise ConfigError("denoiser.blocks and denoiser.train_warmup_steps must be >= 0")
        if self.train_crop_px < 16:
            raise ConfigError(f"denoiser.train_crop_px must be >= 16 px, got {self.train_crop_px}")
        if not 0 <= self.train_holdout < 1:
            raise ConfigError(f"denoiser.train_holdout must be in [0, 1), got {self.train_holdout}")
        for name in ("train_lr", "checkpoint_every_s", "fallback_sigma_px"):
            _positive(f"denoiser.{name}", getattr(self, name))
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"denoiser.device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class WindowConfig:
    """Rolling windows and orientation coverage.

    Attributes
    ----------
    directions : int
        Projection directions on the sphere for coverage (2500, no symmetry assumed).
    coverage_angle_deg : float
        A direction is covered within this angle of an assigned frame, deg.
    coverage_threshold : float
        Coverage that closes a window.
    min_frames : int
        Fewest lattice frames in a window.
    max_seconds : float
        Longest window, s (then flagged under-covered).
    max_diameter_change_nm : float
        Close the window when the projected diameter has changed by more than this, nm: the median
        of the last ``diameter_frames`` lattice frames against that of the window's first ones.
    diameter_frames : int
        Lattice frames in each of those medians (a single frame's projected diameter varies with
        the orientation and the noise by ~0.1-0.2 nm).
    symmetry : str
        Coverage counts views "none" (no symmetry assumed) or "cubic" (a view covers its mates).
    chunk_frames : int
        Crops per chunk of a window's ``frames`` array (whole chunks are written).
    rot_diffusion_rad2_s : float
        Rotational diffusion the orientation filter assumes between frames, rad^2/s.
    orientation_particles : int
        Orientations the filter keeps per particle.
    orientation_every_frames : int
        A particle's orientation is updated from at most one lattice frame in this many (every
        lattice crop still joins its window; the filter bridges the gaps).
    overlap_frames : int
        Lattice frames a window shares with the next one of the same particle (its last ones
        open the next window; 0: none). Not across a change of diameter.
    crops : {"auto", "denoised", "raw"}
        What a window's ``frames`` hold: the denoiser's crops, or the raw frame cut at the same
        tracked centre (the orientation filter always reads the denoised one). "auto": raw when
        the denoiser is the classical fallback (its 5-frame average blurs a moving particle:
        twice the atoms' RMSD in reconstruction, docs/accuracy.md), denoised with a model.
    """

    directions: int = 2500
    coverage_angle_deg: float = 15.0
    coverage_threshold: float = 0.9
    min_frames: int = 500
    max_seconds: float = 10.0
    max_diameter_change_nm: float = 0.2
    diameter_frames: int = 100
    symmetry: str = "none"
    chunk_frames: int = 64
    rot_diffusion_rad2_s: float = 0.3
    orientation_particles: int = 1500
    orientation_every_frames: int = 4
    overlap_frames: int = 0
    crops: str = "auto"

    def validate(self) -> None:
        if self.crops not in ("auto", "denoised", "raw"):
            raise ConfigError(f"windows.crops must be 'auto', 'denoised' or 'raw', got {self.crops!r}")
        if self.overlap_frames < 0 or self.overlap_frames >= self.min_frames:
            raise ConfigError(f"windows.overlap_frames must be in [0, min_frames = {self.min_frames}), "
                              f"got {self.overlap_frames}")
        if self.symmetry not in ("none", "cubic"):
            raise ConfigError(f"windows.symmetry must be 'none' or 'cubic', got {self.symmetry!r}")
        if self.diameter_frames < 1:
            raise ConfigError(f"windows.diameter_frames must be >= 1, got {self.diameter_frames}")
        if self.chunk_frames < 1 or self.orientation_particles < 10 or self.orientation_every_frames < 1:
            raise ConfigError("windows.chunk_frames and orientation_every_frames must be >= 1, "
                              "windows.orientation_particles >= 10")
        _positive("windows.rot_diffusion_rad2_s", self.rot_diffusion_rad2_s)
        if self.directions < 10:
            raise ConfigError(f"windows.directions must be >= 10, got {self.directions}")
        if not 0 < self.coverage_angle_deg <= 90:
            raise ConfigError(f"windows.coverage_angle_deg must be in (0, 90], got {self.coverage_angle_deg}")
        if not 0 < self.coverage_threshold <= 1:
            raise ConfigError(f"windows.coverage_threshold must be in (0, 1], got {self.coverage_threshold}")
        if self.min_frames < 1:
            raise ConfigError(f"windows.min_frames must be >= 1, got {self.min_frames}")
        _positive("windows.max_seconds", self.max_seconds)
        _positive("windows.max_diameter_change_nm", self.max_diameter_change_nm)


@dataclass
class JobsConfig:
    """Hand-off of closed windows to reconstruction jobs on a Dask distributed cluster.

    Attributes
    ----------
    enabled : bool
        Submit a job for every closed window.
    scheduler : str
        Address of an existing Dask scheduler (``tcp://host:8786``); empty: btomo starts a
        LocalCluster of its own and stops it at the end of the run. The workers must see the run
        directory at the same path (a shared file system).
    local_workers : int
        Worker processes of the LocalCluster.
    threads_per_worker : int
        Threads per LocalCluster worker.
    memory_limit : str
        Memory limit per LocalCluster worker (Dask syntax, "4GiB"; "auto": its share of RAM).
    max_pending : int
        Jobs queued or running at most; a window closed beyond it is not submitted (state
        ``skipped``, counted: reconstruct it later with ``btomo reconstruct``).
    wait_seconds : float
        At the end of a run, wait this long at most for the jobs still pending, s; then they are
        cancelled (LocalCluster) or left to the cluster (``scheduler``).
    connect_timeout_s : float
        Time allowed to start the LocalCluster or reach the scheduler, s.
    worker_deaths_allowed : int
        A job whose worker dies while running it (killed, out of memory) is run again on another
        worker (the LocalCluster restarts the dead one) this many times; at the next death it fails,
        with the reason. btomo's LocalCluster only: an existing cluster has its own setting
        (Dask's ``distributed.scheduler.allowed-failures``).
    worker_nice : int
        Niceness (0-19) of btomo's LocalCluster workers: reconstructions take the CPU the live
        path leaves (on a 2-core machine at 400 frames/s the frame loop needs most of a core);
        0 = the same priority. Unix; an existing cluster is left as it is.
    seed_from_previous : bool
        Each job starts from the atoms of the same particle's latest earlier window (of the last
        three) whose reconstruction is done and good when the job starts, instead of the
        spherical FCC model (:mod:`btomo.reconstruct.job`; ``job.json`` says which). Off by
        default: the refinement keeps a seed's atoms that the data no longer hold (measured: a
        seed with 20 atoms too many kept 14 of them), so seeded windows would hide atoms leaving the
        particle; from the right atoms it keeps them, where the cubic spherical model settles on
        the cube-symmetrised particle.
    seed_max_resolution_A : float
        A seed's FSC 0.143 resolution must be this good or better, A.
    seed_min_in_map : float
        At least this fraction of a seed's frames must have been significant (a window of noise
        has at most ~0.2).
    """

    enabled: bool = True
    scheduler: str = ""
    local_workers: int = 1
    threads_per_worker: int = 1
    memory_limit: str = "4GiB"
    max_pending: int = 8
    wait_seconds: float = 600.0
    connect_timeout_s: float = 60.0
    worker_deaths_allowed: int = 3
    worker_nice: int = 10
    seed_from_previous: bool = False
    seed_max_resolution_A: float = 2.5
    seed_min_in_map: float = 0.25

    def validate(self) -> None:
        _positive("jobs.seed_max_resolution_A", self.seed_max_resolution_A)
        if not 0 <= self.seed_min_in_map <= 1:
            raise ConfigError(f"jobs.seed_min_in_map must be 0 to 1, got {self.seed_min_in_map}")
        if not 0 <= self.worker_nice <= 19:
            raise ConfigError(f"jobs.worker_nice must be 0 to 19, got {self.worker_nice}")
        if self.worker_deaths_allowed < 0:
            raise ConfigError(f"jobs.worker_deaths_allowed must be >= 0, got {self.worker_deaths_allowed}")
        if self.local_workers < 1 or self.threads_per_worker < 1 or self.max_pending < 1:
            raise ConfigError("jobs.local_workers, jobs.threads_per_worker and jobs.max_pending must be >= 1, got "
                              f"{self.local_workers}, {self.threads_per_worker}, {self.max_pending}")
        if self.scheduler and "://" not in self.scheduler and ":" not in self.scheduler:
            raise ConfigError(f"jobs.scheduler must be an address like tcp://host:8786, got {self.scheduler!r}")
        _positive("jobs.wait_seconds", self.wait_seconds, allow_zero=True)
        _positive("jobs.connect_timeout_s", self.connect_timeout_s)


@dataclass
class RunConfig:
    """The whole configuration of a run; written as ``config.toml`` into its directory."""

    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)
    microscope: MicroscopeConfig = field(default_factory=MicroscopeConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    frames: FrameConfig = field(default_factory=FrameConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def validate(self) -> "RunConfig":
        """Check every section and the rules across them; raise :class:`ConfigError`."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            for g in dataclasses.fields(section):
                v = getattr(section, g.name)
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{f.name}.{g.name} must be a finite number, got {v}")
        for f in dataclasses.fields(self):
            try:
                getattr(self, f.name).validate()
            except ConfigError:
                raise
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        box, shape = self.frames.box_px, self.acquisition.shape
        if box > min(shape):
            raise ConfigError(f"frames.box_px ({box} px) is larger than the frame {shape[0]}x{shape[1]} px")
        return self

    # --- TOML ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), ready for TOML."""
        return {
            f.name: {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(getattr(self, f.name)).items()}
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str = "config") -> "RunConfig":
        """Build from a nested dict; unknown sections or keys and wrong types are errors."""
        cfg = cls()
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{origin}: {section!r} must be a table of settings, got {values!r}")
            for key, value in values.items():
                cfg.set(f"{section}.{key}", value, origin=origin)
        return cfg

    def set(self, dotted: str, value: Any, *, origin: str = "config") -> None:
        """Set ``section.key`` to ``value``, converting and type-checking it."""
        section, _, key = dotted.partition(".")
        names = {f.name for f in dataclasses.fields(self)}
        if section not in names:
            raise ConfigError(f"{origin}: unknown section {section!r} (expected one of {sorted(names)})")
        obj = getattr(self, section)
        if not key:
            raise ConfigError(f"{origin}: {section!r} must be a table of settings")
        hints = typing.get_type_hints(type(obj))
        if key not in hints:
            raise ConfigError(f"{origin}: unknown setting {dotted!r} (expected one of {sorted(hints)})")
        setattr(obj, key, _coerce(hints[key], value, f"{origin}: {dotted}"))


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Convert ``value`` (from TOML or a CLI string) to the annotated type, or raise."""
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise TypeError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if origin is tuple:
            if isinstance(value, str):
                return parse_shape(value)
            args = typing.get_args(hint)
            if not isinstance(value, (list, tuple)) or len(value) != len(args):
                raise TypeError
            return tuple(_coerce(a, v, where) for a, v in zip(args, value))
    except ConfigError:
        raise
    except (TypeError, ValueError):
        pass
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where} expects {name}, got {value!r}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the TOML file (if given), then ``overrides`` (``section.key`` -> value).

    The result is validated: an invalid value raises :class:`ConfigError` with a one-line reason.
    """
    cfg = RunConfig()
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except IsADirectoryError:
            raise ConfigError(f"config file is a directory: {p}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: not valid TOML ({exc})") from None
        cfg = RunConfig.from_dict(data, origin=str(p))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            cfg.set(dotted, value, origin="option")
    return cfg.validate()


def write_config(cfg: RunConfig, directory: str | Path) -> Path:
    """Write ``config.toml`` into ``directory`` (created if needed); return its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = d / "config.toml"
    header = "# btomo configuration of this run: `btomo ... --config` this file to repeat it\n"
    out.write_text(header + tomli_w.dumps(cfg.to_dict()))
    return out
