"""The annotate command as a user runs it: errors before any work, exit codes, and interrupt + resume."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
JOB = [sys.executable, str(REPO / "jobs" / "annotate.py")]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    env.update(extra or {})
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*JOB, *args], capture_output=True, text=True, env=_env(env), timeout=timeout)


def test_help():
    r = run_cli("--help")
    assert r.returncode == 0
    for flag in ("--fps", "--out", "--detector", "--model", "--overwrite", "--segment-s"):
        assert flag in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["/no/such/folder"], "does not exist"),
        (["{empty}"], "no video or image files"),
        (["{txt}"], "expected a video file or a folder"),
        (["{video}", "--fps", "-1"], "--fps must be >= 0"),
        (["{video}", "--detector", "mtcnn"], "--detector must be one of"),
        (["{video}", "--detector-engine", "tensorrt"], "--detector-engine must be one of auto, onnxruntime, opencv"),
        (["{video}", "--decoder", "opencv"], "--decoder must be one of"),
        (["{video}", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["{video}", "--precision", "fp16"], "--precision must be one of auto, fp32, bf16"),
        (["{video}", "--out", "{file}/sub"], "not writable"),
        (["{video}", "--model", "/no/such/model"], "does not exist"),
        (["{video}", "--detector", "yunet", "--detector-model", "/no/such.onnx"], "not found"),
    ],
)
def test_bad_input_stops_before_any_work(tmp_path, videos_dir, tiny_checkpoint, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "file").write_text("x")
    subs = {"{empty}": str(tmp_path / "empty"), "{txt}": str(tmp_path / "notes.txt"),
            "{video}": str(videos_dir / "posed_happy.mp4"), "{file}": str(tmp_path / "file")}
    args = [subs.get(a, a.replace("{file}", str(tmp_path / "file"))) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    if "--model" not in args:
        args += ["--model", str(tiny_checkpoint)]
    r = run_cli(*args, timeout=120)
    assert r.returncode == 1, r.stderr
    err_lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1 and message in err_lines[0], r.stderr
    # No work was done: no output rows (a bad --model is found while Ray starts, so Ray may have started).
    assert not list((tmp_path / "out").glob("*/*.parquet")) if (tmp_path / "out").exists() else True


@pytest.mark.slow
def test_exit_codes_interrupt_and_resume(tmp_path, videos_dir, yunet_model, tiny_checkpoint):
    src = tmp_path / "videos"
    src.mkdir()
    names = ["posed_angry.mp4", "posed_disgust.mp4", "posed_fear.mp4", "posed_happy.mp4", "posed_sad.mp4", "posed_surprise.mp4"]
    for n in names:
        shutil.copy(videos_dir / n, src / n)
    common = ["--fps", "0", "--model", str(tiny_checkpoint), "--detector", "yunet", "--detector-model", str(yunet_model), "-q"]

    # Clean, uninterrupted run: all ok -> exit 0, with the summary table.
    clean = tmp_path / "clean"
    r = run_cli(str(src), "--out", str(clean), *common)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "videos ok      6" in r.stdout and "frames/s" in r.stdout

    # Interrupted run: Ctrl-C once the first video is committed.
    resumed = tmp_path / "resumed"
    proc = subprocess.Popen([*JOB, str(src), "--out", str(resumed), *common], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 1200  # generous: a loaded machine can take minutes to start Ray and the first video
    while time.time() < deadline and proc.poll() is None and not list((resumed / "videos").glob("*.parquet")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    committed = len(list((resumed / "videos").glob("*.parquet")))
    assert 1 <= committed, err[-2000:]
    if committed < len(names):  # interrupted midway, as intended
        assert proc.returncode == 130, err[-2000:]
        assert "run the same command again to resume" in err
    # Every committed video is complete: its rows equal the clean run's.
    part = pd.read_parquet(resumed / "faces")
    ref = pd.read_parquet(clean / "faces")
    for vid, rows in part.groupby("video_id"):
        pd.testing.assert_frame_equal(
            rows.reset_index(drop=True), ref[ref.video_id == vid].reset_index(drop=True), check_exact=False, atol=1e-5
        )

    # Run again: ends with exactly the rows of the clean run, nothing doubled.
    r = run_cli(str(src), "--out", str(resumed), *common)
    assert r.returncode == 0, r.stderr[-2000:]
    key = ["video_id", "frame_index", "face_index"]
    a = pd.read_parquet(resumed / "faces").sort_values(key).reset_index(drop=True)
    b = ref.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-5)
    assert len(pd.read_parquet(resumed / "videos")) == len(names)

    # A broken file among good ones: exit 2, the summary names it.
    (src / "broken.mp4").write_bytes(b"\x00" * 1000)
    r = run_cli(str(src), "--out", str(resumed), *common)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "videos failed  1" in r.stdout and "broken.mp4" in r.stdout
    assert "videos skipped 6" in r.stdout


# ------------------------------------------------------------------------------------------------ the console

_CORE_WORKER_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [^\]]* ([EF]) \d+ \d+\]")  # Ray's C++ log format: [time E pid tid]


def _error_lines(stderr: str) -> list[str]:
    """Error-level lines: Ray Core's ``[... E pid tid]``, glog-style ``E....``, Python's ``ERROR``, ``error:``."""
    return [line for line in stderr.splitlines()
            if _CORE_WORKER_LINE.match(line) or re.match(r"^[EF]\d{4} ", line) or line.startswith(("E ", "error:"))
            or "ERROR" in line]


def _video_result(name: str, status: str = "ok", frames: int = 25):
    row = {"video_path": f"/v/{name}", "status": status, "error": "truncated" if status != "ok" else None,
           "frames_sampled": frames, "faces": frames, "seconds": 1.5}
    return type("FakeResult", (), {"video_row": row})()  # Progress reads only video_row


@pytest.mark.parametrize("mode", ["bar", "lines", "off"])
def test_progress_modes(mode):
    from fer_core.report import Progress

    stream = io.StringIO()
    with Progress(mode, stream=stream) as progress:
        progress.start(2)
        progress.video(_video_result("a.mp4"), 1, 2)
        progress.video(_video_result("b.mp4", status="failed", frames=0), 2, 2)
    text = stream.getvalue()
    if mode == "off":
        assert text == ""
    elif mode == "lines":
        assert text.splitlines() == ["[1/2] ok     a.mp4: 25 frames, 25 faces, 1.5 s", "[2/2] FAILED b.mp4: truncated"]
    else:  # one bar, redrawn in place; the failure printed above it
        assert "videos 2/2" in text and "frames/s, 1 failed" in text and "[2/2] FAILED b.mp4: truncated" in text
        assert "[1/2] ok" not in text
    assert progress.frames == 25 and progress.failed == 1


def test_quiet_and_verbose_exclude_each_other(tmp_path, videos_dir):
    r = run_cli(str(videos_dir / "posed_happy.mp4"), "--out", str(tmp_path / "out"), "-q", "--verbose", timeout=120)
    assert r.returncode == 1 and "--quiet and --verbose" in r.stderr, r.stderr


@pytest.mark.slow
def test_healthy_run_console_is_quiet_and_verbose_brings_ray_back(tmp_path, videos_dir, yunet_model, tiny_checkpoint):
    clip = str(videos_dir / "posed_happy.mp4")
    common = ["--model", str(tiny_checkpoint), "--detector", "yunet", "--detector-model", str(yunet_model)]
    r = run_cli(clip, "--out", str(tmp_path / "quiet"), *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _error_lines(r.stderr) == [], r.stderr  # no Ray Core E line about actor constructor arguments
    assert "constructor arguments" not in r.stderr
    # No Ray start banner, no Ray Data progress blocks or execution lines, no forwarded worker logs.
    for noise in ("Running Dataset", "Starting execution", "Progress bars", "Started a local Ray", "INFO", "(pid="):
        assert noise not in r.stderr, r.stderr
    # Without a terminal: one line per video (Ray's warnings about the machine, e.g. a small /dev/shm, may remain).
    progress = [line for line in r.stderr.splitlines() if re.match(r"^\[\d+/\d+\] ", line)]
    assert len(progress) == 1 and progress[0].startswith("[1/1] ok     posed_happy.mp4: 25 frames"), r.stderr
    assert "videos ok      1" in r.stdout

    v = run_cli(clip, "--out", str(tmp_path / "verbose"), *common, "--verbose")
    assert v.returncode == 0, v.stderr[-3000:]
    assert "Starting execution of Dataset" in v.stderr, v.stderr[-3000:]
    assert _error_lines(v.stderr) == [], v.stderr
    assert "videos ok      1" in v.stdout
