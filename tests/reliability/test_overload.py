"""A sender faster than the pipeline (issue 10, item 4): ``btomo replay`` at full speed into a
``run_live`` whose stage takes 4 ms a frame, over tcp on 127.0.0.1.

* ``block``: nothing is lost (the sender is held back), the queue never holds more than its limit;
* ``drop-oldest``: the drops are counted, what arrived is accounted for, the queue stays bounded;
* memory stays bounded either way (peak Python/NumPy allocation far below the stream's size);
* the dashboard says which policy is acting ("backpressure" / "dropping oldest").
"""
from __future__ import annotations

import io
import threading
import time
import tracemalloc

import pytest
from rich.console import Console

from btomo.stream.config import load_config
from btomo.stream.dashboard import Dashboard
from btomo.stream.metrics import read_metrics
from btomo.stream.pipeline import run_live
from btomo.stream.replay import replay
from btomo.stream.sources import open_source
from helpers import free_address

pytestmark = pytest.mark.timeout(120)


class SlowStage:
    """A stage slower than the stream; it looks at the dashboard once the queue has filled."""

    name = "slow"

    def __init__(self, dashboard: Dashboard, seconds: float = 0.004):
        self.dashboard, self.seconds = dashboard, seconds
        self.frames, self.screens = 0, []

    def prepare(self, series) -> None:
        pass

    def process(self, frame) -> None:
        time.sleep(self.seconds)
        self.frames += 1
        if self.frames % 50 == 0:
            buf = io.StringIO()
            Console(file=buf, width=80, height=24, color_system=None).print(self.dashboard.render(80, 24))
            self.screens.append(buf.getvalue())

    def finish(self) -> dict:
        return {"frames": self.frames}


@pytest.mark.parametrize("policy", ["block", "drop-oldest"])
def test_a_sender_faster_than_the_pipeline(lattice_rec, tmp_path, policy):
    address = free_address()
    cfg = load_config(lattice_rec / "config.toml", overrides={
        "stream.source": address, "stream.side_channel": "", "stream.queue_policy": policy,
        "stream.queue_frames": 16, "stream.socket_hwm": 4, "stream.idle_timeout_s": 2.0, "jobs.enabled": False,
        "stream.metrics_every_s": 0.5})
    send_cfg = load_config(None, {"stream.source": address, "stream.linger_s": 2.0, "stream.socket_hwm": 4})
    dashboard = Dashboard(Console(file=io.StringIO(), width=80, height=24), keys=False)
    stage = SlowStage(dashboard)
    sent = {}
    sender = threading.Thread(target=lambda: sent.update(
        r=replay(open_source(lattice_rec), send_cfg.stream, to=address, rate=None)))
    tracemalloc.start()
    try:
        sender.start()
        summary = run_live(cfg, tmp_path / "run", reporter=dashboard, stages=(stage,))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        sender.join(30)
    ing = summary["ingest"]
    # metrics.jsonl: a line every 0.5 s; the intervals' latencies add up to every processed frame
    lines = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(lines) >= 4 and lines[-1]["frames_processed"] == ing["frames_processed"]
    assert sum(m["latency_ms"]["count"] for m in lines) == ing["frames_processed"]
    assert all(m["rss_mb"] > 0 and m["threads"] > 0 and m["fds"] > 0 for m in lines)
    frame_mb = 288 * 288 * 2 / 2**20
    assert sent["r"].frames == 400
    assert ing["queue_high_water"] <= 16 and ing["queue_limit"] == 16 and ing["queue_policy"] == policy
    # the whole stream is 63 MiB of pixels; what is held at once is the queue and a few messages
    assert peak / 2**20 < 40 * frame_mb + 8, f"peak allocation {peak / 2**20:.1f} MiB"
    if policy == "block":
        assert ing["frames_accepted"] == ing["frames_processed"] == stage.frames == 400
        assert summary["frames_dropped"] == {} and summary["frame_gaps"] == 0
        assert any("backpressure" in s for s in stage.screens), stage.screens[-1]
    else:
        dropped = summary["frames_dropped"].get("queue_full", 0)
        assert dropped > 0 and ing["frames_accepted"] == 400 == stage.frames + dropped
        assert any("dropping oldest" in s for s in stage.screens), stage.screens[-1]
        assert any("dropped queue_full" in s for s in stage.screens)
