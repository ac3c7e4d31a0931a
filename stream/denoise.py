"""Training, model files and inference of the self-supervised denoiser.

The network is :class:`btomo.kernels.denoiser.BlindSpotNet`. Training (``btomo train-denoiser``,
paper, Methods "Loss functions", "Training details") needs no clean data: stacks of ``context``
consecutive frames are cut around the particles that the per-frame stage tracks in a recording
or stack, and the network learns to predict each centre frame from its blind-spot context with
an L2 loss against the noisy frame itself (Noise2Void). RAdam, a linear warm-up and a cosine
decay, random crops with rot90 / flips, mixed precision (bf16) on a GPU, a rich progress bar,
resumable checkpoints, and a model file that records its architecture, training data and
configuration.

Model file: ``torch.save`` of a dict of tensors and plain values (loadable with
``torch.load(weights_only=True)``: no code is unpickled) with keys ``format``
(``"btomo-denoiser"``), ``version``, ``spec`` (the architecture), ``state_dict`` and ``meta``
(a JSON string: source, frames used, crop, steps, final loss, the run configuration, time).

Without a model, :func:`fallback_denoise` is the documented classical stand-in: the average of
the ``context`` frames followed by a Gaussian of ``fallback_sigma_px``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from btomo.kernels.denoiser import BlindSpotNet, DenoiserSpec, normalise_stack

from .config import RunConfig
from .frames import FrameAnalysis
from .messages import Frame, SeriesStart
from .progress import NullReporter

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_FORMAT",
    "DenoiserError",
    "spec_from_config",
    "select_device",
    "TrainingData",
    "collect_stacks",
    "train_denoiser",
    "save_model",
    "load_model",
    "Denoiser",
    "fallback_denoise",
    "Backlog",
    "DenoiseStage",
    "denoise_frame",
    "denoise_source",
]

MODEL_FORMAT = "btomo-denoiser"
MODEL_VERSION = 1


class DenoiserError(RuntimeError):
    """A model file or training input that cannot be used (the message says why)."""


def spec_from_config(cfg: RunConfig) -> DenoiserSpec:
    d = cfg.denoiser
    return DenoiserSpec(context=d.context, channels=d.channels, blocks=d.blocks, neighbour_kernel=d.neighbour_kernel)


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise DenoiserError("denoiser.device = cuda but no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


# -- training data -----------------------------------------------------------------------------
@dataclass
class TrainingData:
    """Frame stacks around tracked particles.

    Attributes
    ----------
    stacks : ndarray, (n, context, side, side) float32
        Counts; ``side`` is the training crop plus a margin for the random shifts.
    frames : ndarray of int
        Centre frame index of each stack.
    holdout_from : int
        First frame index kept out of training.
    """

    stacks: np.ndarray
    frames: np.ndarray
    holdout_from: int
    source: str


def _positions(cfg: RunConfig, source: Any, last: int) -> dict[int, list[tuple[float, float]]]:
    """Tracked particle centres per frame (the per-frame stage, no run directory)."""
    stage = FrameAnalysis(cfg, None)
    out: dict[int, list[tuple[float, float]]] = {}
    stage.sink = lambda row: out.setdefault(int(row["frame"]), []).append((row["x_px"], row["y_px"]))
    stage.prepare(SeriesStart(source.series, source.shape, source.dtype, source.pixel_size_A, source.fps,
                              cfg.acquisition.dose_e_per_A2, len(source)))
    for index, t_ns, data in source:
        if index >= last:
            break
        stage.process(Frame(source.series, index, t_ns, data, pixel_size_A=source.pixel_size_A))
    stage.finish()
    return out


def _cut(frames: list[np.ndarray], x: float, y: float, side: int) -> np.ndarray | None:
    h, w = frames[0].shape
    x0, y0 = int(round(x)) - side // 2, int(round(y)) - side // 2
    if x0 < 0 or y0 < 0 or x0 + side > w or y0 + side > h:
        return None
    return np.stack([f[y0:y0 + side, x0:x0 + side] for f in frames]).astype(np.float32)


def collect_stacks(cfg: RunConfig, source: Any, *, samples: int, side: int, seed: int = 0,
                   first: int = 0, last: int | None = None, positions: dict | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``samples`` stacks of ``context`` consecutive frames, ``side`` px square, cut around
    tracked particles (random offsets up to a quarter of the side) with centre frames in
    ``[first, last)``; where nothing is tracked, anywhere in the frame. Returns
    ``(stacks, centre frames)``."""
    d = cfg.denoiser
    k = d.context // 2
    n = len(source)
    last = n if last is None else min(last, n)
    if positions is None:
        positions = _positions(cfg, source, last)
    rng = np.random.default_rng(seed)
    centres = np.arange(max(first, k), max(last - k, max(first, k)))
    if len(centres) == 0:
        raise DenoiserError(f"{source.path}: {n} frames: too few for stacks of {d.context}")
    chosen = set(rng.choice(centres, size=min(samples, len(centres)), replace=False).tolist())
    per_frame = max(1, math.ceil(samples / max(len(centres), 1)))
    buf: deque = deque(maxlen=d.context)
    out, which = [], []
    for index, _t, data in source:
        if index >= last + k:
            break
        buf.append(np.asarray(data))
        centre = index - k
        if len(buf) < d.context or centre not in chosen:
            continue
        h, w = buf[0].shape
        if side > min(h, w):
            raise DenoiserError(f"training crops of {side} px do not fit frames of {h}x{w} px")
        spots = positions.get(centre) or [(rng.uniform(side / 2, w - side / 2), rng.uniform(side / 2, h - side / 2))]
        for _ in range(per_frame):
            x, y = spots[int(rng.integers(len(spots)))]
            x += rng.uniform(-side / 4, side / 4)
            y += rng.uniform(-side / 4, side / 4)
            x = min(max(x, side / 2), w - side / 2)
            y = min(max(y, side / 2), h - side / 2)
            st = _cut(list(buf), x, y, side)
            if st is not None and np.isfinite(st).all():
                out.append(st)
                which.append(centre)
    if not out:
        raise DenoiserError(f"{source.path}: no training stacks could be cut")
    return np.stack(out), np.array(which)


def _augment(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random rot90 and flips, the same for all frames of a stack."""
    out = []
    for s in batch:
        s = torch.rot90(s, int(rng.integers(4)), dims=(-2, -1))
        if rng.random() < 0.5:
            s = torch.flip(s, dims=(-1,))
        out.append(s)
    return torch.stack(out)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


# -- model files -------------------------------------------------------------------------------
def save_model(path: Path, net: BlindSpotNet, meta: dict[str, Any]) -> None:
    """Write a model file (see the module); atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().cpu().float().contiguous() for k, v in net.state_dict().items()}
    torch.save({"format": MODEL_FORMAT, "version": MODEL_VERSION, "spec": net.spec.to_dict(),
                "state_dict": state, "meta": json.dumps(meta)}, tmp)
    os.replace(tmp, path)


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[BlindSpotNet, dict[str, Any]]:
    """Read a model file; a file that is not one, or is damaged, raises :class:`DenoiserError`."""
    path = Path(path)
    if not path.is_file():
        raise DenoiserError(f"model file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for damaged files
        raise DenoiserError(f"{path}: not a readable model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise DenoiserError(f"{path}: not a btomo denoiser model (format {blob.get('format') if isinstance(blob, dict) else type(blob).__name__!r})")
    if blob.get("version") != MODEL_VERSION:
        raise DenoiserError(f"{path}: model file version {blob.get('version')}, this btomo reads {MODEL_VERSION}")
    try:
        net = BlindSpotNet(DenoiserSpec.from_dict(blob["spec"]))
        net.load_state_dict(blob["state_dict"])
        meta = json.loads(blob["meta"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise DenoiserError(f"{path}: damaged model file ({exc})") from None
    return net.to(device).eval(), meta


# -- training ----------------------------------------------------------------------------------
def train_denoiser(cfg: RunConfig, source: Any, out: Path, *, max_minutes: float | None = None,
                   resume: bool = False, reporter: Any = None, seed: int = 0,
                   data: TrainingData | None = None) -> dict[str, Any]:
    """Train a denoiser on ``source`` (a :class:`~btomo.stream.sources.FrameSource`) and write the
    model file ``out`` (and ``out.ckpt`` checkpoints while training).

    Returns a summary: steps, seconds, final and first losses (mean of 20 steps), samples.
    """
    d = cfg.denoiser
    device = select_device(d.device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    side = d.train_crop_px
    margin = side // 4
    if data is None:
        holdout = int(len(source) * (1.0 - d.train_holdout))
        t0 = time.perf_counter()
        stacks, frames = collect_stacks(cfg, source, samples=d.train_samples, side=side + margin, seed=seed,
                                        last=holdout)
        data = TrainingData(stacks, frames, holdout, str(source.path))
        log.info("training data: %d stacks of %d x %d px from %s (frames < %d) in %.1f s",
                 len(stacks), side + margin, side + margin, source.path, holdout, time.perf_counter() - t0)
    spec = spec_from_config(cfg)
    net = BlindSpotNet(spec).to(device)
    opt = torch.optim.RAdam(net.parameters(), lr=d.train_lr)
    ckpt = Path(str(out) + ".ckpt")
    step, losses, first_losses = 0, deque(maxlen=20), []
    total = d.train_steps
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("spec") != spec.to_dict():
            raise DenoiserError(f"{ckpt}: checkpoint of another architecture {state.get('spec')}")
        net.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        step, total = int(state["step"]), int(state["total"])
        first_losses = list(state.get("first_losses", []))
        log.info("resumed from %s at step %d of %d", ckpt, step, total)
    amp = device.type == "cuda"
    reporter = reporter or NullReporter()
    reporter.start(total, "train denoiser")
    if step:
        reporter.update(step)
    t_start = time.monotonic()
    last_ckpt = t_start
    deadline = t_start + 60.0 * max_minutes if max_minutes else None
    stacks_t = torch.from_numpy(data.stacks)
    n = len(stacks_t)
    net.train()
    timed_steps = 0
    try:
        while step < total:
            idx = rng.integers(0, n, d.train_batch)
            oy, ox = rng.integers(0, margin + 1, 2)
            batch = _augment(stacks_t[idx, :, oy:oy + side, ox:ox + side], rng)
            x, _, _ = normalise_stack(batch)
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            target = x[:, spec.context // 2 : spec.context // 2 + 1]
            for g in opt.param_groups:
                g["lr"] = d.train_lr * _lr_factor(step, d.train_warmup_steps, total)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                pred = net(x)
            loss = torch.mean((pred.float() - target) ** 2)
            if not torch.isfinite(loss):
                raise DenoiserError(f"training diverged at step {step} (loss {loss.item()})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            timed_steps += 1
            value = float(loss.item())
            losses.append(value)
            if len(first_losses) < 20:
                first_losses.append(value)
            reporter.update(1, loss=float(np.mean(losses)))
            now = time.monotonic()
            if deadline is not None and timed_steps == 10:
                # fit the schedule to the time left: the cosine then ends when the time does
                per = (now - t_start) / timed_steps
                fit = step + int((deadline - now) / per)
                if fit < total:
                    log.info("%.1f s per step: %d steps fit in %.0f min (of %d)", per, fit, max_minutes, total)
                    total = max(fit, step + 1)
                    if hasattr(reporter, "retotal"):
                        reporter.retotal(total)
            if deadline is not None and now >= deadline:
                log.info("time limit reached at step %d of %d", step, total)
                break
            if now - last_ckpt >= d.checkpoint_every_s:
                _checkpoint(ckpt, net, opt, step, total, spec, first_losses)
                last_ckpt = now
    except KeyboardInterrupt:
        _checkpoint(ckpt, net, opt, step, total, spec, first_losses)
        log.warning("interrupted at step %d: checkpoint %s (resume with --resume)", step, ckpt)
        raise
    finally:
        reporter.end()
    net.eval()
    seconds = time.monotonic() - t_start
    summary = {
        "steps": step, "planned_steps": total, "seconds": seconds,
        "loss_first": float(np.mean(first_losses)) if first_losses else math.nan,
        "loss_final": float(np.mean(losses)) if losses else math.nan,
        "samples": n, "crop_px": side, "device": str(device),
    }
    meta = {
        "source": data.source, "training_frames": [int(data.frames.min()), int(data.frames.max())],
        "holdout_from": data.holdout_from, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "summary": summary, "config": cfg.to_dict(),
    }
    save_model(out, net, meta)
    if ckpt.exists():
        ckpt.unlink()
    return summary


def _checkpoint(path: Path, net, opt, step: int, total: int, spec: DenoiserSpec, first_losses: list) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "total": total,
                "spec": spec.to_dict(), "first_losses": first_losses}, tmp)
    os.replace(tmp, path)


# -- inference ---------------------------------------------------------------------------------
def fallback_denoise(stack: np.ndarray, sigma_px: float) -> np.ndarray:
    """The classical fallback: the mean of the ``(..., context, H, W)`` frames, then a Gaussian of
    ``sigma_px`` (px) in the image plane. Returns ``(..., H, W)`` float32."""
    mean = np.asarray(stack, dtype=np.float32).mean(axis=-3)
    sig = [0.0] * (mean.ndim - 2) + [sigma_px, sigma_px]
    return ndimage.gaussian_filter(mean, sig, mode="nearest").astype(np.float32)


class Denoiser:
    """Batched inference of a trained network on ``(n, context, H, W)`` stacks of counts.

    Each stack is normalised on its own (mean 0, variance 1 over the stack), denoised, and
    returned in counts again. Channels-last; bf16 autocast when ``bf16`` (on this project's
    2-core CPU 2.9x faster than fp32 with the same PSNR and SSIM: docs/benchmarks.md).
    """

    def __init__(self, net: BlindSpotNet, device: torch.device | str = "cpu", *, batch: int = 8, bf16: bool = False):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().to(memory_format=torch.channels_last)
        self.spec = net.spec
        self.batch = batch
        self.bf16 = bf16

    @classmethod
    def from_file(cls, path: Path, device: str = "auto", batch: int = 8, bf16: bool = False) -> "Denoiser":
        dev = select_device(device)
        net, _ = load_model(path, dev)
        return cls(net, dev, batch=batch, bf16=bf16)

    @torch.inference_mode()
    def __call__(self, stacks: np.ndarray) -> np.ndarray:
        a = np.asarray(stacks, dtype=np.float32)
        if a.ndim != 4 or a.shape[1] != self.spec.context:
            raise ValueError(f"expected (n, {self.spec.context}, H, W) stacks, got {a.shape}")
        out = np.empty((a.shape[0], a.shape[2], a.shape[3]), np.float32)
        for i in range(0, len(a), self.batch):
            x, mean, std = normalise_stack(torch.from_numpy(a[i:i + self.batch]))
            x = x.to(self.device).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                y = self.net(x).float()
            out[i:i + self.batch] = (y.cpu() * std[:, :1] + mean[:, :1])[:, 0].numpy()
        return out


# -- the live stage ----------------------------------------------------------------------------
class _Fallback:
    """:func:`fallback_denoise` as a batch callable (the stage's stand-in without a model)."""

    def __init__(self, sigma_px: float):
        self.sigma_px = sigma_px

    def __call__(self, stacks: np.ndarray) -> np.ndarray:
        return fallback_denoise(stacks, self.sigma_px)


class Backlog:
    """The bounded queue of crops waiting for the denoiser, lattice crops first (not thread-safe:
    the stage holds its lock).

    :meth:`put` on a full queue: a lattice item displaces the oldest non-lattice item; otherwise
    the new item is refused. Returns what was lost: ``None``, ``"displaced"`` (an older
    non-lattice item) or ``"backlog_full"`` (the new item).
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"backlog limit must be >= 1, got {limit}")
        self.limit = limit
        self.items: deque = deque()

    def __len__(self) -> int:
        return len(self.items)

    def put(self, item: Any, lattice: bool) -> str | None:
        lost = None
        if len(self.items) >= self.limit:
            victim = next((i for i, (_, lat) in enumerate(self.items) if not lat), None) if lattice else None
            if victim is None:
                return "backlog_full"
            del self.items[victim]
            lost = "displaced"
        self.items.append((item, lattice))
        return lost

    def take(self, n: int) -> list[Any]:
        return [self.items.popleft()[0] for _ in range(min(n, len(self.items)))]


class DenoiseStage:
    """Denoise the tracked particles' crops in the live pipeline (after :class:`FrameAnalysis`).

    Per frame it keeps, for every active track, a region ``box + 2 margin`` px around the
    track's current centre (the last ``context + track_smoothing_frames`` frames per track). When
    the per-frame stage finishes a row (with its smoothed centre), the ``context`` frames around
    it are cut at that centre into one stack and queued for a worker thread that denoises in
    batches (so the frame loop does not wait for the network while it keeps up).

    The queue holds at most ``denoiser.backlog`` stacks. What a full queue does is
    ``denoiser.backlog_policy``: live ("skip"), a lattice stack (the frames that enter windows)
    displaces the oldest non-lattice one; a non-lattice stack is skipped; a lattice stack with
    only lattice stacks ahead of it is skipped too, every skip counted by reason
    (``counters()``: the dashboard shows them), so that the frame loop keeps up with the
    microscope. From a file ("wait") the frame loop waits for room instead and nothing is
    skipped (``held_s`` counts the wait): otherwise what ``btomo process`` keeps of a recording
    would depend on how busy the machine was. Without a model file the stage says so once and
    uses :func:`fallback_denoise`.

    Parameters
    ----------
    cfg : RunConfig
    frames : FrameAnalysis
        The per-frame stage of the same pipeline (its rows and tracks).
    denoiser : callable, optional
        ``(n, context, H, W)`` counts -> ``(n, H, W)``; default: the model of
        ``denoiser.model`` or the fallback.
    sink : callable, optional
        Called in the worker thread with ``(row, denoised crop, raw crop)`` for every denoised
        stack (the raw crop: the frame itself, cut at the same tracked centre).
    offline : bool
        The frames come from a file, which can wait: ``backlog_policy`` "auto" then waits for
        room in a full backlog instead of skipping (default ``False``: a live stream).
    """

    name = "denoise"

    def __init__(self, cfg: RunConfig, frames: FrameAnalysis, denoiser: Any = None, sink: Any = None, *,
                 offline: bool = False):
        import threading  # noqa: PLC0415

        self.cfg = cfg
        self.d = cfg.denoiser
        self.frames_stage = frames
        self.box = cfg.frames.box_px
        self.margin = 16
        self.k = self.d.context // 2
        self.keep = self.d.context + cfg.frames.track_smoothing_frames + 2
        self.method = "custom"
        if denoiser is None:
            if self.d.model:
                denoiser = Denoiser.from_file(Path(self.d.model), self.d.device, self.d.batch, self.d.bf16)
                self.method = "network"
                log.info("denoiser: %s on %s", self.d.model, denoiser.device)
            else:
                denoiser = _Fallback(self.d.fallback_sigma_px)
                self.method = "fallback"
                log.warning("no denoiser model (denoiser.model): using the classical fallback, the %d-frame "
                            "average and a Gaussian of %.1f px", self.d.context, self.d.fallback_sigma_px)
        self.denoiser = denoiser
        self.sink = sink
        self._regions: dict[int, deque] = {}  # particle -> deque of (frame, x0, y0, region)
        self._waiting: deque = deque()  # rows whose later context frames have not come yet
        self._last_frame = -1
        self._queue = Backlog(self.d.backlog)  # (row, stack) waiting for the worker
        policy = self.d.backlog_policy
        self.policy = ("wait" if offline else "skip") if policy == "auto" else policy
        self.held_seconds = 0.0  # the frame loop's wait for room ("wait")
        self._lock = threading.Condition()
        self._stop = False
        self.queued = self.denoised = 0
        self.skipped = {"backlog_full": 0, "displaced": 0, "no_context": 0, "error": 0}
        self.busy_seconds = 0.0
        self.sink_errors = 0
        self.latest: dict[int, tuple[int, np.ndarray]] = {}
        prev = frames.sink
        frames.sink = lambda row, _prev=prev: (_prev(row) if _prev else None, self._row(row))
        self._worker = threading.Thread(target=self._work, name="btomo-denoise", daemon=True)
        self._worker.start()

    # -- frame loop side ------------------------------------------------------------------
    def prepare(self, series: SeriesStart) -> None:
        self._regions.clear()
        self._waiting.clear()

    def process(self, frame: Frame) -> None:
        data = frame.data
        h, w = data.shape
        side = self.box + 2 * self.margin
        for pid, x, y in self.frames_stage.active_tracks():
            x0 = min(max(int(round(x)) - side // 2, 0), max(w - side, 0))
            y0 = min(max(int(round(y)) - side // 2, 0), max(h - side, 0))
            region = np.array(data[y0:y0 + side, x0:x0 + side], copy=True)
            self._regions.setdefault(pid, deque(maxlen=self.keep)).append((frame.frame, x0, y0, region))
        self._last_frame = frame.frame
        self._drain_waiting(frame.frame)

    def _row(self, row: dict[str, Any]) -> None:
        self._waiting.append(row)

    def _drain_waiting(self, now: int) -> None:
        while self._waiting and (self._waiting[0]["frame"] + self.k <= now):
            self._enqueue(self._waiting.popleft())

    def _stack(self, row: dict[str, Any]) -> np.ndarray | None:
        regions = {f: (x0, y0, r) for f, x0, y0, r in self._regions.get(row["particle"], ())}
        t = row["frame"]
        frames = [regions.get(f) for f in range(t - self.k, t + self.k + 1)]
        if any(f is None for f in frames):
            return None
        b = self.box
        cx, cy = int(round(row["x_px"])) - b // 2, int(round(row["y_px"])) - b // 2
        out = []
        for x0, y0, r in frames:
            ox, oy = cx - x0, cy - y0
            if ox < 0 or oy < 0 or ox + b > r.shape[1] or oy + b > r.shape[0]:
                return None  # the centre moved further than the margin, or the frame edge
            out.append(r[oy:oy + b, ox:ox + b])
        return np.stack(out).astype(np.float32)

    def _enqueue(self, row: dict[str, Any]) -> None:
        stack = self._stack(row)
        if stack is None:
            self.skipped["no_context"] += 1
            return
        lattice = bool(row.get("lattice"))
        with self._lock:
            if self.policy == "wait" and len(self._queue) >= self._queue.limit:
                t0 = time.perf_counter()
                while len(self._queue) >= self._queue.limit and self._worker.is_alive():
                    self._lock.wait(0.5)  # the worker notifies when it takes a batch
                self.held_seconds += time.perf_counter() - t0
            lost = self._queue.put((row, stack), lattice)
            if lost is not None:
                self.skipped[lost] += 1
            if lost != "backlog_full":
                self.queued += 1
                self._lock.notify()

    # -- worker side ----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stop:
                    self._lock.wait()
                if not self._queue and self._stop:
                    return
                items = self._queue.take(self.d.batch)
                n = len(items)
                self._lock.notify_all()  # room for a frame loop that waits ("wait")
            t0 = time.perf_counter()
            try:
                out = self.denoiser(np.stack([s for _, s in items]))
            except Exception:  # noqa: BLE001 - a failed batch is counted, the stream goes on
                log.exception("denoising a batch of %d crops failed", n)
                with self._lock:
                    self.skipped["error"] += n
                continue
            dt = time.perf_counter() - t0
            with self._lock:
                self.busy_seconds += dt
                self.denoised += n
            for (row, stack), crop in zip(items, out):
                self.latest[row["particle"]] = (row["frame"], crop)
                if self.sink is not None:
                    try:
                        self.sink(row, crop, stack[self.k])  # the raw crop: the stack's centre frame
                    except Exception:  # noqa: BLE001 - a consumer's failure must not stop denoising
                        log.exception("the consumer of denoised crops failed on frame %s", row.get("frame"))
                        with self._lock:
                            self.sink_errors += 1

    def counters(self) -> dict[str, Any]:
        with self._lock:
            backlog = len(self._queue)
        return {
            "method": self.method, "queued": self.queued, "denoised": self.denoised, "backlog": backlog,
            "backlog_limit": self.d.backlog, "backlog_policy": self.policy, "held_s": round(self.held_seconds, 3),
            "skipped": dict(self.skipped), "sink_errors": self.sink_errors,
            "crops_per_s": self.denoised / self.busy_seconds if self.busy_seconds else None,
        }

    def finish(self) -> dict[str, Any]:
        """Queue what is still waiting (the last rows have no later frames: counted), let the
        worker finish the backlog, and stop it."""
        self._drain_waiting(self._last_frame)
        self.skipped["no_context"] += len(self._waiting)
        self._waiting.clear()
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._worker.join()
        return self.counters()


# -- offline, full frames ----------------------------------------------------------------------
def denoise_frame(denoiser: Denoiser, frames: np.ndarray, *, tile: int = 128, margin: int | None = None) -> np.ndarray:
    """Denoise the centre of a ``(context, H, W)`` stack of full frames in tiles (bounded memory):
    each ``tile`` px tile is cut with ``margin`` px of context around it (default: the network's
    receptive radius; reflected at the frame's edges) so that tiles join without seams."""
    from btomo.kernels.denoiser import receptive_radius  # noqa: PLC0415

    c, h, w = frames.shape
    m = receptive_radius(denoiser.spec) if margin is None else margin
    padded = np.pad(np.asarray(frames, np.float32), ((0, 0), (m, m), (m, m)), mode="reflect")
    out = np.empty((h, w), np.float32)
    spots = [(y, x) for y in range(0, h, tile) for x in range(0, w, tile)]
    for i in range(0, len(spots), denoiser.batch):
        group = spots[i:i + denoiser.batch]
        side = tile + 2 * m
        stacks = np.zeros((len(group), c, side, side), np.float32)
        for j, (y, x) in enumerate(group):
            part = padded[:, y:y + side, x:x + side]
            stacks[j, :, :part.shape[1], :part.shape[2]] = part
            if part.shape[1] < side or part.shape[2] < side:  # the last row/column of tiles
                stacks[j, :, part.shape[1]:, :] = part.mean()
                stacks[j, :, :, part.shape[2]:] = part.mean()
        den = denoiser(stacks)
        for j, (y, x) in enumerate(group):
            hh, ww = min(tile, h - y), min(tile, w - x)
            out[y:y + hh, x:x + ww] = den[j, m:m + hh, m:m + ww]
    return out


def denoise_source(denoiser: Denoiser, source: Any, out: Path, *, reporter: Any = None) -> dict[str, Any]:
    """Denoise every frame of ``source`` into ``out``: an MRC stack (``.mrc``, float32, voxel size
    the pixel size) or a Zarr v3 array (``.zarr``, one chunk per frame). At the ends of the series
    the missing neighbours are the nearest frames (the series reflected)."""
    out = Path(out)
    n, (h, w) = len(source), tuple(source.shape)
    k = denoiser.spec.context // 2
    suffix = out.suffix.lower()
    if suffix not in (".mrc", ".zarr"):
        raise DenoiserError(f"{out}: the output must end in .mrc or .zarr")
    if out.exists():
        raise DenoiserError(f"{out} exists already; choose a new name")
    reporter = reporter or NullReporter()
    if suffix == ".mrc":
        import mrcfile  # noqa: PLC0415

        handle = mrcfile.new_mmap(out, shape=(n, h, w), mrc_mode=2)
        handle.voxel_size = source.pixel_size_A
        target = handle.data
    else:
        import zarr  # noqa: PLC0415

        handle = None
        target = zarr.create_array(out, shape=(n, h, w), chunks=(1, h, w), dtype="float32", zarr_format=3,
                                   attributes={"pixel_size_A": source.pixel_size_A, "fps": source.fps,
                                               "source": str(source.path), "denoised_by": "btomo"})
    t0 = time.perf_counter()
    reporter.start(n, "denoise")
    cache: dict[int, np.ndarray] = {}
    try:
        for t in range(n):
            idx = [_reflect(i, n) for i in range(t - k, t + k + 1)]
            for i in idx:
                if i not in cache:
                    cache[i] = np.asarray(source.read(i), np.float32)
            target[t] = denoise_frame(denoiser, np.stack([cache[i] for i in idx]))
            for i in [i for i in cache if i < t - k]:
                del cache[i]
            reporter.update(1)
    finally:
        reporter.end()
        if handle is not None:
            handle.close()
    return {"frames": n, "seconds": time.perf_counter() - t0, "out": str(out)}


def _reflect(i: int, n: int) -> int:
    """Frame index ``i`` reflected into ``[0, n)`` at the series' ends (clamped for tiny series)."""
    if i < 0:
        i = -i
    elif i > n - 1:
        i = 2 * (n - 1) - i
    return min(max(i, 0), n - 1)
