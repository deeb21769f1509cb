"""Setting environment variables for the length of a test; not a test module."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[dict[str, str]]:
    """Sets `values` in ``os.environ`` and restores what was there before (set or unset) on the way out."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield values
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
