"""Security defaults and limits (issue 10, item 7).

* every address btomo opens by default is on 127.0.0.1 (stream, side channel, replay, the
  LocalCluster of the reconstruction jobs);
* header size, frame size and message rate limits are configurable and enforced (CURVE
  authentication is tested in tests/stream/test_ingest.py::test_curve_stream_needs_the_keys);
* a series id from the wire never becomes a file name (``btomo record`` and ``btomo live``);
* nothing on the wire is unpickled: no pickle / ``*_pyobj`` in the package, and the denoiser's
  weights load with ``weights_only``.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from btomo.stream.config import ConfigError, load_config
from btomo.stream.messages import Frame, SeriesStart
from btomo.stream.recording import Recording
from btomo.stream.wire import frame_message, series_end_message, series_start_message
from helpers import free_address, send_and_receive, stream_config

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def _frame(i: int) -> np.ndarray:
    return (np.random.default_rng(i).poisson(3, (32, 48)) + i).astype("<u2")


def _push(address: str, ctx: zmq.Context) -> zmq.Socket:
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.setsockopt(zmq.SNDHWM, 10_000)
    push.bind(address)
    return push


def _receive(cfg, messages) -> tuple[list, dict, float]:
    t0 = time.monotonic()
    records, counters = send_and_receive(cfg, messages)
    return records, counters, time.monotonic() - t0


def test_default_addresses_are_local():
    cfg = load_config()
    for address in (cfg.stream.source, cfg.stream.side_channel):
        assert address.startswith("tcp://127.0.0.1:"), address
    assert not cfg.stream.bind and cfg.jobs.scheduler == ""  # a LocalCluster of its own ...
    src = (ROOT / "stream" / "jobs.py").read_text()
    assert 'host="127.0.0.1"' in src and "dashboard_address=None" in src  # ... on loopback, no web dashboard
    out = subprocess.run([sys.executable, "-m", "btomo.stream", "replay", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "127.0.0.1" in out


def test_the_header_size_limit_is_configurable():
    start = series_start_message(SeriesStart("s"))
    big = frame_message("s", 1, 2_500_000, _frame(1), wall_ns=time.time_ns())
    h = json.loads(bytes(big[0]))
    h["meta_padding"] = "x" * 8000  # an 8 kB header
    big[0] = json.dumps(h).encode()
    msgs = [start, frame_message("s", 0, 0, _frame(0), wall_ns=time.time_ns()), big]
    _, c, _ = _receive(stream_config(**{"stream.max_header_kb": 4}), msgs)
    assert c["frames_accepted"] == 1 and c["messages_malformed"] == {"header_too_large": 1}
    _, c, _ = _receive(stream_config(**{"stream.max_header_kb": 16}), msgs)
    assert c["frames_accepted"] == 2 and c["messages_malformed"] == {}
    with pytest.raises(ConfigError, match="max_header_kb"):
        stream_config(**{"stream.max_header_kb": 0})


def test_the_frame_size_limit_is_configurable():
    msgs = [series_start_message(SeriesStart("s")), frame_message("s", 0, 0, _frame(0), wall_ns=time.time_ns())]
    _, c, _ = _receive(stream_config(**{"stream.max_shape": "16x16"}), msgs)
    assert c["frames_accepted"] == 0 and c["messages_malformed"] == {"shape_too_large": 1}
    _, c, _ = _receive(stream_config(**{"stream.max_shape": "32x48"}), msgs)
    assert c["frames_accepted"] == 1


def test_the_message_rate_limit_holds_the_sender_back_without_loss():
    n = 120
    msgs = [series_start_message(SeriesStart("s"))]
    msgs += [frame_message("s", i, i * 2_500_000, _frame(i), wall_ns=time.time_ns()) for i in range(n)]
    msgs += [series_end_message("s", n)]
    cfg = stream_config(**{"stream.max_messages_per_s": 100.0, "stream.max_frames": n})
    records, c, took = _receive(cfg, msgs)
    frames = [r for r in records if isinstance(r, Frame)]
    assert [f.frame for f in frames] == list(range(n))  # nothing dropped: the sender waited
    assert c["frames_dropped"] == {} and c["messages_malformed"] == {}
    assert took >= (n - 10) / 100.0 and c["throttled_s"] > 0.5
    with pytest.raises(ConfigError, match="max_messages_per_s"):
        stream_config(**{"stream.max_messages_per_s": -1})


HOSTILE = ["../../../evil-series", "/tmp/evil-absolute", "..", "a/../../b", "con\x00nul", "x" * 5000]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_series_ids_from_the_wire_never_become_file_names(tmp_path):
    """``btomo record`` and ``btomo live`` given series ids that are paths: every file they make
    is inside their own directory and named by btomo; the ids are kept as data only."""
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    before = _files(tmp_path)
    rec_dir, run_dir = sandbox / "rec", sandbox / "run"
    procs = []
    for args in (["record", str(rec_dir)], ["live", "--run-dir", str(run_dir), "--no-dashboard",
                                             "--set", "jobs.enabled=false"]):
        # a fresh port for each receiver: zmq releases a closed socket's port asynchronously,
        # so binding the first receiver's address again can fail with "Address already in use"
        address = free_address()
        procs.append(subprocess.Popen([sys.executable, "-m", "btomo.stream", *args, "--source", address,
                                       "--idle-timeout", "1", "--set", "stream.side_channel="],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=sandbox))
        ctx = zmq.Context.instance()
        push = _push(address, ctx)
        for k, series in enumerate(HOSTILE):
            push.send_multipart(series_start_message(SeriesStart(series)))
            for i in range(3):
                push.send_multipart(frame_message(series, i, i * 2_500_000, _frame(3 * k + i),
                                                  wall_ns=time.time_ns(), pixel_size_A=0.358))
            push.send_multipart(series_end_message(series, 3))
        out, err = procs[-1].communicate(timeout=60)
        push.close()
        assert procs[-1].returncode == 0, err
    made = _files(tmp_path) - before
    assert all(sandbox in p.parents for p in made), [p for p in made if sandbox not in p.parents]
    assert not any("evil" in p.name or p.name == "b" for p in made)
    assert not Path("/tmp/evil-absolute").exists()
    kept = HOSTILE[:-1]  # an id over 256 characters is refused (its 5 messages counted), the others kept as data
    meta = json.loads((rec_dir / "recording.json").read_text())
    assert [s["series"] for s in meta["series_list"]] == kept
    assert meta["ingest"]["messages_malformed"] == {"bad_field": 5}
    with Recording(rec_dir) as r:
        assert len(r) == 3 * len(kept)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["frames_processed"] == 3 * len(kept) and summary["series_count"] == len(kept)


def test_nothing_on_the_wire_is_unpickled():
    pattern = re.compile(r"^\s*(import|from)\s+(c?pickle|cloudpickle|dill|marshal)\b|_pyobj\(|pickle\.loads?\(",
                         re.MULTILINE)
    sources = [p for room in ("stream", "kernels", "reconstruct", "analysis") for p in (ROOT / room).rglob("*.py")]
    assert len(sources) > 30
    offenders = [str(p.relative_to(ROOT)) for p in sources if pattern.search(p.read_text())]
    assert offenders == []
    for p in sources:  # torch.load only of plain tensors
        for call in re.findall(r"torch\.load\([^)]*\)", p.read_text()):
            assert "weights_only=True" in call, f"{p.name}: {call}"


def test_the_header_size_limit_applies_to_dectris_v1_parts():
    from btomo.stream.dectris import Stream1Decoder  # noqa: PLC0415
    from btomo.stream.ingest import make_decoder  # noqa: PLC0415

    head = json.dumps({"htype": "dheader-1.0", "series": 7, "header_detail": "basic"}).encode()
    config = json.dumps({"frame_time": 0.0025, "x_pixel_size": 7.5e-5, "padding": "x" * 8000}).encode()
    small = make_decoder("dectris1", (8192, 8192), 4 << 10)
    assert isinstance(small, Stream1Decoder) and small.max_header_bytes == 4096
    out = small.decode([head, config])
    assert [getattr(r, "reason", None) for r in out] == ["header_too_large"], out
    out = make_decoder("dectris1", (8192, 8192), 16 << 10).decode([head, config])
    assert [type(r).__name__ for r in out] == ["SeriesStart"], out
