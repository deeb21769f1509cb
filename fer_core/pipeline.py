"""The Ray Data plan of the annotation job. The only module of fer_core that imports Ray.

    plan (Ray tasks, each probing a chunk of the inputs and splitting long videos into segments)
      -> decode + detect + crop (one Ray task per segment, or per pack of short inputs; the work runs in an
         isolated child process)
      -> classify (an actor pool on GPUs, or on fractional CPUs)
      -> the driver assembles each video, tracks faces and commits the video's Parquet files atomically.

When the run loses a worker that Ray does not recover by itself (the classifier actor, or a node with it), the
pipeline runs again over the videos not yet committed (:data:`PIPELINE_ATTEMPTS`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from fer_core import __version__
from fer_core.config import AnnotateOptions, parse_labels
from fer_core.isolate import run_isolated
from fer_core.labels import PROB_COLUMNS
from fer_core.output import Assembler, OutputStore, VideoResult
from fer_core.preprocess import Preprocessing
from fer_core.schedule import schedule_description
from fer_core.segment import KIND_FACE, SegmentTask, error_batch, one_line, plan_video, process_segment

# Nothing here imports torch at module level: every Ray worker that runs a planning or decode task imports this
# module to unpickle its function, and torch (with its CUDA libraries) costs seconds of CPU per worker process.
# Only the driver and the classifier actors load fer_core.checkpoint.

log = logging.getLogger("fer_core.pipeline")

PIPELINE_ATTEMPTS = 3
"""Runs of the pipeline per job. A run that loses a worker Ray cannot bring back (the classifier actor's process,
or the node it ran on: its actors run without restarts, see :func:`_classify_stage`; an object whose every copy
died) is followed by another over the videos not yet committed. Videos committed stay committed."""

PROBES_PER_TASK = 64
"""Most inputs one planning task probes. Fewer when that leaves the cluster's CPUs idle: at least two tasks per
CPU while there are inputs enough."""

PACK_FRAMES = 64
"""Short inputs (one segment, at most this many sampled frames: still images, short clips) share a decode task
up to this many sampled frames, so a thousand images don't cost a thousand tasks. 0 = one task per segment."""

PACK_MAX_INPUTS = 64
"""Most inputs one decode task packs."""

MIN_BLOCK_ROWS = 64
"""Rows a decode task gathers before it hands them on: the small outputs of packed inputs (two rows for a still
image) travel together, since every output block costs Ray Data scheduling and an object-store round trip."""

# Failures that mean a worker process, a node or an object went away, not that the work is wrong: another run of
# the pipeline over the unfinished videos can succeed. The driver's own raylet dying (LocalRayletDiedError) can't.
_LOST_WORKER_ERRORS = (
    ray.exceptions.RayActorError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.RaySystemError,
)


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


def _plan_rows(videos: list[tuple[str, str]], opts: AnnotateOptions) -> list[dict[str, Any]]:
    """One planning task: probe (path, video id) pairs one after the other; their segment rows."""
    return [t.to_row() for path, vid in videos for t in plan_video(path, vid, opts)]


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
    """Ray Data UDF: segment rows in (one, or a pack of short inputs), their row batches out, one segment after
    the other; any failure of a segment becomes its one ``error`` row."""
    crop_shape = (spec.input_size, spec.input_size) + ((3,) if spec.channels == 3 else ())
    parts = _segment_parts(batch, opts, detector, model_bytes, spec, crop_shape)
    pending: list[dict[str, np.ndarray]] = []
    rows = 0
    for part in parts:
        pending.append(part)
        rows += len(part["kind"])
        if rows >= MIN_BLOCK_ROWS:
            yield _concat(pending)
            pending, rows = [], 0
    if pending:
        yield _concat(pending)


def _segment_parts(
    batch: dict[str, np.ndarray], opts: AnnotateOptions, detector: Any, model_bytes: bytes | None,
    spec: Preprocessing, crop_shape: tuple[int, ...],
) -> Iterator[dict[str, np.ndarray]]:
    """Each segment's row batches, one segment after the other, or its one ``error`` row."""
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


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One batch from several of the same columns."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


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
        self.classifier.warm_up(batch_size)
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


class _DropNote(logging.Filter):
    """Drops Ray Data's console note that progress bars are off: the job turned them off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


def init_ray(address: str | None = None, *, verbose: bool = False, **kwargs: Any) -> None:
    """Join ``address`` (or start a local Ray) with a quiet console unless ``verbose``.

    Quiet: no start banner, no worker output forwarded to the driver, no Ray Data progress blocks or "Starting
    execution" lines on the console. Ray's and Ray Data's warnings and errors still show, and Ray Data's full log
    still goes to the session's ``logs/ray-data/ray-data.log``. Verbose: all of it, as Ray prints it by default.

    A local Ray started here (no address) runs without its dashboard unless ``verbose``: the dashboard took about
    1 s of the 4.4 s that starting a local Ray took on 2 cores (``benchmarks/scale.py``), and the job's own progress
    says what it shows. Joining a cluster leaves the cluster's dashboard as it is.
    """
    ray.init(
        address=address,
        include_dashboard=kwargs.pop("include_dashboard", verbose),  # Ray ignores it when joining a cluster
        log_to_driver=verbose,  # worker stdout/stderr (and their log lines) copied to the driver's console
        logging_level=logging.INFO if verbose else logging.WARNING,  # the "ray" logger: the start banner
        ignore_reinit_error=True,
        **kwargs,
    )
    # Progress bars on a terminal, and on a pipe one "Running Dataset" block every 10 s.
    ray.data.DataContext.get_current().enable_progress_bars = verbose
    if not verbose:
        # Ray Data logs to its file at DEBUG and to the console at INFO; keep the file, raise the console.
        for handler in logging.getLogger("ray.data").handlers:
            if isinstance(handler, logging.StreamHandler):  # the console handler, not the session file's
                handler.setLevel(logging.WARNING)
                handler.addFilter(_DropNote())


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


def plan_videos(
    videos: list[tuple[str, str]], opts: AnnotateOptions, *, probes_per_task: int | None = None
) -> list[dict[str, Any]]:
    """Probe videos in parallel on the cluster; returns segment rows, longest videos first so the long segments
    don't finish last.

    Each plain Ray task probes a chunk of the inputs (at most ``probes_per_task``, default
    :data:`PROBES_PER_TASK`), all chunks in flight at once: a task per input cost about 20 ms of scheduling each.
    """
    if not videos:
        return []
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
    per_task = max(1, min(probes_per_task or PROBES_PER_TASK, math.ceil(len(videos) / (2 * slots))))
    probe = ray.remote(num_cpus=1)(_plan_rows)
    chunks = [videos[i : i + per_task] for i in range(0, len(videos), per_task)]
    rows = [r for part in ray.get([probe.remote(chunk, opts) for chunk in chunks]) for r in part]
    rows.sort(key=lambda r: (-(r["duration_s"] if r["duration_s"] == r["duration_s"] else 0.0), r["video_path"], r["segment_index"]))
    return rows


def _expected_frames(row: dict[str, Any], sample_fps: float) -> float:
    """Sampled frames a segment row should give (a still image: 1; unknown: infinite, never packed)."""
    if row["decoder"] == "image":
        return 1.0
    start, end, duration, fps = row["start_s"], row["end_s"], row["duration_s"], row["fps"]
    span = (end if end == end else duration) - start
    rate = sample_fps if sample_fps > 0 else fps
    return span * min(rate, fps) if span == span and rate == rate and fps == fps else math.inf


def pack_segments(
    segments: list[dict[str, Any]], sample_fps: float, *, pack_frames: int | None = None,
    max_inputs: int | None = None, min_packs: int = 1,
) -> list[list[dict[str, Any]]]:
    """Group segment rows into decode tasks: each segment of a split video alone, short inputs together.

    A whole input (one segment) expected to give at most ``pack_frames`` sampled frames joins a pack, in the
    given order, until the pack would pass ``pack_frames`` frames or ``max_inputs`` inputs. The pack size shrinks
    so that there are at least ``min_packs`` tasks while there are inputs enough, to keep every CPU busy.
    """
    pack_frames = PACK_FRAMES if pack_frames is None else pack_frames
    max_inputs = max_inputs or PACK_MAX_INPUTS
    small = [s for s in segments if s["n_segments"] == 1 and _expected_frames(s, sample_fps) <= pack_frames]
    if pack_frames <= 0 or len(small) < 2:
        return [[s] for s in segments]
    large = len(segments) - len(small)
    budget = max(1.0, sum(max(1.0, _expected_frames(s, sample_fps)) for s in small) / max(1, min_packs - large))
    budget = min(float(pack_frames), budget)
    packs: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    frames = 0.0
    for s in segments:
        if s["n_segments"] != 1 or _expected_frames(s, sample_fps) > pack_frames:
            packs.append([s])
            continue
        f = max(1.0, _expected_frames(s, sample_fps))
        if current and (frames + f > budget or len(current) >= max_inputs):
            packs.append(current)
            current, frames = [], 0.0
        current.append(s)
        frames += f
    if current:
        packs.append(current)
    return packs


def annotate(
    videos: list[str],
    out: str,
    opts: AnnotateOptions,
    *,
    detector: Any,
    model_bytes: bytes | None,
    overwrite: bool = False,
    on_video: Callable[[VideoResult, int, int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
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
        on_start: called once with the number of videos to do, before any work.
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
        "detect_schedule": schedule_description(opts.detect_every, opts.track_max_age_s),
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
    if on_start is not None:
        on_start(len(todo))
    segments = plan_videos(todo, opts)
    if not segments:
        summary.wall_s = time.perf_counter() - started
        return summary
    committed: set[str] = set()
    for attempt in range(1, PIPELINE_ATTEMPTS + 1):
        try:
            for result in _run_pipeline(segments, opts, resources, detector=detector, model_bytes=model_bytes,
                                        meta=meta, checkpoint_files=files, model_id=model_id):
                store.commit(result)
                committed.add(result.video_id)
                summary.results.append(result.video_row)
                if on_video is not None:
                    on_video(result, len(summary.results), len(todo))
            break
        except Exception as e:
            lost = _lost_worker(e)
            if lost is None or attempt == PIPELINE_ATTEMPTS:
                raise
            segments = [s for s in segments if s["video_id"] not in committed]
            log.warning(
                "the pipeline lost a worker (%s: %s); running it again over the %d unfinished videos (attempt %d of %d)",
                type(lost).__name__, one_line(lost)[:200], len({s["video_id"] for s in segments}), attempt + 1,
                PIPELINE_ATTEMPTS,
            )
            resources = _plan_resources(opts)  # the cluster may have fewer nodes now
    summary.wall_s = time.perf_counter() - started
    return summary


def _lost_worker(e: BaseException) -> BaseException | None:
    """The Ray error in ``e``'s chain that says a worker, node or object was lost; None for any other failure."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, _LOST_WORKER_ERRORS):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _run_pipeline(
    segments: list[dict[str, Any]],
    opts: AnnotateOptions,
    resources: dict[str, Any],
    *,
    detector: Any,
    model_bytes: bytes | None,
    meta: Any,
    checkpoint_files: dict[str, bytes],
    model_id: str,
) -> Iterator[VideoResult]:
    """One run of the Ray Data pipeline over ``segments``; yields each video once all its rows are in."""
    # Ray Data's per-operator reservations hold back half the CPUs for the classifier stage, which would leave one
    # decode task running on a 2-CPU machine; the CPU split above already leaves the actors their share.
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    decode_slots = max(1, int((resources["cluster_cpus"] - resources["actors"] * resources["actor_cpus"]) // resources["decode_cpus"]))
    packs = pack_segments(segments, opts.fps, min_packs=4 * decode_slots)
    # One block per pack, so one decode task per pack (Ray Data runs a task per block with batch_size=None).
    schema = pa.Table.from_pylist(segments).schema  # inferred once, so every block has the same types
    ds = ray.data.from_arrow([pa.Table.from_pylist(pack, schema=schema) for pack in packs])
    ds = ds.map_batches(
        _segment_batches,
        batch_size=None,
        num_cpus=resources["decode_cpus"],
        # Ray Data's default for tasks, max_retries=-1, is kept: a decode task whose worker process or node dies
        # runs again elsewhere, and Ray rebuilds its lost outputs the same way. The task's own errors never reach
        # Ray (they fail the segment's video), and a segment's rows don't depend on the attempt, so the items a
        # retried streaming task had already delivered are not doubled.
        label_selector=parse_labels(opts.decode_labels) or None,
        fn_kwargs={"opts": opts, "detector": detector, "model_bytes": model_bytes, "spec": meta.preprocessing},
    )
    ds = _classify_stage(ds, opts, resources, checkpoint_files)
    assembler = Assembler(
        detector=detector.name, model=model_id, track_iou=opts.track_iou, track_max_age_s=opts.track_max_age_s,
        track_max_shift=opts.track_max_shift,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield from assembler.add(batch)
    if assembler.pending():
        raise RuntimeError(f"the pipeline ended with {len(assembler.pending())} videos incomplete: {assembler.pending()[:3]}")


def _classify_stage(ds: Any, opts: AnnotateOptions, resources: dict[str, Any], checkpoint_files: dict[str, bytes]) -> Any:
    gpu = resources["device"] == "gpu"
    with warnings.catch_warnings():
        # max_restarts has no named parameter in Ray 2.60 (pinned), only the deprecated **ray_remote_args.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        return ds.map_batches(
            ClassifyCrops,
            batch_size=opts.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=resources["actors"]),
            num_gpus=1 if gpu else 0,
            num_cpus=resources["actor_cpus"],
            label_selector=parse_labels(opts.classify_labels) or None,
            fn_constructor_kwargs={
                "checkpoint_files": checkpoint_files,
                "device": resources["device"],
                "threads": resources["actor_threads"],
                "batch_size": opts.batch_size,
                "precision": opts.precision,
            },
            # Ray Data hands every pool actor its DataContext and UDF as object-store refs, so with Ray Data's
            # default max_restarts=-1 Ray Core logs an error-level "has constructor arguments in the object store
            # and max_restarts > 0" line on every run, whatever the UDF's own arguments (ray-project/ray#53727,
            # #57733). Without restarts a classifier actor that dies (or its node) fails this run of the pipeline;
            # annotate() then runs it again over the videos not yet committed (PIPELINE_ATTEMPTS), with a new
            # actor pool built from the same checkpoint bytes, which the driver holds for the whole job.
            max_restarts=0,
        )
