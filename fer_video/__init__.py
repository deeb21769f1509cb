"""fer_video: the command line of fer-video. ``fer-video annotate | report | render | live | train | evaluate``
(:mod:`fer_video.cli`), one module per command; ``jobs/*.py``, ``training/train.py`` and ``training/evaluate.py``
run the same commands as scripts from a checkout.

The command modules import only typer at module level, so ``--help`` is quick; each command imports the library
(fer_core, training, Ray) when it runs.
"""
