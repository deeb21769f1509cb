"""The pieces of a training epoch, free of Ray: optimiser and schedule factories, mixup / cutmix, one epoch of
training over in-memory tensors, and batched prediction for evaluation."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fer_core.checkpoint import CheckpointMeta, cpu_has_native_bf16
from fer_core.labels import EMOTIONS
from fer_core.preprocess import EvalPreset, Preprocessing, TrainPreset
from training.config import CORRUPTION_KEYS, TrainConfig
from training.distill import distill_loss


def preprocessing_of(cfg: TrainConfig) -> Preprocessing:
    """The checkpoint's preprocessing record for a config."""
    return Preprocessing(
        input_size=cfg.input_size,
        channels=cfg.channels,
        mean=(cfg.mean,) * cfg.channels,
        std=(cfg.std,) * cfg.channels,
        crop_margin=cfg.crop_margin,
        align=cfg.align,
    )


def checkpoint_meta_of(cfg: TrainConfig, metrics: dict[str, Any]) -> CheckpointMeta:
    """The self-describing checkpoint record of a model trained under ``cfg``, with ``metrics``."""
    kwargs = dict(cfg.model_kwargs)
    if cfg.model == "seed_cnn":
        kwargs.setdefault("input_size", cfg.input_size)
    return CheckpointMeta(
        arch=cfg.model,
        arch_kwargs=kwargs,
        classes=list(EMOTIONS),
        preprocessing=preprocessing_of(cfg),
        tta=cfg.tta,
        metrics=metrics,
        train_config=cfg.to_dict(),
        name=cfg.model_name or cfg.name,
    )


def train_preset_of(cfg: TrainConfig) -> TrainPreset:
    return TrainPreset(
        spec=preprocessing_of(cfg),
        pad=cfg.aug_pad,
        flip=cfg.aug_flip,
        rotate_deg=cfg.aug_rotate_deg,
        scale=cfg.aug_scale,
        translate=cfg.aug_translate,
        brightness=cfg.aug_brightness,
        contrast=cfg.aug_contrast,
        erase_p=cfg.aug_erase_p,
        corruptions={key[len("aug_") : -len("_p")]: getattr(cfg, key) for key in CORRUPTION_KEYS},
    )


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


class Schedule:
    """Learning-rate schedule stepped per batch (cosine, one-cycle, constant) or per epoch (plateau)."""

    def __init__(self, cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.optimizer = optimizer
        self.total = max(1, cfg.epochs * steps_per_epoch)
        self.warmup = int(cfg.warmup_epochs * steps_per_epoch)
        self.plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=3)
            if cfg.schedule == "plateau"
            else None
        )

    def lr_at(self, step: int) -> float:
        cfg, t = self.cfg, min(step, self.total) / self.total
        if cfg.schedule == "onecycle":
            # 30% warm-up from lr/25 to lr, then cosine down to lr/1e4 (torch's OneCycleLR shape).
            if t < 0.3:
                return cfg.lr / 25 + (cfg.lr - cfg.lr / 25) * (1 - math.cos(math.pi * t / 0.3)) / 2
            return cfg.lr / 1e4 + (cfg.lr - cfg.lr / 1e4) * (1 + math.cos(math.pi * (t - 0.3) / 0.7)) / 2
        if cfg.schedule == "cosine":
            if step < self.warmup:
                return cfg.lr * (step + 1) / self.warmup
            t = (step - self.warmup) / max(1, self.total - self.warmup)
            return cfg.lr * (1 + math.cos(math.pi * min(t, 1.0))) / 2
        return cfg.lr

    def step_batch(self, step: int) -> None:
        if self.plateau is None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(step)

    def step_epoch(self, metric: float) -> None:
        if self.plateau is not None:
            self.plateau.step(metric)

    def state_dict(self) -> dict:
        return self.plateau.state_dict() if self.plateau is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.plateau is not None and state:
            self.plateau.load_state_dict(state)


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply mixup or cutmix to a share ``cfg.mix_prob`` of batches; targets are (N, C) probabilities."""
    if rng.random() >= cfg.mix_prob or (cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0):
        return x, y
    perm = torch.from_numpy(rng.permutation(len(x))).to(x.device)
    use_cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha <= 0 or rng.random() < 0.5)
    if use_cutmix:
        lam = rng.beta(cfg.cutmix_alpha, cfg.cutmix_alpha)
        s = x.shape[-1]
        cut = int(s * math.sqrt(1 - lam))
        cy, cx = rng.integers(0, s), rng.integers(0, s)
        y0, y1 = max(cy - cut // 2, 0), min(cy + cut // 2, s)
        x0, x1 = max(cx - cut // 2, 0), min(cx + cut // 2, s)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (s * s)
    else:
        lam = rng.beta(cfg.mixup_alpha, cfg.mixup_alpha)
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * y + (1 - lam) * y[perm]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float, weight: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy against (N, C) target probabilities, with label smoothing and optional class weights."""
    n_classes = logits.shape[-1]
    target = target * (1 - smoothing) + smoothing / n_classes
    loss = -(target * F.log_softmax(logits.float(), dim=-1))
    if weight is not None:
        loss = loss * weight
    return loss.sum(-1).mean()


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    """Training accuracy against the hard labels, before mixing (approximate under mixup)."""
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def training_autocast(device: torch.device, cfg: TrainConfig) -> torch.autocast:
    """bf16 autocast for a training step: always on a GPU, on the CPU with ``cfg.cpu_bf16`` where the CPU has
    native bf16 (`uses_cpu_bf16`)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=uses_cpu_bf16(cfg, device))


def uses_cpu_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether training on this device runs in bf16 autocast on the CPU: ``cfg.cpu_bf16`` on a CPU with native bf16
    (on others bf16 is emulated, slower than float32, so the run trains in float32)."""
    return device.type == "cpu" and cfg.cpu_bf16 and cpu_has_native_bf16()


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    preset: TrainPreset,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    cfg: TrainConfig,
    batch_size: int,
    epoch: int,
    rank: int,
    world_size: int,
    device: torch.device,
    class_weight: torch.Tensor | None = None,
    teacher: torch.Tensor | None = None,
) -> EpochStats:
    """One epoch over in-memory uint8 images (N, C, S, S) and (N, C) target probabilities.

    Every worker sees the same permutation (seeded by epoch) and takes its own stride of it, so the workers
    cover the data once per epoch and run equally many steps (a DDP requirement). Under DDP the returned loss,
    accuracy and image count are summed over all workers.

    ``teacher``: (N, C) teacher probabilities on the clean faces, softened by ``cfg.distill_temperature``; with it
    the loss is ``(1 - w) * cross-entropy + w * distillation`` (w = ``cfg.distill_weight``), and mixup mixes the
    teacher's targets as it mixes the labels.
    """
    model.train()
    rng = np.random.default_rng(cfg.seed * 1000 + epoch * world_size + rank)
    perm = torch.from_numpy(np.random.default_rng(cfg.seed * 1000 + epoch).permutation(len(images)))
    steps = len(images) // (batch_size * world_size)
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch * 101 + rank)
    total_loss, correct, seen, start = 0.0, 0, 0, time.perf_counter()
    for step in range(steps):
        idx = perm[(step * world_size + rank) * batch_size : (step * world_size + rank + 1) * batch_size].to(images.device)
        x = preset(images[idx].to(device, non_blocking=True), generator=gen)
        y = targets[idx].to(device, non_blocking=True)
        hard = y.argmax(1)
        n_classes = y.shape[1]
        if teacher is not None:
            y = torch.cat([y, teacher[idx].to(device, non_blocking=True)], 1)
        x, y = mix_batch(x, y, cfg, rng)
        y, soft = y[:, :n_classes], y[:, n_classes:]
        schedule.step_batch(epoch * steps + step)
        with training_autocast(device, cfg):
            logits = model(x).float()
        loss = soft_cross_entropy(logits, y, cfg.label_smoothing, class_weight)
        if teacher is not None:
            w = cfg.distill_weight
            loss = (1 - w) * loss + w * distill_loss(logits, soft, cfg.distill_temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(x)
        correct += int((logits.argmax(1) == hard).sum())
        seen += len(x)
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        # Loss, accuracy and images over every worker's share of the epoch, not rank 0's alone.
        totals = torch.tensor([total_loss, correct, seen], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        total_loss, correct, seen = totals.tolist()
    return EpochStats(total_loss / max(seen, 1), correct / max(seen, 1), int(seen), time.perf_counter() - start)


def accuracy_plain_and_flip(
    model: torch.nn.Module, pixels: np.ndarray, labels: np.ndarray, spec: Preprocessing, *, device: torch.device
) -> tuple[float, float]:
    """Accuracy on uint8 faces without test-time augmentation and with flip TTA (one pass: the plain forward is
    shared by both)."""
    plain, flip = predict_plain_and_flip(model, pixels, spec, device=device)
    return tuple(float(np.mean(p.argmax(1) == labels)) for p in (plain, flip))  # type: ignore[return-value]


def predict_logits(
    model: torch.nn.Module,
    pixels: np.ndarray,
    spec: Preprocessing,
    *,
    device: torch.device,
    tta: str = "none",
    batch_size: int = 512,
) -> np.ndarray:
    """Softmax probabilities (N, C) for uint8 faces through the eval preset; tta 'flip' averages with the mirror."""
    plain, flip = predict_plain_and_flip(model, pixels, spec, device=device, batch_size=batch_size, flip=tta == "flip")
    return flip if tta == "flip" else plain


@torch.inference_mode()
def predict_plain_and_flip(
    model: torch.nn.Module,
    pixels: np.ndarray,
    spec: Preprocessing,
    *,
    device: torch.device,
    batch_size: int = 512,
    flip: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Softmax probabilities (N, C) of the faces as they are, and (``flip``) their mean with the mirrored faces',
    from one pass over the faces: each face's plain forward is computed once for both."""
    model.eval()
    preset = EvalPreset(spec)
    plain, flipped = [], []
    for start in range(0, len(pixels), batch_size):
        x = preset(pixels[start : start + batch_size]).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            p = torch.softmax(model(x).float(), -1)
            plain.append(p.float().cpu().numpy())
            if flip:
                p = (p + torch.softmax(model(torch.flip(x, dims=[3])).float(), -1)) / 2
                flipped.append(p.float().cpu().numpy())
    if not plain:
        return np.zeros((0, 0), dtype=np.float32), (np.zeros((0, 0), dtype=np.float32) if flip else None)
    return np.concatenate(plain), (np.concatenate(flipped) if flip else None)
