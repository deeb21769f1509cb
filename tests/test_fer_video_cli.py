"""The ``fer-video`` console script: installed beside the interpreter, its subcommands are the same commands the
scripts in jobs/ and training/ run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("annotate", "report", "render", "live", "train", "evaluate")
SCRIPTS = {"annotate": "jobs/annotate.py", "report": "jobs/report.py", "render": "jobs/render.py",
           "live": "jobs/live.py", "train": "training/train.py", "evaluate": "training/evaluate.py"}


def _fer_video() -> Path:
    script = Path(sys.executable).parent / "fer-video"
    if not script.is_file():
        pytest.fail(f"{script} not found: install the package (pip install -e .) to get the console script")
    return script


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(_fer_video()), *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="200"))


def test_help_lists_the_commands():
    r = _run("--help")
    assert r.returncode == 0, r.stderr
    for name in COMMANDS:
        assert name in r.stdout, r.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_subcommand_help(name):
    r = _run(name, "--help")
    assert r.returncode == 0, r.stderr
    assert f"fer-video {name}" in r.stdout and "--help" in r.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_subcommand_is_the_script_command(name):
    """``fer-video NAME`` and ``python <script>`` run one function (so they take the same options)."""
    import importlib.util

    from fer_video.cli import COMMANDS as REGISTERED
    from fer_video.cli import app

    spec = importlib.util.spec_from_file_location(f"_cli_check_{name}", REPO / SCRIPTS[name])
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main is REGISTERED[name][0].main
    options = {o for p in typer.main.get_command(script.app).params for o in p.opts}
    sub = typer.main.get_command(app).commands[name]
    assert {o for p in sub.params for o in p.opts} == options


def test_a_subcommand_runs(tmp_path):
    """A real command through the console script: its one-line error and exit code."""
    r = _run("report", str(tmp_path / "missing"), "--html", str(tmp_path / "r.html"))
    assert r.returncode == 1
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")], r.stderr
