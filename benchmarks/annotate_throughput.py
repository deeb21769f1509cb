"""Annotation throughput on the shared videos, with its baselines measured in the same run.

    python benchmarks/annotate_throughput.py --videos ../shared/data/videos --fps 0

Prints frames/s for (1) decode only, (2) decode + the full face detector on every sampled frame (same detector
settings, every core, the same segments as the job: the old ceiling), (3) the whole job through Ray at
``--detect-every 1`` (the full detector on every sampled frame, as before the tracking-driven schedule) and (4) at
the job's default schedule (``--detect-every 0``, auto), with the ratios whole / ceiling; the faces each job found
against the full detector on every sampled frame of (2) (recall and precision at IoU >= 0.5) and the track
switches of (4) against (3) and the track ids each job gave; then the classifier's faces/s on the CPU (one thread and every thread, batch 64) and
on the GPU when there is one; on the CPU in float32, in bf16 where the CPU has it and in the job's default
precision (int8 where the model carries its calibration). The ceiling is measured with decord and with PyAV, each
decoding every frame (at ``--fps 5`` too), and the faster counts; when sampling, PyAV decoding only the kept frames
(the job's way) is measured beside it. The detector runs on the engine the job picks (ONNX Runtime where installed);
the ceiling is also measured with OpenCV's engine (``cv2.FaceDetectorYN``, the job's detector before ONNX Runtime),
and the job's ratio is given against both. With ``--fer-python``, the `fer` package on every frame of the same videos
(benchmarks/fer_reference.py, in that Python) and the job's speed against it.
Absolute numbers drift on shared machines: compare the ratios.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

app = typer.Typer(add_completion=False)


def _work(args: tuple) -> tuple[int, int, dict[tuple[str, int], np.ndarray]]:
    """Decode (and optionally detect on) one segment; returns (frames, faces, boxes per (path, frame index))."""
    path, start, end, fps, detector, decoder = args
    import cv2

    from fer_core import video

    cv2.setNumThreads(1)
    frames = faces = 0
    boxes: dict[tuple[str, int], np.ndarray] = {}
    if decoder == "pyav-all":  # PyAV decoding every frame, sampled or not (the job before it decoded kept frames only)
        stream = video._iter_pyav(path, fps, *video._segment_bounds(start, end), kept_only=False)
    else:
        stream = video.iter_frames(path, sample_fps=fps, start_s=start, end_s=end, decoder=decoder)
    for frame in stream:
        frames += 1
        if detector is not None:
            found = detector.detect(frame.image)
            faces += len(found)
            boxes[(path, frame.frame_index)] = np.round(found.boxes)
    return frames, faces, boxes


def _baseline(tasks: list[tuple], workers: int) -> tuple[float, int, int, dict[tuple[str, int], np.ndarray]]:
    started = time.perf_counter()
    with mp.get_context("forkserver").Pool(workers) as pool:
        results = pool.map(_work, tasks, chunksize=1)
    wall = time.perf_counter() - started
    boxes = {key: value for r in results for key, value in r[2].items()}
    return wall, sum(r[0] for r in results), sum(r[1] for r in results), boxes


def _job_boxes(faces: Any) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """(path, frame index) -> (boxes, track ids) of a job's faces table."""
    seen = faces.dropna(subset=["face_index"])
    out = {}
    for (path, index), rows in seen.groupby(["video_path", "frame_index"]):
        out[(path, int(index))] = (rows[["x", "y", "w", "h"]].to_numpy(np.float64), rows.track_id.to_numpy())
    return out


def _retracked(faces: Any, max_shift: float) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """`_job_boxes` of a job's faces table tracked again, per video in time order, by an `IoUTracker` with
    `max_shift` and the job's other settings (a track ages by time, so frames without faces change nothing)."""
    from fer_core.track import IoUTracker

    out = {}
    for path, rows in faces.dropna(subset=["face_index"]).groupby("video_path"):
        tracker = IoUTracker(max_shift=max_shift)
        for index, frame in rows.sort_values(["frame_index", "face_index"]).groupby("frame_index", sort=True):
            boxes = frame[["x", "y", "w", "h"]].to_numpy(np.float64)
            out[(path, int(index))] = (boxes, tracker.update(boxes, float(frame.timestamp_s.iloc[0])))
    return out


def _track_ids(boxes: dict) -> int:
    return len({(path, int(i)) for (path, _), (_, ids) in boxes.items() for i in ids})


def _matches(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of boxes `a` to boxes `b` at IoU >= 0.5, best pairs first."""
    from fer_core.track import iou_matrix

    if not len(a) or not len(b):
        return []
    iou = iou_matrix(a, b)
    pairs = []
    used_a, used_b = set(), set()
    for flat in np.argsort(-iou, axis=None):
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] < 0.5:
            break
        if i not in used_a and j not in used_b:
            pairs.append((i, j))
            used_a.add(i)
            used_b.add(j)
    return pairs


def _recall_precision(reference: dict, job: dict) -> tuple[float, float]:
    hits = ref_total = job_total = 0
    for key, ref in reference.items():
        boxes = job.get(key, (np.zeros((0, 4)), None))[0]
        hits += len(_matches(ref, boxes))
        ref_total += len(ref)
        job_total += len(boxes)
    return hits / max(1, ref_total), hits / max(1, job_total)


def _track_switches(base: dict, other: dict) -> dict[str, int]:
    """Per video: how often a track of `base` continues under another track id of `other` (matched faces only)."""
    following: dict[tuple[str, int], int] = {}
    switches: dict[str, int] = {}
    for key in sorted(base):
        path = key[0]
        switches.setdefault(path, 0)
        if key not in other:
            continue
        (a, a_ids), (b, b_ids) = base[key], other[key]
        for i, j in _matches(a, b):
            track = (path, int(a_ids[i]))
            if track in following and following[track] != int(b_ids[j]):
                switches[path] += 1
            following[track] = int(b_ids[j])
    return switches


@app.command()
def main(
    videos: Path = typer.Option(Path("../shared/data/videos"), help="Folder of videos."),
    fps: float = typer.Option(0.0, help="Sampling rate (0 = every frame)."),
    segment_s: float = typer.Option(20.0, help="Segment length, for the job and the baselines alike."),
    model: str = typer.Option(None, help="Classifier checkpoint (default: the shipped model)."),
    detector_model: str = typer.Option(None, help="YuNet ONNX (default: resolved as the job does)."),
    json_out: Path = typer.Option(None, help="Also write the figures as JSON here."),
    detect_every: list[int] = typer.Option([1, 0], help="Schedules to run the whole job with (repeatable; 0 = auto)."),
    fer_python: Path = typer.Option(None, help="A Python with the `fer` package: also time it on every frame of "
                                               "the same videos (benchmarks/fer_reference.py; at --fps 0 only)."),
) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import torch

    from fer_core import load_classifier
    from fer_core.config import AnnotateOptions
    from fer_core.detect import create_detector
    from fer_core.video import list_inputs, plan_segments, probe

    files = list_inputs([str(videos)])
    workers = os.cpu_count() or 1
    detector = create_detector("auto", detector_model)
    opencv = create_detector("auto", detector_model, engine="opencv") if detector.name == "yunet" else None
    tasks = []
    for f in files:
        info = probe(f)
        for start, end in plan_segments(info, segment_s):
            tasks.append((f, start, end, fps, None, info.duration_s))
    tasks.sort(key=lambda t: -t[-1])
    tasks = [t[:-1] for t in tasks]
    res: dict[str, float] = {"videos": len(files), "segments": len(tasks), "cpus": workers, "fps": fps}

    # The ceiling with either decoder (decord was the job's before PyAV), each decoding every frame: the faster one
    # counts. When sampling, PyAV decoding only the kept frames (the job's way now) is measured too, not counted.
    for decoder in ("decord", "pyav-all", *(["pyav"] if fps > 0 else [])):
        wall, frames, _, _ = _baseline([(*t, decoder) for t in tasks], workers)
        res[f"decode_{decoder}_fps"] = frames / wall
        res["frames"] = frames
        print(f"decode only ({decoder:8s})   {frames / wall:8.1f} frames/s  ({frames} frames, {wall:.1f} s, {workers} processes)", flush=True)
        wall, frames, faces, boxes = _baseline([(p, s, e, f, detector, decoder) for p, s, e, f, _ in tasks], workers)
        res[f"decode_detect_{decoder}_fps"] = frames / wall
        res["faces"] = faces
        if decoder == "pyav-all":
            reference = boxes  # the job's decoder: the same frames
        print(f"decode ({decoder:8s}) + detect {frames / wall:8.1f} frames/s  ({faces} faces, {wall:.1f} s, {detector.name} on "
              "every sampled frame)", flush=True)
    res["detector_engine"] = getattr(detector, "engine", None)
    res["decode_detect_fps"] = max(res["decode_detect_decord_fps"], res["decode_detect_pyav-all_fps"])
    print(f"the ceiling: {res['decode_detect_fps']:.1f} frames/s (the faster decoder, detector engine "
          f"{res['detector_engine']})", flush=True)
    ceilings = {"": res["decode_detect_fps"]}
    if opencv is not None and detector.engine != "opencv":
        for decoder in ("decord", "pyav-all"):  # as the ceiling above: each decoding every frame, the faster counts
            wall, frames, _, _ = _baseline([(p, s, e, f, opencv, decoder) for p, s, e, f, _ in tasks], workers)
            res[f"decode_detect_opencv_{decoder}_fps"] = frames / wall
            print(f"the old ceiling, OpenCV's engine: decode ({decoder:8s}) + detect {frames / wall:8.1f} frames/s "
                  f"({wall:.1f} s)", flush=True)
        res["decode_detect_opencv_fps"] = ceilings["_opencv"] = max(res["decode_detect_opencv_decord_fps"],
                                                                     res["decode_detect_opencv_pyav-all_fps"])

    import pandas as pd
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    from fer_core.pipeline import annotate

    jobs: dict[int, dict] = {}
    tables: dict[int, Any] = {}
    for every in detect_every:
        opts = AnnotateOptions(fps=fps, segment_s=segment_s, model=model, detector=detector.name, detect_every=every)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            summary = annotate(files, out, opts, detector=detector, model_bytes=None)
            wall = time.perf_counter() - started
            tables[every] = pd.read_parquet(Path(out) / "faces")
            jobs[every] = _job_boxes(tables[every])
        tracks = _track_ids(jobs[every])
        name = f"detect_every_{every}"
        res[f"job_{name}_fps"] = summary.frames / wall
        res[f"job_{name}_seconds"] = wall
        for suffix, ceiling in ceilings.items():
            res[f"ratio_job_{name}_to_ceiling{suffix}"] = res[f"job_{name}_fps"] / ceiling
        against_opencv = (f", to the OpenCV-engine ceiling {res[f'ratio_job_{name}_to_ceiling_opencv']:.2f}"
                          if "_opencv" in ceilings else "")
        recall, precision = _recall_precision(reference, jobs[every])
        res[f"job_{name}_recall"], res[f"job_{name}_precision"] = recall, precision
        res[f"job_{name}_tracks"] = tracks
        label = "auto" if every == 0 else str(every)
        print(f"whole job, --detect-every {label:<4} {summary.frames / wall:8.1f} frames/s  ({summary.faces} faces, "
              f"{wall:.1f} s incl. planning and actor start); ratio to the ceiling {res[f'ratio_job_{name}_to_ceiling']:.2f}{against_opencv}; "
              f"recall {recall:.4f}, precision {precision:.4f} against the full detector on every sampled frame; "
              f"{tracks} track ids", flush=True)
    ray.shutdown()
    if 1 in jobs:
        for every in (e for e in jobs if e != 1):
            switches = _track_switches(jobs[1], jobs[every])
            res[f"track_switches_detect_every_{every}"] = switches
            worst = sorted(switches.items(), key=lambda kv: -kv[1])[:3]
            print(f"track switches of --detect-every {every} against --detect-every 1: {sum(switches.values())} in all; "
                  + ", ".join(f"{Path(p).name} {n}" for p, n in worst))
            # The tracker's second pass (a face continues a nearby track of its size where the IoU falls short),
            # against IoU alone: the same boxes, tracked again.
            iou_only = {e: _retracked(tables[e], 0.0) for e in (1, every)}
            switches = _track_switches(iou_only[1], iou_only[every])
            res[f"track_switches_detect_every_{every}_iou_only"] = switches
            for e in (1, every):
                res[f"job_detect_every_{e}_tracks_iou_only"] = _track_ids(iou_only[e])
            print(f"the same tracked by IoU only: {sum(switches.values())} switches; track ids "
                  f"{res['job_detect_every_1_tracks_iou_only']} (--detect-every 1) and "
                  f"{res[f'job_detect_every_{every}_tracks_iou_only']}, against {res['job_detect_every_1_tracks']} and "
                  f"{res[f'job_detect_every_{every}_tracks']}", flush=True)

    if fer_python and fps == 0:
        import subprocess

        # One process, every frame, as the package runs (EVALUATION.md's reference); the same frames as the job's.
        r = subprocess.run([str(fer_python), str(Path(__file__).with_name("fer_reference.py")), *files],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"error: the fer package failed under {fer_python}: {r.stderr.strip().splitlines()[-1:]}")
        fer = json.loads(r.stdout.strip().splitlines()[-1])
        res["fer_fps"] = res["frames"] / sum(fer["seconds"].values())
        res["fer_version"] = fer["fer_version"]
        res["fer_seconds_per_video"] = {Path(p).name: t for p, t in fer["seconds"].items()}
        print(f"the fer package {fer['fer_version']} (one process) {res['fer_fps']:8.1f} frames/s "
              f"({sum(fer['seconds'].values()):.1f} s)", flush=True)
        for every in jobs:
            res[f"ratio_job_detect_every_{every}_to_fer"] = res[f"job_detect_every_{every}_fps"] / res["fer_fps"]
            label = "auto" if every == 0 else str(every)
            print(f"whole job, --detect-every {label:<4} / fer: {res[f'ratio_job_detect_every_{every}_to_fer']:.2f}x",
                  flush=True)

    crops = np.random.default_rng(0).integers(0, 256, (1024, 48, 48), dtype=np.uint8)
    from fer_core.checkpoint import cpu_has_native_bf16, load_checkpoint, resolve_precision
    from fer_core.quantize import has_calibration

    auto = resolve_precision("auto", torch.device("cpu"), has_calibration(load_checkpoint(model)[1]))
    for precision in dict.fromkeys(["fp32", *(["bf16"] if cpu_has_native_bf16() else []), auto]):
        clf = load_classifier(model, device="cpu", precision=precision)
        for threads in sorted({1, workers}):
            torch.set_num_threads(threads)
            clf.predict_proba(crops[:64], batch_size=64)
            started = time.perf_counter()
            clf.predict_proba(crops, batch_size=64)
            rate = len(crops) / (time.perf_counter() - started)
            res[f"classifier_cpu_{clf.precision}_{threads}t_faces_per_s"] = rate
            print(f"classifier CPU {clf.precision} {threads} thread(s), batch 64: {rate:8.1f} faces/s "
                  f"({clf.model_id}, tta={clf.meta.tta})", flush=True)
    if torch.cuda.is_available():
        gpu = load_classifier(model, device="cuda")
        big = np.repeat(crops, 16, axis=0)
        gpu.predict_proba(big[:1024], batch_size=1024)
        torch.cuda.synchronize()
        started = time.perf_counter()
        gpu.predict_proba(big, batch_size=1024)
        torch.cuda.synchronize()
        res["classifier_gpu_faces_per_s"] = len(big) / (time.perf_counter() - started)
        print(f"classifier GPU batch 1024: {res['classifier_gpu_faces_per_s']:.0f} faces/s")
    if json_out:
        json_out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    app()
