"""fer_core: faces in video -> per-frame emotion timelines. The library core imports no Ray."""

from fer_core.checkpoint import CheckpointError, Classifier, load_classifier
from fer_core.labels import EMOTIONS, PROB_COLUMNS
from fer_core.models import create_model, list_models
from fer_core.schema import FACES_SCHEMA, VIDEOS_SCHEMA

__all__ = [
    "EMOTIONS",
    "FACES_SCHEMA",
    "PROB_COLUMNS",
    "VIDEOS_SCHEMA",
    "CheckpointError",
    "Classifier",
    "create_model",
    "list_models",
    "load_classifier",
]
__version__ = "0.1.0"
