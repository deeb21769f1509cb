"""How the classifier holds up under what video does to faces: FER-2013 test faces under a fixed, seeded set of
corruptions (fer_core/corrupt.py), each alone at three severities, classified as the job serves them
(``Classifier.predict_proba``: the checkpoint's preprocessing, test-time augmentation and precision; faces aligned
by YuNet's eyes, found on the corrupted face, where the checkpoint's record says ``align``).

    python benchmarks/robustness.py --split PublicTest                    # choices are made here
    python benchmarks/robustness.py --split PrivateTest --model DIR       # once, for the shipped model
    python benchmarks/robustness.py --model A --model B --precision fp32 --json out.json

It prints clean accuracy, accuracy per corruption and severity, each corruption's mean, and the mean over every
corrupted cell, for each model and precision (fp32 always; bf16 too where the CPU has it natively, unless
``--precision`` says otherwise). The corrupted faces are the same for every model and every run: each cell has its
own seed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

app = typer.Typer(add_completion=False)


def corrupted_faces(faces: np.ndarray, name: str, level: float, seed: int) -> np.ndarray:
    """uint8 (N, S, S) faces under one corruption at one severity, deterministic for a seed."""
    import torch

    from fer_core.corrupt import corrupt, seeded_rand

    x = torch.from_numpy(np.ascontiguousarray(faces)).float()[:, None] / 255
    with torch.inference_mode():
        y = corrupt(x, name, level, seeded_rand(seed))
    return (y[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def conditions() -> list[tuple[str, float, int]]:
    """Every (corruption, severity, seed) cell of the benchmark, clean first as ('clean', 0, 0)."""
    from fer_core.corrupt import BENCHMARK_LEVELS

    cells = [("clean", 0.0, 0)]
    for i, (name, levels) in enumerate(BENCHMARK_LEVELS.items()):
        cells += [(name, float(level), 1000 * (i + 1) + j) for j, level in enumerate(levels)]
    return cells


def run(models: list[str | None], faces: np.ndarray, labels: np.ndarray, *, precisions: list[str], align: str,
        progress=print) -> list[dict[str, Any]]:
    """Accuracy of every model x precision on every cell. ``align``: 'auto' (as each checkpoint's record says),
    'on' or 'off' (forced, to measure alignment itself)."""
    import torch

    from fer_core.checkpoint import load_classifier
    from training.align import align_faces, face_rolls

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    results = []
    classifiers = []
    for source in models:
        for precision in precisions:
            clf = load_classifier(source, device="cpu", precision=precision)
            aligned = clf.meta.preprocessing.align if align == "auto" else align == "on"
            classifiers.append(clf)
            results.append({"model": clf.meta.name or str(source), "id": clf.model_id, "source": source or "shipped",
                            "precision": clf.precision, "align": aligned, "tta": clf.meta.tta, "cells": {}})
    for name, level, seed in conditions():
        start = time.perf_counter()
        shown = faces if name == "clean" else corrupted_faces(faces, name, level, seed)
        leveled = None
        for clf, record in zip(classifiers, results):
            inputs = shown
            if record["align"]:
                if leveled is None:
                    leveled = align_faces(shown, face_rolls(shown))
                inputs = leveled
            acc = float(np.mean(clf.predict_proba(inputs).argmax(1) == labels))
            record["cells"].setdefault(name, {})[str(level)] = acc
        progress(f"{name} {level:g}: " + ", ".join(f"{r['cells'][name][str(level)]:.4f}" for r in results)
                 + f" ({time.perf_counter() - start:.0f} s)")
    for record in results:
        corrupted = [acc for name, cell in record["cells"].items() if name != "clean" for acc in cell.values()]
        record["clean"] = record["cells"]["clean"]["0.0"]
        record["mean_corrupted"] = float(np.mean(corrupted))
        record["per_corruption"] = {name: float(np.mean(list(cell.values())))
                                    for name, cell in record["cells"].items() if name != "clean"}
    return results


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per cell, one column per model x precision."""
    heads = [f"{r['model']} {r['precision']}{' aligned' if r['align'] else ''}" for r in results]
    lines = ["| condition | severity | " + " | ".join(heads) + " |", "| --- | --- |" + " --- |" * len(results)]
    for name, level, _ in conditions():
        lines.append(f"| {name} | {'' if name == 'clean' else f'{level:g}'} | "
                     + " | ".join(f"{100 * r['cells'][name][str(level)]:.1f}" for r in results) + " |")
    for name in results[0]["per_corruption"]:
        lines.append(f"| {name}, mean | | " + " | ".join(f"{100 * r['per_corruption'][name]:.1f}" for r in results) + " |")
    lines.append("| **all corruptions, mean** | | " + " | ".join(f"**{100 * r['mean_corrupted']:.1f}**" for r in results) + " |")
    return "\n".join(lines)


@app.command()
def main(
    model: Optional[list[str]] = typer.Option(None, "--model", help="Checkpoint folder (repeatable; default: the shipped model)."),
    data: str = typer.Option("../shared/data/fer2013", help="FER-2013 location."),
    split: str = typer.Option("PublicTest", help="PublicTest for choices; PrivateTest once, for the shipped model."),
    precision: Optional[str] = typer.Option(None, help="Comma-separated: fp32, bf16 (default: fp32, and bf16 where the CPU has it)."),
    align: str = typer.Option("auto", help="auto (as each checkpoint says), on or off (forced, to measure alignment)."),
    limit: int = typer.Option(0, help="Use only the first N faces (0 = all; for smoke runs)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    from fer_core.checkpoint import CheckpointError, cpu_has_native_bf16
    from training.data import SPLITS, DataError, load_fer

    if split not in SPLITS[1:]:
        typer.echo(f"error: --split must be PublicTest or PrivateTest, got {split!r}", err=True)
        raise typer.Exit(1)
    if align not in ("auto", "on", "off"):
        typer.echo(f"error: --align must be auto, on or off, got {align!r}", err=True)
        raise typer.Exit(1)
    precisions = precision.split(",") if precision else ["fp32"] + (["bf16"] if cpu_has_native_bf16() else [])
    bad = [p for p in precisions if p not in ("fp32", "bf16")]
    if bad:
        typer.echo(f"error: --precision takes fp32 and bf16, got {', '.join(bad)}", err=True)
        raise typer.Exit(1)
    try:
        test = load_fer(data, splits=[split])
        faces, labels = test.pixels, test.labels
        if limit:
            faces, labels = faces[:limit], labels[:limit]
        results = run(list(model) if model else [None], faces, labels, precisions=precisions, align=align,
                      progress=lambda line: typer.echo(line, err=True))
    except (DataError, CheckpointError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(f"FER-2013 {split}, {len(faces)} faces\n")
    typer.echo(table(results))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"split": split, "faces": int(len(faces)), "results": results}, indent=2))


if __name__ == "__main__":
    app()
