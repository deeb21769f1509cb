"""Helpers shared by the tests of the results tools (analysis, report, render, live); not a test module.

`job_output` runs the real annotation job over two short shared clips once per session; `invoke` and
`run_script` run the jobs/ commands in this process or in a fresh one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]

CLIPS = ("posed_happy.mp4", "pyfeat_face_noface.mov")
"""A 5 s clip with one face throughout, and a 6.4 s clip whose face disappears after about 2.7 s."""
FPS = 5.0


def job_output(tmp_path_factory, videos_dir: Path, yunet_model: Path, tiny_checkpoint: Path) -> Path:
    """The ``--out`` folder of the job over copies of `CLIPS` plus a zero-byte file (a failed video).

    Runs the job in-process on the session's local Ray (needs the ``ray_local`` fixture) the first time, and
    returns the same folder afterwards.
    """
    base = tmp_path_factory.getbasetemp()
    out = base / "timelines_job" / "out"
    videos = out.parent / "videos"
    if len(list((out / "videos").glob("*.parquet"))) == len(CLIPS) + 1:
        return out
    from fer_core.config import AnnotateOptions
    from fer_core.detect import create_detector
    from fer_core.pipeline import annotate
    from fer_core.video import list_inputs

    videos.mkdir(parents=True, exist_ok=True)
    for name in CLIPS:
        shutil.copy(videos_dir / name, videos / name)
    (videos / "broken.mp4").write_bytes(b"")
    opts = AnnotateOptions(fps=FPS, segment_s=0, model=str(tiny_checkpoint))
    detector = create_detector("yunet", str(yunet_model))
    annotate(list_inputs([str(videos)]), str(out), opts, detector=detector, model_bytes=None)
    return out


@dataclass
class Result:
    """What a command returned, as from ``subprocess.run``."""

    returncode: int
    stdout: str
    stderr: str


def load_job(script: str) -> ModuleType:
    """Import ``jobs/<script>`` as a module (jobs/ is not a package)."""
    name = f"_job_{Path(script).stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "jobs" / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def invoke(script: str, *args: str) -> Result:
    """Run a job's typer app in this process: the commands' own code paths, without paying a fresh interpreter's
    imports (torch) per call. ``run_script`` runs the real script as a user would."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(load_job(script).app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.stdout, result.stderr)


def run_script(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python jobs/<script> ARGS`` in a fresh interpreter, without a display."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return subprocess.run([sys.executable, str(REPO / "jobs" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(env, MPLBACKEND="Agg"))


def one_error(result: Result | subprocess.CompletedProcess, message: str) -> None:
    """Exit code 1 and exactly one ``error: ...`` line, containing ``message``."""
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
