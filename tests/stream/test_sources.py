"""Frame sources on disk: recordings, MRC, TIFF and Zarr stacks with their metadata, and bad files."""
from __future__ import annotations

import logging

import mrcfile
import numpy as np
import pytest
import tifffile
import zarr

from btomo.stream.recording import RecordingWriter
from btomo.stream.sources import SourceError, open_source

STACK = np.random.default_rng(3).poisson(2, (6, 24, 32)).astype(np.uint16)


def _mrc(path, voxel=0.5):
    with mrcfile.new(path) as m:
        m.set_data(STACK.astype(np.int16))
        m.voxel_size = voxel
    return path


def _check(src, *, px, fps, kind, dtype=np.uint16):
    assert src.kind == kind and len(src) == 6 and src.shape == (24, 32)
    assert src.pixel_size_A == pytest.approx(px) and src.fps == pytest.approx(fps)
    frames = [f for _, _, f in src]
    np.testing.assert_array_equal(np.stack(frames).astype(np.int64), STACK.astype(np.int64))
    assert frames[0].dtype == dtype
    np.testing.assert_array_equal(src.t_ns, np.round(np.arange(6) * 1e9 / fps).astype(np.int64))


def test_mrc_stack_with_voxel_size(tmp_path):
    with open_source(_mrc(tmp_path / "s.mrc"), fps=100) as src:
        _check(src, px=0.5, fps=100, kind="mrc", dtype=np.int16)


def test_tiff_stack_with_imagej_pixel_size_and_frame_interval(tmp_path):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, STACK, imagej=True, resolution=(1 / 0.036, 1 / 0.036),
                     metadata={"unit": "nm", "finterval": 0.0025, "axes": "TYX"})
    with open_source(path) as src:
        _check(src, px=0.36, fps=400, kind="tiff")


def test_compressed_tiff_is_read_page_by_page(tmp_path):
    path = tmp_path / "c.tiff"
    tifffile.imwrite(path, STACK, compression="zlib")
    with open_source(path, pixel_size_A=0.3, fps=50) as src:
        _check(src, px=0.3, fps=50, kind="tiff")


def test_zarr_array_and_group_with_attributes(tmp_path):
    arr = zarr.create_array(tmp_path / "a.zarr", shape=STACK.shape, chunks=(2, 24, 32), dtype="uint16")
    arr[:] = STACK
    arr.attrs.update(pixel_size_A=0.358, fps=400.0)
    with open_source(tmp_path / "a.zarr") as src:
        _check(src, px=0.358, fps=400, kind="zarr")
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    g.attrs.update(pixel_size_A=0.4, fps=200.0)
    g.create_array("frames", shape=STACK.shape, dtype="uint16")[:] = STACK
    with open_source(tmp_path / "g.zarr") as src:
        _check(src, px=0.4, fps=200, kind="zarr")


def test_recording_keeps_its_own_indices_and_times(tmp_path):
    with RecordingWriter(tmp_path / "rec", shape=(24, 32), pixel_size_A=0.2, fps=1000.0, block_frames=4) as w:
        for i, f in enumerate(STACK):
            w.append(f, frame_index=100 + 2 * i, t_ns=7 + 3_000_000 * i)
    with open_source(tmp_path / "rec") as src:
        assert src.kind == "recording" and src.pixel_size_A == 0.2 and src.fps == 1000
        assert list(src.frame_index) == [100 + 2 * i for i in range(6)]
        assert list(src.t_ns) == [7 + 3_000_000 * i for i in range(6)]
        np.testing.assert_array_equal(np.stack([f for _, _, f in src]), STACK)


def test_missing_metadata_falls_back_with_a_warning_and_flags_win(tmp_path, caplog):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, STACK)
    with caplog.at_level(logging.WARNING), open_source(path, defaults=(0.358, 400.0)) as src:
        assert src.pixel_size_A == 0.358 and src.fps == 400.0
    assert "has no pixel_size; using the configured 0.358 A/px (give it with --pixel-size)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING), open_source(_mrc(tmp_path / "v.mrc"), pixel_size_A=0.7, fps=10) as src:
        assert src.pixel_size_A == 0.7
    assert "the file says pixel_size = 0.5 A/px; using the 0.7 A/px given" in caplog.text


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="source not found"):
        open_source(tmp_path / "nothing.mrc")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match="expected a recording directory, an MRC or TIFF stack"):
        open_source(tmp_path / "notes.txt")
    full = _mrc(tmp_path / "t.mrc").read_bytes()
    (tmp_path / "trunc.mrc").write_bytes(full[: len(full) - 100])
    with pytest.raises(SourceError, match="not a readable MRC file"):
        open_source(tmp_path / "trunc.mrc")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(SourceError, match="not a readable TIFF file"):
        open_source(tmp_path / "junk.tif")
    z = zarr.create_array(tmp_path / "4d.zarr", shape=(2, 2, 8, 8), dtype="uint16")
    with pytest.raises(SourceError, match=r"expected frames as \(N, rows, columns\), got shape \(2, 2, 8, 8\)"):
        open_source(tmp_path / "4d.zarr")
    assert z is not None
    g = zarr.open_group(tmp_path / "nof.zarr", mode="w")
    g.create_array("other", shape=(2,), dtype="uint8")
    with pytest.raises(SourceError, match="without a 'frames' array"):
        open_source(tmp_path / "nof.zarr")


def test_a_single_frame_and_odd_metadata(tmp_path):
    a = zarr.create_array(tmp_path / "one.zarr", shape=(24, 32), dtype="uint16")
    a[:] = STACK[0]
    a.attrs.update(pixel_size_A="0.5", fps="fast")  # a string that is a number, and one that is not
    with open_source(tmp_path / "one.zarr") as src:
        assert len(src) == 1 and src.pixel_size_A == 0.5 and src.fps == 400.0
        np.testing.assert_array_equal(src.read(0), STACK[0])
