"""Render a video with its timelines drawn on every frame (the ``fer-video render`` command, as a script).

    python jobs/render.py --help

The command lives in :mod:`fer_video.render`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fer_video.render import app, main  # noqa: E402, F401

if __name__ == "__main__":
    app()
