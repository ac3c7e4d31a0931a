"""DECTRIS stream v1 and v2: codecs against the bitshuffle reference, and whole series over real
sockets, including bad parts and blobs interleaved with valid images."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from btomo.stream.dectris import (
    Stream1Decoder,
    Stream1Encoder,
    Stream2Encoder,
    bslz4_compress,
    bslz4_decompress,
    lz4h5_compress,
    lz4h5_decompress,
)
from btomo.stream.messages import Frame, Malformed, SeriesEnd, SeriesStart
from helpers import send_and_receive, stream_config

pytestmark = pytest.mark.timeout(90)


def _img(i, shape=(40, 56), dtype="<u2"):
    return (np.random.default_rng(i).poisson(4, shape) + i).astype(dtype)


@pytest.mark.parametrize("dtype", ["u1", "<u2", "<u4"])
@pytest.mark.parametrize("n", [7, 1003, 4101, 65536 + 13])
def test_bslz4_matches_the_bitshuffle_reference(dtype, n):
    import bitshuffle

    a = np.random.default_rng(n).poisson(3, n).astype(dtype)
    blob = bslz4_compress(a)
    total, block = struct.unpack(">QI", blob[:12])
    assert total == a.nbytes and block == 8192  # bitshuffle's default block: 8192 bytes
    ref = bitshuffle.decompress_lz4(np.frombuffer(blob[12:], np.uint8), a.shape, a.dtype, block // a.itemsize)
    np.testing.assert_array_equal(ref, a)
    np.testing.assert_array_equal(np.frombuffer(bslz4_decompress(blob, a.nbytes, a.itemsize), dtype), a)
    np.testing.assert_array_equal(np.frombuffer(lz4h5_decompress(lz4h5_compress(a, 1000), a.nbytes), dtype), a)


def test_hostile_bslz4_blobs_are_rejected_not_crashing():
    a = _img(0)
    blob = bytearray(bslz4_compress(a))
    cases = {
        "size_mismatch": bytes(blob[:0]) + struct.pack(">QI", a.nbytes * 1000, 8192) + bytes(blob[12:]),
        "bad_compression": [
            bytes(blob[:5]),                                                   # no header
            struct.pack(">QI", a.nbytes, 12) + bytes(blob[12:]),              # block size not 8 elements
            bytes(blob[:12]) + struct.pack(">I", 1 << 30) + bytes(blob[16:]),  # block past the end
            bytes(blob[:-3]),                                                  # truncated
            bytes(blob) + b"xx",                                               # trailing bytes
        ],
    }
    with pytest.raises(Malformed, match="size_mismatch"):
        bslz4_decompress(cases["size_mismatch"], a.nbytes, 2)
    for bad in cases["bad_compression"]:
        with pytest.raises(Malformed, match="bad_compression"):
            bslz4_decompress(bad, a.nbytes, 2)


def _run(cfg, messages):
    return send_and_receive(cfg, messages)


@pytest.mark.parametrize("compression", ["bslz4", "lz4", "none"])
@pytest.mark.parametrize("header_detail", ["all", "basic", "none"])
def test_stream_v1_series_over_a_socket(compression, header_detail):
    n = 4
    enc = Stream1Encoder("12", shape=(40, 56), dtype="<u2", pixel_size_A=0.4, fps=400.0, n_frames=n,
                         compression=compression, header_detail=header_detail)
    msgs = enc.start_messages()
    for i in range(n):
        msgs += enc.frame_messages(i, 1_000_000 + i * 2_500_000, _img(i))
    msgs += enc.end_messages(n)
    cfg = stream_config(**{"stream.protocol": "dectris1", "stream.idle_timeout_s": 0.5,
                           "acquisition.pixel_size_A": 0.4})
    records, c = _run(cfg, msgs)
    assert isinstance(records[0], SeriesStart) and records[0].series == "12"
    if header_detail != "none":
        assert records[0].fps == pytest.approx(400) and records[0].n_frames == n and records[0].shape == (40, 56)
    frames = [r for r in records if isinstance(r, Frame)]
    assert [f.frame for f in frames] == list(range(n))
    for f in frames:
        np.testing.assert_array_equal(f.data, _img(f.frame))  # shape [x, y] reversed correctly
        assert f.t_ns == f.frame * 2_500_000  # detector clock from the series start
        assert f.pixel_size_A == 0.4  # v1 does not carry it: from the configuration
    assert isinstance(records[-1], SeriesEnd)
    assert c["messages_malformed"] == {} and c["frame_gaps"] == 0 and c["latency"]["count"] == n


def test_stream_v1_header_split_over_messages_and_appendices():
    enc = Stream1Encoder("3", shape=(40, 56), dtype="<u2", pixel_size_A=1, fps=100.0, header_detail="all")
    header = enc.start_messages()[0]
    msgs = [[p] for p in header]  # every header part a message of its own
    image = enc.frame_messages(0, 0, _img(0))[0]
    msgs.append(image + [b"user appendix"])  # an image appendix is allowed and ignored
    msgs += enc.end_messages(1)
    cfg = stream_config(**{"stream.protocol": "dectris1", "stream.idle_timeout_s": 0.5})
    records, c = _run(cfg, msgs)
    assert [type(r).__name__ for r in records] == ["SeriesStart", "Frame", "SeriesEnd"]
    assert records[0].fps == pytest.approx(100) and c["messages_malformed"] == {}


def test_stream_v1_bad_parts_are_counted_and_valid_images_all_arrive():
    enc = Stream1Encoder("5", shape=(40, 56), dtype="<u2", pixel_size_A=1, fps=400.0, compression="bslz4")
    good = [enc.frame_messages(i, i, _img(i))[0] for i in range(12)]
    h, d, blob, cfgpart = good[0]
    dd = json.loads(d)
    bad = [
        ("wrong_part_count", [h, d]),                                     # a short image, then a whole one
        ("unexpected_part", [b"\x00\x01binary"]),
        ("unexpected_part", [json.dumps({"htype": "dunknown-1.0"}).encode()]),
        ("unknown_encoding", [h, json.dumps({**dd, "encoding": "bs16-zstd<"}).encode(), blob, cfgpart]),
        ("unknown_encoding", [h, json.dumps({**dd, "encoding": "bs32-lz4<"}).encode(), blob, cfgpart]),
        ("unknown_dtype", [h, json.dumps({**dd, "type": "complex64"}).encode(), blob, cfgpart]),
        ("size_mismatch", [h, json.dumps({**dd, "size": dd["size"] + 1}).encode(), blob, cfgpart]),
        ("size_mismatch", [h, json.dumps({**dd, "shape": [56, 41]}).encode(), blob, cfgpart]),
        ("shape_too_large", [h, json.dumps({**dd, "shape": [10 ** 6, 10 ** 6]}).encode(), blob, cfgpart]),
        ("bad_compression", [h, json.dumps({**dd, "size": len(blob) - 7}).encode(), bytes(blob)[:-7], cfgpart]),
        ("bad_json", [h, b"{oops", blob, cfgpart]),
    ]
    msgs = [*enc.start_messages()]
    for i, (_, m) in enumerate(bad):
        msgs += [m, good[i]]
    cfg = stream_config(**{"stream.protocol": "dectris1", "stream.max_frames": len(bad)})
    records, c = _run(cfg, msgs)
    assert [r.frame for r in records if isinstance(r, Frame)] == list(range(len(bad)))
    expected: dict[str, int] = {}
    for reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert c["messages_malformed"] == expected


@pytest.mark.parametrize("compression", ["bslz4", "lz4", "none"])
def test_stream_v2_series_over_a_socket(compression):
    n = 4
    enc = Stream2Encoder("9", shape=(40, 56), dtype="<u2", pixel_size_A=1, fps=200.0, n_frames=n,
                         compression=compression)
    msgs = enc.start_messages()
    for i in range(n):
        msgs += enc.frame_messages(i, 10 + i * 5_000_000, _img(i))
    msgs += enc.end_messages(n)
    cfg = stream_config(**{"stream.protocol": "dectris2", "stream.idle_timeout_s": 0.5})
    records, c = _run(cfg, msgs)
    start = records[0]
    assert isinstance(start, SeriesStart) and start.series == enc.unique and start.shape == (40, 56)
    assert start.fps == pytest.approx(200) and start.n_frames == n and start.dtype == np.dtype("<u2")
    frames = [r for r in records if isinstance(r, Frame)]
    assert [f.frame for f in frames] == list(range(n))
    for f in frames:
        np.testing.assert_array_equal(f.data, _img(f.frame))
        assert f.t_ns == f.frame * 5_000_000
    assert isinstance(records[-1], SeriesEnd) and c["messages_malformed"] == {}


def test_stream_v2_bad_messages_are_counted():
    import cbor2

    enc = Stream2Encoder("9", shape=(40, 56), dtype="<u2", pixel_size_A=1, fps=200.0)
    good = [enc.frame_messages(i, i, _img(i))[0] for i in range(8)]
    image = cbor2.loads(good[0][0])
    image = {k: image[k] for k in image}

    def with_(**kw):
        return [cbor2.dumps(cbor2.CBORTag(55799, {**image, **kw}))]

    bad = [
        ("bad_cbor", [b"\xff\x00garbage"]),
        ("bad_cbor", [cbor2.dumps([1, 2, 3])]),
        ("wrong_part_count", [good[0][0], b"extra"]),
        ("unknown_type", with_(type="imagery")),
        ("bad_field", with_(start_time=[1, 0])),
        ("bad_field", with_(image_id=-3)),
        ("bad_field", with_(data={"threshold_1": cbor2.CBORTag(41, [[40, 56], b""])})),
        ("unknown_dtype", with_(data={"threshold_1": cbor2.CBORTag(40, [[40, 56], cbor2.CBORTag(99, b"")])})),
        ("size_mismatch", with_(data={"threshold_1": cbor2.CBORTag(40, [[40, 57], cbor2.CBORTag(69, _img(0).tobytes())])})),
    ]
    msgs = [*enc.start_messages()]
    for i, (_, m) in enumerate(bad):
        msgs += [m, good[i % len(good)]]
    cfg = stream_config(**{"stream.protocol": "dectris2", "stream.idle_timeout_s": 0.5})
    records, c = _run(cfg, msgs)
    expected: dict[str, int] = {}
    for reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert c["messages_malformed"] == expected
    assert c["frames_dropped"] == {"duplicate": len(bad) - len(good)}  # the good images sent twice


def test_decoder_keeps_no_state_after_a_bad_group():
    dec = Stream1Decoder(max_shape=(4096, 4096))
    enc = Stream1Encoder("1", shape=(40, 56), dtype="<u2", pixel_size_A=1, fps=400.0)
    h, d, blob, cfgpart = enc.frame_messages(0, 0, _img(0))[0]
    assert dec.decode([h, d]) == []  # waits for the rest
    out = dec.decode(enc.frame_messages(1, 0, _img(1))[0])
    assert isinstance(out[0], Malformed) and out[0].reason == "wrong_part_count"
    assert isinstance(out[1], Frame) and out[1].frame == 1


def test_hostile_cbor_and_framing_are_rejected_quickly():
    """Shared references that expand exponentially, tiny blocks, integers beyond int64."""
    import time

    import cbor2

    from btomo.stream.dectris import Stream2Decoder, lz4h5_decompress

    dec = Stream2Decoder(max_shape=(8192, 8192))
    x: list = [1]
    for _ in range(40):  # 2^40 leaves when expanded; a few hundred bytes shared
        x = [x, x]
    image = {"type": "image", "series_id": 1, "image_id": 0, "start_time": x, "data": {}}
    msg = cbor2.dumps(cbor2.CBORTag(55799, image), value_sharing=True)
    assert len(msg) < 1000
    t0 = time.perf_counter()
    with pytest.raises(Malformed) as err:
        dec.decode([msg])
    assert err.value.reason == "bad_field" and len(str(err.value)) < 300
    too_late = cbor2.dumps(cbor2.CBORTag(55799, {**image, "start_time": [2 ** 64 - 1, 1]}))
    with pytest.raises(Malformed, match="bad_field"):
        dec.decode([too_late])
    # a 40-byte lz4 blob that declares 16 MiB in 1-byte blocks
    blob = struct.pack(">QI", 16 << 20, 1) + b"\x00" * 4
    with pytest.raises(Malformed, match="bad_compression"):
        lz4h5_decompress(blob, 16 << 20)
    blob = struct.pack(">QI", 16 << 20, 64) + b"\x00" * 40  # room for 10 of 262144 blocks
    with pytest.raises(Malformed, match="cannot hold"):
        lz4h5_decompress(blob, 16 << 20)
    assert time.perf_counter() - t0 < 1.0


def test_dectris_series_gaps_count_from_the_start_message():
    """DECTRIS ends carry no frame count: frames lost at the tail show against the start's."""
    n = 5
    enc = Stream1Encoder("4", shape=(40, 56), dtype="<u2", pixel_size_A=1, fps=400.0, n_frames=n)
    msgs = enc.start_messages()
    for i in range(3):  # the last two never sent
        msgs += enc.frame_messages(i, i, _img(i))
    msgs += enc.end_messages(n) + enc.end_messages(n)  # and the end twice
    cfg = stream_config(**{"stream.protocol": "dectris1", "stream.idle_timeout_s": 0.5})
    records, c = _run(cfg, msgs)
    assert c["frame_gaps"] == 2 and c["series_ended"] == 1
    assert c["messages_malformed"] == {"unknown_series": 1}


def test_a_shape_of_thousands_of_digits_is_refused_as_too_large():
    """Found by the fuzzer: a v2 series start whose image_size_x is a CBOR bignum of 10,000 digits
    made the error message itself fail (Python refuses to print ints beyond 4300 digits)."""
    import cbor2

    from btomo.stream.dectris import Stream2Decoder
    from btomo.stream.messages import check_shape

    with pytest.raises(Malformed) as info:
        check_shape([10**10_000, 5], (8192, 8192))
    assert info.value.reason == "shape_too_large" and "integer of" in str(info.value)
    msg = cbor2.dumps(cbor2.CBORTag(55799, {"type": "start", "series_id": 1, "series_unique_id": "x",
                                            "image_size_x": 10**10_000, "image_size_y": 16}))
    with pytest.raises(Malformed) as info:
        Stream2Decoder(max_shape=(8192, 8192)).decode([msg])
    assert info.value.reason == "shape_too_large"
