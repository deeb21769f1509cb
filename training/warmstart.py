"""Warm start: begin a run from the weights of an exported checkpoint (``init_from`` in the config).

The checkpoint must describe the same network and input as the config (architecture, its options, classes, input
size, channels, normalisation); anything else is a one-line error before Ray starts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from fer_core.checkpoint import META_FILE, WEIGHTS_FILE, CheckpointError, CheckpointMeta, checkpoint_folder
from fer_core.labels import EMOTIONS
from training.config import TrainConfig


def check_init_from(cfg: TrainConfig) -> CheckpointMeta:
    """Check that ``cfg.init_from`` is a checkpoint the configured model can start from; returns its metadata."""
    from training.loop import checkpoint_meta_of

    folder = checkpoint_folder(cfg.init_from)
    meta = CheckpointMeta.from_json((folder / META_FILE).read_text(), source=str(folder))
    want = checkpoint_meta_of(cfg, {})
    ours, theirs = want.preprocessing, meta.preprocessing
    mismatches = [
        f"{what} {mine!r} vs {other!r}"
        for what, mine, other in (
            ("model", want.arch, meta.arch),
            ("model_kwargs", want.arch_kwargs, meta.arch_kwargs),
            ("classes", list(EMOTIONS), list(meta.classes)),
            ("input_size", ours.input_size, theirs.input_size),
            ("channels", ours.channels, theirs.channels),
            ("mean", tuple(ours.mean), tuple(theirs.mean)),
            ("std", tuple(ours.std), tuple(theirs.std)),
        )
        if mine != other
    ]
    if mismatches:
        raise CheckpointError(
            f"init_from {str(folder)!r} does not match the config ({'; '.join(mismatches)}); "
            "set those keys as the checkpoint has them or start from scratch"
        )
    return meta


def load_init_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Copy the checkpoint's weights into ``model`` (shapes must match exactly)."""
    state = load_file(str(Path(folder) / WEIGHTS_FILE))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"init_from {str(folder)!r}: weights do not fit the model ({e})") from e
