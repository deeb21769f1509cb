"""The real annotation job over two short shared clips, run once per test session and shared by the test
modules of the analysis, report, render and live tools (a helper module, not a test module)."""

from __future__ import annotations

import shutil
from pathlib import Path

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
