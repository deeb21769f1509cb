"""Report on a run: one self-contained HTML page (the ``fer-video report`` command, as a script).

    python jobs/report.py --help

The command lives in :mod:`fer_video.report`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fer_video.report import app, main  # noqa: E402, F401

if __name__ == "__main__":
    app()
