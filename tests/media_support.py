"""Writing small test videos; not a test module."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_h264(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """Encodes RGB ``uint8`` frames into an H.264 file with PyAV (yuv420p, constant frame rate)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path
