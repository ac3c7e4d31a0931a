"""The self-supervised spatiotemporal denoiser (paper, Methods "Model architectures").

A blind-spot network in torch: the frame to denoise and its four neighbours in time go in, the
denoised centre frame comes out, and no output pixel can see the centre frame's own 3x3
neighbourhood, so that a Noise2Void L2 loss against the noisy frame itself cannot be minimised
by copying (Krull et al. 2019; Honzatko et al. 2020, the design the paper built on).

How the blind spot is guaranteed (a property of the architecture, tested with autograd):

* The centre frame enters through a **1x1** convolution, the neighbours through a ``k x k``
  convolution (their noise is independent of the centre's: they may see every pixel).
* Two streams run through ``blocks`` **feature-fusion blocks**: the *neighbour stream* (a 3x3
  convolution per block; it never sees the centre frame) and the *centre stream*, where a 1x1
  convolution fuses both streams and a 3x3 convolution follows (with a residual). Each block
  widens what the centre stream sees of the centre frame by one pixel: after block ``b`` a
  feature at ``p`` depends on centre pixels within Chebyshev distance ``b`` of ``p``.
* The output **collects** each level's features through a 3x3 convolution with dilation
  ``b + 2`` whose centre tap is removed: output pixel ``p`` reads level ``b`` only at
  ``p + (b + 2) t`` with ``t`` one of the 8 outer taps, whose centre-frame support lies at
  distance ``>= 2`` from ``p``. The neighbour stream's last features join at ``p`` itself (the
  neighbours' own pixel is their most useful one), and pointwise (1x1) layers mix the two.
* No layer mixes pixels otherwise (no normalisation across the image, no pooling).

So ``d out[p] / d centre[q] = 0`` exactly for ``|q - p|_inf <= 1``. The paper's size is the
default (24 channels, 14 blocks); :class:`DenoiserSpec` makes it configurable.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DenoiserSpec", "BlindSpotNet", "normalise_stack", "blind_radius", "receptive_radius"]


@dataclass(frozen=True)
class DenoiserSpec:
    """Architecture of :class:`BlindSpotNet` (recorded in every model file).

    Attributes
    ----------
    context : int
        Frames in, odd (the centre and ``(context - 1) / 2`` on each side); paper: 5.
    channels : int
        Feature channels; paper: 24.
    blocks : int
        Feature-fusion blocks; paper: 14.
    neighbour_kernel : int
        Kernel of the neighbours' first convolution, px (odd); paper: 3.
    head_channels : int
        Channels of the pointwise output head.
    """

    context: int = 5
    channels: int = 24
    blocks: int = 14
    neighbour_kernel: int = 3
    head_channels: int = 48

    def __post_init__(self) -> None:
        if self.context < 1 or self.context % 2 == 0:
            raise ValueError(f"context must be an odd number of frames >= 1, got {self.context}")
        if self.channels < 1 or self.blocks < 0 or self.head_channels < 1:
            raise ValueError(f"channels, head_channels >= 1 and blocks >= 0 expected, got {self}")
        if self.neighbour_kernel < 1 or self.neighbour_kernel % 2 == 0:
            raise ValueError(f"neighbour_kernel must be odd, got {self.neighbour_kernel}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DenoiserSpec":
        names = set(cls.__dataclass_fields__)
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown denoiser architecture keys {sorted(unknown)}")
        return cls(**d)


def blind_radius() -> int:
    """Half-width of the blind spot, px (1: a 3x3 window)."""
    return 1


class _CentrelessConv(nn.Conv2d):
    """A 3x3 convolution with dilation ``d`` and no centre tap."""

    def __init__(self, cin: int, cout: int, dilation: int):
        super().__init__(cin, cout, 3, padding=dilation, dilation=dilation, bias=False)
        mask = torch.ones(1, 1, 3, 3)
        mask[..., 1, 1] = 0.0
        self.register_buffer("tap_mask", mask, persistent=False)
        with torch.no_grad():
            self.weight.mul_(self.tap_mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.tap_mask, None, self.stride, self.padding, self.dilation)


class _FusionBlock(nn.Module):
    """One feature-fusion block: the neighbour stream's 3x3 step, then the centre stream's 1x1
    fusion of both streams and its 3x3 step (residuals on both)."""

    def __init__(self, c: int, with_neighbours: bool):
        super().__init__()
        self.nconv = nn.Conv2d(c, c, 3, padding=1) if with_neighbours else None
        self.fuse = nn.Conv2d(2 * c if with_neighbours else c, c, 1)
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, h: torch.Tensor, n: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if n is not None:
            n = n + self.nconv(F.leaky_relu(n, 0.1))
            f = self.fuse(torch.cat([h, n], dim=1))
        else:
            f = self.fuse(h)
        return h + self.conv(F.leaky_relu(f, 0.1)), n


class BlindSpotNet(nn.Module):
    """The denoiser (see the module): ``(B, context, H, W)`` normalised frames -> ``(B, 1, H, W)``.

    Parameters
    ----------
    spec : DenoiserSpec
    """

    def __init__(self, spec: DenoiserSpec | None = None):
        super().__init__()
        self.spec = spec = spec or DenoiserSpec()
        c, hc = spec.channels, spec.head_channels
        with_n = spec.context > 1
        self.centre_in = nn.Conv2d(1, c, 1)
        self.neighbours_in = (nn.Conv2d(spec.context - 1, c, spec.neighbour_kernel,
                                        padding=spec.neighbour_kernel // 2) if with_n else None)
        self.blocks = nn.ModuleList(_FusionBlock(c, with_n) for _ in range(spec.blocks))
        # level b (0 = the stem) sees the centre frame within b px: read it at distance b + 2
        self.collect = nn.ModuleList(_CentrelessConv(c, hc, b + 2) for b in range(spec.blocks + 1))
        self.neighbours_out = nn.Conv2d(c, hc, 1, bias=False) if with_n else None
        self.head = nn.Sequential(
            nn.LeakyReLU(0.1), nn.Conv2d(hc, hc, 1),
            nn.LeakyReLU(0.1), nn.Conv2d(hc, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if x.ndim != 4 or x.shape[1] != spec.context:
            raise ValueError(f"expected (batch, {spec.context}, H, W) frames, got {tuple(x.shape)}")
        k = spec.context // 2
        h = F.leaky_relu(self.centre_in(x[:, k:k + 1]), 0.1)
        n = None
        if self.neighbours_in is not None:
            n = self.neighbours_in(torch.cat([x[:, :k], x[:, k + 1:]], dim=1))
        out = self.collect[0](h)
        for block, collect in zip(self.blocks, self.collect[1:]):
            h, n = block(h, n)
            out = out + collect(h)
        if n is not None:
            out = out + self.neighbours_out(F.leaky_relu(n, 0.1))
        return self.head(out)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_pixel(self) -> int:
        """Multiply-accumulates per output pixel (for the benchmarks' floor)."""
        s, c = self.spec, self.spec.channels
        n = c + (s.context - 1) * c * s.neighbour_kernel**2
        per_block = 9 * c * c + (2 * c * c + 9 * c * c if s.context > 1 else c * c + 9 * c * c)
        n += s.blocks * per_block + (c * s.head_channels if s.context > 1 else 0)
        n += (s.blocks + 1) * 8 * c * s.head_channels
        n += s.head_channels * s.head_channels + s.head_channels
        return n


def normalise_stack(stack: np.ndarray | torch.Tensor, eps: float = 1e-6):
    """Mean 0, variance 1 over a whole ``(..., context, H, W)`` stack; returns (stack, mean, std).

    One scalar pair per stack (not per pixel): the network's blind spot stays exact up to this
    global affine map, whose weight on any one pixel is 1 / (context H W).
    """
    if isinstance(stack, torch.Tensor):
        dims = tuple(range(stack.ndim - 3, stack.ndim))
        mean = stack.mean(dim=dims, keepdim=True)
        std = stack.std(dim=dims, keepdim=True, correction=0).clamp_min(eps)
        return (stack - mean) / std, mean, std
    a = np.asarray(stack, dtype=np.float32)
    axes = tuple(range(a.ndim - 3, a.ndim))
    mean = a.mean(axis=axes, keepdims=True)
    std = np.maximum(a.std(axis=axes, keepdims=True), eps)
    return (a - mean) / std, mean, std


def receptive_radius(spec: DenoiserSpec) -> int:
    """How far (px) an output pixel sees: the crop margin that keeps edges out of the output."""
    # the deepest level: dilation blocks + 2, plus what its features see (blocks px, plus the
    # neighbour stream's first kernel)
    return 2 * spec.blocks + 2 + spec.neighbour_kernel // 2 + 1

