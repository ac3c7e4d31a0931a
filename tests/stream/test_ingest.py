"""The ingest runtime over real ZeroMQ sockets on 127.0.0.1: the btomo protocol, bad input of every
kind interleaved with valid frames, queue policies, restarts, the side channel, CURVE."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import zmq

from btomo.stream.ingest import FrameQueue, Ingest, IngestCounters, LatencyStats
from btomo.stream.messages import Frame, SeriesEnd, SeriesStart
from btomo.stream.wire import frame_message, series_end_message, series_start_message
from helpers import consume, stream_config

pytestmark = pytest.mark.timeout(90)

def _frame(i, shape=(32, 48), dtype="<u2"):
    """Frame ``i``: the same counts every time it is asked for."""
    return (np.random.default_rng(i).poisson(3, shape) + i).astype(dtype)


def _sender(address, ctx, hwm=1000):
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.setsockopt(zmq.SNDHWM, hwm)  # before bind: a listener copies its options then
    push.bind(address)
    return push


def _receive(cfg, messages, *, ctx=None, delay_s=0.0):
    """Send ``messages`` (lists of parts) to an Ingest and consume until it stops."""
    ctx = ctx or zmq.Context.instance()
    push = _sender(cfg.stream.source, ctx)
    ingest = Ingest(cfg, context=ctx).start()
    try:
        for m in messages:
            push.send_multipart(m, copy=False)
        records = consume(ingest, delay_s=delay_s)
    finally:
        ingest.close()
        push.close()
    return records, ingest.counters.snapshot()


def _valid(series, i, **kw):
    return frame_message(series, i, i * 2_500_000, _frame(i), wall_ns=time.time_ns(), **kw)


def test_btomo_protocol_roundtrip_with_metadata():
    cfg = stream_config(**{"stream.max_frames": 5})
    start = SeriesStart("s1", (32, 48), np.dtype("<u2"), 0.5, 400.0, 12.0, 5, {"sample": "Pt"})
    msgs = [series_start_message(start)] + [_valid("s1", i, pixel_size_A=0.5) for i in range(5)]
    records, c = _receive(cfg, msgs)
    assert isinstance(records[0], SeriesStart) and records[0].meta == {"sample": "Pt"} and records[0].fps == 400
    frames = [r for r in records if isinstance(r, Frame)]
    assert [f.frame for f in frames] == list(range(5))
    for f in frames:
        np.testing.assert_array_equal(f.data, _frame(f.frame))
        assert f.t_ns == f.frame * 2_500_000 and f.pixel_size_A == 0.5
        assert f.dose_e_per_A2 == 12.0  # from the series start
        assert not f.data.flags.writeable  # a zero-copy view of the message
        assert 0 <= f.received_ns - f.acq_wall_ns < 5e9
    assert c["frames_accepted"] == c["frames_processed"] == 5
    assert c["latency"]["count"] == 5 and c["latency"]["p50_ms"] < 5000
    assert c["messages_malformed"] == {} and c["frame_gaps"] == 0


def _bad_messages():
    """(reason counted, message) for every kind of bad btomo message."""
    hdr = {"btomo": 1, "type": "frame", "series": "s", "frame": 99, "t_ns": 0, "shape": [32, 48], "dtype": "uint16"}
    blob = _frame(0).tobytes()
    nan = np.zeros((32, 48), np.float32)
    nan[3, 4] = np.nan
    inf = np.zeros((32, 48), np.float32)
    inf[0, 0] = np.inf
    return [
        ("wrong_part_count", [json.dumps(hdr).encode()]),
        ("wrong_part_count", [json.dumps(hdr).encode(), blob, blob]),
        ("bad_json", [b"{not json", blob]),
        ("bad_json", [b"\xff\xfe", blob]),
        ("bad_json", [b"[1, 2]", blob]),
        ("unknown_version", [json.dumps({**hdr, "btomo": 2}).encode(), blob]),
        ("unknown_version", [json.dumps({k: v for k, v in hdr.items() if k != "btomo"}).encode(), blob]),
        ("unknown_type", [json.dumps({**hdr, "type": "frames"}).encode(), blob]),
        ("unknown_dtype", [json.dumps({**hdr, "dtype": "complex64"}).encode(), blob]),
        ("unknown_dtype", [json.dumps({**hdr, "dtype": ">u2"}).encode(), blob]),
        ("size_mismatch", [json.dumps(hdr).encode(), blob[:-2]]),
        ("size_mismatch", [json.dumps({**hdr, "dtype": "uint32"}).encode(), blob]),
        ("shape_too_large", [json.dumps({**hdr, "shape": [100000, 100000]}).encode(), b"x"]),
        ("bad_shape", [json.dumps({**hdr, "shape": [32, -48]}).encode(), blob]),
        ("bad_shape", [json.dumps({**hdr, "shape": [32]}).encode(), blob]),
        ("bad_field", [json.dumps({**hdr, "frame": -1}).encode(), blob]),
        ("bad_field", [json.dumps({**hdr, "t_ns": "now"}).encode(), blob]),
        ("bad_field", [json.dumps({**hdr, "series": None}).encode(), blob]),
        ("bad_field", [json.dumps({**hdr, "pixel_size_A": -1}).encode(), blob]),
        ("non_finite", [json.dumps({**hdr, "dtype": "float32"}).encode(), nan.tobytes()]),
        ("non_finite", [json.dumps({**hdr, "dtype": "float32"}).encode(), inf.tobytes()]),
        ("header_too_large", [b"{" + b" " * 70000 + b"}", blob]),
        ("too_many_parts", [b"{}"] * 20),
        ("unknown_series", series_end_message("never-started")),
    ]


def test_every_bad_message_is_counted_by_reason_and_valid_frames_all_arrive(caplog):
    bad = _bad_messages()
    msgs = [series_start_message(SeriesStart("s"))]
    for i, (_, m) in enumerate(bad):  # each bad message between two valid frames
        msgs += [_valid("s", 2 * i), m, _valid("s", 2 * i + 1)]
    n_valid = 2 * len(bad)
    cfg = stream_config(**{"stream.max_frames": n_valid})
    records, c = _receive(cfg, msgs)
    frames = [r for r in records if isinstance(r, Frame)]
    assert [f.frame for f in frames] == list(range(n_valid))
    expected: dict[str, int] = {}
    for reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert c["messages_malformed"] == expected
    assert c["frames_accepted"] == c["frames_processed"] == n_valid
    assert c["frames_dropped"] == {} and c["frame_gaps"] == 0
    # each reason is logged, and the log says what was expected
    text = caplog.text
    assert "rejected a message: size_mismatch: expected 3072 bytes for 32x48 uint16, got 3070" in text
    assert "shape_too_large: expected at most 8192x8192 px, got 100000x100000" in text


def test_rejections_are_logged_rate_limited(caplog):
    cfg = stream_config(**{"stream.max_frames": 1})
    msgs = [[b"{broken"]] * 200 + [_valid("s", 0)]
    _, c = _receive(cfg, msgs)
    assert c["messages_malformed"] == {"bad_json": 200}
    assert 5 <= caplog.text.count("bad_json") <= 8  # the first five, then a summary line at most every 10 s


def test_duplicates_dropped_out_of_order_counted_gaps_measured():
    order = [0, 1, 2, 2, 5, 4, 3, 3, 9, 7]  # 2 and 3 twice; 6 and 8 never sent
    msgs = [series_start_message(SeriesStart("s"))] + [_valid("s", i) for i in order]
    msgs.append(series_end_message("s", n_frames=12))  # 10 and 11 announced, never sent
    cfg = stream_config(**{"stream.idle_timeout_s": 0.5})
    records, c = _receive(cfg, msgs)
    frames = [r.frame for r in records if isinstance(r, Frame)]
    assert frames == [0, 1, 2, 5, 4, 3, 9, 7]
    assert c["frames_dropped"] == {"duplicate": 2}
    assert c["out_of_order"] == 3  # 4, 3 and 7 came after a higher index
    assert c["frame_gaps"] == 4  # 6, 8, 10, 11
    assert c["series_ended"] == 1 and isinstance(records[-1], SeriesEnd)


def test_new_series_and_restarted_sender_series_without_restarting_btomo():
    msgs = [series_start_message(SeriesStart("a"))] + [_valid("a", i) for i in range(3)]
    msgs += [series_start_message(SeriesStart("b"))] + [_valid("b", i) for i in range(3)]
    msgs += [series_start_message(SeriesStart("b"))] + [_valid("b", i) for i in range(2)]  # sender restarted
    msgs += [series_end_message("b", 2)]
    cfg = stream_config(**{"stream.idle_timeout_s": 0.5})
    records, c = _receive(cfg, msgs)
    assert sum(isinstance(r, Frame) for r in records) == 8
    assert c["series_started"] == 3 and c["series_restarted"] == 1 and c["series_ended"] == 1
    assert c["series_incomplete"] == 2  # a, and the first b, never ended
    assert c["frames_dropped"] == {} and c["frame_gaps"] == 0


SENDER = textwrap.dedent("""
    import os, sys, time, numpy as np, zmq
    from btomo.stream.wire import frame_message, series_start_message
    from btomo.stream.messages import SeriesStart
    address, series, n, first = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    push = zmq.Context().socket(zmq.PUSH)
    push.bind(address)
    if first == 0:
        push.send_multipart(series_start_message(SeriesStart(series)))
    for i in range(first, first + n):
        push.send_multipart(frame_message(series, i, i, np.full((32, 48), i, np.uint16)))
    time.sleep(0.5)        # let the frames reach the receiver
    os.kill(os.getpid(), 9)  # then die mid-series, without an end message
""")


def test_a_sender_that_dies_mid_series_and_comes_back():
    cfg = stream_config(**{"stream.max_frames": 20})
    ingest = Ingest(cfg).start()
    got = []
    t = threading.Thread(target=lambda: got.extend(consume(ingest)))
    t.start()
    for series, first in (("one", 0), ("one", 10)):  # killed after 10 frames; restarted, goes on from 10
        r = subprocess.run([sys.executable, "-c", SENDER, cfg.stream.source, series, "10", str(first)], timeout=60)
        assert r.returncode == -9
    t.join(30)
    ingest.close()
    c = ingest.counters.snapshot()
    assert [f.frame for f in got if isinstance(f, Frame)] == list(range(20))
    assert c["peer_connects"] >= 2 and c["peer_disconnects"] >= 1
    assert c["series_started"] == 1 and c["series_ended"] == 0 and c["series_incomplete"] == 1
    assert c["frame_gaps"] == 0 and c["messages_malformed"] == {}


def test_a_receiver_restarted_mid_series_joins_it():
    cfg = stream_config(**{"stream.max_frames": 5})
    ctx = zmq.Context.instance()
    push = _sender(cfg.stream.source, ctx)
    # watched from the start: the first receiver may take its 5 frames and leave before any later
    # line runs (seen under load), and a monitor attached after that never sees it go
    monitor = push.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPTED)
    first = Ingest(cfg, context=ctx).start()
    push.send_multipart(series_start_message(SeriesStart("s")))
    for i in range(5):
        push.send_multipart(_valid("s", i))
    a = [r for r in consume(first) if isinstance(r, Frame)]
    first.close()
    # A PUSH drops what it queued to a peer that is going away (ZeroMQ's property, not btomo's:
    # frames sent while the old connection is torn down are lost, and a restarted receiver counts
    # the gap). The sender here goes on once the old receiver is gone and the new one connected.
    from zmq.utils.monitor import recv_monitor_message

    def wait_for(event):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if monitor.poll(100) and recv_monitor_message(monitor)["event"] == event:
                return
        raise AssertionError(f"the sender never saw monitor event {event}")

    wait_for(zmq.EVENT_DISCONNECTED)
    second = Ingest(cfg, context=ctx).start()
    wait_for(zmq.EVENT_ACCEPTED)
    push.disable_monitor()
    monitor.close()
    t = threading.Thread(target=lambda: [push.send_multipart(_valid("s", i)) for i in range(5, 10)])
    t.start()
    b = [r for r in consume(second) if isinstance(r, Frame)]
    second.close()
    t.join(10)
    push.close()
    assert [f.frame for f in a] == list(range(5))
    assert [f.frame for f in b] == list(range(5, 10))
    c = second.counters.snapshot()
    assert c["series_joined_midway"] == 1 and c["frames_accepted"] == 5 and c["messages_malformed"] == {}


def test_block_policy_backpressure_loses_nothing_and_bounds_the_queue():
    n = 100  # 50 MB of 512x512 frames: far more than the kernel's socket buffers hold
    cfg = stream_config(**{"stream.queue_frames": 4, "stream.socket_hwm": 2, "stream.max_frames": n})
    ctx = zmq.Context.instance()
    push = _sender(cfg.stream.source, ctx, hwm=2)
    ingest = Ingest(cfg, context=ctx).start()
    sent_at = []

    def send():
        for i in range(n):
            push.send_multipart(frame_message("s", i, i, np.full((512, 512), i, np.uint16)))
            sent_at.append(time.perf_counter())

    t = threading.Thread(target=send)
    t.start()
    records = consume(ingest, delay_s=0.004)
    t.join()
    ingest.close()
    push.close()
    c = ingest.counters.snapshot()
    assert [r.frame for r in records if isinstance(r, Frame)] == list(range(n))
    assert c["frames_dropped"] == {} and c["queue_high_water"] <= 4
    # the sender was held back by the slow consumer: it could not finish long before it
    assert sent_at[-1] - sent_at[0] > 0.4 * n * 0.004


def test_drop_oldest_policy_counts_drops_and_keeps_the_newest():
    n = 300
    cfg = stream_config(**{"stream.queue_frames": 4, "stream.queue_policy": "drop-oldest", "stream.max_frames": n})
    msgs = [frame_message("s", i, i, _frame(i, (64, 64))) for i in range(n)]
    records, c = _receive(cfg, msgs, delay_s=0.003)
    got = [r.frame for r in records if isinstance(r, Frame)]
    assert c["frames_dropped"]["queue_full"] > 0
    assert c["frames_accepted"] == n == len(got) + c["frames_dropped"]["queue_full"]
    assert got == sorted(got) and got[-1] == n - 1  # in order, and the newest always gets through
    assert c["queue_high_water"] <= 4 and c["frames_processed"] == len(got)


def test_queue_bound_in_bytes_and_stop_releases_a_blocked_producer():
    counters = IngestCounters()
    q = FrameQueue(100, 3 * 1000, "block", counters)
    f = Frame("s", 0, 0, np.zeros(500, np.uint16))  # 1000 bytes
    for _ in range(3):
        assert q.put(f)
    done = []
    t = threading.Thread(target=lambda: done.append(q.put(f)))
    t.start()
    time.sleep(0.3)
    assert not done  # full by bytes: the producer waits
    assert q.abandon() == 3
    t.join(2)
    assert done == [False]


def test_latency_percentiles_from_the_histogram():
    stats = LatencyStats()
    for ms in range(1, 1001):
        stats.add(ms / 1000)
    s = stats.summary()
    assert s["count"] == 1000 and s["max_ms"] == pytest.approx(1000)
    assert s["p50_ms"] == pytest.approx(500, rel=0.07) and s["p99_ms"] == pytest.approx(990, rel=0.07)


def test_side_channel_publishes_the_latest_frame_without_holding_the_stream():
    from btomo.stream.sidechannel import LatestFrameSubscriber

    n = 60
    cfg = stream_config(**{"stream.max_frames": n, "stream.side_channel_hz": 50})
    ctx = zmq.Context.instance()
    push = _sender(cfg.stream.source, ctx)
    slow = LatestFrameSubscriber(cfg.stream.side_channel, context=ctx)  # subscribes and never reads
    viewer = LatestFrameSubscriber(cfg.stream.side_channel, context=ctx)
    ingest = Ingest(cfg, context=ctx).start()
    time.sleep(0.3)  # let the subscribers connect
    seen = []
    for i in range(n):
        push.send_multipart(frame_message("s", i, i, _frame(i)))
        time.sleep(0.01)
        if i % 10 == 9:
            got = viewer.latest(timeout_s=1.0)
            if got is not None:
                seen.append(got)
    records = consume(ingest)
    ingest.close()
    for s in (slow, viewer):
        s.close()
    push.close()
    assert sum(isinstance(r, Frame) for r in records) == n
    assert seen, "the viewer saw no frame"
    for header, data in seen:
        np.testing.assert_array_equal(data, _frame(header["frame"]))
    assert ingest.side_channel.published >= len(seen)


def test_curve_stream_needs_the_keys(tmp_path):
    import zmq.auth

    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    zmq.auth.create_certificates(keys, "sender")
    zmq.auth.create_certificates(keys, "receiver")
    zmq.auth.create_certificates(keys, "stranger")
    os.replace(keys / "receiver.key", allowed / "receiver.key")
    from btomo.stream.replay import replay
    from btomo.stream.sources import FrameSource

    frames = [_frame(i) for i in range(5)]
    src = FrameSource(tmp_path, "test", (32, 48), np.dtype("<u2"), 1.0, 400.0, np.arange(5), np.arange(5) * 2_500_000,
                      "s", _read=lambda i: frames[i])

    def run(client_key):
        cfg = stream_config(**{"stream.curve_secret_key": str(keys / "sender.key_secret"),
                               "stream.curve_authorized_dir": str(allowed), "stream.linger_s": 5.0,
                               "stream.idle_timeout_s": 1.5})
        stop = threading.Event()
        t = threading.Thread(target=lambda: replay(src, cfg.stream, to=cfg.stream.source, rate=None, stop=stop))
        t.start()
        if client_key is not None:
            cfg.stream.curve_server_public_key = str(keys / "sender.key")
            cfg.stream.curve_secret_key = str(keys / client_key)
        else:
            cfg.stream.curve_secret_key = ""
        ingest = Ingest(cfg).start()
        records = consume(ingest)
        ingest.close()
        stop.set()
        t.join(10)
        return sum(isinstance(r, Frame) for r in records), ingest.counters.snapshot()

    n, _ = run("receiver.key_secret")
    assert n == 5
    n, c = run("stranger.key_secret")  # a key the sender does not know
    assert n == 0 and c["frames_accepted"] == 0
    n, c = run(None)  # no CURVE at all
    assert n == 0


def test_integers_beyond_int64_and_huge_numbers_are_rejected():
    hdr = {"btomo": 1, "type": "frame", "series": "s", "frame": 0, "t_ns": 0, "shape": [32, 48], "dtype": "uint16"}
    blob = _frame(0).tobytes()
    msgs = [
        [json.dumps({**hdr, "t_ns": 2 ** 63}).encode(), blob],
        [json.dumps({**hdr, "frame": 2 ** 70}).encode(), blob],
        [json.dumps({**hdr, "wall_ns": 10 ** 400}).encode(), blob],
        _valid("s", 1),
    ]
    cfg = stream_config(**{"stream.max_frames": 1})
    records, c = _receive(cfg, msgs)
    assert c["messages_malformed"] == {"bad_field": 3} and c["frames_accepted"] == 1


def test_idle_timeout_fires_while_junk_keeps_coming():
    cfg = stream_config(**{"stream.idle_timeout_s": 0.5})
    ctx = zmq.Context.instance()
    push = _sender(cfg.stream.source, ctx)
    ingest = Ingest(cfg, context=ctx).start()
    stop = threading.Event()

    def junk():
        while not stop.is_set():
            push.send_multipart([b"{junk"])
            time.sleep(0.01)

    t = threading.Thread(target=junk)
    t.start()
    t0 = time.monotonic()
    consume(ingest)
    took = time.monotonic() - t0
    stop.set()
    t.join()
    ingest.close()
    push.close(linger=0)
    assert took < 3 and ingest.receiver.stop_reason == "idle timeout"
    assert ingest.counters.snapshot()["messages_malformed"]["bad_json"] > 10


def test_side_channel_copies_nothing_without_viewers():
    cfg = stream_config(**{"stream.max_frames": 30, "stream.side_channel_hz": 100})
    msgs = []
    for i in range(30):
        msgs.append(_valid("s", i))
    ctx = zmq.Context.instance()
    push = _sender(cfg.stream.source, ctx)
    ingest = Ingest(cfg, context=ctx).start()
    for m in msgs:
        push.send_multipart(m)
        time.sleep(0.005)
    consume(ingest)
    ingest.close()
    push.close()
    assert ingest.side_channel.published == 0
