"""The ``fer-video`` command: one subcommand per entry point, the same functions ``jobs/*.py``,
``training/train.py`` and ``training/evaluate.py`` run as scripts.

    fer-video annotate videos/ --out timelines/
    fer-video report timelines/ --html report.html
    fer-video --help
"""

from __future__ import annotations

from types import ModuleType

import typer

from fer_video import annotate, evaluate, live, render, report, train

COMMANDS: dict[str, tuple[ModuleType, str]] = {
    "annotate": (annotate, "Videos -> per-frame emotion timelines in Parquet: the main job, on Ray."),
    "report": (report, "One self-contained HTML page on a run's timelines."),
    "render": (render, "A video with its timelines drawn on every frame."),
    "live": (live, "Annotate a camera, a stream or a video file in real time."),
    "train": (train, "Train the emotion classifier with Ray Train."),
    "evaluate": (evaluate, "Evaluate a checkpoint on FER-2013 (and FERPlus)."),
}
"""Subcommand name -> (its module, whose typer command is ``main``; the one-line help of ``fer-video --help``)."""

app = typer.Typer(
    name="fer-video", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Per-frame facial emotion timelines for videos at scale, on Ray. `fer-video COMMAND --help` for each.",
)
for _name, (_module, _short) in COMMANDS.items():
    app.command(_name, short_help=_short)(_module.main)  # --help: the command's docstring, as for the script


def main() -> None:
    """The console script's entry point."""
    app()
