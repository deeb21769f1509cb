"""`ray job submit` for real: a Ray head on loopback with token authentication, the repo uploaded as the
working dir (videos and outputs excluded), the annotation job submitted, followed and checked."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_head(tmp_path):
    temp_dir = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # Unix socket paths must stay short
    """A Ray head started with `ray start --head --block` on 127.0.0.1, stopped by signalling that process
    (never `ray stop`, which would stop every Ray instance on the machine)."""
    token = secrets.token_hex(16)
    # The entry point's `python` must be this environment's, as it is the image's on a real cluster.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=path)
    env.pop("RAY_ADDRESS", None)
    dash = _free_port()
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--include-dashboard=true",
           f"--temp-dir={temp_dir}", "--disable-usage-stats",
           f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}"]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 180
    while time.time() < deadline:
        r = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True, text=True)
        if r.returncode == 0:
            break
        if head.poll() is not None:
            pytest.fail(f"ray start failed: {head.stdout.read()[-3000:]}")
        time.sleep(2)
    else:
        pytest.fail("the Ray head did not come up in 180 s")
    yield address, env
    head.terminate()
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, 9)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_annotation_job(ray_head, tmp_path, videos_dir, yunet_model, tiny_checkpoint):
    address, env = ray_head
    src = tmp_path / "videos"
    src.mkdir()
    for name in ("posed_happy.mp4", "pyfeat_face_noface.mov"):
        shutil.copy(videos_dir / name, src / name)
    out = tmp_path / "timelines"
    # Without the token the job server refuses.
    denied = subprocess.run([RAY, "job", "list", "--address", address], capture_output=True, text=True,
                            env={k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"} | {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")})
    assert denied.returncode != 0
    runtime_env = {"excludes": [".git", ".venv", ".venv-ci", "runs", "timelines", "*.mp4", "*.mov", "*.parquet"]}
    submit = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO),
              "--runtime-env-json", json.dumps(runtime_env), "--",
              "python", "jobs/annotate.py", str(src), "--out", str(out), "--model", str(tiny_checkpoint),
              "--detector", "yunet", "--detector-model", str(yunet_model), "-q"]
    r = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "succeeded" in log.lower(), log[-4000:]
    assert "videos ok      2" in log  # the job's summary, followed through the job server
    videos = pd.read_parquet(out / "videos")
    faces = pd.read_parquet(out / "faces")
    assert sorted(videos.status) == ["ok", "ok"]
    assert faces.groupby("video_path").frame_index.nunique().to_dict() == {
        str(src / "posed_happy.mp4"): 25, str(src / "pyfeat_face_noface.mov"): 32}
