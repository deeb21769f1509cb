"""Typed training config: a YAML file in configs/train/ plus command-line overrides, validated on construction.

This module imports nothing heavy, so the CLI can validate a config before Ray or torch start.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

OPTIMIZERS = ("sgd", "adamw")
CORRUPTION_KEYS = ("aug_roll_p", "aug_crop_jitter_p", "aug_gaussian_blur_p", "aug_motion_blur_p", "aug_downscale_p",
                   "aug_occlusion_p", "aug_low_light_p", "aug_noise_p", "aug_jpeg_p")
"""Config keys of the video-like corruptions: aug_<name>_p, name as in fer_core.corrupt.CORRUPTIONS."""
SCHEDULES = ("cosine", "onecycle", "plateau", "constant")


class ConfigError(ValueError):
    """A config value is invalid; the message names the key as the user typed it."""


@dataclass
class TrainConfig:
    """Every setting of a training run."""

    data: str = "../shared/data/fer2013"
    """FER-2013 location: npz folder, fer2013.csv or Kaggle image folder."""
    ferplus: str | None = None
    """Optional FERPlus fer2013new.csv; with soft_targets, its vote shares replace the hard labels."""
    soft_targets: bool = False
    """Train on FERPlus vote shares (needs ferplus)."""
    limit_train: int = 0
    """Use at most this many training faces (0 = all); for smoke runs."""
    limit_eval: int = 0
    """Evaluate on at most this many PublicTest faces (0 = all)."""
    model: str = "fer_vgg_small"
    """Registry name (see fer_core.list_models())."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Architecture options passed to create_model."""
    init_from: str | None = None
    """Start from the weights of this checkpoint folder (same architecture), e.g. to train an exported model longer
    or fine-tune it on new data; ignored once the run has its own checkpoint to resume from."""
    input_size: int = 48
    channels: int = 1
    mean: float = 0.5
    std: float = 0.25
    crop_margin: float = 0.01
    """Margin around detected faces when the annotation job cuts crops; recorded in the checkpoint."""
    align: bool = False
    """Train (and evaluate) on faces turned level by YuNet's eye landmarks (training/align.py); recorded in the
    checkpoint, so the job aligns its crops the same way."""
    epochs: int = 30
    batch_size: int = 128
    """Global batch size, split across workers."""
    optimizer: str = "sgd"
    lr: float = 0.1
    """Peak learning rate (one-cycle max, cosine start)."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_epochs: float = 0.0
    """Linear warm-up for cosine."""
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 0.0
    mix_prob: float = 0.5
    """Share of batches that get mixup (or cutmix when both alphas are set, chosen at random)."""
    class_weights: bool = False
    """Weight the loss by inverse class frequency."""
    aug_pad: int = 4
    aug_flip: bool = True
    aug_rotate_deg: float = 10.0
    aug_scale: float = 0.1
    aug_translate: float = 0.0
    aug_brightness: float = 0.2
    aug_contrast: float = 0.2
    aug_erase_p: float = 0.5
    aug_roll_p: float = 0.0
    """Probability of a head tilt of 8-32 degrees (fer_core.corrupt; severities there), on top of aug_rotate_deg."""
    aug_crop_jitter_p: float = 0.0
    """Probability of a detector-like shift and zoom of the crop by up to 2-16%."""
    aug_gaussian_blur_p: float = 0.0
    """Probability of an out-of-focus blur, sigma 0.4-2.2 px."""
    aug_motion_blur_p: float = 0.0
    """Probability of a motion streak of 2-8 px."""
    aug_downscale_p: float = 0.0
    """Probability of a small face: reduced to 14-30 px and upscaled back."""
    aug_occlusion_p: float = 0.0
    """Probability of a flat occluder over 6-32% of the face."""
    aug_low_light_p: float = 0.0
    """Probability of a dark scene, gamma 1.2-3.2 with a matching gain."""
    aug_noise_p: float = 0.0
    """Probability of sensor noise, sigma 2-22 grey levels."""
    aug_jpeg_p: float = 0.0
    """Probability of JPEG compression at quality 8-40."""
    distill_targets: str | None = None
    """Teacher predictions to distil (training/distill.py writes them); None = no distillation."""
    distill_weight: float = 0.5
    """Share of the loss that is distillation; the rest is cross-entropy with the labels."""
    distill_temperature: float = 2.0
    """Softening temperature of teacher and student in the distillation term."""
    early_stop_patience: int = 0
    """Stop after this many epochs without a better PublicTest accuracy (0 = off)."""
    time_budget_minutes: float = 0.0
    """Fit the run into about this many minutes (0 = off): after the first epoch, ``epochs`` becomes the number of
    epochs of that epoch's length (training and evaluation) that fit, at most the configured number, and the
    learning-rate schedule spans them; after the second, again at the pace of the faster of the two (the first
    includes warm-up; other work on the machine may slow either). A machine busier later makes the run end late.
    Under DDP the workers take the smallest count any of them fitted. The epochs chosen are kept across a resume
    and recorded in the exported checkpoint."""
    swa_start: int = 0
    """Stochastic weight averaging: from this epoch on (counted from 1, as in the log), keep the mean of the weights
    at each epoch's end; the averaged model, BatchNorm statistics recomputed, is evaluated every epoch and can be the
    exported best (0 = off). Pair it with a constant or slowly falling learning rate."""
    swa_bn_images: int = 8192
    """Training faces used to recompute the averaged model's BatchNorm statistics (0 = all)."""
    tta: str = "flip"
    """Test-time augmentation the shipped checkpoint uses, chosen on PublicTest: 'none' or 'flip'."""
    num_workers: int = 1
    """Ray Train workers (DDP)."""
    use_gpu: bool = False
    cpu_bf16: bool = False
    """Train in bf16 autocast on the CPU (weights, optimiser and loss stay float32), where the CPU has native bf16
    (AVX512-BF16 or AMX): the 118-MMAC VGG trains at about twice the images/s (``benchmarks/train_throughput.py``).
    Where bf16 would be emulated (slower than float32) the run says so and trains in float32. GPUs always train
    in bf16 autocast; evaluation and export stay float32."""
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 0
    """torch threads in each worker (0 = cpus_per_worker)."""
    max_failures: int = 2
    """Worker failures tolerated; the run restarts from the latest checkpoint."""
    seed: int = 0
    name: str = "fer"
    """Run name: the checkpoints live under OUT/<name>/ and a re-run with the same name resumes."""
    model_name: str = ""
    """Name recorded in the exported checkpoint (defaults to the run name)."""

    def __post_init__(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{key}: {msg} (got {getattr(self, key)!r})")

        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.num_workers >= 1, "num_workers", "must be >= 1")
        need(self.batch_size >= self.num_workers, "batch_size", "must be at least num_workers")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        need(self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}")
        need(self.lr > 0, "lr", "must be > 0")
        need(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        need(0 <= self.mix_prob <= 1, "mix_prob", "must be in [0, 1]")
        for key in CORRUPTION_KEYS:
            need(0 <= getattr(self, key) <= 1, key, "must be in [0, 1]")
        need(0 <= self.distill_weight <= 1, "distill_weight", "must be in [0, 1]")
        need(self.distill_temperature > 0, "distill_temperature", "must be > 0")
        need(self.time_budget_minutes >= 0, "time_budget_minutes", "must be >= 0 (0 = off)")
        need(self.swa_start >= 0, "swa_start", "must be >= 0 (0 = off)")
        need(self.swa_bn_images >= 0, "swa_bn_images", "must be >= 0 (0 = all training faces)")
        need(self.tta in ("none", "flip"), "tta", "must be 'none' or 'flip'")
        need(self.channels in (1, 3), "channels", "must be 1 or 3")
        need(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        need(not self.soft_targets or bool(self.ferplus), "soft_targets", "needs ferplus set to fer2013new.csv")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(key: str, value: Any) -> Any:
    """Check a value from YAML or the command line against the field's type; strings are converted."""
    default = _FIELDS[key].default
    if default is dataclasses.MISSING:  # model_kwargs: a mapping, or YAML text of one on the command line
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(f"{key}: expected a mapping such as '{{dropout: 0.3}}', got {value!r}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping such as '{{dropout: 0.3}}', got {value!r}")
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if isinstance(default, (int, float)):
        kind = type(default)
        expected = "an integer" if kind is int else "a number"
        if isinstance(value, str):
            try:
                value = float(value)  # "5e-4" (which YAML leaves a string) and "1e3" both work
            except ValueError:
                raise ConfigError(f"{key}: expected {expected}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
        if kind is int:
            if not float(value).is_integer():
                raise ConfigError(f"{key}: expected an integer, got {value!r}")
            return int(value)
        return float(value)
    # Strings, and optional paths (default None).
    if value is None and default is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config and apply overrides (keys as in the YAML, or with dashes as on the command line).

    Raises:
        ConfigError: for a missing file, unknown keys or invalid values.
    """
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found; pick one of configs/train/*.yaml")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p.name}: expected a mapping of settings, got {type(loaded).__name__}")
        values.update(loaded)
    for key, value in (overrides or {}).items():
        values[key.replace("-", "_")] = value
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; known keys: {', '.join(sorted(_FIELDS))}")
    try:
        return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    except TypeError as e:
        raise ConfigError(str(e)) from None


def parse_set(items: list[str]) -> dict[str, str]:
    """``["lr=0.05", "epochs=3"]`` -> ``{"lr": "0.05", "epochs": "3"}``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out
