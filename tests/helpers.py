"""Helpers shared by the tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""
from __future__ import annotations

import numpy as np

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


def free_address() -> str:
    """A tcp address on 127.0.0.1 with a port nobody listens on now."""
    from btomo.stream.ingest import free_tcp_address  # noqa: PLC0415

    return free_tcp_address()


def stream_config(**overrides) -> RunConfig:
    """A config whose stream uses fresh local ports and stops after 1 s without frames."""
    base = {
        "stream.source": free_address(),
        "stream.side_channel": free_address(),
        "stream.idle_timeout_s": 1.0,
    }
    base.update(overrides)
    return small_config(**base)


def send_and_receive(cfg, messages, *, hwm: int = 10_000):
    """Bind a PUSH socket at ``cfg.stream.source``, send ``messages`` (lists of parts) to an
    :class:`~btomo.stream.ingest.Ingest` and consume until it stops: (records, counters)."""
    import zmq  # noqa: PLC0415

    from btomo.stream.ingest import Ingest  # noqa: PLC0415

    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.setsockopt(zmq.SNDHWM, hwm)  # before bind: a listener copies its options then
    push.bind(cfg.stream.source)
    ingest = Ingest(cfg, context=ctx).start()
    try:
        for m in messages:
            push.send_multipart(m, copy=False)
        records = consume(ingest)
    finally:
        ingest.close()
        push.close()
    return records, ingest.counters.snapshot()


def consume(ingest, *, delay_s: float = 0.0):
    """Everything an :class:`~btomo.stream.ingest.Ingest` delivers until it stops, marking frames
    processed (after ``delay_s`` each, to play a slow pipeline)."""
    import time  # noqa: PLC0415

    from btomo.stream.messages import Frame  # noqa: PLC0415

    out = []
    for rec in ingest.records():
        if isinstance(rec, Frame):
            if delay_s:
                time.sleep(delay_s)
            ingest.counters.processed(rec)
        out.append(rec)
    return out


# -- a particle of Gaussian atoms with exact projections (reconstruction tests) --------------
GAUSS_BOX, GAUSS_VOXEL, GAUSS_SIGMA = 40, 0.716, 1.1  # voxels; A/voxel; atom width, voxels


def gaussian_atoms(radius_A=7.0):
    from btomo.kernels.crystal import fcc_points  # noqa: PLC0415

    return fcc_points(radius_A) / GAUSS_VOXEL  # (n, 3) x, y, z in voxels about the centre


def gaussian_atoms_volume(atoms):
    """Gaussian atoms sampled on the grid ([z, y, x], origin at GAUSS_BOX // 2)."""
    g = np.arange(GAUSS_BOX) - GAUSS_BOX // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    v = np.zeros((GAUSS_BOX,) * 3)
    for ax, ay, az in atoms:
        v += np.exp(-((x - ax) ** 2 + (y - ay) ** 2 + (z - az) ** 2) / (2 * GAUSS_SIGMA**2))
    return v


def gaussian_atoms_projections(atoms, rots):
    """Exact projections along lab z: each atom a 2D Gaussian at (R r)_xy, its z-integral."""
    g = np.arange(GAUSS_BOX) - GAUSS_BOX // 2
    y, x = np.meshgrid(g, g, indexing="ij")
    out = np.zeros((len(rots), GAUSS_BOX, GAUSS_BOX))
    amp = np.sqrt(2 * np.pi) * GAUSS_SIGMA
    for i, r in enumerate(rots):
        lab = atoms @ r.T
        for ax, ay, _ in lab:
            out[i] += amp * np.exp(-((x - ax) ** 2 + (y - ay) ** 2) / (2 * GAUSS_SIGMA**2))
    return out


def correlation(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
