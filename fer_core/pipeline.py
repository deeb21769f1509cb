"""The Ray Data plan of the annotation job. The only module of fer_core that imports Ray.

    plan (Ray tasks: probe each video, split long ones into segments)
      -> decode + detect + crop (one Ray task per segment; the work runs in an isolated child process)
      -> classify (an actor pool on GPUs, or on fractional CPUs)
      -> the driver assembles each video, tracks faces and commits the video's Parquet files atomically.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from fer_core import __version__
from fer_core.config import AnnotateOptions, parse_labels
from fer_core.isolate import run_isolated
from fer_core.labels import PROB_COLUMNS
from fer_core.output import Assembler, OutputStore, VideoResult
from fer_core.preprocess import Preprocessing
from fer_core.segment import KIND_FACE, SegmentTask, error_batch, one_line, plan_video, process_segment

# Nothing here imports torch at module level: every Ray worker that runs a planning or decode task imports this
# module to unpickle its function, and torch (with its CUDA libraries) costs seconds of CPU per worker process.
# Only the driver and the classifier actors load fer_core.checkpoint.

log = logging.getLogger("fer_core.pipeline")


@dataclass
class RunSummary:
    """What a run did, for the closing table and the exit code."""

    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    wall_s: float = 0.0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] != "ok"]

    @property
    def frames(self) -> int:
        return sum(r["frames_sampled"] or 0 for r in self.results)

    @property
    def faces(self) -> int:
        return sum(r["faces"] or 0 for r in self.results)


def _plan_row(row: dict[str, Any], opts: AnnotateOptions) -> list[dict[str, Any]]:
    return [t.to_row() for t in plan_video(row["video_path"], row["video_id"], opts)]


def _ensure_model_file(detector: Any, model_bytes: bytes | None) -> Any:
    """On a node without the driver's YuNet file, write the shipped bytes into the node's cache."""
    path = getattr(detector, "model_path", None)
    if path is None or os.path.isfile(path) or model_bytes is None:
        return detector
    from fer_core.detect import YUNET_FILENAME, cache_dir

    target = cache_dir() / YUNET_FILENAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(model_bytes)
        os.replace(tmp, target)
    detector.model_path = str(target)
    return detector


def _segment_batches(
    batch: dict[str, np.ndarray],
    opts: AnnotateOptions,
    detector: Any,
    model_bytes: bytes | None,
    spec: Preprocessing,
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data UDF: one segment row in, its row batches out; any failure becomes one ``error`` row."""
    crop_shape = (spec.input_size, spec.input_size) + ((3,) if spec.channels == 3 else ())
    for i in range(len(batch["video_id"])):
        task = SegmentTask.from_row({k: v[i] for k, v in batch.items()})
        if task.error:
            yield error_batch(task, task.error, crop_shape)
            continue
        started = time.perf_counter()
        try:
            detector = _ensure_model_file(detector, model_bytes)
            yield from run_isolated(process_segment, task, opts, detector, spec, timeout_s=opts.segment_timeout_s)
        except Exception as e:  # the video fails, the job goes on
            where = f" (segment {task.segment_index + 1}/{task.n_segments} from {task.start_s:g} s)" if task.n_segments > 1 else ""
            yield error_batch(task, one_line(e) + where, crop_shape, time.perf_counter() - started)


class ClassifyCrops:
    """Ray Data actor: loads the classifier once, adds one probability column per class, drops the crops."""

    def __init__(
        self, checkpoint_files: dict[str, bytes], device: str, threads: int, batch_size: int, precision: str = "auto"
    ) -> None:
        import torch

        from fer_core.checkpoint import load_classifier

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        folder = Path(tempfile.mkdtemp(prefix="fer-model-"))
        for name, data in checkpoint_files.items():
            (folder / name).write_bytes(data)
        self.classifier = load_classifier(folder, device="cuda" if device == "gpu" else "cpu", precision=precision)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return classify_batch(self.classifier, batch, self.batch_size)


def classify_batch(classifier: Any, batch: dict[str, np.ndarray], batch_size: int = 256) -> dict[str, np.ndarray]:
    """Classify the face rows of a pipeline batch; other rows get NaN probabilities. Drops ``crop``."""
    out = {k: v for k, v in batch.items() if k != "crop"}
    n = len(batch["kind"])
    probs = np.full((n, len(PROB_COLUMNS)), np.nan, dtype=np.float32)
    faces = np.flatnonzero(batch["kind"] == KIND_FACE)
    if len(faces):
        probs[faces] = classifier.predict_proba(np.asarray(batch["crop"])[faces], batch_size=batch_size)
    for j, name in enumerate(PROB_COLUMNS):
        out[name] = probs[:, j]
    return out


def _checkpoint_files(model: str | None) -> tuple[dict[str, bytes], Any, str]:
    """Read the checkpoint once on the driver, so every node gets the same bytes without shared storage.

    Returns the files, the checkpoint's :class:`fer_core.checkpoint.CheckpointMeta` and the model id."""
    from fer_core.checkpoint import META_FILE, WEIGHTS_FILE, checkpoint_folder, load_checkpoint

    folder = checkpoint_folder(model)
    _, meta, model_id = load_checkpoint(folder)  # validates the checkpoint before any work
    files = {name: (folder / name).read_bytes() for name in (META_FILE, WEIGHTS_FILE)}
    return files, meta, model_id


def _plan_resources(opts: AnnotateOptions) -> dict[str, Any]:
    """Decide where the classifier runs and how many CPUs each stage reserves.

    On a 2-CPU machine a pipeline whose actors reserve every CPU hangs silently, so CPU actors take a fraction
    of a CPU and the decode tasks share what is left.
    """
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 1))
    gpus = float(resources.get("GPU", 0))
    if opts.device == "gpu" and gpus < 1:
        raise RuntimeError("--device gpu but the Ray cluster has no GPU; use --device auto or cpu")
    use_gpu = opts.device == "gpu" or (opts.device == "auto" and gpus >= 1)
    if use_gpu:
        actors = opts.classifier_actors or int(gpus)
        actor_cpus = 1.0
    else:
        actors = opts.classifier_actors or max(1, int(cpus // 8))
        actor_cpus = opts.classifier_cpus
    reserved = actors * actor_cpus
    if reserved >= cpus:
        raise RuntimeError(
            f"the classifier actors reserve {reserved:g} of the cluster's {cpus:g} CPUs, leaving none for decoding; "
            "lower --classifier-actors or --classifier-cpus"
        )
    decode_cpus = min(1.0, (cpus - reserved) / max(1.0, math.floor(cpus)))
    return {
        "device": "gpu" if use_gpu else "cpu",
        "actors": actors,
        "actor_cpus": actor_cpus,
        "actor_threads": max(1, int(round(actor_cpus))) if not use_gpu else 1,
        "decode_cpus": decode_cpus,
        "cluster_cpus": cpus,
        "cluster_gpus": gpus,
    }


def check_labels(opts: AnnotateOptions) -> None:
    """Fail fast when a label selector matches no alive node (Ray would wait for one for 30 minutes)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    for flag, labels in (("--decode-label", opts.decode_labels), ("--classify-label", opts.classify_labels)):
        wanted = parse_labels(labels)
        if wanted and not any(all(n.get("Labels", {}).get(k) == v for k, v in wanted.items()) for n in nodes):
            have = sorted({f"{k}={v}" for n in nodes for k, v in n.get("Labels", {}).items() if not k.startswith("ray.io/")})
            raise RuntimeError(
                f"{flag} {','.join(labels)} matches no node of the cluster (node labels: {', '.join(have) or 'none'}); "
                "fix the label or the cluster's worker groups"
            )


def plan_videos(videos: list[tuple[str, str]], opts: AnnotateOptions) -> list[dict[str, Any]]:
    """Probe videos in parallel on the cluster (plain Ray tasks, all in flight at once); returns segment rows,
    longest videos first so the long segments don't finish last."""
    if not videos:
        return []
    probe = ray.remote(num_cpus=1)(_plan_row)
    rows = [r for part in ray.get([probe.remote({"video_path": p, "video_id": v}, opts) for p, v in videos]) for r in part]
    rows.sort(key=lambda r: (-(r["duration_s"] if r["duration_s"] == r["duration_s"] else 0.0), r["video_path"], r["segment_index"]))
    return rows


def annotate(
    videos: list[str],
    out: str,
    opts: AnnotateOptions,
    *,
    detector: Any,
    model_bytes: bytes | None,
    overwrite: bool = False,
    on_video: Callable[[VideoResult, int, int], None] | None = None,
) -> RunSummary:
    """Run the whole job over local paths or URIs, committing each video's rows once it is complete.

    Args:
        videos: inputs from :func:`fer_core.video.list_inputs`.
        out: the output folder or bucket URI.
        opts: validated options.
        detector: a :class:`fer_core.detect.FaceDetector` (pickled to the workers; its OpenCV parts are rebuilt there).
        model_bytes: the YuNet ONNX bytes for nodes that lack the file (None for Haar).
        overwrite: delete earlier results first; otherwise videos committed ok by an earlier run are skipped.
        on_video: called after each commit with (result, videos done, videos to do), for progress.
    """
    from fer_core.video import video_id

    started = time.perf_counter()
    files, meta, model_id = _checkpoint_files(opts.model)
    check_labels(opts)
    resources = _plan_resources(opts)
    run_meta = {
        "fer_core_version": __version__,
        "model": model_id,
        "model_arch": meta.arch,
        "model_tta": meta.tta,
        "detector": detector.describe(),
        "options": opts.to_dict(),
        "resources": resources,
    }
    store = OutputStore(out, run_meta)
    store.check_writable()
    if overwrite:
        store.clear()
    done_before = {} if overwrite else store.finished()
    todo = [(p, video_id(p)) for p in videos]
    todo = [(p, v) for p, v in todo if done_before.get(v) != "ok"]
    summary = RunSummary(skipped=len(videos) - len(todo))
    log.info(
        "%d videos: %d to do, %d already done; classifier on %s (%d actors), decode tasks %.2f CPU each",
        len(videos), len(todo), summary.skipped, resources["device"], resources["actors"], resources["decode_cpus"],
    )
    segments = plan_videos(todo, opts)
    if not segments:
        summary.wall_s = time.perf_counter() - started
        return summary
    # Ray Data's per-operator reservations hold back half the CPUs for the classifier stage, which would leave one
    # decode task running on a 2-CPU machine; the CPU split above already leaves the actors their share.
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    ds = ray.data.from_items(segments, override_num_blocks=len(segments))
    ds = ds.map_batches(
        _segment_batches,
        batch_size=1,
        num_cpus=resources["decode_cpus"],
        label_selector=parse_labels(opts.decode_labels) or None,
        fn_kwargs={"opts": opts, "detector": detector, "model_bytes": model_bytes, "spec": meta.preprocessing},
    )
    gpu = resources["device"] == "gpu"
    ds = ds.map_batches(
        ClassifyCrops,
        batch_size=opts.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=resources["actors"]),
        num_gpus=1 if gpu else 0,
        num_cpus=resources["actor_cpus"],
        label_selector=parse_labels(opts.classify_labels) or None,
        fn_constructor_kwargs={
            "checkpoint_files": files,
            "device": resources["device"],
            "threads": resources["actor_threads"],
            "batch_size": opts.batch_size,
            "precision": opts.precision,
        },
    )
    assembler = Assembler(
        detector=detector.name, model=model_id, track_iou=opts.track_iou, track_max_age_s=opts.track_max_age_s
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for result in assembler.add(batch):
            store.commit(result)
            summary.results.append(result.video_row)
            if on_video is not None:
                on_video(result, len(summary.results), len(todo))
    if assembler.pending():
        raise RuntimeError(f"the pipeline ended with {len(assembler.pending())} videos incomplete: {assembler.pending()[:3]}")
    summary.wall_s = time.perf_counter() - started
    return summary
