"""Annotation throughput on the shared videos, with its baselines measured in the same run.

    python benchmarks/annotate_throughput.py --videos ../shared/data/videos --fps 0

Prints frames/s for (1) decode only, (2) decode + face detection only (same detector settings, every core, the
same segments as the job), (3) the whole job through Ray (decode, detect, crop, classify, track, write), and the
ratio whole / decode+detect; then the classifier's faces/s on the CPU (one thread and every thread, batch 64) and
on the GPU when there is one; on the CPU in float32 and in the job's default precision (bf16 where the CPU has it).
Absolute numbers drift on shared machines: compare the ratio.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

app = typer.Typer(add_completion=False)


def _work(args: tuple) -> tuple[int, int]:
    """Decode (and optionally detect on) one segment; returns (frames, faces)."""
    path, start, end, fps, detector, decoder = args
    import cv2

    from fer_core.video import iter_frames

    cv2.setNumThreads(1)
    frames = faces = 0
    for frame in iter_frames(path, sample_fps=fps, start_s=start, end_s=end, decoder=decoder):
        frames += 1
        if detector is not None:
            faces += len(detector.detect(frame.image))
    return frames, faces


def _baseline(tasks: list[tuple], workers: int) -> tuple[float, int, int]:
    started = time.perf_counter()
    with mp.get_context("forkserver").Pool(workers) as pool:
        results = pool.map(_work, tasks, chunksize=1)
    wall = time.perf_counter() - started
    return wall, sum(r[0] for r in results), sum(r[1] for r in results)


@app.command()
def main(
    videos: Path = typer.Option(Path("../shared/data/videos"), help="Folder of videos."),
    fps: float = typer.Option(0.0, help="Sampling rate (0 = every frame)."),
    segment_s: float = typer.Option(20.0, help="Segment length, for the job and the baselines alike."),
    model: str = typer.Option(None, help="Classifier checkpoint (default: the shipped model)."),
    detector_model: str = typer.Option(None, help="YuNet ONNX (default: resolved as the job does)."),
    json_out: Path = typer.Option(None, help="Also write the figures as JSON here."),
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
    tasks = []
    for f in files:
        info = probe(f)
        for start, end in plan_segments(info, segment_s):
            tasks.append((f, start, end, fps, None, "auto", info.duration_s))
    tasks.sort(key=lambda t: -t[-1])
    tasks = [t[:-1] for t in tasks]
    res: dict[str, float] = {"videos": len(files), "segments": len(tasks), "cpus": workers, "fps": fps}

    wall, frames, _ = _baseline(tasks, workers)
    res["decode_fps"] = frames / wall
    res["frames"] = frames
    print(f"decode only            {frames / wall:8.1f} frames/s  ({frames} frames, {wall:.1f} s, {workers} processes)", flush=True)
    det_tasks = [(p, s, e, f, detector, d) for p, s, e, f, _, d in tasks]
    wall, frames, faces = _baseline(det_tasks, workers)
    res["decode_detect_fps"] = frames / wall
    res["faces"] = faces
    print(f"decode + detect        {frames / wall:8.1f} frames/s  ({faces} faces, {wall:.1f} s, {detector.name})", flush=True)

    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    from fer_core.pipeline import annotate

    opts = AnnotateOptions(fps=fps, segment_s=segment_s, model=model, detector=detector.name)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        summary = annotate(files, out, opts, detector=detector, model_bytes=None)
        wall = time.perf_counter() - started
    ray.shutdown()
    res["job_fps"] = summary.frames / wall
    res["job_seconds"] = wall
    res["ratio_job_to_decode_detect"] = res["job_fps"] / res["decode_detect_fps"]
    print(f"whole job              {summary.frames / wall:8.1f} frames/s  ({summary.faces} faces, {wall:.1f} s incl. planning and actor start)")
    print(f"ratio whole / decode+detect  {res['ratio_job_to_decode_detect']:.2f}")

    crops = np.random.default_rng(0).integers(0, 256, (1024, 48, 48), dtype=np.uint8)
    from fer_core.checkpoint import cpu_has_native_bf16

    for precision in ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",):
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
