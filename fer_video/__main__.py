"""``python -m fer_video``: the same as the ``fer-video`` console script."""

from fer_video.cli import main

main()
