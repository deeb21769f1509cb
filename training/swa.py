"""Weight averaging, free of Ray: stochastic weight averaging (SWA, Izmailov et al. 2018) during a run, and the
average of several exported checkpoints of one architecture.

An average of weights that lie in one basin (the epochs of one run, or cycles warm-started from each other) is a
single model as fast as any of them, and usually more accurate than each. Its BatchNorm statistics are not the
average of theirs, so they are recomputed on training faces before it is evaluated or served.
"""

from __future__ import annotations

import copy
from typing import Mapping

import numpy as np
import torch

from fer_core.preprocess import EvalPreset, Preprocessing


def average_states(
    states: list[Mapping[str, torch.Tensor]], weights: list[float] | None = None
) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts with the same keys and shapes, or their weighted mean (``weights``,
    normalised to sum 1); integer entries (BatchNorm's batch counters) are taken from the first. Raises ValueError
    naming the first key that does not match, or for weights that are not one positive number per state."""
    if not states:
        raise ValueError("nothing to average: no weights given")
    if weights is not None and (len(weights) != len(states) or any(not w > 0 for w in weights)):
        raise ValueError(f"expected {len(states)} positive weights, one per checkpoint, got {list(weights)}")
    share = torch.tensor([1.0] * len(states) if weights is None else [float(w) for w in weights])
    share = share / share.sum()
    first = states[0]
    for i, state in enumerate(states[1:], start=2):
        if state.keys() != first.keys():
            missing = sorted(set(first) ^ set(state))[0]
            raise ValueError(f"weights #{i} do not match the first: key {missing!r} is in only one of them")
        for key, value in first.items():
            if state[key].shape != value.shape:
                raise ValueError(f"weights #{i} do not match the first: {key!r} has shape "
                                 f"{tuple(state[key].shape)}, not {tuple(value.shape)}")
    out = {}
    for key, value in first.items():
        if value.is_floating_point():
            stacked = torch.stack([s[key].detach().float().cpu() for s in states])
            out[key] = (stacked * share.view(-1, *([1] * value.dim()))).sum(0).to(value.dtype)
        else:
            out[key] = value.detach().cpu().clone()
    return out


class WeightAverage:
    """Running equal-weight mean of a model's floating-point weights, one ``update`` per epoch."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: dict[str, torch.Tensor] = {}

    def update(self, model: torch.nn.Module) -> None:
        self.count += 1
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            value = value.detach().float().cpu()
            if key not in self.mean:
                self.mean[key] = value.clone()
            else:
                self.mean[key] += (value - self.mean[key]) / self.count

    def averaged_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` holding the mean weights (BatchNorm statistics still to be recomputed)."""
        if not self.count:
            raise ValueError("no weights have been averaged yet")
        out = copy.deepcopy(model)
        state = out.state_dict()
        for key, value in self.mean.items():
            state[key] = value.to(dtype=state[key].dtype)
        out.load_state_dict(state)
        return out

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        self.mean = {k: v.float().cpu() for k, v in state["mean"].items()}


def bn_sample(pixels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` faces drawn without replacement (all of them when n is 0 or more than there are), in a fixed order."""
    if n <= 0 or n >= len(pixels):
        return pixels
    return pixels[np.sort(np.random.default_rng(seed).choice(len(pixels), n, replace=False))]


@torch.no_grad()
def recompute_batchnorm(
    model: torch.nn.Module, faces: np.ndarray, spec: Preprocessing, *, device: torch.device, batch_size: int = 256
) -> torch.nn.Module:
    """Reset every BatchNorm's running mean and variance and re-estimate them as the plain average over ``faces``
    (uint8, through the eval preset). The model is returned in eval mode; a model without BatchNorm is unchanged."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches, not an exponential one
    model.train()
    preset = EvalPreset(spec)
    for start in range(0, len(faces), batch_size):
        batch = faces[start : start + batch_size]
        if len(batch) > 1:  # a batch of one has no variance to measure (and BatchNorm1d refuses it)
            model(preset(batch).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()
