"""Kept for code that imported it from here: the helpers live in :mod:`fer_video._common`."""

from fer_video._common import fail, make_detector  # noqa: F401
