"""The bad-input matrix: one real job over every kind of broken, odd or hostile input at once, then one test per
kind reading that video's row of the ``videos`` table.

Every kind must end as a row (``failed`` with a one-line reason naming what is wrong and, where there is one, the
fix; or ``ok`` where the file is fine) or, where the input is not a video file at all, be left out of the listing on
purpose; none may crash the job. What a user gets, kind by kind:

===============================  ======================================================================
input                            outcome
===============================  ======================================================================
zero-byte file                   failed: "zero-byte file"
text file named .mp4             failed: "not a video container"
truncated MP4, index kept        failed: "ended after N of the M frames its container declares ... (truncated file?)"
truncated MP4, index cut away    failed: "truncated or unfinished MP4: its index (moov atom) is missing"
corrupt data mid-stream          failed: "decoder error at frame N"
audio only (no video stream)     failed: "has no video stream (streams found: audio)"
codec no decoder has             failed: names the codec tag, "supported by neither decord nor PyAV", how to re-encode
1-frame video                    ok, 1 frame sampled
7680x4320 frames                 ok; detection runs on a downscaled copy, boxes in full-resolution pixels
0 fps / absurd fps / ~0 fps      failed: "broken timing: its container states ... fps", how to rewrite timestamps
corrupt .jpg                     failed: "not a readable image"
spaces and non-ASCII in names    ok
folder named x.mp4               a folder: the videos inside it are listed and processed; no row for the folder
chmod 000 file                   failed: "permission denied" (as root, which reads anything, ok: see its test)
symlink loop in a folder         links to folders are not followed: listing ends at once, nothing listed twice
pipe (FIFO) in a folder          skipped by the listing (not a regular file); given explicitly, an InputError
deleted after listing            failed: "does not exist (moved or deleted?)"
deleted after planning           failed: the same, from the decode stage; the other videos finish
replaced by a folder / a FIFO    failed: "is a folder" / "is not a regular file" (a FIFO would block a decoder)
same file twice                  one video: "a.mp4", "./a.mp4", an absolute path and a symlink to it are one file
===============================  ======================================================================
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from media_support import write_h264

from fer_core.config import AnnotateOptions
from fer_core.detect import create_detector
from fer_core.video import InputError, list_inputs, video_id

pytestmark = pytest.mark.slow

GOOD = "posed_happy.mp4"
NAME_ODD = "name with spaces ünï 表情 (2).mp4"
BIG_W, BIG_H = 7680, 4320


# --------------------------------------------------------------------------------------------------
# Making the inputs


def _first_frame(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            return frame.to_ndarray(format="rgb24")
    raise AssertionError(f"no frame in {path}")


def _patch_box(data: bytes, box: bytes, offset: int, value: int) -> bytes:
    """Overwrite the 32-bit field `offset` bytes into the payload of the (only) MP4 box named `box`."""
    assert data.count(box) == 1, box
    out = bytearray(data)
    struct.pack_into(">I", out, out.find(box) + 4 + offset, value)
    return bytes(out)


def _audio_only(path: Path) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _make_matrix(videos: Path, root: Path) -> dict[str, Path]:
    """Every kind of input, in folder `root` (plus a link from outside it); returns kind -> path."""
    import cv2

    root.mkdir(parents=True)
    p = {kind: root / name for kind, name in {
        "good": GOOD, "zero_byte": "empty.mp4", "text": "notes.mp4", "truncated": "truncated.mp4",
        "truncated_index": "truncated_before_index.mp4",
        "corrupt_mid": "corrupt_mid.mp4", "audio_only": "audio_only.mp4", "unknown_codec": "unknown_codec.mp4",
        "one_frame": "one_frame.mp4", "huge": "huge_8k.mp4", "fps_zero": "fps_zero.mp4",
        "fps_absurd": "fps_absurd.mp4", "fps_tiny": "fps_tiny.mp4", "bad_jpg": "garbage.jpg", "odd_name": NAME_ODD,
        "unreadable": "unreadable.mp4", "fifo": "fifo.mp4", "deleted_listed": "deleted_after_listing.mp4",
        "deleted_planned": "deleted_after_planning.mp4", "to_folder": "replaced_by_folder.mp4",
        "to_fifo": "replaced_by_fifo.mp4", "self_link": "self_link.mp4",
    }.items()}
    shutil.copy(videos / GOOD, p["good"])
    p["zero_byte"].write_bytes(b"")
    p["text"].write_text("this is not a video\n")
    pexels = (videos / "pyfeat_WolfgangLanger_Pexels.mp4").read_bytes()
    p["truncated"].write_bytes(pexels[: int(len(pexels) * 0.4)])  # its index (moov) comes first: opens, ends early
    woman = (videos / "fer_woman2.mp4").read_bytes()
    p["truncated_index"].write_bytes(woman[: int(len(woman) * 0.4)])  # its index comes last: cut away
    hamilton = bytearray((videos / "face_recognition_short_hamilton_clip.mp4").read_bytes())
    middle = len(hamilton) // 2
    hamilton[middle : middle + 100_000] = np.random.default_rng(0).integers(0, 256, 100_000, np.uint8).tobytes()
    p["corrupt_mid"].write_bytes(bytes(hamilton))
    _audio_only(p["audio_only"])
    neutral = (videos / "posed_neutral.mp4").read_bytes()  # one H.264 track: one stsd, mdhd and stts box
    # The sample entry's fourcc (the last "avc1"; the first is a brand in ftyp) becomes a codec FFmpeg doesn't know.
    unknown = bytearray(neutral)
    at = unknown.rfind(b"avc1")
    unknown[at : at + 4] = b"qxyz"
    p["unknown_codec"].write_bytes(bytes(unknown))
    # mdhd (version 0): flags(4) creation(4) modification(4) timescale(4); stts: flags(4) count(4) n(4) delta(4).
    p["fps_zero"].write_bytes(_patch_box(neutral, b"stts", 12, 0))  # every frame at t = 0: no frame rate
    p["fps_absurd"].write_bytes(_patch_box(neutral, b"mdhd", 12, 2_000_000_000))  # 5 s become 0.2 ms: 666667 fps
    p["fps_tiny"].write_bytes(_patch_box(neutral, b"mdhd", 12, 0))  # time scale 0: 5 s become 26 hours
    face = _first_frame(videos / GOOD)
    write_h264(p["one_frame"], [face], fps=25)
    # The face frame scaled to the 8K height, centred on a black 7680x4320 canvas (aspect kept, so YuNet finds it).
    big = np.zeros((BIG_H, BIG_W, 3), np.uint8)
    side = BIG_H
    big[:, (BIG_W - side) // 2 : (BIG_W + side) // 2] = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR)
    write_h264(p["huge"], [big, big, big], fps=5)
    p["bad_jpg"].write_bytes(np.random.default_rng(1).integers(0, 256, 5000, np.uint8).tobytes())
    shutil.copy(videos / "posed_neutral.mp4", p["odd_name"])
    (root / "x.mp4").mkdir()
    p["in_folder_named_mp4"] = root / "x.mp4" / "inside.mp4"
    shutil.copy(videos / "posed_sad.mp4", p["in_folder_named_mp4"])
    shutil.copy(videos / "posed_fear.mp4", p["unreadable"])
    p["unreadable"].chmod(0)
    (root / "loop").mkdir()
    shutil.copy(videos / "posed_surprise.mp4", root / "loop" / "in_loop.mp4")
    p["in_loop"] = root / "loop" / "in_loop.mp4"
    os.symlink("..", root / "loop" / "back_up")  # loop/back_up/loop/back_up/... forever, if followed
    os.symlink(p["self_link"].name, p["self_link"])  # a link to itself: ELOOP on open
    os.mkfifo(p["fifo"])
    for kind in ("deleted_listed", "deleted_planned", "to_folder", "to_fifo"):
        shutil.copy(videos / "posed_angry.mp4", p[kind])
    # The same file again, through a link from another folder.
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir()
    p["link_to_good"] = elsewhere / "link_to_good.mp4"
    os.symlink(p["good"], p["link_to_good"])
    return p


# --------------------------------------------------------------------------------------------------
# The one job


@dataclass
class Matrix:
    paths: dict[str, Path]
    listed: list[str]
    list_seconds: float
    planned: list[str]
    videos: pd.DataFrame
    faces: pd.DataFrame
    summary: object

    def row(self, kind: str) -> pd.Series:
        vid = video_id(str(self.paths[kind]))
        rows = self.videos[self.videos.video_id == vid]
        assert len(rows) == 1, f"{kind}: {len(rows)} rows"
        return rows.iloc[0]

    def failed(self, kind: str, *needles: str) -> str:
        row = self.row(kind)
        assert row.status == "failed", f"{kind}: {row.status} ({row.error})"
        error = row.error
        assert "\n" not in error and 20 <= len(error) <= 300, error
        assert self.paths[kind].name in error, f"{kind}: the error does not name the file: {error}"
        for needle in needles:
            assert needle in error, f"{kind}: {needle!r} not in {error!r}"
        return error

    def ok(self, kind: str) -> pd.Series:
        row = self.row(kind)
        assert row.status == "ok", f"{kind}: {row.error}"
        assert row.frames_sampled >= 1
        return row


@pytest.fixture(scope="module")
def matrix(ray_local, videos_dir, yunet_model, tiny_checkpoint, tmp_path_factory) -> Matrix:
    """The job over every input kind at once (2-second segments, so longer clips are split), with files deleted or
    replaced after listing and after planning."""
    from fer_core import pipeline

    base = tmp_path_factory.mktemp("bad_inputs")
    paths = _make_matrix(videos_dir, base / "in")
    root = paths["good"].parent
    here = os.getcwd()
    os.chdir(root)  # so that "good.mp4" and "./good.mp4" are relative spellings of the same file
    try:
        started = time.monotonic()
        listed = list_inputs([str(root), GOOD, f"./{GOOD}", str(paths["link_to_good"])])
        list_seconds = time.monotonic() - started
    finally:
        os.chdir(here)
    paths["deleted_listed"].unlink()
    planned: list[str] = []
    plan_videos = pipeline.plan_videos

    def plan_then_break(videos, opts):
        rows = plan_videos(videos, opts)
        planned.extend(r["video_path"] for r in rows)
        paths["deleted_planned"].unlink()
        paths["to_folder"].unlink()
        paths["to_folder"].mkdir()
        paths["to_fifo"].unlink()
        os.mkfifo(paths["to_fifo"])
        return rows

    out = base / "out"
    opts = AnnotateOptions(fps=5, segment_s=2.0, model=str(tiny_checkpoint))
    detector = create_detector("yunet", str(yunet_model))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "plan_videos", plan_then_break)
        summary = pipeline.annotate(listed, str(out), opts, detector=detector, model_bytes=None)
    return Matrix(paths, listed, list_seconds, planned, pd.read_parquet(out / "videos"),
                  pd.read_parquet(out / "faces"), summary)


def test_the_job_finishes_with_one_row_per_listed_video(matrix):
    assert matrix.planned, "the planning hook never ran: has fer_core.pipeline.plan_videos been renamed?"
    assert len(matrix.videos) == len(matrix.listed) == matrix.videos.video_id.nunique()
    assert sorted(matrix.videos.video_path) == sorted(matrix.listed)
    assert len(matrix.summary.results) == len(matrix.listed)
    # A failed video commits none of its face rows.
    failed = set(matrix.videos.video_id[matrix.videos.status == "failed"])
    assert not failed & set(matrix.faces.video_id)


# --------------------------------------------------------------------------------------------------
# One test per kind


def test_zero_byte(matrix):
    matrix.failed("zero_byte", "zero-byte file")


def test_text_named_mp4(matrix):
    matrix.failed("text", "not a video container")


def test_truncated(matrix):
    matrix.failed("truncated", "truncated file?")


def test_truncated_before_its_index(matrix):
    matrix.failed("truncated_index", "truncated or unfinished MP4: its index (moov atom) is missing")


def test_corrupt_mid_stream(matrix):
    matrix.failed("corrupt_mid", "decoder error at frame")


def test_audio_only(matrix):
    matrix.failed("audio_only", "has no video stream (streams found: audio)")


def test_codec_no_decoder_has_is_named(matrix):
    matrix.failed("unknown_codec", "'qxyz'", "supported by neither decord nor PyAV", "re-encode")


def test_one_frame_video(matrix):
    row = matrix.ok("one_frame")
    assert row.frames_sampled == 1 and row.faces >= 1


def test_8k_frames(matrix):
    row = matrix.ok("huge")
    assert (row.width, row.height) == (BIG_W, BIG_H)
    assert row.frames_sampled == 3 and row.frames_with_face == 3
    faces = matrix.faces[matrix.faces.video_id == row.video_id].dropna(subset=["face_index"])
    # Found on the 640-px copy, boxes in full-resolution pixels: the face fills most of the 4320-px height.
    assert (faces.h > 1500).all() and (faces.x > (BIG_W - BIG_H) // 2 - 200).all()


@pytest.mark.parametrize("kind, stated", [("fps_zero", "nan fps"), ("fps_absurd", "6.667e+05 fps"),
                                          ("fps_tiny", "0.0003333 fps")])
def test_zero_or_absurd_frame_rate(matrix, kind, stated):
    matrix.failed(kind, "broken timing", stated, "setpts=")


def test_corrupt_image(matrix):
    matrix.failed("bad_jpg", "not a readable image")


def test_spaces_and_non_ascii_names(matrix):
    row = matrix.ok("odd_name")
    assert row.video_path == str(matrix.paths["odd_name"])


def test_folder_named_like_a_video(matrix):
    """A folder named ``x.mp4`` is a folder: the videos inside are found and processed, the folder gets no row (it
    is not a video that failed). Given by itself it is searched like any folder."""
    matrix.ok("in_folder_named_mp4")
    assert str(matrix.paths["in_folder_named_mp4"].parent) not in matrix.listed
    assert list_inputs([str(matrix.paths["in_folder_named_mp4"].parent)]) == [str(matrix.paths["in_folder_named_mp4"])]


def test_unreadable_file(matrix):
    """chmod 000. Not root: the video fails with "permission denied". Root reads any file whatever its mode (as
    ``cat`` would), so there the file is fine and its row is ok; the refusal itself is checked as root by
    `test_unreadable_file_without_root_privileges`, which takes the read override away from a child process."""
    path = matrix.paths["unreadable"]
    if os.access(path, os.R_OK):
        assert os.geteuid() == 0
        matrix.ok("unreadable")
    else:
        matrix.failed("unreadable", "not readable: permission denied")


def test_unreadable_file_without_root_privileges(matrix):
    """As root, drop CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH in a child (still uid 0), so chmod 000 really blocks the
    read, and check what probe and iter_frames say there: the same error the job's row carries for other users."""
    path = matrix.paths["unreadable"]
    setpriv = shutil.which("setpriv")
    code = (
        "import sys; from fer_core.video import probe, iter_frames, UnreadableVideo\n"
        "for call in (lambda: probe(sys.argv[1]), lambda: next(iter_frames(sys.argv[1]))):\n"
        "    try: call()\n"
        "    except UnreadableVideo as e: print(e)\n"
    )
    if os.geteuid() != 0:
        command = [sys.executable, "-c", code, str(path)]
    elif setpriv is None:
        pytest.skip("running as root without setpriv: no way to make a chmod 000 file unreadable here")
    else:
        drop = "-dac_override,-dac_read_search"
        command = [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}", sys.executable, "-c", code, str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 2, result.stdout + result.stderr
    for line in lines:
        assert f"{str(path)!r} is not readable: permission denied" in line


def test_symlink_loop_inside_a_folder(matrix):
    """Links to folders are not followed (``loop/back_up -> ..`` would recurse forever); the file under ``loop/``
    is listed once, by its real path; a file link pointing at itself is not a file and is skipped."""
    assert matrix.list_seconds < 5
    assert not any("back_up" in p for p in matrix.listed)
    assert str(matrix.paths["self_link"]) not in matrix.listed
    matrix.ok("in_loop")


def test_fifo_inside_a_folder_is_skipped(matrix):
    """A named pipe is not a file: skipped in a folder, refused when given by itself (opening one would block)."""
    assert str(matrix.paths["fifo"]) not in matrix.listed
    with pytest.raises(InputError, match="not a regular file"):
        list_inputs([str(matrix.paths["fifo"])])


def test_deleted_after_listing(matrix):
    matrix.failed("deleted_listed", "does not exist (moved or deleted?)")


def test_deleted_after_planning(matrix):
    """Planned (probed and split into segments), then deleted before any segment was decoded."""
    assert str(matrix.paths["deleted_planned"]) in matrix.planned
    matrix.failed("deleted_planned", "does not exist (moved or deleted?)")


def test_replaced_by_a_folder_or_a_fifo_after_planning(matrix):
    matrix.failed("to_folder", "is a folder, not a video file")
    matrix.failed("to_fifo", "is not a regular file")


def test_same_file_given_twice(matrix):
    """"good.mp4", "./good.mp4" (relative to the cwd), its absolute path from the folder listing and a symlink to it
    from another folder are one file: one video, under the first spelling listed (the folder's)."""
    assert matrix.listed.count(str(matrix.paths["good"])) == 1
    for spelling in (GOOD, f"./{GOOD}", str(matrix.paths["link_to_good"])):
        assert spelling not in matrix.listed
    assert (matrix.videos.video_path.map(lambda p: Path(p).name) == GOOD).sum() == 1
    matrix.ok("good")


def test_8k_decode_and_detect_hold_about_one_frame(matrix, yunet_model, tiny_checkpoint):
    """The decode + detect stage (the same function the job runs, here in-process) never holds several full
    frames: the peak of numpy's traced allocations stays under three 8K frames, and the detector sees only small
    copies: the full frame at the detector's 640 px, and windows around the face (`fer_core.schedule`) no larger."""
    from fer_core.checkpoint import load_checkpoint
    from fer_core.segment import SegmentTask, process_segment

    meta = load_checkpoint(tiny_checkpoint)[1]
    detector = create_detector("yunet", str(yunet_model))
    seen: list[tuple[int, ...]] = []
    detect_small = detector._detect_small
    detector._detect_small = lambda image: (seen.append(image.shape), detect_small(image))[1]
    path = str(matrix.paths["huge"])
    task = SegmentTask(video_id(path), path, 0, 1, 0.0, None, duration_s=0.6, fps=5.0, width=BIG_W, height=BIG_H,
                       decoder="decord")
    frame_bytes = BIG_W * BIG_H * 3
    tracemalloc.start()
    try:
        batches = list(process_segment(task, AnnotateOptions(fps=5), detector, meta.preprocessing))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * frame_bytes, f"peak {peak / frame_bytes:.1f} frames"
    assert seen and max(max(shape[:2]) for shape in seen) == 640 and all(max(shape[:2]) <= 640 for shape in seen)
    assert sum(int((b["kind"] == "face").sum()) for b in batches) == 3
    assert max(b["crop"].nbytes for b in batches) < frame_bytes // 100

