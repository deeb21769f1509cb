"""Nothing lost when things break: faults injected into the real job on a real multi-node Ray cluster on loopback.

One cluster (a head node and two worker nodes of one CPU each, :class:`cluster_support.LoopbackCluster`) serves
every case; the job runs as a user runs it (``python jobs/annotate.py ... --address``) over three real clips cut
into 1-second segments, so many tasks are in flight. Each case ends with tables equal, row for row, to those of
an uninterrupted run on the same cluster: same rows, boxes and track ids, probabilities within 1e-4, nothing
doubled.

    a. a worker node's raylet is killed with SIGKILL mid-run: the job finishes with exit 0;
    b. the classifier actor's process is killed mid-run: the job finishes with exit 0;
    c. the driver is killed with SIGKILL mid-run (and, with the test hook of ``fer_core.output``, between a
       video's two files), then run again: never a half-written video visible, the re-run completes it;
    d. the output location fails mid-run, a loopback S3 server that stops or a local folder that turns read-only:
       one error line, exit 1, the committed videos intact, and a run after the fix completes the rest.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cluster_support import LoopbackCluster
from env_support import environ

REPO = Path(__file__).resolve().parents[1]
JOB = [sys.executable, str(REPO / "jobs" / "annotate.py")]
CLIPS = ["posed_happy.mp4", "pyfeat_face_noface.mov", "face_recognition_short_hamilton_clip.mp4"]
KEY = ["video_id", "frame_index", "face_index"]
EXACT = ["video_path", "timestamp_s", "track_id", "x", "y", "w", "h", "emotion"]
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def cluster():
    with LoopbackCluster(head_cpus=1, workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def job_args(cluster, videos_dir, yunet_model, tiny_checkpoint) -> list[str]:
    return [
        *(str(videos_dir / c) for c in CLIPS), "--fps", "2", "--segment-s", "1", "--model", str(tiny_checkpoint),
        "--detector", "yunet", "--detector-model", str(yunet_model), "--precision", "fp32", "-q",
        "--batch-size", "4",  # classifier batches as rows come, not once 256 rows are in: videos finish one by one
        "--address", cluster.address,
    ]


@pytest.fixture(scope="module")
def clean(cluster, job_args, tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The uninterrupted run's tables: faces sorted by KEY, and videos."""
    out = tmp_path_factory.mktemp("clean")
    r = subprocess.run([*JOB, *job_args, "--out", str(out)], env=cluster.env, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    faces, videos = _tables(out)
    assert len(videos) == len(CLIPS) and (videos.status == "ok").all()
    assert faces.track_id.notna().any() and faces.face_index.isna().any()  # faces, tracks and no-face frames
    return faces, videos


# ------------------------------------------------------------------------------------------------ helpers


def _tables(out: str | Path, filesystem=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    faces = pq.read_table(f"{out}/faces", filesystem=filesystem).to_pandas()
    videos = pq.read_table(f"{out}/videos", filesystem=filesystem).to_pandas()
    return faces.sort_values(KEY).reset_index(drop=True), videos.sort_values("video_id").reset_index(drop=True)


def assert_same_tables(got: tuple[pd.DataFrame, pd.DataFrame], clean: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    faces, videos = got
    ref_faces, ref_videos = clean
    assert not faces.duplicated(KEY).any(), "rows doubled"
    assert len(faces) == len(ref_faces)
    pd.testing.assert_frame_equal(faces[KEY], ref_faces[KEY])
    pd.testing.assert_frame_equal(faces[EXACT], ref_faces[EXACT])
    probs = [c for c in faces.columns if c.startswith("p_")] + ["confidence"]
    np.testing.assert_allclose(faces[probs].to_numpy(float), ref_faces[probs].to_numpy(float), atol=1e-4)
    assert list(videos.video_id) == list(ref_videos.video_id) and (videos.status == "ok").all()
    for col in ("frames_sampled", "frames_with_face", "faces", "duration_s", "width", "height"):
        assert list(videos[col]) == list(ref_videos[col]), col


def start_job(cluster: LoopbackCluster, job_args: list[str], out: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*JOB, *job_args, "--out", out], env={**cluster.env, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    return proc.returncode, err


def committed(out: Path) -> list[Path]:
    return sorted((out / "videos").glob("*.parquet"))


def wait_until(condition, proc: subprocess.Popen, what: str, timeout_s: float = RUN_TIMEOUT_S, poll=None) -> None:
    """Wait for ``condition()`` while the job runs (calling ``poll()`` at each step); fail if the job ends first."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if poll is not None:
            poll()
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the job ended (exit {proc.returncode}) before {what}: {err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def check_visible_videos_complete(out: Path) -> int:
    """Every videos/ row visible now has its faces/ file, complete: readable, with the frames and faces the row
    counts. Returns the number of videos visible."""
    rows = committed(out)
    for path in rows:
        row = pq.read_table(path).to_pandas().iloc[0]
        assert row.status == "ok", row.error
        faces = pq.read_table(out / "faces" / path.name).to_pandas()
        assert faces.frame_index.nunique() == row.frames_sampled
        assert int(faces.face_index.notna().sum()) == row.faces
    return len(rows)


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------------------------------------ without Ray


class _Detector:
    name = "fake"

    def describe(self) -> dict:
        return {"name": "fake"}


def _result(vid: str):
    from fer_core.output import VideoResult
    from fer_core.schema import VIDEOS_SCHEMA

    row = {f.name: None for f in VIDEOS_SCHEMA}
    row.update(video_id=vid, video_path=f"/v/{vid}.mp4", status="failed", error="x", seconds=0.0)
    return VideoResult(vid, None, row)


@pytest.fixture()
def fake_cluster(monkeypatch):
    """annotate() with everything Ray does replaced: each run of the pipeline is ``runs[i](segments)``."""
    import types

    from fer_core import pipeline

    runs = []
    calls = []

    def run_pipeline(segments, *args, **kwargs):
        calls.append(sorted({s["video_id"] for s in segments}))
        yield from runs[len(calls) - 1](segments)

    monkeypatch.setattr(pipeline, "_checkpoint_files", lambda model: ({}, types.SimpleNamespace(arch="a", tta=False), "m"))
    monkeypatch.setattr(pipeline, "check_labels", lambda opts: None)
    monkeypatch.setattr(pipeline, "_plan_resources", lambda opts: {"device": "cpu", "actors": 1, "decode_cpus": 1.0})
    monkeypatch.setattr(pipeline, "plan_videos", lambda todo, opts: [
        {"video_id": v, "video_path": p, "segment_index": 0, "n_segments": 1} for p, v in todo])
    monkeypatch.setattr(pipeline, "_run_pipeline", run_pipeline)
    return runs, calls


def _annotate(tmp_path, paths):
    from fer_core import pipeline
    from fer_core.config import AnnotateOptions

    return pipeline.annotate(paths, str(tmp_path / "out"), AnnotateOptions(), detector=_Detector(), model_bytes=None)


def test_a_lost_worker_reruns_only_the_unfinished_videos(fake_cluster, tmp_path, caplog):
    import ray.exceptions

    from fer_core.video import video_id

    runs, calls = fake_cluster
    paths = [str(tmp_path / f"{n}.mp4") for n in "abc"]
    a, b, c = (video_id(p) for p in paths)

    def first(segments):
        yield _result(a)
        raise ray.exceptions.ActorDiedError()

    def second(segments):
        yield from (_result(s["video_id"]) for s in segments)

    runs += [first, second]
    with caplog.at_level("WARNING", logger="fer_core.pipeline"):
        summary = _annotate(tmp_path, paths)
    assert calls == [sorted([a, b, c]), sorted([b, c])]  # the committed video is not done again
    assert sorted(r["video_id"] for r in summary.results) == sorted([a, b, c])
    assert len(list((tmp_path / "out" / "videos").glob("*.parquet"))) == 3
    assert "lost a worker (ActorDiedError" in caplog.text and "attempt 2 of 3" in caplog.text


@pytest.mark.parametrize("error", ["ValueError", "OutputError", "ActorDiedError"])
def test_other_failures_and_the_last_attempt_stop_the_job(fake_cluster, tmp_path, error):
    import ray.exceptions

    from fer_core import pipeline
    from fer_core.output import OutputError

    runs, calls = fake_cluster
    make = {"ValueError": ValueError, "OutputError": OutputError, "ActorDiedError": ray.exceptions.ActorDiedError}[error]

    def failing(segments):
        raise make() if make is ray.exceptions.ActorDiedError else make("boom")
        yield

    runs += [failing] * pipeline.PIPELINE_ATTEMPTS
    with pytest.raises(make):
        _annotate(tmp_path, [str(tmp_path / "a.mp4")])
    assert len(calls) == (pipeline.PIPELINE_ATTEMPTS if error == "ActorDiedError" else 1)


def _row(vid: str, n_segments: int = 1, duration_s: float = 5.0, decoder: str = "decord", start_s: float = 0.0,
         end_s: float = float("nan")) -> dict:
    return {"video_id": vid, "n_segments": n_segments, "start_s": start_s, "end_s": end_s, "duration_s": duration_s,
            "fps": 30.0, "decoder": decoder}


def test_pack_segments():
    from fer_core.pipeline import pack_segments

    images = [_row(f"i{k}", duration_s=0.0, decoder="image") for k in range(10)]
    split = [_row("long", n_segments=2, duration_s=200, end_s=120.0), _row("long", n_segments=2, duration_s=200, start_s=120.0)]
    clips = [_row("c1", duration_s=10.0), _row("c2", duration_s=60.0)]  # at 5 fps: 50 frames, 300 frames
    packs = pack_segments(split + clips + images, 5.0, pack_frames=30, max_inputs=4)
    assert [[r["video_id"] for r in p] for p in packs] == [
        ["long"], ["long"], ["c1"], ["c2"], ["i0", "i1", "i2", "i3"], ["i4", "i5", "i6", "i7"], ["i8", "i9"]]
    # Never fewer tasks than min_packs while there are inputs enough; 0 switches packing off.
    assert len(pack_segments(images, 5.0, pack_frames=30, max_inputs=64, min_packs=5)) == 5
    assert len(pack_segments(images, 5.0, pack_frames=0)) == 10
    # Every row lands in exactly one pack.
    rows = split + clips + images
    assert sorted(map(repr, (r for p in pack_segments(rows, 5.0) for r in p))) == sorted(map(repr, rows))


# ------------------------------------------------------------------------------------------------ the cases


@pytest.mark.slow
def test_classifier_actor_killed(cluster, job_args, clean, tmp_path):
    before = set(cluster.pids_titled("ClassifyCrops"))
    proc = start_job(cluster, job_args, str(tmp_path))
    wait_until(lambda: committed(tmp_path), proc, "the first video was committed")
    actors = [p for p in cluster.pids_titled("ClassifyCrops") if p not in before]
    assert actors, "no classifier actor process found"
    kill(actors)
    # Killed busy, it fails the pipeline's run and the job runs the unfinished videos again (a warning says so);
    # killed idle, Ray Data replaces it. Either way a new classifier process does the rest.
    replaced = False
    while proc.poll() is None:
        replaced = replaced or any(p not in before and p not in actors for p in cluster.pids_titled("ClassifyCrops"))
        time.sleep(0.05)
    code, err = finish(proc)
    assert code == 0, err[-3000:]
    assert replaced, "no classifier process ran after the kill: it came too late to matter"
    assert_same_tables(_tables(tmp_path), clean)


@pytest.mark.slow
def test_driver_killed_mid_run_then_run_again(cluster, job_args, clean, tmp_path):
    # The videos can finish close together: a kill that comes once all are in interrupts nothing, so start over
    # (at most 3 tries) until one lands between two commits.
    for _ in range(3):
        shutil.rmtree(tmp_path / "faces", ignore_errors=True)
        shutil.rmtree(tmp_path / "videos", ignore_errors=True)
        seen = []
        proc = start_job(cluster, job_args, str(tmp_path))
        wait_until(lambda: seen and seen[-1] >= 1, proc, "the first video was committed",
                   poll=lambda: seen.append(check_visible_videos_complete(tmp_path)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        done = check_visible_videos_complete(tmp_path)
        if done < len(CLIPS):
            break
    assert 1 <= done < len(CLIPS), "the kill came too late to interrupt anything, three times"

    proc = start_job(cluster, job_args, str(tmp_path))
    while proc.poll() is None:  # every video visible during the re-run is complete too
        check_visible_videos_complete(tmp_path)
        time.sleep(0.05)
    code, err = finish(proc)
    assert code == 0, err[-3000:]
    assert_same_tables(_tables(tmp_path), clean)


@pytest.mark.slow
def test_driver_killed_between_a_videos_two_files(cluster, job_args, clean, tmp_path):
    from fer_core.output import TEST_KILL_AFTER_FACES_ENV

    proc = start_job(cluster, job_args, str(tmp_path), env={TEST_KILL_AFTER_FACES_ENV: "2"})
    code, err = finish(proc)
    assert code == -signal.SIGKILL, err[-3000:]
    faces_files = sorted((tmp_path / "faces").glob("*.parquet"))
    assert len(faces_files) == 2 and check_visible_videos_complete(tmp_path) == 1
    (orphan,) = [f for f in faces_files if not (tmp_path / "videos" / f.name).exists()]
    assert pq.read_table(orphan).num_rows > 0  # written whole; only its videos row is missing
    assert not list(tmp_path.glob("*/.*.tmp"))  # no temporary file left behind

    r = subprocess.run([*JOB, *job_args, "--out", str(tmp_path)], env=cluster.env, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "videos skipped 1" in r.stdout
    assert_same_tables(_tables(tmp_path), clean)


@pytest.fixture()
def s3_server():
    """A moto S3 server on loopback that the test can stop and start again on the same port (data kept)."""
    moto_server = pytest.importorskip("moto.server")

    class Server:
        def __init__(self) -> None:
            self.port = 0
            self.server = None

        def start(self) -> None:
            self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self.server.start()
            self.port = self.server.get_host_and_port()[1]

        def stop(self) -> None:
            if self.server is not None:
                self.server.stop()
                self.server = None

    s = Server()
    s.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s.port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    s.env = env
    try:
        with environ(env):
            yield s
    finally:
        s.stop()


@pytest.mark.slow
def test_output_location_fails_mid_run(cluster, job_args, clean, s3_server):
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri("s3://fer-faults?allow_bucket_creation=true")
    fs.create_dir("fer-faults")
    out = "s3://fer-faults/timelines"

    def n_committed() -> int:
        try:
            return len(fs.get_file_info(pafs.FileSelector("fer-faults/timelines/videos", allow_not_found=True)))
        except OSError:
            return 0

    proc = start_job(cluster, job_args, out, env=s3_server.env)
    wait_until(lambda: n_committed() >= 1, proc, "the first video was committed")
    s3_server.stop()
    code, err = finish(proc)
    assert code == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "run the same command again to resume" in errors[0], err[-3000:]

    s3_server.start()  # the output location is back
    faces, videos = _tables("fer-faults/timelines", filesystem=fs)
    # Where the server stopped between a video's two files, its faces file exists without its videos row: not
    # committed, and skipped by readers (load_timelines) as the README says; the resume below replaces it.
    faces = faces[faces.video_id.isin(videos.video_id)].reset_index(drop=True)
    assert 1 <= len(videos) < len(CLIPS), "the failure came too late to interrupt anything"
    for row in videos.itertuples():  # every committed video intact
        rows = faces[faces.video_id == row.video_id]
        assert rows.frame_index.nunique() == row.frames_sampled and rows.face_index.notna().sum() == row.faces
    ref_faces, ref_videos = clean
    assert_same_tables((faces, videos), (ref_faces[ref_faces.video_id.isin(videos.video_id)].reset_index(drop=True),
                                         ref_videos[ref_videos.video_id.isin(videos.video_id)].reset_index(drop=True)))

    r = subprocess.run([*JOB, *job_args, "--out", out], env={**cluster.env, **s3_server.env}, capture_output=True,
                       text=True, timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"videos skipped {len(videos)}" in r.stdout
    assert_same_tables(_tables("fer-faults/timelines", filesystem=fs), clean)


def _make_read_only(folders: list[Path], read_only: bool) -> None:
    """chmod, and for root (whom chmod does not stop) the immutable attribute as well; undone with False."""
    for folder in folders:
        if read_only:
            folder.chmod(0o555)
        if os.geteuid() == 0 and shutil.which("chattr"):  # an immutable folder takes no chmod: set it last
            subprocess.run(["chattr", "+i" if read_only else "-i", str(folder)], capture_output=True)
        if not read_only:
            folder.chmod(0o755)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.mark.slow
def test_output_folder_becomes_read_only_mid_run(cluster, job_args, clean, tmp_path):
    """Case d on a local disk: the output's folders turn read-only after the first commit."""
    out = tmp_path / "out"
    folders = [out / "faces", out / "videos"]
    probe = tmp_path / "probe"
    probe.mkdir()
    _make_read_only([probe], True)
    if _writable(probe):
        _make_read_only([probe], False)
        pytest.skip("this machine cannot make a folder read-only to this user (chmod, and chattr as root)")
    _make_read_only([probe], False)

    proc = start_job(cluster, job_args, str(out))
    try:
        wait_until(lambda: len(committed(out)) >= 1, proc, "the first video was committed", poll=None)
        _make_read_only(folders, True)
        code, err = finish(proc)
    finally:
        _make_read_only(folders, False)
    assert code == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "run the same command again to resume" in errors[0], err[-3000:]
    assert "Permission denied" in errors[0] or "not permitted" in errors[0], errors[0]

    n = check_visible_videos_complete(out)  # every committed video intact
    assert 1 <= n < len(CLIPS), "the failure came too late to interrupt anything"
    faces, videos = _tables(out)
    ref_faces, ref_videos = clean
    assert_same_tables((faces, videos), (ref_faces[ref_faces.video_id.isin(videos.video_id)].reset_index(drop=True),
                                         ref_videos[ref_videos.video_id.isin(videos.video_id)].reset_index(drop=True)))

    r = subprocess.run([*JOB, *job_args, "--out", str(out)], env=cluster.env, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S)  # the folders are writable again
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"videos skipped {n}" in r.stdout
    assert_same_tables(_tables(out), clean)


@pytest.mark.slow
def test_worker_node_killed(cluster, job_args, clean, tmp_path):
    proc = start_job(cluster, job_args, str(tmp_path))
    wait_until(lambda: committed(tmp_path), proc, "the first video was committed")
    # The worker node running a decode task or the classifier now (else the first): its raylet, SIGKILL.
    busy = {_parent(p) for p in cluster.pids_titled("MapBatches")}
    victim = next((r for r in cluster.worker_raylets if r in busy), cluster.worker_raylets[0])
    kill([victim])
    try:
        code, err = finish(proc)
        assert code == 0, err[-3000:]
        assert_same_tables(_tables(tmp_path), clean)
    finally:
        cluster.add_worker()  # in place of the one killed, for any test after this one


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1
