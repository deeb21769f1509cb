"""The pyarrow schemas of the two output tables, `faces/` and `videos/`.

This is the one place the output contract lives: the pipeline builds its tables from these schemas,
and tests read them back against the same objects.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from fer_core.labels import PROB_COLUMNS
from fer_core.measures import MEASURE_COLUMNS

FACES_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("video_path", pa.string(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=False),
        pa.field("timestamp_s", pa.float64(), nullable=False),
        pa.field("face_index", pa.int32()),
        pa.field("track_id", pa.int32()),
        pa.field("x", pa.int32()),
        pa.field("y", pa.int32()),
        pa.field("w", pa.int32()),
        pa.field("h", pa.int32()),
        pa.field("det_score", pa.float32()),
        pa.field("emotion", pa.string()),
        pa.field("confidence", pa.float32()),
        *[pa.field(name, pa.float32()) for name in PROB_COLUMNS],
        # Landmarks, head pose and quality (fer_core.measures documents units and sign conventions); null where
        # the detector gives no landmarks (Haar) for the landmark-based ones.
        *[pa.field(name, pa.float32()) for name in MEASURE_COLUMNS],
    ]
)
"""One row per detected face per sampled frame; a sampled frame without faces has one row with null face fields."""

VIDEOS_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("video_path", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("decoder", pa.string()),
        pa.field("frames_sampled", pa.int64()),
        pa.field("frames_with_face", pa.int64()),
        pa.field("faces", pa.int64()),
        pa.field("detector", pa.string()),
        pa.field("model", pa.string()),
        pa.field("seconds", pa.float64()),
    ]
)
"""One row per input file, ok or failed."""

STATUS_OK = "ok"
STATUS_FAILED = "failed"


def with_run_metadata(schema: pa.Schema, metadata: dict[str, Any]) -> pa.Schema:
    """Return the schema with the run's model, detector and options stored as JSON in the file metadata."""
    return schema.with_metadata({"fer": json.dumps(metadata, sort_keys=True, default=str)})


def read_run_metadata(schema: pa.Schema) -> dict[str, Any]:
    """The run metadata written by :func:`with_run_metadata` ({} when absent)."""
    raw = (schema.metadata or {}).get(b"fer")
    return json.loads(raw) if raw else {}
