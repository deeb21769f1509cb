"""Tests for fer_core.video: probing, streaming decode, sampling, segments, inputs."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from pyarrow import fs as pafs

from fer_core import video
from fer_core.video import (
    DecodeError,
    InputError,
    TruncatedVideo,
    UnreadableVideo,
    VideoInfo,
    iter_frames,
    list_inputs,
    localize,
    plan_segments,
    probe,
    video_id,
)

CLIP_2997 = "face_recognition_short_hamilton_clip.mp4"  # 29.97 fps, 275 frames, stream starts at 0.85 s
CLIP_VFR = "pyfeat_face_noface.mov"  # variable frame rate, 169 frames
CLIP_WOMAN = "fer_woman2.mp4"  # 29.97 fps, 15.48 s
CLIP_PEXELS = "pyfeat_WolfgangLanger_Pexels.mp4"  # 23.976 fps, 472 frames


@pytest.fixture(scope="session")
def videos_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "videos"
    if not (path / CLIP_2997).is_file():
        pytest.skip(f"shared videos not found in {path}")
    return path


def _write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fps: int = 10,
    rotation: int | None = None,
) -> Path:
    """Writes RGB (or 2-D gray) frames with PyAV; `rotation` sets the display matrix (degrees, CCW)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="gray" if image.ndim == 2 else "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _marked_frames(count: int, height: int = 32, width: int = 64) -> list[np.ndarray]:
    """Frames with a red block in the top-left quarter, the rest getting brighter frame by frame."""
    frames = []
    for i in range(count):
        image = np.full((height, width, 3), 10 * i, dtype=np.uint8)
        image[: height // 2, : width // 2] = (255, 0, 0)
        frames.append(image)
    return frames


def _red_center(image: np.ndarray) -> np.ndarray:
    """Mean (row, col) of red pixels, as fractions of the image size."""
    red = (image[..., 0] > 180) & (image[..., 1] < 80) & (image[..., 2] < 80)
    return np.argwhere(red).mean(axis=0) / np.array(image.shape[:2])


def _summary(frames: Sequence[video.Frame]) -> list[tuple[int, float]]:
    return [(f.frame_index, f.timestamp_s) for f in frames]


# --------------------------------------------------------------------------------------------------
# Probing and timestamps


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_probe_reads_fractional_fps(videos_dir: Path, decoder: str) -> None:
    info = probe(str(videos_dir / CLIP_2997), decoder=decoder)
    assert isinstance(info, VideoInfo)
    assert (info.width, info.height, info.frame_count, info.rotation) == (640, 360, 275, 0)
    assert info.fps == pytest.approx(29.97, abs=1e-3)
    assert info.duration_s == pytest.approx(9.18, abs=0.01)
    assert info.decoder == decoder


def test_auto_prefers_pyav(videos_dir: Path) -> None:
    """PyAV decodes in step with its caller; decord's reader ran ahead and held up to 1 GB of frames (README)."""
    path = str(videos_dir / CLIP_2997)
    assert probe(path).decoder == "pyav"
    assert _summary(iter_frames(path, sample_fps=5)) == _summary(iter_frames(path, sample_fps=5, decoder="pyav"))


def test_auto_falls_back_to_decord(videos_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file PyAV cannot open (a fault injected into its open) is read by decord, in probe and in decode; when
    decord cannot read it either, PyAV's reason is the one raised."""
    path = str(videos_dir / CLIP_2997)

    def refuse(p: str) -> None:
        raise UnreadableVideo(f"{p!r} refused by PyAV")

    monkeypatch.setattr(video, "_open_pyav", refuse)
    assert probe(path).decoder == "decord"
    frames = list(iter_frames(path, sample_fps=5))
    assert _summary(frames) == _summary(iter_frames(path, sample_fps=5, decoder="decord"))
    monkeypatch.setattr(video, "_open_decord", lambda p, **_: refuse(p))
    with pytest.raises(UnreadableVideo, match="refused by PyAV"):
        probe(path)
    with pytest.raises(UnreadableVideo, match="refused by PyAV"):
        next(iter_frames(path))


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_every_frame_has_container_timestamps(videos_dir: Path, decoder: str) -> None:
    frames = list(iter_frames(str(videos_dir / CLIP_2997), sample_fps=0, decoder=decoder))
    assert len(frames) == 275
    assert [f.frame_index for f in frames] == list(range(275))
    timestamps = np.array([f.timestamp_s for f in frames])
    # The stream starts at 0.85 s in the container; timestamps count from its first frame, at 30000/1001 fps.
    np.testing.assert_allclose(timestamps, np.arange(275) * 1001 / 30000, atol=1e-3)
    image = frames[0].image
    assert image.shape == (360, 640, 3) and image.dtype == np.uint8 and image.flags.c_contiguous


def test_sampling_at_5_fps_follows_time_not_rounded_fps(videos_dir: Path) -> None:
    path = str(videos_dir / CLIP_WOMAN)
    info = probe(path)
    frames = list(iter_frames(path, sample_fps=5))
    assert abs(len(frames) - info.duration_s * 5) <= 1
    timestamps = np.array([f.timestamp_s for f in frames])
    # Each kept frame is the first at or after k / 5 s: within one source frame of the instant.
    instants = np.arange(len(frames)) / 5
    assert np.all(timestamps >= instants - 1e-3)
    assert np.all(timestamps - instants < 1 / info.fps)


@pytest.mark.parametrize("sample_fps", [0, 7.0])
def test_decord_and_pyav_agree_on_vfr_clip(videos_dir: Path, sample_fps: float) -> None:
    path = str(videos_dir / CLIP_VFR)
    # The frame rate changes from 30 to about 24 fps at 2.4 s.
    by_decord = list(iter_frames(path, sample_fps=sample_fps, end_s=4.0, decoder="decord"))
    by_pyav = list(iter_frames(path, sample_fps=sample_fps, end_s=4.0, decoder="pyav"))
    assert [f.frame_index for f in by_decord] == [f.frame_index for f in by_pyav]
    np.testing.assert_allclose(
        [f.timestamp_s for f in by_decord], [f.timestamp_s for f in by_pyav], atol=1e-3
    )
    steps = np.diff([f.timestamp_s for f in by_pyav])
    if sample_fps == 0:
        assert len(by_pyav) == 112
        assert steps[:70] == pytest.approx(1 / 30, abs=1e-3) and steps[80:].mean() == pytest.approx(1 / 24, abs=2e-3)
    else:
        assert len(by_pyav) == 28
    for a, b in zip(by_decord[::10], by_pyav[::10]):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 1.0


# --------------------------------------------------------------------------------------------------
# Segments


@pytest.mark.parametrize(
    ("decoder", "sample_fps", "boundaries"),
    [
        ("decord", 5.0, [2.0, 4.0, 6.0]),
        ("decord", 0, [1.234, 4.5]),
        ("decord", 3.3, [0.5, 1.01, 7.777]),
        ("pyav", 5.0, [3.0, 6.1]),
        ("pyav", 0, [1.234, 4.5]),
        ("pyav", 3.3, [3.5, 5.0, 8.0]),
    ],
)
def test_segments_tile_the_whole_video(
    videos_dir: Path, decoder: str, sample_fps: float, boundaries: list[float]
) -> None:
    path = str(videos_dir / CLIP_2997)
    whole = list(iter_frames(path, sample_fps=sample_fps, decoder=decoder))
    starts = [0.0, *boundaries]
    ends: list[float | None] = [*boundaries, None]
    pieces = [
        list(iter_frames(path, sample_fps=sample_fps, start_s=start, end_s=end, decoder=decoder))
        for start, end in zip(starts, ends)
    ]
    assert _summary([f for piece in pieces for f in piece]) == _summary(whole)
    by_index = {f.frame_index: f for f in whole}
    for piece in pieces:
        # The first frame after a seek is the same picture as in a straight read.
        np.testing.assert_array_equal(piece[0].image, by_index[piece[0].frame_index].image)


@pytest.mark.parametrize("name", [CLIP_2997, CLIP_VFR])
def test_pyav_seeks_to_a_segment_with_exact_indices(videos_dir: Path, name: str) -> None:
    path = str(videos_dir / name)
    whole = [f for f in iter_frames(path, sample_fps=5, end_s=5.3, decoder="pyav") if f.timestamp_s >= 4.1]
    # Called directly: a seek that cannot be trusted would raise instead of falling back to decoding from 0.
    seeked = list(video._decode_pyav(path, 5, 4.1, 5.3, seek=True))
    assert _summary(seeked) == _summary(whole)
    np.testing.assert_array_equal(seeked[0].image, whole[0].image)


@pytest.mark.parametrize(("suffix", "codec"), [(".mkv", "libx264"), (".avi", "mpeg4"), (".webm", "libvpx-vp9")])
def test_pyav_segments_of_other_containers(tmp_path: Path, suffix: str, codec: str) -> None:
    frames = [np.full((16, 24, 3), 3 * i, dtype=np.uint8) for i in range(80)]  # 8 s at 10 fps
    path = str(_write_video(tmp_path / f"clip{suffix}", frames, codec=codec))
    whole = _summary(list(iter_frames(path, sample_fps=4, decoder="pyav")))
    assert len(whole) == 32
    tiled = [
        f
        for start, end in [(0.0, 3.3), (3.3, 4.05), (4.05, 6.5), (6.5, None)]
        for f in iter_frames(path, sample_fps=4, start_s=start, end_s=end, decoder="pyav")
    ]
    assert _summary(tiled) == whole
    seeked = _summary(list(video._decode_pyav(path, 4, 4.05, 6.5, seek=True)))
    assert seeked == [item for item in whole if 4.05 <= item[1] < 6.5]


def test_segments_from_plan_tile_a_vfr_video(videos_dir: Path) -> None:
    path = str(videos_dir / CLIP_VFR)
    whole = _summary(list(iter_frames(path, sample_fps=7)))
    segments = plan_segments(probe(path), 2.0)
    assert segments == [(0.0, 2.0), (2.0, 4.0), (4.0, None)]
    tiled = [f for start, end in segments for f in iter_frames(path, sample_fps=7, start_s=start, end_s=end)]
    assert _summary(tiled) == whole


def _info(duration_s: float) -> VideoInfo:
    return VideoInfo("x.mp4", 640, 360, 25.0, duration_s, None, 0, "decord")


@pytest.mark.parametrize(
    ("duration_s", "segment_s", "expected"),
    [
        (100.0, 0, [(0.0, None)]),
        (100.0, -1, [(0.0, None)]),
        (20.0, 30.0, [(0.0, None)]),
        (0.0, 30.0, [(0.0, None)]),
        (90.0, 30.0, [(0.0, 30.0), (30.0, 60.0), (60.0, None)]),
        (100.0, 30.0, [(0.0, 30.0), (30.0, 60.0), (60.0, None)]),  # 10 s remainder joins the last segment
        (110.0, 30.0, [(0.0, 30.0), (30.0, 60.0), (60.0, 90.0), (90.0, None)]),
    ],
)
def test_plan_segments(duration_s: float, segment_s: float, expected: list[tuple[float, float | None]]) -> None:
    assert plan_segments(_info(duration_s), segment_s) == expected


# --------------------------------------------------------------------------------------------------
# Generated clips: colour order, grayscale, odd sizes, rotation, images


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_frames_are_rgb(tmp_path: Path, decoder: str) -> None:
    path = _write_video(tmp_path / "red.mp4", _marked_frames(5))
    image = next(iter_frames(str(path), sample_fps=0, decoder=decoder)).image
    assert tuple(image[4, 4]) == pytest.approx((255, 0, 0), abs=40)
    np.testing.assert_allclose(_red_center(image), [0.25 - 0.5 / 32, 0.25 - 0.5 / 64], atol=0.02)


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_grayscale_odd_size_video_gives_contiguous_rgb(tmp_path: Path, decoder: str) -> None:
    gray = [np.full((35, 63), 20 * i, dtype=np.uint8) for i in range(6)]
    path = _write_video(tmp_path / "gray.mkv", gray, codec="ffv1", pix_fmt="gray")
    info = probe(str(path), decoder=decoder)
    assert (info.width, info.height, info.frame_count) == (63, 35, 6 if decoder == "decord" else None)
    frames = list(iter_frames(str(path), sample_fps=0, decoder=decoder))
    assert len(frames) == 6
    for i, frame in enumerate(frames):
        assert frame.image.shape == (35, 63, 3) and frame.image.dtype == np.uint8
        assert frame.image.flags.c_contiguous
        np.testing.assert_array_equal(frame.image, 20 * i)


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
@pytest.mark.parametrize(
    ("display_rotation", "clockwise", "red_center"),
    [
        (-90, 90, (0.25, 0.75)),  # a phone held upright: turn the coded frame 90° clockwise
        (90, 270, (0.75, 0.25)),
        (180, 180, (0.75, 0.75)),
    ],
)
def test_rotation_metadata_turns_frames_upright(
    tmp_path: Path, decoder: str, display_rotation: int, clockwise: int, red_center: tuple[float, float]
) -> None:
    path = _write_video(tmp_path / "rotated.mp4", _marked_frames(4), rotation=display_rotation)
    info = probe(str(path), decoder=decoder)
    assert info.rotation == clockwise
    expected_shape = (32, 64) if clockwise == 180 else (64, 32)
    assert (info.height, info.width) == expected_shape
    image = next(iter_frames(str(path), sample_fps=0, decoder=decoder)).image
    assert image.shape == (*expected_shape, 3) and image.flags.c_contiguous
    np.testing.assert_allclose(_red_center(image), red_center, atol=0.05)


def test_image_is_a_one_frame_video(tmp_path: Path) -> None:
    rgb = np.zeros((30, 41, 3), dtype=np.uint8)
    rgb[:, :, 0] = 200
    path = tmp_path / "still.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    info = probe(str(path))
    assert info == VideoInfo(str(path), 41, 30, 0.0, 0.0, 1, 0, "image")
    frames = list(iter_frames(str(path), sample_fps=5))
    assert _summary(frames) == [(0, 0.0)]
    np.testing.assert_array_equal(frames[0].image, rgb)
    assert list(iter_frames(str(path), start_s=1.0)) == []


# --------------------------------------------------------------------------------------------------
# Broken inputs


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()
    with pytest.raises(UnreadableVideo, match="empty.mp4.*zero-byte file"):
        probe(str(path))
    with pytest.raises(UnreadableVideo, match="zero-byte"):
        iter_frames(str(path))


@pytest.mark.parametrize("decoder", ["auto", "decord", "pyav"])
def test_text_file_renamed_mp4(tmp_path: Path, decoder: str) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n")
    with pytest.raises(UnreadableVideo, match="notes.mp4"):
        probe(str(path), decoder=decoder)
    with pytest.raises(UnreadableVideo, match="notes.mp4"):
        next(iter_frames(str(path), decoder=decoder))


def test_file_without_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "audio_only.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for i in range(4):
            samples = np.zeros((1, 1024), dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 8000, i * 1024, Fraction(1, 8000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(UnreadableVideo, match="no video stream.*audio"):
        probe(str(path))


@pytest.fixture(scope="module")
def truncated_clip(videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 40% of the bytes of the Pexels clip: the index (moov) survives, the media data is cut."""
    data = (videos_dir / CLIP_PEXELS).read_bytes()
    path = tmp_path_factory.mktemp("truncated") / "truncated.mp4"
    path.write_bytes(data[: int(len(data) * 0.4)])
    return path


def test_truncated_mp4_decord_cannot_open(truncated_clip: Path) -> None:
    with pytest.raises(UnreadableVideo, match="cannot be opened by decord"):
        probe(str(truncated_clip), decoder="decord")


def test_truncated_mp4_probe_falls_back_to_pyav(truncated_clip: Path) -> None:
    info = probe(str(truncated_clip))
    assert info.decoder == "pyav"
    assert info.frame_count == 472  # as declared by the surviving index, not as decodable


def test_truncated_mp4_yields_decodable_frames_then_raises(truncated_clip: Path) -> None:
    frames: list[video.Frame] = []
    with pytest.raises(TruncatedVideo, match=r"truncated.mp4.*after 180 of the 472 frames") as caught:
        for frame in iter_frames(str(truncated_clip), sample_fps=2):
            frames.append(frame)
    # PyAV decodes up to the cut (7.5 s) and then ends quietly; the check against the declared count raises.
    assert caught.value.frame_index == 180
    assert len(frames) == 16 and frames[-1].timestamp_s < 7.6
    # A segment that ends before the cut reads fine.
    assert len(list(iter_frames(str(truncated_clip), sample_fps=2, end_s=5.0))) == 10


def _corrupt_copy(videos_dir: Path, tmp_path: Path) -> Path:
    """A copy of the 29.97 fps clip with 100 kB of noise written over its middle (near frame 136)."""
    data = bytearray((videos_dir / CLIP_2997).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 100_000] = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_corrupt_data_mid_stream_names_the_frame(videos_dir: Path, tmp_path: Path, decoder: str) -> None:
    path = _corrupt_copy(videos_dir, tmp_path)
    frames: list[video.Frame] = []
    with pytest.raises(DecodeError, match=r"corrupt.mp4': decoder error at frame \d+") as caught:
        for frame in iter_frames(str(path), sample_fps=0, decoder=decoder):
            frames.append(frame)
    # The damage starts near frame 136. decord decodes in a worker thread, so it reports the error a frame
    # or so early or late from run to run; PyAV stops at 136. Every frame before the error was yielded.
    assert caught.value.frame_index == len(frames)
    assert 125 <= len(frames) <= 140


def test_corrupt_data_mid_stream_when_sampling_names_the_frame(videos_dir: Path, tmp_path: Path) -> None:
    """Decoding only the kept frames meets the damage too: decoding every frame takes over from the last frame
    yielded and reports the frame where the damage is, as at every frame."""
    path = _corrupt_copy(videos_dir, tmp_path)
    frames: list[video.Frame] = []
    with pytest.raises(DecodeError, match=r"corrupt.mp4': decoder error at frame \d+") as caught:
        for frame in iter_frames(str(path), sample_fps=5, decoder="pyav"):
            frames.append(frame)
    assert 125 <= caught.value.frame_index <= 140
    whole = [f for f in iter_frames(str(videos_dir / CLIP_2997), sample_fps=5, decoder="pyav")]
    assert _summary(frames) == [item for item in _summary(whole) if item[0] < caught.value.frame_index]

def test_invalid_arguments(videos_dir: Path) -> None:
    path = str(videos_dir / CLIP_2997)
    with pytest.raises(ValueError, match="unknown decoder"):
        probe(path, decoder="opencv")
    with pytest.raises(ValueError, match="sample_fps"):
        iter_frames(path, sample_fps=-1)
    with pytest.raises(ValueError, match="end_s"):
        iter_frames(path, start_s=2.0, end_s=2.0)
    with pytest.raises(UnreadableVideo, match="does not exist"):
        probe(str(videos_dir / "missing.mp4"))


# --------------------------------------------------------------------------------------------------
# Inputs


@pytest.fixture()
def input_tree(tmp_path: Path) -> Path:
    for name in ["b.mp4", "a.MOV", "sub/c.mkv", "sub/d.jpg", "notes.txt", ".hidden.mp4", ".cache/e.mp4"]:
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    return tmp_path


def test_list_inputs_expands_folders(input_tree: Path) -> None:
    root = input_tree / "in"
    expected = [str(root / name) for name in ["a.MOV", "b.mp4", "sub/c.mkv", "sub/d.jpg"]]
    assert list_inputs([str(root)]) == expected
    # Files given explicitly keep their order; duplicates are dropped.
    assert list_inputs([str(root / "sub/c.mkv"), str(root)]) == [expected[2], expected[0], expected[1], expected[3]]


def test_list_inputs_through_pyarrow_uri(input_tree: Path) -> None:
    root = input_tree / "in"
    uris = list_inputs([f"file://{root}"])
    assert uris == [f"file://{root}/{name}" for name in ["a.MOV", "b.mp4", "sub/c.mkv", "sub/d.jpg"]]
    with pytest.raises(InputError, match="does not exist"):
        list_inputs([f"file://{root}/nope"])


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", "input path does not exist: '.*missing'"),
        ("empty", "no video or image files in folder '.*empty'"),
        ("in/notes.txt", r"expected a video file or a folder, got '.*notes.txt' \(not a video container"),
    ],
)
def test_list_inputs_errors(input_tree: Path, name: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        list_inputs([str(input_tree / name)])


def test_localize_local_paths_are_used_in_place(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"data")
    with localize(str(path)) as local:
        assert local == str(path)
    with localize(f"file://{path}") as local:
        assert local == str(path)


def test_localize_copies_remote_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket" / "clip.mp4").write_bytes(b"video bytes")
    remote = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    monkeypatch.setattr(video, "_filesystem", lambda uri: (remote, uri.split("://", 1)[1]))
    with localize("s3://bucket/clip.mp4") as local:
        assert local.endswith(".mp4") and not local.startswith(str(tmp_path))
        assert Path(local).read_bytes() == b"video bytes"
    assert not os.path.exists(local)


def test_video_id_is_stable_and_normalized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    vid = video_id("clips/a.mp4")
    assert len(vid) == 16 and int(vid, 16) >= 0
    assert vid == video_id(str(tmp_path / "clips" / "a.mp4")) == video_id(f"file://{tmp_path}/clips/./a.mp4")
    assert vid == hashlib.sha1(str(tmp_path / "clips" / "a.mp4").encode()).hexdigest()[:16]
    assert video_id("s3://bucket/a.mp4") != video_id("s3://bucket/b.mp4")
    assert video_id("s3://bucket/a.mp4") == video_id("s3://bucket/a.mp4")


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_decord_worker_thread_runs_at_idle_priority_while_frames_are_read(videos_dir: Path) -> None:
    """decord's decoding thread busy-waits between frames; reading frames must leave it under SCHED_IDLE, so its
    spinning takes no CPU time another thread wants, and leave every other thread of the process alone."""

    def idle_threads() -> set[int]:
        return {int(t) for t in os.listdir("/proc/self/task") if os.sched_getscheduler(int(t)) == os.SCHED_IDLE}

    before = idle_threads()  # readers other tests left open may hold some
    frames = iter_frames(str(videos_dir / "posed_happy.mp4"), sample_fps=5, decoder="decord")
    next(frames)
    idle = idle_threads() - before
    assert len(idle) == 1 and threading.get_native_id() not in idle
    frames.close()


@pytest.mark.parametrize("decoder", ["auto", "decord", "pyav"])
def test_sampled_frames_are_the_frames_of_a_sequential_decode(videos_dir: Path, decoder: str) -> None:
    """decord's skip_frames and seek_accurate returned wrong pixels for this clip from frame 149 on (141 of 329
    frames one in six); every decoder must give, for each sampled index, the frame a plain decode gives there."""
    path = str(videos_dir / "simplefr_Video_2.mp4")
    with av.open(path) as container:
        truth = [f.to_ndarray(format="rgb24") for _, f in zip(range(400), container.decode(video=0))]
    for start in (0.0, 6.0):  # from the start, and a segment that begins after a seek
        frames = list(iter_frames(path, sample_fps=5, start_s=start, end_s=13.0, decoder=decoder))
        assert frames and frames[-1].frame_index < len(truth)
        for f in frames:
            assert np.array_equal(f.image, truth[f.frame_index]), (decoder, start, f.frame_index)


# --------------------------------------------------------------------------------------------------
# Decoding only the kept frames


def _all_shared_videos(videos_dir: Path) -> list[str]:
    return sorted(str(p) for p in videos_dir.iterdir() if p.suffix in video.VIDEO_EXTENSIONS)


@pytest.mark.slow
@pytest.mark.parametrize(("sample_fps", "start_s", "end_s"), [(5.0, 0.0, None), (2.0, 4.0, 9.0)])
def test_decoding_only_kept_frames_gives_the_frames_of_a_plain_decode(
    videos_dir: Path, sample_fps: float, start_s: float, end_s: float | None
) -> None:
    """Skipping the non-reference frames sampling drops (skip_frame = NONREF) changes no index, timestamp or pixel,
    on every shared video, whole and in a segment that starts after a seek."""
    lower, upper = video._segment_bounds(start_s, end_s)
    for path in _all_shared_videos(videos_dir):
        plain = list(video._decode_pyav(path, sample_fps, lower, upper, seek=False))
        kept = list(video._decode_pyav_kept(path, sample_fps, lower, upper))
        assert _summary(kept) == _summary(plain), path
        for a, b in zip(plain, kept):
            assert np.array_equal(a.image, b.image), (path, a.frame_index)


def test_kept_frames_plan_skips_the_frames_sampling_drops(videos_dir: Path) -> None:
    path = str(videos_dir / CLIP_PEXELS)  # 23.976 fps, 472 frames
    index_of, kept = video._pyav_plan(path, 5.0, *video._segment_bounds(0.0, None))
    assert len(index_of) == 472 and sorted(index_of.values()) == list(range(472))
    assert [index_of[pts] for pts in kept] == [f.frame_index for f in iter_frames(path, sample_fps=5, decoder="pyav")]


def test_kept_frames_fall_back_to_a_plain_decode_without_packet_timestamps(tmp_path: Path) -> None:
    """A raw H.264 stream has no packet timestamps: the plan cannot say which frames are kept, and every frame is
    decoded instead (50 frames, timed at FFmpeg's 25 fps for raw streams: one in five kept)."""
    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=20)
        stream.height, stream.width, stream.pix_fmt = 32, 64, "yuv420p"
        for image in _marked_frames(25) * 2:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    assert video._pyav_plan(str(path), 5.0, -np.inf, np.inf) is None
    frames = list(iter_frames(str(path), sample_fps=5, decoder="pyav"))
    assert [f.frame_index for f in frames] == list(range(0, 50, 5))


def test_kept_frames_resume_with_a_plain_decode_where_the_plan_misses(
    videos_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the decoder gives a frame the plan did not predict, decoding goes on frame after frame from the
    last frame yielded: nothing is lost and nothing comes twice."""
    path = str(videos_dir / CLIP_WOMAN)
    expected = list(video._decode_pyav(path, 5.0, -np.inf, np.inf, seek=False))
    real_plan = video._pyav_plan

    def plan_without_frame_200(*args: object) -> tuple[dict[int, int], list[int]] | None:
        index_of, kept = real_plan(*args)
        missing = next(pts for pts, index in index_of.items() if index == 200)
        return {pts: index for pts, index in index_of.items() if pts != missing}, kept

    monkeypatch.setattr(video, "_pyav_plan", plan_without_frame_200)
    with pytest.raises(video._PlanMissed):
        list(video._decode_pyav_kept(path, 5.0, -np.inf, np.inf))
    frames = list(iter_frames(path, sample_fps=5, decoder="pyav"))
    assert _summary(frames) == _summary(expected)
    for a, b in zip(expected, frames):
        assert np.array_equal(a.image, b.image)
