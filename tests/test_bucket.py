"""Bucket inputs and outputs for real: an S3 server on loopback (moto), the CLI reading s3:// videos and
writing s3:// timelines, read back through pyarrow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from env_support import environ

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture()
def s3_env():
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        with environ(env):
            yield env
    finally:
        server.stop()


def test_s3_in_and_out(s3_env, videos_dir, yunet_model, tiny_checkpoint):
    fs, _ = pafs.FileSystem.from_uri("s3://fer-test?allow_bucket_creation=true")
    fs.create_dir("fer-test")
    for name in ("posed_happy.mp4", "pyfeat_face_noface.mov"):
        with fs.open_output_stream(f"fer-test/videos/{name}") as out:
            out.write((videos_dir / name).read_bytes())
    with fs.open_output_stream("fer-test/videos/broken.mp4") as out:
        out.write(b"not a video")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", **s3_env)
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, str(REPO / "jobs" / "annotate.py"), "s3://fer-test/videos", "--out", "s3://fer-test/timelines",
           "--model", str(tiny_checkpoint), "--detector", "yunet", "--detector-model", str(yunet_model), "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "videos ok      2" in r.stdout and "broken.mp4" in r.stdout

    videos = pq.read_table("fer-test/timelines/videos", filesystem=fs).to_pandas()
    faces = pq.read_table("fer-test/timelines/faces", filesystem=fs).to_pandas()
    assert sorted(videos.status) == ["failed", "ok", "ok"]
    assert set(videos.video_path) == {f"s3://fer-test/videos/{n}" for n in ("posed_happy.mp4", "pyfeat_face_noface.mov", "broken.mp4")}
    happy = faces[faces.video_path == "s3://fer-test/videos/posed_happy.mp4"]
    assert happy.frame_index.nunique() == 25 and happy.face_index.notna().all()

    # Run again: the two finished videos are skipped, nothing is doubled.
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2 and "videos skipped 2" in r.stdout, r.stderr[-3000:]
    assert len(pq.read_table("fer-test/timelines/faces", filesystem=fs)) == len(faces)
