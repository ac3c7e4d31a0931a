"""The recording format: lossless round trip, crash safety, torn tails, bad input."""
import json
import os

import numpy as np
import pytest

from btomo.stream.recording import Recording, RecordingError, RecordingWriter


def _frames(n, shape=(40, 56), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.poisson(2.0, shape).astype(np.uint16) for _ in range(n)]


def _write(path, frames, codec="blosc-lz4", block=8, close=True):
    w = RecordingWriter(path, shape=frames[0].shape, pixel_size_A=0.358, fps=400.0, codec=codec,
                        block_frames=block, meta={"series": 7})
    for i, f in enumerate(frames):
        w.append(f, frame_index=100 + i, t_ns=1_000_000_000 + i * 2_500_000)
    if close:
        w.close()
    else:
        w.flush()
    return w


@pytest.mark.parametrize("codec", ["raw", "blosc-lz4"])
def test_round_trip_is_bit_identical(tmp_path, codec):
    frames = _frames(21)
    _write(tmp_path / "r", frames, codec)
    with Recording(tmp_path / "r") as rec:
        assert len(rec) == 21 and rec.complete and rec.torn_tail_bytes == 0
        assert rec.meta["series"] == 7 and rec.codec == codec
        np.testing.assert_array_equal(rec.read_all(), np.stack(frames))
        np.testing.assert_array_equal(rec.frame_index, np.arange(100, 121))
        np.testing.assert_allclose(np.diff(rec.t_s), 0.0025)


def test_float_frames_round_trip(tmp_path):
    f = np.random.default_rng(3).random((3, 16, 16)).astype(np.float32)
    w = RecordingWriter(tmp_path / "c", shape=(16, 16), dtype=np.float32, pixel_size_A=1, fps=1)
    for i in range(3):
        w.append(f[i], frame_index=i, t_ns=i)
    w.close()
    np.testing.assert_array_equal(Recording(tmp_path / "c").read_all(), f)


@pytest.mark.parametrize("cut", [1, 17, 300, 2000])
def test_torn_tail_is_detected_and_earlier_blocks_read_back(tmp_path, cut):
    frames = _frames(24)
    _write(tmp_path / "r", frames, block=8)
    data = tmp_path / "r" / "frames.bin"
    size = data.stat().st_size
    os.truncate(data, size - cut)  # a crash in the middle of writing the last block
    with Recording(tmp_path / "r") as rec:
        assert len(rec) == 16
        assert rec.torn_tail_bytes > 0
        np.testing.assert_array_equal(rec.read_all(), np.stack(frames[:16]))


def test_block_written_but_not_indexed_is_recovered_by_scanning(tmp_path):
    frames = _frames(24)
    _write(tmp_path / "r", frames, block=8)
    idx = tmp_path / "r" / "index.bin"
    os.truncate(idx, idx.stat().st_size - 10)  # the last index record torn
    with Recording(tmp_path / "r") as rec:
        assert len(rec) == 24 and rec.torn_tail_bytes == 0
    idx.unlink()  # no index at all
    with Recording(tmp_path / "r") as rec:
        assert len(rec) == 24


def test_garbage_after_the_last_block_is_a_torn_tail(tmp_path):
    frames = _frames(10)
    _write(tmp_path / "r", frames, block=4)
    with open(tmp_path / "r" / "frames.bin", "ab") as fh:
        fh.write(b"\x00garbage" * 50)
    with Recording(tmp_path / "r") as rec:
        assert len(rec) == 10 and rec.torn_tail_bytes == 400


def test_crash_before_close_keeps_flushed_blocks(tmp_path):
    frames = _frames(12)
    w = _write(tmp_path / "r", frames, block=5, close=False)  # flushed, never closed
    with Recording(tmp_path / "r") as rec:
        assert not rec.complete
        assert len(rec) == 12
    w._data.close()
    w._index.close()


def test_corrupted_frame_fails_its_crc(tmp_path):
    frames = _frames(4)
    _write(tmp_path / "r", frames, codec="raw", block=4)
    data = tmp_path / "r" / "frames.bin"
    raw = bytearray(data.read_bytes())
    raw[-5] ^= 0xFF  # flip bits inside the last frame's payload
    data.write_bytes(bytes(raw))
    with Recording(tmp_path / "r") as rec:
        # the last (only) block fails its check: nothing complete is claimed
        assert len(rec) == 0 and rec.torn_tail_bytes == len(raw)


def test_wrong_frame_shape_or_dtype_is_rejected(tmp_path):
    w = RecordingWriter(tmp_path / "r", shape=(8, 8), pixel_size_A=1, fps=1)
    with pytest.raises(RecordingError, match=r"expected a \(8, 8\) uint16 frame, got \(8, 9\) uint16"):
        w.append(np.zeros((8, 9), np.uint16), frame_index=0, t_ns=0)
    with pytest.raises(RecordingError, match="float32"):
        w.append(np.zeros((8, 8), np.float32), frame_index=0, t_ns=0)
    w.close()


def test_existing_recording_is_not_overwritten(tmp_path):
    _write(tmp_path / "r", _frames(2))
    with pytest.raises(RecordingError, match="already holds a recording"):
        RecordingWriter(tmp_path / "r", shape=(4, 4), pixel_size_A=1, fps=1)


def test_not_a_recording_is_a_clear_error(tmp_path):
    with pytest.raises(RecordingError, match="no recording.json"):
        Recording(tmp_path)
    (tmp_path / "recording.json").write_text("{not json")
    with pytest.raises(RecordingError, match="not valid JSON"):
        Recording(tmp_path)
    (tmp_path / "recording.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(RecordingError, match="expected format"):
        Recording(tmp_path)


def test_interrupted_flush_writes_the_block_once(tmp_path, monkeypatch):
    """A signal during the fsync of a block: the block is taken back and written once later."""
    frames = _frames(8)
    w = RecordingWriter(tmp_path / "r", shape=frames[0].shape, pixel_size_A=1, fps=1, block_frames=4)
    for i in range(3):
        w.append(frames[i], frame_index=i, t_ns=i)
    calls = {"n": 0}
    real_fsync = os.fsync

    def interrupted(fd):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        w.append(frames[3], frame_index=3, t_ns=3)  # fills the block: flush, interrupted
    w.flush()  # what simulate does on the way out
    for i in range(4, 8):
        w.append(frames[i], frame_index=i, t_ns=i)
    w.close()
    with Recording(tmp_path / "r") as rec:
        np.testing.assert_array_equal(rec.frame_index, np.arange(8))
        np.testing.assert_array_equal(rec.read_all(), np.stack(frames))


def test_a_repeated_block_is_not_read_twice(tmp_path):
    frames = _frames(8)
    _write(tmp_path / "r", frames, codec="raw", block=4)
    data = tmp_path / "r" / "frames.bin"
    raw = data.read_bytes()
    half = len(raw) // 2  # two equal blocks of 4 frames
    data.write_bytes(raw[:half] + raw[:half] + raw[half:])  # block 0 again where block 1 belongs
    (tmp_path / "r" / "index.bin").unlink()
    with Recording(tmp_path / "r") as rec:
        assert len(rec) == 4 and rec.torn_tail_bytes == len(raw)
        np.testing.assert_array_equal(rec.frame_index, np.arange(100, 104))


def test_corruption_in_a_middle_block_names_the_frame(tmp_path):
    frames = _frames(12)
    _write(tmp_path / "r", frames, codec="raw", block=4)
    data = tmp_path / "r" / "frames.bin"
    raw = bytearray(data.read_bytes())
    block = len(raw) // 3
    raw[block + block - 10] ^= 0xFF  # the end of the second block: its last frame, acquisition index 107
    data.write_bytes(bytes(raw))
    with Recording(tmp_path / "r") as rec:
        assert len(rec) == 12  # only the last block is verified whole when opening
        np.testing.assert_array_equal(rec.read(6), frames[6])
        with pytest.raises(RecordingError, match="frame 107 fails its CRC check"):
            rec.read(7)
