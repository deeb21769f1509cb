"""Training throughput (images/s) of the real training step, on random data, without Ray.

    python benchmarks/train_throughput.py --models fer_vgg_tiny,fer_vgg_small --steps 5

For each model it runs a few steps of :func:`training.loop.train_one_epoch` (train preset on the device, mixup,
label smoothing, SGD, the one-cycle schedule) with the model in the default memory format and in channels_last
(what the Ray Train worker uses on the CPU), on the CPU, and on the GPU when there is one; on a CPU with native bf16
also in bf16 autocast (the ``cpu_bf16`` config key), channels_last. One warm-up step is
not timed. Absolute numbers drift on shared machines: compare the rows of one run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

app = typer.Typer(add_completion=False, help=__doc__)


def measure(model_name: str, *, device: str, channels_last: bool, batch_size: int, steps: int, seed: int = 0,
            cpu_bf16: bool = False) -> dict:
    """Images per second over ``steps`` training steps of ``model_name`` (after one untimed warm-up step)."""
    import torch

    from fer_core.labels import NUM_CLASSES
    from fer_core.models import create_model
    from training.config import load_config
    from training.loop import Schedule, build_optimizer, train_one_epoch, train_preset_of

    cfg = load_config(None, {"model": model_name, "batch_size": batch_size, "epochs": 1, "seed": seed,
                             "cpu_bf16": cpu_bf16})
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=NUM_CLASSES, in_channels=cfg.channels).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    schedule = Schedule(cfg, optimizer, steps_per_epoch=steps + 1)
    preset = train_preset_of(cfg)
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (batch_size * steps, cfg.channels, cfg.input_size, cfg.input_size),
                                           dtype=np.uint8))
    targets = torch.eye(NUM_CLASSES)[torch.from_numpy(rng.integers(0, NUM_CLASSES, len(images)))]

    def epoch(n_images: int, index: int):
        stats = train_one_epoch(model, optimizer, schedule, preset, images[:n_images], targets[:n_images], cfg=cfg,
                                batch_size=batch_size, epoch=index, rank=0, world_size=1, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return stats

    epoch(batch_size, 0)  # warm-up: allocator, oneDNN / cuDNN kernel selection
    stats = epoch(len(images), 1)
    return {
        "model": model_name,
        "device": device,
        "channels_last": channels_last,
        "precision": "bf16" if device == "cuda" or cpu_bf16 else "fp32",
        "batch_size": batch_size,
        "steps": steps,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "images_per_s": stats.images_per_s,
        "seconds": stats.seconds,
    }


@app.command()
def main(
    models: str = typer.Option("fer_vgg_tiny,fer_vgg_small", help="Comma-separated registry names."),
    steps: int = typer.Option(5, help="Timed training steps per setting."),
    batch_size: int = typer.Option(128, help="Images per step (the configs' global batch)."),
    threads: int = typer.Option(0, help="torch CPU threads (0 = torch's default)."),
    gpu_batch_size: int = typer.Option(512, help="Images per step on the GPU."),
    cpu: bool = typer.Option(True, "--cpu/--no-cpu", help="Measure on the CPU."),
    json_out: Optional[Path] = typer.Option(None, help="Also write the rows as JSON here."),
) -> None:
    """Print training images/s per model, memory format and device."""
    import torch

    if steps < 1 or batch_size < 1:
        typer.echo("error: --steps and --batch-size must be at least 1", err=True)
        raise typer.Exit(1)
    if threads:
        torch.set_num_threads(threads)
    names = [m.strip() for m in models.split(",") if m.strip()]
    from fer_core.models import list_models

    unknown = [m for m in names if m not in list_models()]
    if unknown:
        typer.echo(f"error: unknown models {unknown}; known models: {', '.join(list_models())}", err=True)
        raise typer.Exit(1)
    from fer_core.checkpoint import cpu_has_native_bf16

    # (device, batch, channels_last, cpu_bf16): bf16 autocast (the cpu_bf16 config key) where the CPU has native bf16.
    settings = [("cpu", batch_size, layout, False) for layout in (False, True)] if cpu else []
    if cpu and cpu_has_native_bf16():
        settings.append(("cpu", batch_size, True, True))
    if torch.cuda.is_available():
        settings += [("cuda", gpu_batch_size, layout, False) for layout in (False, True)]
    rows = []
    typer.echo(f"{'model':<16} {'device':<6} {'layout':<14} {'precision':<9} {'batch':>5} {'threads':>7} {'images/s':>9}")
    for name in names:
        for device, batch, channels_last, cpu_bf16 in settings:
            row = measure(name, device=device, channels_last=channels_last, batch_size=batch, steps=steps,
                          cpu_bf16=cpu_bf16)
            rows.append(row)
            layout = "channels_last" if channels_last else "contiguous"
            typer.echo(f"{name:<16} {device:<6} {layout:<14} {row['precision']:<9} {batch:>5} "
                       f"{row['threads'] or '-':>7} {row['images_per_s']:>9.0f}")
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    app()
