"""The annotation job as a new user on a machine without internet runs it: no network, no FER_YUNET_MODEL, an
empty HOME (no cache). The detector shipped inside the package must be used, not Haar, and nothing fetched: the
only file the run may leave in the cache is ONNX Runtime's free-size copy of that packaged model."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fer_core.detect import PACKAGED_YUNET
from fer_core.schema import read_run_metadata

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _network_namespace_works() -> bool:
    """Whether `unshare -n` can give the job a network namespace with only a loopback interface."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_offline_run_uses_the_packaged_yunet(videos_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("FER_YUNET_MODEL", "FER_CACHE_DIR", "XDG_CACHE_HOME")}
    # Any attempt to reach the internet fails at once, namespace or not.
    env.update(HOME=str(home), RAY_AUTH_MODE="disabled", http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    job = [sys.executable, str(REPO / "jobs" / "annotate.py"), str(videos_dir / "posed_happy.mp4"), "--out", str(out),
           "--fps", "2", "-q"]
    isolated = _network_namespace_works()
    command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *job] if isolated else job
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "haar" not in result.stderr.lower()
    videos = pd.read_parquet(out / "videos")
    assert videos.detector.tolist() == ["yunet"] and videos.status.tolist() == ["ok"]
    faces = pd.read_parquet(out / "faces")
    import pyarrow.parquet as pq

    meta = read_run_metadata(pq.read_schema(next((out / "faces").glob("*.parquet"))))
    assert meta["detector"]["model_file"] == "face_detection_yunet_2023mar.onnx"
    # One person on screen: one face per sampled frame (Haar found 30 in 25 frames here).
    seen = faces.dropna(subset=["face_index"])
    assert len(seen) >= 8 and seen.groupby("frame_index").size().max() == 1
    cache = home / ".cache" / "fer_core"
    cached = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    engine = meta["detector"]["engine"]
    if engine == "onnxruntime":  # derived locally from the packaged file, named by that file's digest
        digest = hashlib.sha256(PACKAGED_YUNET.read_bytes()).hexdigest()[:16]
        assert cached == [f"yunet-free-size-{digest}.onnx"]
    else:
        assert cached == []
