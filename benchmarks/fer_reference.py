"""The `fer` package (PyPI ``fer``: Haar cascade + its TFLite emotion model, one process) on every frame of each
video, for benchmarks/annotate_throughput.py's ``--fer-python``: the comparison EVALUATION.md names, in the same run.

    /path/to/fer-venv/bin/python benchmarks/fer_reference.py VIDEO [VIDEO ...]

Runs in a Python environment of its own (``pip install fer tensorflow-cpu opencv-contrib-python-headless``; fer
needs TensorFlow, which this project does not install) and imports nothing from this project. Prints one JSON line:
the seconds ``Video.analyze`` took on each video and the rows it returned (frames with a face), its defaults
otherwise, nothing written but a temporary folder.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time


def main(paths: list[str]) -> None:
    import cv2
    from fer.classes import Video
    from fer.fer import FER

    # analyze() calls these GUI functions (waitKey on every frame, even without display); headless OpenCV builds
    # refuse them, so they answer as a window with no key pressed would.
    cv2.waitKey = lambda *_: -1
    cv2.destroyAllWindows = lambda: None

    detector = FER()  # Haar cascade, TFLite model: the package's defaults
    seconds, analysed = {}, {}
    with tempfile.TemporaryDirectory() as out:
        for path in paths:
            started = time.perf_counter()
            rows = Video(path, outdir=out).analyze(detector, display=False, frequency=1, save_frames=False,
                                                   save_video=False, annotate_frames=False, zip_images=False,
                                                   output="pandas")
            seconds[path] = time.perf_counter() - started
            analysed[path] = len(rows)
    import fer

    print(json.dumps({"fer_version": fer.__version__, "opencv": cv2.__version__, "seconds": seconds,
                      "rows": analysed}))


if __name__ == "__main__":
    main(sys.argv[1:])
