"""Export a checkpoint to ONNX (checked against PyTorch) or install it as the package's default model.

    python training/export.py runs/cpu_small/model --onnx runs/cpu_small/model.onnx --data ../shared/data/fer2013
    python training/export.py runs/cpu_small/model --into-package

The ONNX graph takes the eval preset's output, a normalised float tensor (N, C, S, S) with a dynamic batch axis,
and returns class probabilities (N, K) with the checkpoint's test-time augmentation built in, so it matches
:meth:`fer_core.Classifier.predict_proba`. The checkpoint JSON is stored in the ONNX metadata
(``fer_checkpoint``) for the preprocessing and class names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fer_core.checkpoint import (  # noqa: E402
    META_FILE,
    TTA_MODES,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointMeta,
    Classifier,
    default_model_dir,
    load_checkpoint,
    load_classifier,
)
from training.data import DataError, load_fer  # noqa: E402

DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4
"""Largest allowed absolute difference between ONNX Runtime and PyTorch probabilities."""


class ExportError(RuntimeError):
    """The export failed or its result does not match PyTorch."""


def _probability_module(model: Any, tta: str) -> Any:
    """Wrap a classifier network: normalised input -> softmax probabilities, mirrored average for tta 'flip'."""
    import torch

    class ProbabilityModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            probs = torch.softmax(self.net(x), dim=-1)
            if tta == "flip":
                probs = (probs + torch.softmax(self.net(torch.flip(x, dims=[3])), dim=-1)) / 2
            return probs

    return ProbabilityModel().eval()


def random_faces(classifier: Classifier, n: int, seed: int = 0) -> np.ndarray:
    """uint8 noise faces at the checkpoint's input size, grayscale or RGB as it expects."""
    spec = classifier.meta.preprocessing
    shape = (n, spec.input_size, spec.input_size) + ((3,) if spec.channels == 3 else ())
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def onnx_parity(classifier: Classifier, onnx_path: str | Path, faces: np.ndarray) -> float:
    """Largest absolute difference between ONNX Runtime and ``classifier.predict_proba`` probabilities.

    ONNX Runtime sees the same eval-preset tensors, once as one batch and once face by face, which also checks
    that the batch axis is dynamic.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    reference = classifier.predict_proba(faces)
    x = classifier.preset(faces).numpy()
    batched = session.run(None, {name: x})[0]
    single = np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(min(len(x), 4))])
    return float(max(np.abs(batched - reference).max(), np.abs(single - reference[: len(single)]).max()))


def export_onnx(
    model_dir: str | Path,
    onnx_path: str | Path,
    *,
    faces: np.ndarray | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, Any]:
    """Export a checkpoint to ONNX and check it against PyTorch.

    Args:
        model_dir: checkpoint folder.
        onnx_path: the .onnx file to write (its folder is created).
        faces: real uint8 faces for the parity check (N x H x W or N x H x W x 3); random faces are always used.
        opset: ONNX opset, 17 or later.
        tolerance: largest allowed absolute probability difference.

    Returns:
        {"onnx", "opset", "max_abs_diff_random", "max_abs_diff_real" (None without faces), "n_real"}.

    Raises:
        CheckpointError: the checkpoint does not load.
        ExportError: the export fails or parity is not met; no file is left behind then.
    """
    import onnx
    import torch

    if opset < 17:
        raise ExportError(f"--opset must be 17 or later, got {opset}")
    model, meta, model_id = load_checkpoint(model_dir)
    classifier = Classifier(model, meta, model_id, device="cpu")
    wrapped = _probability_module(model, meta.tta)
    spec = meta.preprocessing
    example = torch.zeros(2, spec.channels, spec.input_size, spec.input_size)
    target = Path(onnx_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        try:
            # The TorchScript-based exporter: the torch.export-based one (dynamo=True) needs onnxscript,
            # which this project does not depend on.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
                torch.onnx.export(
                    wrapped, (example,), str(tmp), dynamo=False, opset_version=opset,
                    input_names=["input"], output_names=["probs"],
                    dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}},
                )
        except Exception as e:  # the exporter raises many types
            raise ExportError(f"ONNX export of {meta.arch} failed: {type(e).__name__}: {e}") from e
        proto = onnx.load(str(tmp))
        for key, value in (("fer_checkpoint", meta.to_json()), ("model_id", model_id),
                           ("input", "eval-preset output: float (N, C, S, S), (pixels / 255 - mean) / std"),
                           ("output", f"probabilities over {', '.join(meta.classes)}")):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        diff_random = onnx_parity(classifier, tmp, random_faces(classifier, 32))
        diff_real = onnx_parity(classifier, tmp, faces) if faces is not None and len(faces) else None
        worst = max(diff_random, diff_real or 0.0)
        if not worst < tolerance:
            raise ExportError(f"ONNX and PyTorch probabilities differ by up to {worst:.2e} (tolerance {tolerance:.0e})")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return {"onnx": str(target), "opset": opset, "model_id": model_id, "max_abs_diff_random": diff_random,
            "max_abs_diff_real": diff_real, "n_real": 0 if faces is None else len(faces)}


def install_into_package(
    model_dir: str | Path,
    dest: str | Path | None = None,
    *,
    tta: str | None = None,
    metrics: dict | None = None,
    crop_margin: float | None = None,
) -> str:
    """Copy a checkpoint's weights and JSON into the package's default-model folder after checking it loads.

    Args:
        model_dir: checkpoint folder.
        dest: target folder (default: ``fer_core/weights/default``).
        tta: set the serving test-time augmentation ('none' or 'flip'), a choice made on PublicTest and speed.
        metrics: measured figures (e.g. evaluate.py's metrics.json) recorded in the checkpoint's JSON.
        crop_margin: set the margin the annotation job cuts around detected faces (a serving setting; training
            data comes cropped), e.g. as measured by benchmarks/fer_framing.py.

    Returns:
        The installed model's id (name@sha256 prefix).

    Raises:
        CheckpointError: the checkpoint does not load or does not predict valid probabilities.
    """
    classifier = load_classifier(model_dir, device="cpu")
    probs = classifier.predict_proba(random_faces(classifier, 4))
    if probs.shape != (4, len(classifier.classes)) or not np.allclose(probs.sum(1), 1, atol=1e-4):
        raise CheckpointError(f"checkpoint {str(model_dir)!r} does not produce probabilities over its classes")
    dest = Path(dest) if dest is not None else default_model_dir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".default-", dir=dest.parent))
    try:
        for name in (WEIGHTS_FILE, META_FILE):
            shutil.copy2(Path(model_dir) / name, staging / name)
        if tta is not None or metrics is not None or crop_margin is not None:
            meta = CheckpointMeta.from_json((staging / META_FILE).read_text(), source=str(model_dir))
            if tta is not None:
                if tta not in TTA_MODES:
                    raise CheckpointError(f"--tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
                meta.tta = tta
            if metrics is not None:
                meta.metrics = {**meta.metrics, **metrics}
            if crop_margin is not None:
                meta.preprocessing = dataclasses.replace(meta.preprocessing, crop_margin=crop_margin)
            (staging / META_FILE).write_text(meta.to_json() + "\n")
        installed = load_classifier(staging, device="cpu")
        if installed.model_id != classifier.model_id:
            raise CheckpointError(f"copied checkpoint reads back as {installed.model_id}, expected {classifier.model_id}")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return classifier.model_id


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    model_dir: Path = typer.Argument(..., help="Checkpoint folder (fer_checkpoint.json + model.safetensors)."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Write an ONNX model here and check it against PyTorch."),
    data: Optional[str] = typer.Option(None, "--data", help="FER-2013 data: PublicTest faces for the parity check."),
    real_faces: int = typer.Option(256, "--real-faces", help="How many real faces the parity check uses."),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset (17 or later)."),
    into_package: bool = typer.Option(
        False, "--into-package", help="Install as the shipped default model (fer_core/weights/default)."
    ),
    tta: Optional[str] = typer.Option(None, "--tta", help="With --into-package: the serving TTA, none or flip (chosen on PublicTest)."),
    crop_margin: Optional[float] = typer.Option(
        None, "--crop-margin", help="With --into-package: margin cut around detected faces (benchmarks/fer_framing.py)."
    ),
    metrics_json: Optional[Path] = typer.Option(
        None, "--metrics-json", help="With --into-package: evaluate.py's metrics.json, recorded in the checkpoint."
    ),
) -> None:
    """Export to ONNX and/or install as the package's default model."""
    if onnx is None and not into_package:
        typer.echo("error: nothing to do; pass --onnx FILE and/or --into-package", err=True)
        raise typer.Exit(1)
    try:
        if onnx is not None:
            faces = None
            if data is not None:
                faces = load_fer(data, splits=["PublicTest"]).pixels[:real_faces]
            report = export_onnx(model_dir, onnx, faces=faces, opset=opset)
            real = (f", real faces {report['max_abs_diff_real']:.1e} (n={report['n_real']})"
                    if report["max_abs_diff_real"] is not None else " (no --data: random faces only)")
            typer.echo(f"wrote {report['onnx']} (opset {opset}); "
                       f"max |ONNX - PyTorch| random {report['max_abs_diff_random']:.1e}{real}")
        if into_package:
            metrics = None
            if metrics_json is not None:
                if not metrics_json.is_file():
                    raise ExportError(f"--metrics-json {str(metrics_json)!r} not found; pass evaluate.py's metrics.json")
                metrics = json.loads(metrics_json.read_text())
            model_id = install_into_package(model_dir, tta=tta, metrics=metrics, crop_margin=crop_margin)
            typer.echo(f"installed {model_id} into {default_model_dir()}")
    except (CheckpointError, DataError, ExportError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
