"""The live dashboard (issue 9): its screen at 80x24 and larger, its keys, and `btomo demo` under tmux."""
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from btomo.stream.dashboard import Dashboard, ParticleHistory, coverage_map_text, sparkline


def _rows(d, n=300, particles=(0, 1)):
    rng = np.random.default_rng(0)
    for i in range(n):
        for p in particles:
            d.history.add({"particle": p, "frame": i, "t_s": i / 400, "x_px": 100.0 + p, "y_px": 200.0,
                           "fft_peak": float(rng.random()), "lattice": int(rng.random() > 0.7),
                           "diameter_nm": 2.0 - i / 1000, "lattice_threshold": 0.7, "snr_db": -20.0})


def _screen(d, width, height) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, height=height, force_terminal=False, color_system=None).print(
        d.render(width, height))
    return buf.getvalue()


@pytest.mark.parametrize("width, height", [(80, 24), (160, 50)])
def test_screen_fits_the_terminal(width, height):
    d = Dashboard(Console(file=io.StringIO(), width=width, height=height), keys=False)
    _rows(d, particles=tuple(range(30)))
    text = _screen(d, width, height)
    lines = text.rstrip("\n").split("\n")
    assert max(len(x) for x in lines) <= width
    assert len(lines) <= height, text
    assert "lattice score" in text and "> 0" in text
    assert "q quit" in text


def test_sparkline_and_coverage_map():
    assert sparkline([0, 1, 2, 3], 10) == "▁▃▆█"
    assert sparkline([0.0, float("nan"), 1.0], 10, 0.0, 1.0) == "▁ █"
    assert sparkline(range(100), 5) == sparkline(range(95, 100), 5)
    rows = coverage_map_text(np.array([[0.0, 1.0], [np.nan, 0.5]]))
    assert rows == ["·▒", " █"]  # north (the last row) on top


def test_history_is_bounded():
    h = ParticleHistory(length=50, max_particles=3)
    for p in range(5):
        h.add({"particle": p, "fft_peak": 1.0, "lattice": 1, "diameter_nm": ""})
        time.sleep(0.002)
    for _ in range(200):
        h.add({"particle": 4, "fft_peak": 1.0, "lattice": 0, "diameter_nm": 2.0})
    assert h.particles() == [2, 3, 4]  # the least recently seen are forgotten
    v = h.view(4)
    assert len(v["fft_peak"]) == 50 and v["rows"] == 201 and v["lattice_rows"] == 1
    assert v["diameter_nm"][-1] == 2.0
    assert np.isnan(h.view(2)["diameter_nm"][0])


def test_keys_pause_switch_and_quit_cleanly():
    d = Dashboard(Console(file=io.StringIO(), width=80, height=24), keys=False)
    _rows(d, n=20, particles=(3, 7))
    first = _screen(d, 80, 24)
    assert "> 3" in first
    d.key("n")
    assert "> 7" in _screen(d, 80, 24)
    d.key("b")
    assert "> 3" in _screen(d, 80, 24)
    d.key("p")
    frozen = d._renderable()
    _rows(d, n=5, particles=(9,))
    assert d._renderable() is frozen  # paused: the screen does not change, the data goes on
    d.key("p")
    assert d._renderable() is not frozen
    got = []
    old = signal.signal(signal.SIGINT, lambda *a: got.append(a[0]))
    try:
        d.key("q")  # the pipeline's clean stop, as Ctrl-C
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGINT, old)
    assert got == [signal.SIGINT]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_demo_under_tmux_shows_the_session(tmp_path):
    """`btomo demo` in an 80x24 terminal, as a person would watch it (tmux capture-pane)."""
    btomo = Path(sys.executable).with_name("btomo")
    run = tmp_path / "run"
    session = f"btomo-test-{os.getpid()}"
    cmd = f"{btomo} demo --run-dir {run}; echo DEMO-EXIT $?; sleep 60"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd], check=True)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            time.sleep(1.0)
            pane = subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-", "-t", session],
                                  capture_output=True, text=True).stdout
            seen.append(pane)
            if "DEMO-EXIT" in pane:
                break
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    everything = "\n".join(seen)
    assert "DEMO-EXIT 0" in seen[-1], seen[-1][-3000:]
    assert re.search(r"frames \d+/\d+", everything)
    assert re.search(r"lattice frames \d+ \(\d+ %\)", everything)
    assert re.search(r"p0_w\d+: \d+ lattice frames, coverage .* 0\.\d\d", everything)
    assert re.search(r"p0_w\d+: done, \d+ atoms, FSC \d\.\d\d A", everything)
    # a live frame of the screen, for docs/dashboard.md
    live = [p for p in seen if "coverage" in p and "lattice score" in p]
    (tmp_path / "capture.txt").write_text(live[-1] if live else seen[-1])
