"""The training process: load data, build the model, resume, train, evaluate, checkpoint. Ray Train's workers run it
(:func:`train_worker`); :func:`train_local` runs it in one process without Ray."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file

from fer_core.checkpoint import WEIGHTS_FILE, save_checkpoint
from fer_core.labels import EMOTIONS
from fer_core.models import create_model
from training.config import TrainConfig
from training.data import FerData, ferplus_soft_targets, load_fer, load_ferplus_votes
from training.swa import WeightAverage, bn_sample, recompute_batchnorm
from training.loop import (
    Schedule,
    accuracy_plain_and_flip,
    build_optimizer,
    checkpoint_meta_of,
    preprocessing_of,
    train_one_epoch,
    train_preset_of,
    uses_cpu_bf16,
)

STATE_FILE = "train_state.pt"
RECORDED_KEY = "_as_given"
"""Key of the config as the user wrote it (paths unresolved) in the workers' config: what checkpoints record."""
HISTORY_FILE = "metrics.jsonl"


def prepare_images(pixels: np.ndarray, cfg: TrainConfig) -> torch.Tensor:
    """uint8 (N, 48, 48) faces -> uint8 tensor (N, C, S, S) at the config's size and channels."""
    if cfg.input_size != pixels.shape[1]:
        import cv2

        pixels = np.stack([cv2.resize(p, (cfg.input_size, cfg.input_size), interpolation=cv2.INTER_LINEAR) for p in pixels])
    x = torch.from_numpy(np.ascontiguousarray(pixels))[:, None]
    return x.repeat(1, cfg.channels, 1, 1) if cfg.channels > 1 else x


def make_targets(data: FerData, cfg: TrainConfig) -> torch.Tensor:
    """(N, 7) target probabilities: one-hot labels, or FERPlus vote shares where soft targets are asked for."""
    onehot = np.eye(len(EMOTIONS), dtype=np.float32)[data.labels]
    if cfg.soft_targets and cfg.ferplus:
        soft = ferplus_soft_targets(load_ferplus_votes(cfg.ferplus, data.row))
        has_votes = soft.sum(1) > 0
        onehot[has_votes] = soft[has_votes]
    return torch.from_numpy(onehot)


class Session:
    """What a training process needs from whatever runs it: its rank, its device, the checkpoint to resume from,
    and where each epoch's report and checkpoint go. :class:`RaySession` is Ray Train's; :class:`LocalSession`
    runs one process without Ray (training/gpu_teachers.py on a machine without Ray)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    def restored(self) -> "contextlib.AbstractContextManager[Path | None]":
        """A context giving the latest checkpoint's folder, or None for a fresh start."""
        raise NotImplementedError

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Record an epoch; ``checkpoint_dir`` (rank 0 only) is a temporary folder the session must copy now."""
        raise NotImplementedError


class RaySession(Session):
    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    @contextlib.contextmanager
    def restored(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as d:
            yield Path(d)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=checkpoint)


class LocalSession(Session):
    """One process on one device, no Ray: the latest checkpoint lives in ``RUN_DIR/checkpoint/``, replaced whole
    each epoch (the new one is written beside it and renamed over it), so a run cut off at any point resumes."""

    def __init__(self, run_dir: Path, device: torch.device) -> None:
        self.run_dir, self.device = Path(run_dir), device
        self.latest = self.run_dir / "checkpoint"

    @contextlib.contextmanager
    def restored(self) -> Iterator[Path | None]:
        # checkpoint.old is the previous one, there only if a run was cut off between the two renames in report().
        found = [d for d in (self.latest, self.run_dir / "checkpoint.old") if (d / STATE_FILE).is_file()]
        yield found[0] if found else None

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            return
        part, old = self.run_dir / "checkpoint.part", self.run_dir / "checkpoint.old"
        shutil.rmtree(part, ignore_errors=True)
        shutil.copytree(checkpoint_dir, part)
        shutil.rmtree(old, ignore_errors=True)
        if self.latest.exists():
            self.latest.rename(old)
        part.rename(self.latest)
        shutil.rmtree(old, ignore_errors=True)


def train_local(cfg: TrainConfig, out: str | Path, as_given: TrainConfig | None = None,
                device: torch.device | str = "cpu") -> Path:
    """Train (or resume) in this process without Ray, and export the best epoch to ``OUT/<name>/model/``, as
    training/train.py's :func:`run` does with Ray Train. Returns the exported model's folder."""
    import yaml

    run_dir = Path(out) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    recorded = (as_given or cfg).to_dict()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=True))
    session = LocalSession(run_dir, torch.device(device))
    train_process({**cfg.to_dict(), RECORDED_KEY: recorded}, session)
    model_dir = run_dir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    with session.restored() as latest:  # the final checkpoint
        if latest is None:
            raise RuntimeError(f"training wrote no checkpoint under {run_dir}")
        shutil.copytree(latest / "best", model_dir)
        shutil.copyfile(latest / HISTORY_FILE, run_dir / HISTORY_FILE)
    return model_dir


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: one DDP worker. Reports once per epoch with a checkpoint from rank 0."""
    train_process(config, RaySession())


def _fit_budget(budget_s: float, elapsed_s: float, epoch_seconds: list[float], most: int) -> int:
    """The epoch count that ends within ``budget_s``: the epochs done (one per entry of ``epoch_seconds``) in
    ``elapsed_s``, then as many more as the rest of the budget holds at the pace of the fastest of them (a slow
    one was warming up or sharing the machine); at most ``most``."""
    done, pace = len(epoch_seconds), max(min(epoch_seconds), 1e-6)
    return max(done, min(most, done + int(max(0.0, budget_s - elapsed_s) // pace)))


def train_process(config: dict[str, Any], session: Session) -> None:
    """Load data, build the model, resume, train, evaluate and checkpoint each epoch, under ``session``."""
    config = dict(config)
    as_given = TrainConfig(**config.pop(RECORDED_KEY, None) or config)
    cfg = TrainConfig(**config)
    rank, world = session.rank, session.world
    threads = cfg.threads_per_worker or max(1, int(cfg.cpus_per_worker))
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    device = session.device

    data = load_fer(cfg.data)
    train = data.split("Training")
    if cfg.limit_train:
        train = train.subset(cfg.limit_train, seed=cfg.seed)
    val = data.split("PublicTest")
    if cfg.limit_eval:
        val = val.subset(cfg.limit_eval, seed=cfg.seed)
    if cfg.align:
        from training.align import as_served

        train = FerData(as_served(train.pixels, preprocessing_of(cfg)), train.labels, train.usage, train.row)
        val = FerData(as_served(val.pixels, preprocessing_of(cfg)), val.labels, val.usage, val.row)
    images, targets = prepare_images(train.pixels, cfg), make_targets(train, cfg)
    teacher = None
    if cfg.distill_targets:
        from training.distill import load_predictions, soften

        log_probs, record = load_predictions(cfg.distill_targets, train.row)
        teacher = soften(log_probs, cfg.distill_temperature)
        if rank == 0:
            print(f"distilling {cfg.distill_targets} (PublicTest {record.get('ensemble_public_accuracy')}), "
                  f"weight {cfg.distill_weight}, temperature {cfg.distill_temperature}", flush=True)
    if device.type == "cuda":
        # The whole training set lives on the GPU (28,709 faces are 66 MB as uint8): batches and their augmentation
        # never leave it.
        images, targets = images.to(device), targets.to(device)
        teacher = teacher.to(device) if teacher is not None else None
    class_weight = None
    if cfg.class_weights:
        counts = np.bincount(train.labels, minlength=len(EMOTIONS)).astype(np.float32)
        w = counts.sum() / np.maximum(counts, 1) / len(EMOTIONS)
        class_weight = torch.from_numpy(w).to(device)

    kwargs = checkpoint_meta_of(cfg, {}).arch_kwargs
    model = create_model(cfg.model, num_classes=len(EMOTIONS), in_channels=cfg.channels, **kwargs)
    # oneDNN convolutions on the CPU (benchmarks/train_throughput.py); cuDNN's bf16 kernels on a GPU.
    model = model.to(memory_format=torch.channels_last)
    if cfg.cpu_bf16 and device.type == "cpu" and rank == 0:
        print("training in bf16 autocast on the CPU (cpu_bf16)" if uses_cpu_bf16(cfg, device) else
              "cpu_bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is slower than float32; "
              "training in float32", flush=True)
    per_worker_batch = cfg.batch_size // world
    steps_per_epoch = len(images) // (per_worker_batch * world)
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {len(images)} training faces; lower batch_size")
    optimizer = build_optimizer(cfg, model)
    schedule = Schedule(cfg, optimizer, steps_per_epoch)

    start_epoch, best_acc, best_epoch, history = 0, -1.0, -1, []
    swa = WeightAverage()
    best_dir = Path(tempfile.mkdtemp(prefix="fer-best-"))
    resumed, fitted = False, 0
    with session.restored() as d:
        if d is not None:
            resumed = True
            model.load_state_dict(load_file(str(Path(d) / "model" / WEIGHTS_FILE)))
            state = torch.load(Path(d) / STATE_FILE, weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            start_epoch, best_acc, best_epoch = state["epoch"] + 1, state["best_acc"], state["best_epoch"]
            if "swa" in state:
                swa.load_state_dict(state["swa"])
            fitted = state.get("epochs_fitted", 0)
            if fitted and cfg.time_budget_minutes and fitted != cfg.epochs:  # the count the budget chose holds
                cfg, as_given = (dataclasses.replace(c, epochs=fitted) for c in (cfg, as_given))
                schedule = Schedule(cfg, optimizer, steps_per_epoch)
                schedule.load_state_dict(state["schedule"])
            history = [json.loads(line) for line in (Path(d) / HISTORY_FILE).read_text().splitlines() if line]
            shutil.copytree(Path(d) / "best", best_dir, dirs_exist_ok=True)
    if resumed and rank == 0:
        # Epochs are counted from 1 in the log (as in the per-epoch lines), from 0 in metrics.jsonl.
        print(f"resumed after epoch {start_epoch} (best PublicTest accuracy {best_acc:.4f} at epoch {best_epoch + 1})",
              flush=True)
    elif cfg.init_from:
        from training.warmstart import load_init_weights

        load_init_weights(model, cfg.init_from)
        if rank == 0:
            print(f"starting from the weights of {cfg.init_from}", flush=True)

    model = session.prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    preset = train_preset_of(cfg)
    spec = preprocessing_of(cfg)
    done = start_epoch >= cfg.epochs or (
        cfg.early_stop_patience > 0 and best_epoch >= 0 and start_epoch - 1 - best_epoch >= cfg.early_stop_patience
    )
    bn_faces = bn_sample(train.pixels, cfg.swa_bn_images, seed=cfg.seed) if cfg.swa_start else None

    def public_accuracy(net: torch.nn.Module) -> tuple[float, float]:
        return accuracy_plain_and_flip(net, val.pixels, val.labels, spec, device=device)

    epoch = start_epoch - 1
    configured_epochs, train_start = cfg.epochs, time.perf_counter()
    epoch_seconds: list[float] = []  # the first two epochs', for the time budget
    while not done:
        epoch += 1
        stats = train_one_epoch(
            model, optimizer, schedule, preset, images, targets, cfg=cfg, batch_size=per_worker_batch, epoch=epoch,
            rank=rank, world_size=world, device=device, class_weight=class_weight, teacher=teacher,
        )
        t0 = time.perf_counter()
        acc, acc_flip = public_accuracy(core)
        chosen = acc_flip if cfg.tta == "flip" else acc
        # Candidates for the exported best: this epoch's weights and, once averaging has started, the average.
        candidate, candidate_metrics = core, {"public_accuracy": acc, "public_accuracy_flip": acc_flip, "epoch": epoch}
        swa_metrics: dict[str, Any] = {}
        if cfg.swa_start and epoch + 1 >= cfg.swa_start:
            swa.update(core)
            averaged = recompute_batchnorm(swa.averaged_model(core), bn_faces, spec, device=device)
            swa_acc, swa_acc_flip = public_accuracy(averaged)
            swa_metrics = {"swa_public_accuracy": swa_acc, "swa_public_accuracy_flip": swa_acc_flip,
                           "swa_epochs": [epoch + 2 - swa.count, epoch + 1]}
            swa_chosen = swa_acc_flip if cfg.tta == "flip" else swa_acc
            if swa_chosen > chosen:
                chosen, candidate = swa_chosen, averaged
                candidate_metrics = {"public_accuracy": swa_acc, "public_accuracy_flip": swa_acc_flip, "epoch": epoch,
                                     "weights": f"mean of epochs {epoch + 2 - swa.count}-{epoch + 1} (SWA)"}
        if cfg.time_budget_minutes and not resumed and epoch < 2:
            # Fitted after the first epoch (warm-up and kernel autotuning included, so slow) and again after the
            # second, at the pace of the faster of the two: other work on the machine during one of them (a test
            # run, another job) should not cut the run short. From then on the count holds.
            epoch_seconds.append(stats.seconds + time.perf_counter() - t0)
            fit = _fit_budget(cfg.time_budget_minutes * 60, time.perf_counter() - train_start, epoch_seconds,
                              configured_epochs)
            if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
                # Every DDP worker must run the same number of epochs: the smallest count any of them fitted.
                agreed = torch.tensor([fit], dtype=torch.int64, device=device)
                torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
                fit = int(agreed.item())
            if fit != cfg.epochs:
                if rank == 0:
                    print(f"time budget {cfg.time_budget_minutes:g} min: {fit} of {configured_epochs} epochs fit "
                          f"(epoch {epoch + 1} took {epoch_seconds[-1]:.1f} s, the fastest {min(epoch_seconds):.1f} s)",
                          flush=True)
                cfg, as_given = (dataclasses.replace(c, epochs=fit) for c in (cfg, as_given))
                schedule = Schedule(cfg, optimizer, steps_per_epoch)
                fitted = fit
        improved = chosen > best_acc
        if improved:
            best_acc, best_epoch = chosen, epoch
        metrics = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_accuracy": stats.accuracy,
            "train_images_per_s": stats.images_per_s,
            "epoch_seconds": stats.seconds,
            "eval_seconds": time.perf_counter() - t0,
            "public_accuracy": acc,
            "public_accuracy_flip": acc_flip,
            "best_public_accuracy": best_acc,
            "best_epoch": best_epoch,
            "lr": optimizer.param_groups[0]["lr"],
            **swa_metrics,
        }
        history.append(metrics)
        schedule.step_epoch(acc_flip if cfg.tta == "flip" else acc)  # plateau: this epoch's own weights, not the average
        done = epoch + 1 >= cfg.epochs or (cfg.early_stop_patience > 0 and epoch - best_epoch >= cfg.early_stop_patience)
        if rank == 0:
            swa_note = (f"swa {swa_metrics['swa_public_accuracy']:.4f} (flip {swa_metrics['swa_public_accuracy_flip']:.4f}) "
                        if swa_metrics else "")
            print(
                f"epoch {epoch + 1}/{cfg.epochs} loss {stats.loss:.4f} train_acc {stats.accuracy:.4f} "
                f"public_acc {acc:.4f} (flip {acc_flip:.4f}) {swa_note}best {best_acc:.4f}@{best_epoch + 1} "
                f"{stats.images_per_s:.0f} img/s {stats.seconds:.0f}s",
                flush=True,
            )
        with tempfile.TemporaryDirectory(prefix="fer-ckpt-") as tmp:
            if rank == 0:
                current = {"public_accuracy": acc, "public_accuracy_flip": acc_flip, "epoch": epoch}
                save_checkpoint(Path(tmp) / "model", core, checkpoint_meta_of(as_given, current))
                if improved:
                    save_checkpoint(best_dir, candidate, checkpoint_meta_of(as_given, candidate_metrics))
                shutil.copytree(best_dir, Path(tmp) / "best")
                torch.save(
                    {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "epoch": epoch,
                     "best_acc": best_acc, "best_epoch": best_epoch, "swa": swa.state_dict(), "epochs_fitted": fitted},
                    Path(tmp) / STATE_FILE,
                )
                (Path(tmp) / HISTORY_FILE).write_text("".join(json.dumps(h) + "\n" for h in history))
            session.report(metrics, Path(tmp) if rank == 0 else None)
    if start_epoch > epoch and rank == 0:
        print(f"nothing to do: the run already finished {start_epoch} epochs")
    shutil.rmtree(best_dir, ignore_errors=True)
