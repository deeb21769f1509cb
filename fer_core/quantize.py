"""int8 inference on the CPU: PyTorch's x86 quantization (FX graph mode, fbgemm kernels) with static activation
ranges that travel in the checkpoint's JSON, so a quantized model is rebuilt from the safetensors weights and a few
numbers, never from pickled bytes.

Weights are quantized per output channel (symmetric) when the model is built; activations with the min / max
ranges measured once on Training faces (``training/quantize.py``) and stored under ``quantization`` in
``fer_checkpoint.json``. The ranges are fixed, so a face gets the same answer whatever batch it is in.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

SCHEME = "x86-fx-minmax/1"


def has_calibration(meta: Any) -> bool:
    """Whether a checkpoint's metadata carries an int8 calibration of this scheme."""
    return meta.quantization.get("scheme") == SCHEME


def require_calibration(meta: Any, model_id: str) -> dict[str, Any]:
    """The checkpoint's int8 record, or a CheckpointError that says how to add one."""
    from fer_core.checkpoint import CheckpointError

    record = meta.quantization
    if not has_calibration(meta):
        raise CheckpointError(f"checkpoint {model_id} has no int8 calibration; add one with training/quantize.py, "
                              "or use --precision fp32 or bf16")
    return record


def _qconfig_mapping() -> Any:
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    # reduce_range keeps 7-bit activations: fbgemm's AVX2 kernels can saturate with the full 8 bits.
    qconfig = QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=True),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
    )
    return QConfigMapping().set_global(qconfig)


def _prepared(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    import warnings

    import torch.fx.config as fx_config
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    # FX records the Python stack of every traced node for its error messages; symbolising the first one imports
    # torch._dynamo and torch._inductor: 1.5 of the 1.6 s that building the int8 model took in a new process.
    emit_traces = fx_config.do_not_emit_stack_traces
    fx_config.do_not_emit_stack_traces = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FX quantization's deprecation notices, which say nothing about this model
            return prepare_fx(copy.deepcopy(model).eval(), _qconfig_mapping(), example_inputs=(example,))
    finally:
        fx_config.do_not_emit_stack_traces = emit_traces


def _observers(prepared: torch.nn.Module) -> dict[str, Any]:
    from torch.ao.quantization.observer import MinMaxObserver

    return {name: m for name, m in prepared.named_modules() if type(m) is MinMaxObserver}


@torch.inference_mode()
def calibrate(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> dict[str, list[float]]:
    """Activation ranges of ``model`` on normalised inputs (N, C, S, S): ``{observer: [min, max]}``."""
    prepared = _prepared(model, inputs[:1])
    for start in range(0, len(inputs), batch_size):
        prepared(inputs[start : start + batch_size])
    return {name: [float(obs.min_val), float(obs.max_val)] for name, obs in _observers(prepared).items()}


def quantized_model(model: torch.nn.Module, ranges: dict[str, list[float]], example: torch.Tensor) -> torch.nn.Module:
    """The int8 model of ``model`` with the stored activation ranges.

    Raises:
        ValueError: if the ranges were measured on another architecture (their names do not match).
    """
    import warnings

    from torch.ao.quantization.quantize_fx import convert_fx

    prepared = _prepared(model, example)
    observers = _observers(prepared)
    if set(observers) != set(ranges):
        missing = sorted(set(observers) ^ set(ranges))[:3]
        raise ValueError(f"the int8 calibration does not fit this model (observers differ: {missing})")
    for name, obs in observers.items():
        lo, hi = ranges[name]
        obs.min_val.copy_(torch.tensor(lo))
        obs.max_val.copy_(torch.tensor(hi))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared).eval()
