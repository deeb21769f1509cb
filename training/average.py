"""Average the weights of several checkpoints of one architecture into one model, as fast as each of them; with a
single checkpoint, only re-estimate its BatchNorm statistics on clean Training faces.

    python training/average.py runs/cpu_small_r2/model runs/cpu_small_r3/model runs/cpu_small_r4/model \\
        --data ../shared/data/fer2013 --out runs/avg_r234/model

Averaging pays for checkpoints in one basin: epochs of one run, or cycles warm-started from each other
(``init_from``); unrelated runs average to a broken model. BatchNorm statistics are recomputed on Training faces
without augmentation: the statistics a run accumulates come from augmented, mixed batches, and re-estimating them
on clean faces alone gained about a point of PublicTest accuracy for the CPU model (README, "The shipped model").
PublicTest accuracy is printed for every input and for the average, so the choice is made on PublicTest;
PrivateTest is never read.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fer_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from training.data import DataError, check_source, load_fer  # noqa: E402


class AverageError(ValueError):
    """The checkpoints cannot be averaged."""


def check_compatible(metas: list[Any], sources: list[str]) -> None:
    """Raise AverageError naming the first checkpoint whose architecture, classes or preprocessing differ."""
    first = metas[0]
    for meta, source in zip(metas[1:], sources[1:]):
        for what, a, b in (
            ("architecture", (first.arch, first.arch_kwargs), (meta.arch, meta.arch_kwargs)),
            ("classes", first.classes, meta.classes),
            ("preprocessing", first.preprocessing, meta.preprocessing),
        ):
            if a != b:
                raise AverageError(f"{source} has another {what} than {sources[0]} ({b} vs {a}); "
                                   f"average only checkpoints of one model")


def average_checkpoints(
    sources: list[str | Path],
    data: str,
    out: str | Path,
    *,
    name: str = "",
    bn_images: int = 0,
    public: bool = True,
    weights: list[float] | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Write the average of ``sources`` to ``out``; returns its id and the PublicTest accuracies measured.
    ``weights`` makes it a weighted mean (e.g. 0.5 / 0.5 of a model and its fine-tune: WiSE-FT's interpolation).
    ``progress`` receives a line before each step that takes a while (minutes on 2 CPU cores)."""
    import copy

    import torch

    from training.align import as_served
    from training.loop import accuracy_plain_and_flip
    from training.swa import average_states, bn_sample, recompute_batchnorm

    if not sources:
        raise AverageError("give one or more checkpoint folders")
    loaded = [load_checkpoint(s) for s in sources]
    names = [str(s) for s in sources]
    metas = [meta for _, meta, _ in loaded]
    check_compatible(metas, names)  # one architecture and options: the weights share one layout
    try:
        states = average_states([model.state_dict() for model, _, _ in loaded], weights)
    except ValueError as e:
        raise AverageError(str(e)) from None
    check_source(data)  # a wrong --data fails here, in one line, before minutes of work
    progress(f"averaging {len(sources)} checkpoint(s) of {metas[0].arch}; loading FER-2013 from {data}")
    fer = load_fer(data, splits=["Training", "PublicTest"] if public else ["Training"])
    spec, device = metas[0].preprocessing, torch.device("cpu")
    model, meta = copy.deepcopy(loaded[0][0]), metas[0]  # a copy: the inputs are evaluated as they are below
    model.load_state_dict(states)
    faces = bn_sample(as_served(fer.split("Training").pixels, spec), bn_images)
    progress(f"re-estimating BatchNorm statistics on {len(faces)} Training faces")
    recompute_batchnorm(model, faces, spec, device=device)

    val = fer.split("PublicTest") if public else None
    val_faces = as_served(val.pixels, spec) if val is not None else None

    def accuracy(net: torch.nn.Module) -> tuple[float, float]:
        return accuracy_plain_and_flip(net, val_faces, val.labels, spec, device=device)

    inputs = []
    if public:
        progress(f"PublicTest accuracy of the {len(sources)} input(s) and the average")
    for source, (net, _, model_id) in zip(names, loaded):
        record: dict[str, Any] = {"path": source, "id": model_id}
        if public:
            record["public_accuracy"], record["public_accuracy_flip"] = accuracy(net)
        inputs.append(record)
    metrics: dict[str, Any] = {"averaged_from": inputs, "bn_images": bn_images or len(fer.split("Training"))}
    if weights is not None:
        metrics["weights"] = [float(w) for w in weights]
    if public:
        metrics["public_accuracy"], metrics["public_accuracy_flip"] = accuracy(model)
    meta.metrics = metrics
    # Each input's checkpoint records its own training; this one records how it was made from them.
    meta.train_config = {"average_of": names, "data": str(data), "bn_images": metrics["bn_images"]}
    if weights is not None:
        meta.train_config["weights"] = metrics["weights"]
    meta.name = name or f"{meta.name or meta.arch}-" + (f"avg{len(sources)}" if len(sources) > 1 else "bn")
    save_checkpoint(out, model, meta)
    _, _, model_id = load_checkpoint(out)
    return {"id": model_id, "out": str(out), **metrics}


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    models: list[Path] = typer.Argument(..., help="Checkpoint folders of one model (one: recompute BatchNorm only)."),
    data: str = typer.Option(..., "--data", help="FER-2013 (npz folder, fer2013.csv or image folders)."),
    out: Path = typer.Option(..., "--out", help="Folder for the averaged checkpoint."),
    name: str = typer.Option("", "--name", help="Model name recorded in the checkpoint (default: first's + -avgN)."),
    bn_images: int = typer.Option(0, "--bn-images", help="Training faces for the BatchNorm statistics (0 = all)."),
    public: bool = typer.Option(True, "--public/--no-public", help="Report PublicTest accuracy of inputs and average."),
    weight: Optional[list[float]] = typer.Option(None, "--weight", help="One weight per checkpoint, in order (repeat; default: equal)."),
) -> None:
    """Average checkpoints' weights, recompute BatchNorm statistics, and report PublicTest accuracy."""
    try:
        result = average_checkpoints(models, data, out, name=name, bn_images=bn_images, public=public,
                                     weights=list(weight) if weight else None,
                                     progress=lambda message: typer.echo(message, err=True))
    except (AverageError, CheckpointError, DataError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    if public:
        for record in result["averaged_from"]:
            typer.echo(f"{record['path']}: PublicTest {record['public_accuracy']:.4f} "
                       f"(flip {record['public_accuracy_flip']:.4f})")
        typer.echo(f"average: PublicTest {result['public_accuracy']:.4f} (flip {result['public_accuracy_flip']:.4f})")
    typer.echo(f"wrote {result['id']} to {result['out']}")


if __name__ == "__main__":
    app()
