"""The detection schedule's settings against the full detector on every sampled frame, on frames alone.

    python benchmarks/detect_schedule.py --videos ../shared/data/videos --fps 0 \
        --config 2.5,64,640 --config 2.5,160,640 --config 2.5,64,320

Each ``--config`` is ``window,window_face_px,full_side[,rescore_below[,keep_lost_s]]``: the search window in box
sides, the face size windows are downscaled to, the longest side of the image full detections run on (640 = the
detector's own; less tests item 2 of issue 11, full detections on a smaller image; windows keep the detector's
scale), the score below which a face found in its window gets a full detection next (the job's 0.85) and how long
a face no full detection finds again keeps its window searched (the job's ``track_max_age_s``, 1.0; 0 = not).
Every video is decoded once, in one process with one OpenCV thread, and each frame (with its time) goes through
the full detector (the reference) and through one `ScheduledDetector` per setting at the job's auto interval.
Prints for each setting the detection time against the reference's, the full detections by reason and the window
searches (and the lost faces they found again), face recall and precision against the reference (IoU >= 0.5), and,
on the frames whose faces came from windows, the mean and 95th percentile of the landmarks' roll, yaw and pitch
differences to the reference's; then the videos where recall fell below 0.99.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

app = typer.Typer(add_completion=False)


class _Scaled:
    """Full detections with one detector (smaller images), window searches with another (the job's)."""

    def __init__(self, full, windows) -> None:
        self.full, self.windows = full, windows

    def detect(self, image):
        return self.full.detect(image)

    def detect_region(self, *args, **kwargs):
        return self.windows.detect_region(*args, **kwargs)


def _parse(config: str) -> tuple[float, int, int, float, float]:
    try:
        window, face_px, side, *rest = config.split(",")
        if len(rest) > 2:
            raise ValueError
        rescore_below, keep_lost_s = (float(v) for v in rest + ["0.85", "1.0"][len(rest):])
        return float(window), int(face_px), int(side), rescore_below, keep_lost_s
    except ValueError:
        raise typer.BadParameter(f"--config {config!r}: expected window,window_face_px,full_side[,rescore_below"
                                 "[,keep_lost_s]], e.g. 2.5,64,640 or 2.5,64,640,0.75 or 2.5,64,640,0.85,0")


@app.command()
def main(
    videos: Path = typer.Option(Path("../shared/data/videos"), help="Folder of videos."),
    fps: float = typer.Option(0.0, help="Sampling rate (0 = every frame)."),
    config: list[str] = typer.Option(["2.5,64,640", "2.5,160,640"], help="window,window_face_px,full_side[,rescore_below[,keep_lost_s]] (repeatable; the job's 0.85 and 1.0 by default)."),
    detector_model: str = typer.Option(None, help="YuNet ONNX (default: resolved as the job does)."),
) -> None:
    import cv2

    from fer_core.detect import create_detector
    from fer_core.measures import head_pose, roll_from_eyes
    from fer_core.schedule import ScheduledDetector, detect_every_for
    from fer_core.track import iou_matrix
    from fer_core.video import iter_frames, list_inputs, probe

    cv2.setNumThreads(1)
    settings = [_parse(c) for c in config]
    reference = create_detector("auto", detector_model)
    full_detectors = {side: reference if side == reference.max_side else _Scaled(
        create_detector("auto", detector_model, max_side=side), reference) for side in {s[2] for s in settings}}
    stats = {s: {"t": 0.0, "hit": 0, "ref": 0, "got": 0, "reasons": {}, "windows": 0, "found_again": 0,
                 "roll": [], "yaw": [], "pitch": []} for s in settings}
    per_video: dict[tuple, list[int]] = {}
    reference_s = 0.0
    frames = 0
    for path in list_inputs([str(videos)]):
        every = detect_every_for(0, fps, probe(path).fps)
        schedules = {s: ScheduledDetector(full_detectors[s[2]], every, window=s[0], window_face_px=s[1],
                                           rescore_below=s[3], keep_lost_s=s[4]) for s in settings}
        for frame in iter_frames(path, sample_fps=fps):
            frames += 1
            image = frame.image
            height, width = image.shape[:2]
            started = time.perf_counter()
            truth = reference.detect(image)
            reference_s += time.perf_counter() - started
            for setting, schedule in schedules.items():
                full_before = schedule.stats.full
                started = time.perf_counter()
                found = schedule.detect(image, frame.timestamp_s)
                row = stats[setting]
                row["t"] += time.perf_counter() - started
                row["ref"] += len(truth)
                row["got"] += len(found)
                hits = 0
                if len(truth) and len(found):
                    overlap = iou_matrix(truth.boxes, found.boxes)
                    used: set[int] = set()
                    for i in range(len(truth)):
                        j = int(np.argmax(overlap[i]))
                        if overlap[i, j] < 0.5 or j in used:
                            continue
                        used.add(j)
                        hits += 1
                        if schedule.stats.full == full_before:  # the face came from a window search
                            a, b = truth.landmarks[i : i + 1], found.landmarks[j : j + 1]
                            row["roll"].append(float(roll_from_eyes(b)[0] - roll_from_eyes(a)[0]))
                            (ya,), (pa,) = head_pose(a, width, height)
                            (yb,), (pb,) = head_pose(b, width, height)
                            row["yaw"].append(float(yb - ya))
                            row["pitch"].append(float(pb - pa))
                row["hit"] += hits
                counts = per_video.setdefault((setting, Path(path).name), [0, 0])
                counts[0] += hits
                counts[1] += len(truth)
        for setting, schedule in schedules.items():
            stats[setting]["windows"] += schedule.stats.windows
            stats[setting]["found_again"] += schedule.stats.found_again
            for reason, count in schedule.stats.reasons.items():
                stats[setting]["reasons"][reason] = stats[setting]["reasons"].get(reason, 0) + count

    print(f"{frames} sampled frames at --fps {fps:g}; the full detector on every one: {reference_s:.1f} s "
          f"({1000 * reference_s / max(1, frames):.2f} ms/frame)")
    for setting, row in stats.items():
        errors = {k: np.abs(np.array(row[k])) for k in ("roll", "yaw", "pitch")}

        def spread(key: str) -> str:
            values = errors[key][np.isfinite(errors[key])]
            return f"{values.mean():.2f}/{np.percentile(values, 95):.2f}" if len(values) else "-"

        reasons = ", ".join(f"{k} {v}" for k, v in sorted(row["reasons"].items(), key=lambda kv: -kv[1]))
        print(f"window {setting[0]:g}, {setting[1]} px of face, full detections at {setting[2]}, rescore below "
              f"{setting[3]:g}, lost faces searched for {setting[4]:g} s: {row['t']:.1f} s "
              f"({reference_s / max(row['t'], 1e-9):.2f}x the full detector on every frame); full detections "
              f"{sum(row['reasons'].values())} ({reasons}), window searches {row['windows']} (lost faces found again "
              f"{row['found_again']}); recall "
              f"{row['hit'] / max(1, row['ref']):.4f}, precision {row['hit'] / max(1, row['got']):.4f}; landmark "
              f"differences on window frames, mean/p95 degrees: roll {spread('roll')}, yaw {spread('yaw')}, "
              f"pitch {spread('pitch')}", flush=True)
    for (setting, name), (hits, total) in sorted(per_video.items()):
        if total and hits / total < 0.99:
            print(f"  {setting}: {name} recall {hits}/{total} = {hits / total:.4f}")


if __name__ == "__main__":
    app()
