"""Annotate videos: per-frame emotion timelines in Parquet (the ``fer-video annotate`` command, as a script).

    python jobs/annotate.py videos/ --out timelines/
    ray job submit --working-dir . -- python jobs/annotate.py s3://bucket/videos --out s3://bucket/timelines

The command lives in :mod:`fer_video.annotate`; this file lets a checkout run it without installing.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fer_video.annotate import app, main  # noqa: E402, F401

if __name__ == "__main__":
    app()
