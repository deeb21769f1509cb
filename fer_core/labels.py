"""The seven FER-2013 emotion classes, in the index order the dataset uses."""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""Class names in FER-2013 index order (0 = angry ... 6 = neutral)."""

NUM_CLASSES = len(EMOTIONS)

PROB_COLUMNS: tuple[str, ...] = tuple(f"p_{name}" for name in EMOTIONS)
"""One float column per class in the output tables."""

# Names seen in the wild (Kaggle folders, FERPlus columns) mapped to our class names.
ALIASES: dict[str, str] = {
    "anger": "angry",
    "disgusted": "disgust",
    "fearful": "fear",
    "scared": "fear",
    "happiness": "happy",
    "sadness": "sad",
    "surprised": "surprise",
}


def class_index(name: str) -> int:
    """Index of a class name (case-insensitive, common aliases accepted).

    Raises:
        ValueError: if the name is not one of the seven classes.
    """
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in EMOTIONS:
        raise ValueError(f"unknown emotion class {name!r}; expected one of {', '.join(EMOTIONS)}")
    return EMOTIONS.index(key)
