"""fer_core: faces in video -> per-frame emotion timelines. The library core imports no Ray.

The public names below load lazily, so importing a light module (``fer_core.video``) doesn't import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "EMOTIONS": "fer_core.labels",
    "PROB_COLUMNS": "fer_core.labels",
    "FACES_SCHEMA": "fer_core.schema",
    "VIDEOS_SCHEMA": "fer_core.schema",
    "CheckpointError": "fer_core.checkpoint",
    "Classifier": "fer_core.checkpoint",
    "load_classifier": "fer_core.checkpoint",
    "create_model": "fer_core.models",
    "list_models": "fer_core.models",
    "load_timelines": "fer_core.analysis",
    "smooth_tracks": "fer_core.analysis",
    "video_summary": "fer_core.analysis",
    "track_summary": "fer_core.analysis",
    "emotion_windows": "fer_core.analysis",
    "emotion_episodes": "fer_core.analysis",
    "UsableRule": "fer_core.analysis",
    "usable_faces": "fer_core.analysis",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fer_core' has no attribute {name!r}")
