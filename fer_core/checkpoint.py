"""Self-describing checkpoints (safetensors weights + JSON) and the classifier that serves them.

A checkpoint is a folder holding ``model.safetensors`` and ``fer_checkpoint.json``. The JSON names the registry
architecture and its options, the class names in index order, the preprocessing, the test-time augmentation the
reported metrics used, the metrics and the training config. Loading never unpickles.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fer_core.config import PRECISIONS
from fer_core.labels import EMOTIONS
from fer_core.models import create_model
from fer_core.preprocess import EvalPreset, Preprocessing

FORMAT = "fer-checkpoint/1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "fer_checkpoint.json"
TTA_MODES = ("none", "flip")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or inconsistent."""


@dataclass
class CheckpointMeta:
    """Everything needed to rebuild and serve a model, stored as JSON next to its weights."""

    arch: str
    """Registry name, see :func:`fer_core.list_models`."""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=lambda: list(EMOTIONS))
    """Class names in output index order."""
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    tta: str = "none"
    """Test-time augmentation used by :meth:`Classifier.predict_proba`: 'none' or 'flip'."""
    metrics: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    """A short human-readable model name recorded in outputs."""
    quantization: dict[str, Any] = field(default_factory=dict)
    """int8 calibration (:mod:`fer_core.quantize`: scheme, activation ranges, the accuracy it was checked at);
    empty when the checkpoint has none (``training/quantize.py`` adds it)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "name": self.name,
                "arch": self.arch,
                "arch_kwargs": self.arch_kwargs,
                "classes": self.classes,
                "preprocessing": self.preprocessing.to_dict(),
                "tta": self.tta,
                "metrics": self.metrics,
                "train_config": self.train_config,
                **({"quantization": self.quantization} if self.quantization else {}),
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "checkpoint") -> "CheckpointMeta":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{source}: {META_FILE} is not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: {META_FILE} must hold a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise CheckpointError(f"{source}: unsupported checkpoint format {d.get('format')!r}, expected {FORMAT!r}")
        try:
            meta = cls(
                arch=d["arch"],
                arch_kwargs=d.get("arch_kwargs", {}),
                classes=list(d["classes"]),
                preprocessing=Preprocessing.from_dict(d["preprocessing"]),
                tta=d.get("tta", "none"),
                metrics=d.get("metrics", {}),
                train_config=d.get("train_config", {}),
                name=d.get("name", ""),
                quantization=d.get("quantization", {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: {META_FILE} is incomplete or invalid ({e})") from e
        if meta.tta not in TTA_MODES:
            raise CheckpointError(f"{source}: tta must be one of {TTA_MODES}, got {meta.tta!r}")
        return meta


def save_checkpoint(directory: str | os.PathLike, model: torch.nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights and ``meta`` into ``directory`` (created if needed); returns the folder."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    module = model.module if hasattr(model, "module") else model
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    (out / META_FILE).write_text(meta.to_json() + "\n")
    return out


def default_model_dir() -> Path:
    """The folder of the default model shipped inside the package."""
    return Path(str(resources.files("fer_core") / "weights" / "default"))


def checkpoint_folder(path: str | os.PathLike | None) -> Path:
    """The checkpoint folder ``path`` names (None = the shipped default), checked to hold both files."""
    if path is None:
        folder = default_model_dir()
        if not (folder / META_FILE).exists():
            raise CheckpointError(
                "no default model is shipped in this install; pass a checkpoint folder "
                "(load_classifier(path) / --model DIR) made by training/train.py"
            )
        return folder
    p = Path(path)
    if p.is_file() and p.name in (META_FILE, WEIGHTS_FILE):
        p = p.parent
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist; pass a folder holding {META_FILE} and {WEIGHTS_FILE}")
    if p.is_file():
        raise CheckpointError(
            f"checkpoint {str(p)!r} is a file{_pickle_note([p])}; pass the folder holding {META_FILE} and {WEIGHTS_FILE}"
        )
    for name in (META_FILE, WEIGHTS_FILE):
        if not (p / name).is_file():
            raise CheckpointError(
                f"checkpoint {str(p)!r} has no {name}{_pickle_note(list(p.iterdir()))}; pass a folder written by "
                "training/train.py"
            )
    return p


PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
"""Files PyTorch and others write with pickle: never loaded, since unpickling runs code from the file."""


def _pickle_note(files: list[Path]) -> str:
    pickles = sorted(f.name for f in files if f.suffix.lower() in PICKLE_SUFFIXES)
    if not pickles:
        return ""
    return (f" ({', '.join(pickles)}: pickled checkpoints are refused, unpickling can run code; export the model "
            "with fer_core.checkpoint.save_checkpoint)")


def load_checkpoint(path: str | os.PathLike | None = None) -> tuple[torch.nn.Module, CheckpointMeta, str]:
    """Rebuild the model from a checkpoint folder (None = the shipped default).

    Returns:
        (model in eval mode on the CPU, its metadata, a short id: name plus the weights' sha256 prefix).
    """
    folder = checkpoint_folder(path)
    meta = CheckpointMeta.from_json((folder / META_FILE).read_text(), source=str(folder))
    try:
        model = create_model(
            meta.arch, num_classes=len(meta.classes), in_channels=meta.preprocessing.channels, **meta.arch_kwargs
        )
    except (ValueError, TypeError) as e:  # an unknown architecture (newer code?) or options it does not take
        raise CheckpointError(f"checkpoint {str(folder)!r}: cannot build {meta.arch!r} ({e})") from e
    weights = folder / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
        model.load_state_dict(state)
    except Exception as e:  # safetensors raises several types on a damaged file
        raise CheckpointError(
            f"checkpoint {str(folder)!r}: weights do not load into {meta.arch} ({' '.join(str(e).split())[:200]}); "
            f"{WEIGHTS_FILE} must be safetensors: a pickle or torch.save file renamed is refused, never unpickled"
        ) from e
    model.eval()
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    return model, meta, f"{meta.name or meta.arch}@{sha}"


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), where oneDNN runs bf16 convolutions about
    twice as fast as float32; elsewhere bf16 is emulated and slower."""
    cpu = getattr(torch._C, "_cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(callable(check) for check in checks):
        return any(bool(check()) for check in checks if callable(check))
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device, calibrated: bool = False) -> str:
    """``auto`` -> on GPUs bf16; on CPUs int8 where the checkpoint carries an int8 calibration (``calibrated``) and
    PyTorch has its x86 kernels, else bf16 where the CPU has native bf16, else fp32.

    int8 is the fastest on both kinds of x86 CPU measured, at batch 64 on one thread: 5,729 faces/s against 2,664 in
    bf16 and 596 in fp32 on an AVX512-BF16 core, 532 against 338 in fp32 (and 35 in emulated bf16) on an AVX2-only
    core, and a calibration is only written when it costs at most 0.3 PublicTest points (``training/quantize.py``).

    A fixed rule, not a timing: every actor of a run (and every run resumed later) must compute the same way, or the
    same face gets probabilities that differ in the fifth digit from one run to the next."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("precision int8 runs on the CPU only; use bf16 or fp32 on a GPU")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu" and calibrated and {"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines):
        return "int8"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def fuse_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Folds every BatchNorm into the convolution before it (torch.fx), for inference only: the same function up to
    float rounding, with one pass over memory less per layer. Measured on the shipped model, one CPU thread,
    ``predict_proba`` at batch 64, median of 3: float32 346 -> 362 faces/s, bf16 759 -> 803 (the convolutions alone
    gain 17-18%). A model fx cannot trace is returned unchanged."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model.eval())
    except Exception:  # noqa: BLE001 - any tracing failure means serving the model as it is
        return model


def forward_chunks(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` slices of ``n`` faces for the forward passes: full batches of ``batch_size``, then the
    remainder split by its binary digits (100 -> 64 + 32 + 4).

    The network then only ever sees ``batch_size`` and powers of two below it. oneDNN (and PyTorch's CPU
    allocator) keep state for every input shape they meet, and the job hands the classifier batches of every
    size: with a pass per batch as it came, a classifier process grew from 620 to 1,800 MB of RSS over 400
    batches of random sizes, against 670 MB with these chunks (fp32; int8 855 against 775 MB).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = []
    start = 0
    while n - start >= batch_size:
        chunks.append((start, start + batch_size))
        start += batch_size
    bit = 1 << max(0, (n - start).bit_length() - 1)
    while start < n:
        if n - start >= bit:
            chunks.append((start, start + bit))
            start += bit
        bit >>= 1
    return chunks


class Classifier:
    """A loaded emotion classifier: ``classes`` and ``predict_proba(crops)``."""

    def __init__(
        self, model: torch.nn.Module, meta: CheckpointMeta, model_id: str, device: str = "auto", precision: str = "auto"
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        # bf16 autocast: on GPUs, and on CPUs with native bf16 (measured: 2.1x the float32 faces/s on an AVX512-BF16
        # core, probabilities within 0.002; benchmarks/annotate_throughput.py, training/evaluate.py --precision).
        from fer_core.quantize import has_calibration

        self.precision = resolve_precision(precision, self.device, has_calibration(meta))
        self.preset = EvalPreset(meta.preprocessing)
        if self.precision == "int8":
            from fer_core.quantize import quantized_model, require_calibration

            record = require_calibration(meta, model_id)
            size = meta.preprocessing.input_size
            example = torch.zeros(1, meta.preprocessing.channels, size, size)
            try:
                self.model = quantized_model(model.eval(), record["activation_ranges"], example)
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"checkpoint {model_id}: {e}; recalibrate with training/quantize.py") from None
        else:
            self.model = fuse_for_inference(model.to(self.device).eval())
        # oneDNN runs these small convolutions about 1.5x faster in channels-last layout (benchmarks/annotate_throughput.py).
        self.channels_last = self.device.type == "cpu" and self.precision != "int8"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.meta = meta
        self.model_id = model_id
    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @torch.inference_mode()
    def predict_proba(self, crops: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities for face crops.

        Args:
            crops: uint8 face crops, N x H x W (grayscale) or N x H x W x 3 (RGB), any size.
            batch_size: faces per forward pass.

        Returns:
            float32 (N, len(classes)), rows summing to 1.
        """
        crops = np.asarray(crops)
        out = np.empty((len(crops), len(self.meta.classes)), dtype=np.float32)
        for start, stop in forward_chunks(len(crops), batch_size):
            x = self.preset(crops[start:stop]).to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out[start:stop] = self._probs(x).cpu().numpy()
        return out

    def warm_up(self, batch_size: int = 256) -> None:
        """Run one forward pass of every shape `predict_proba` uses at ``batch_size`` (on blank crops), so the
        process reaches its working size at start, not whenever a full batch first arrives: the classifier's
        resident memory then no longer depends on how long the job runs (about 1 s of CPU in fp32)."""
        size = self.meta.preprocessing.input_size
        shape = (size, size) + ((3,) if self.meta.preprocessing.channels == 3 else ())
        for n in sorted({stop - start for start, stop in forward_chunks(2 * batch_size - 1, batch_size)}):
            self.predict_proba(np.zeros((n, *shape), np.uint8), batch_size=batch_size)

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.model(x).float()
            if self.meta.tta == "flip":
                logits = torch.stack([logits, self.model(torch.flip(x, dims=[3])).float()])
                return torch.softmax(logits, dim=-1).mean(0)
        return torch.softmax(logits, dim=-1)


def load_classifier(
    path: str | os.PathLike | None = None, *, device: str = "auto", precision: str = "auto"
) -> Classifier:
    """Load a classifier from a checkpoint folder, or the default model shipped in the package when ``path`` is None.

    Args:
        device: "auto" (a GPU when there is one), "cpu", "cuda" or "cuda:N".
        precision: "auto" (bf16 on GPUs and on CPUs with native bf16, else fp32), "fp32", "bf16" or "int8" (CPU only;
            needs the int8 calibration that training/quantize.py stores in the checkpoint).

    Raises:
        CheckpointError: with what to pass instead.
    """
    model, meta, model_id = load_checkpoint(path)
    return Classifier(model, meta, model_id, device=device, precision=precision)
