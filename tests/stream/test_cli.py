"""The command line of contracts.md: every command, --help, errors as one line, exit codes."""
import subprocess
import sys

import numpy as np
import pytest

from btomo.stream.cli import EXIT_USER_ERROR, main
from btomo.stream.recording import Recording

CONTRACT_COMMANDS = ["demo", "simulate", "live", "replay", "record", "process", "train-denoiser", "denoise",
                     "reconstruct", "analyze"]

@pytest.mark.parametrize("command", CONTRACT_COMMANDS)
def test_every_contract_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: btomo " + command in capsys.readouterr().out


@pytest.mark.parametrize("args", [["no_such_run"], ["a.xyz", "b.xyz"], ["missing.xyz", "--out", "o"]])
def test_analyze_bad_inputs_are_one_line_errors(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", *args]) == EXIT_USER_ERROR
    out, err = capsys.readouterr()
    assert "btomo analyze: error:" in err and err.count("\n") == 1 and "Traceback" not in err


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "btomo.stream", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["simulate", "OUT", "--dose", "-1"], "acquisition.dose_e_per_A2 must be > 0"),
        (["simulate", "OUT", "--shape", "100x100"], "frames.box_px (160 px) is larger than the frame 100x100 px"),
        (["live", "--protocol", "udp"], "invalid choice: 'udp'"),
        (["live", "--set", "stream.protocol=udp"], "stream.protocol must be one of"),
        (["simulate", "OUT", "--config", "missing.toml"], "config file not found"),
        (["simulate", "OUT", "--frames", "ten"], "invalid int value: 'ten'"),
        (["simulate", "OUT", "--set", "nonsense"], "--set expects SECTION.KEY=VALUE"),
        (["simulate", "OUT", "--rot-diffusion", "inf"], "sample.rot_diffusion_rad2_s must be a finite number"),
        (["demo", "--seconds", "nan"], "--seconds must be in (0, 60]"),
        (["replay", "missing.mrc"], "source not found: missing.mrc"),
        (["replay", "missing.mrc", "--rate", "fast"], "--rate expects a number > 0 or 'max', got 'fast'"),
        (["replay", "missing.mrc", "--to", "127.0.0.1:9"], "stream.source must be a ZeroMQ address"),
        (["process", "missing.tif", "--fps", "-4"], "--fps must be a finite number > 0"),
        (["record", "OUT", "--source", "tcp://127.0.0.1:9", "--set", "stream.curve_server_public_key=nokey",
          "--set", "stream.curve_secret_key=nokey"], "CURVE certificate not found: nokey"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message, tmp_path):
    r = _run(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "OUT").exists()


def test_simulate_command_writes_a_recording(tmp_path):
    r = _run("simulate", str(tmp_path / "rec"), "--frames", "6", "--shape", "192x192", "--diameter-nm", "1.5",
             "--seed", "3", "--workers", "1", "--set", "frames.box_px=128", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "wrote 6 frames (192x192)" in r.stdout
    assert "\x1b[" not in r.stderr  # not a TTY: no escape codes
    with Recording(tmp_path / "rec") as rec:
        assert len(rec) == 6
    assert "seed = 3" in (tmp_path / "rec" / "config.toml").read_text()
    again = _run("simulate", str(tmp_path / "rec"), "--frames", "6")
    assert again.returncode == 2 and "already holds a recording" in again.stderr


def test_demo_runs_and_says_where_its_outputs_are(tmp_path):
    r = _run("demo", "--seconds", "0.05", "--run-dir", str(tmp_path / "run"), "--shape", "192x192",
             "--set", "frames.box_px=128", "--set", "sample.diameter_nm=1.5")
    assert r.returncode == 0, r.stderr
    assert "run directory" in r.stdout and str(tmp_path / "run") in r.stdout.replace("\n", "")
    with Recording(tmp_path / "run" / "recording") as rec:
        assert len(rec) == 20
    assert (tmp_path / "run" / "recording" / "truth" / "frames.csv").exists()
    assert "[acquisition]" in (tmp_path / "run" / "config.toml").read_text()
    assert "simulated 20 frames" in (tmp_path / "run" / "btomo.log").read_text()
    # the demo ends with the analysis of its run (here only the lattice trace: 20 frames make no window)
    assert (tmp_path / "run" / "analysis" / "analysis.json").is_file()
    assert "analysis" in r.stdout
    # output that is not a terminal gets plain lines: no escape codes in files
    assert "\x1b[" not in r.stdout and "\x1b[" not in r.stderr


@pytest.mark.parametrize("how, workers", [("SIGTERM to the process", "1"), ("Ctrl-C to the process group", "2")])
def test_signal_stops_simulate_and_keeps_what_was_written(tmp_path, how, workers):
    import os
    import signal
    import time

    out = tmp_path / "rec"
    proc = subprocess.Popen([sys.executable, "-m", "btomo.stream", "simulate", str(out), "--frames", "20000",
                             "--shape", "192x192", "--set", "frames.box_px=128", "--workers", workers,
                             "--set", "simulate.block_frames=8", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # a test suite started in the background (`make test &`) inherits SIGINT
                            # ignored, and so would the child: give it the terminal's default
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / "frames.bin").exists() and (out / "frames.bin").stat().st_size > 0:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    if workers == "1":
        proc.send_signal(signal.SIGTERM)
    else:  # what a terminal does: SIGINT to the parent and its workers
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    with Recording(out) as rec:
        assert not rec.complete
        assert len(rec) >= 8  # what was rendered before the signal, flushed
        assert rec.torn_tail_bytes == 0
        np.testing.assert_array_equal(rec.frame_index, np.arange(len(rec)))
        rec.read_all()
    assert (out / "truth" / "frames.csv").exists()  # the truth is written before rendering


def test_unwritable_output_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    r = _run("simulate", str(tmp_path / "file" / "rec"), "--frames", "2", "--shape", "192x192",
             "--set", "frames.box_px=128")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "Not a directory" in r.stderr


def test_a_command_called_from_python_leaves_the_logging_as_it_found_it(tmp_path):
    """`main()` called in a process (a notebook, a test) logs into stderr and the run's btomo.log
    while it runs, then gives the root logger its handlers and level back and closes its own:
    nothing later in the process goes into that run's log or into a stream that has gone."""
    import logging  # noqa: PLC0415

    root = logging.getLogger()
    mine = logging.NullHandler()
    root.addHandler(mine)
    before, level = root.handlers[:], root.level
    try:
        run = tmp_path / "run"
        assert main(["demo", "--seconds", "0.05", "--run-dir", str(run), "--shape", "192x192", "--no-dashboard",
                     "--set", "frames.box_px=128", "--set", "sample.diameter_nm=1.5"]) == 0
        assert root.handlers == before and root.level == level
        logging.getLogger("btomo.test").warning("a record after the command")
        text = (run / "btomo.log").read_text()
        assert "simulated 20 frames" in text and "a record after the command" not in text
    finally:
        root.removeHandler(mine)
