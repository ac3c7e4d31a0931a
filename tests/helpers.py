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
