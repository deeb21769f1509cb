"""Annotate a camera, a stream or a video file in real time (the ``fer-video live`` command, as a script).

    python jobs/live.py --help

The command lives in :mod:`fer_video.live`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fer_video.live import app, main  # noqa: E402, F401

if __name__ == "__main__":
    app()
