"""Weight averaging: the mean of state dicts, the running mean kept during a run, and BatchNorm re-estimation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_core.models import create_model
from fer_core.preprocess import EvalPreset, Preprocessing
from training.swa import WeightAverage, average_states, bn_sample, recompute_batchnorm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _models(n: int) -> list[torch.nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(create_model("fer_vgg_tiny").eval())
    return out


def test_average_states_is_the_element_wise_mean_and_keeps_integer_counters() -> None:
    a, b, c = (m.state_dict() for m in _models(3))
    b = {k: (v + 5 if not v.is_floating_point() else v) for k, v in b.items()}
    mean = average_states([a, b, c])
    for key, value in a.items():
        if value.is_floating_point():
            assert torch.allclose(mean[key], (a[key] + b[key] + c[key]) / 3, atol=1e-6), key
        else:
            assert torch.equal(mean[key], value), key  # counters from the first, not averaged


def test_average_states_names_the_mismatch() -> None:
    small = create_model("fer_vgg_tiny").state_dict()
    with pytest.raises(ValueError, match="nothing to average"):
        average_states([])
    with pytest.raises(ValueError, match=r"weights #2 do not match the first: key"):
        average_states([small, create_model("seed_cnn").state_dict()])
    wider = dict(small)
    key = next(k for k, v in small.items() if v.ndim == 4)
    wider[key] = torch.zeros(small[key].shape[0] + 1, *small[key].shape[1:])
    with pytest.raises(ValueError, match=rf"{key!r} has shape"):
        average_states([small, wider])


def test_running_average_equals_the_mean_of_the_epochs_and_survives_a_state_round_trip() -> None:
    models = _models(4)
    running = WeightAverage()
    for m in models[:2]:
        running.update(m)
    restored = WeightAverage()
    restored.load_state_dict(running.state_dict())  # as a resumed run restores it from train_state.pt
    for m in models[2:]:
        restored.update(m)
    assert restored.count == 4
    averaged = restored.averaged_model(models[0]).state_dict()
    expected = average_states([m.state_dict() for m in models])
    for key, value in expected.items():
        if value.is_floating_point():
            assert torch.allclose(averaged[key], value, atol=1e-5), key
    # The template keeps its own weights: averaged_model returns a copy.
    conv = next(k for k, v in expected.items() if v.ndim == 4)
    assert torch.equal(models[0].state_dict()[conv], _models(1)[0].state_dict()[conv])
    assert not torch.allclose(averaged[conv], models[0].state_dict()[conv])


def test_averaged_model_before_any_update_is_an_error() -> None:
    with pytest.raises(ValueError, match="no weights have been averaged"):
        WeightAverage().averaged_model(_models(1)[0])


def test_recompute_batchnorm_measures_the_plain_mean_and_variance_of_its_input() -> None:
    spec = Preprocessing()
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, 3)
    model = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(3, momentum=0.1)).eval()
    faces = np.random.default_rng(0).integers(0, 256, size=(300, 48, 48), dtype=np.uint8)
    recompute_batchnorm(model, faces, spec, device=torch.device("cpu"), batch_size=100)
    bn = model[1]
    assert not model.training and bn.momentum == 0.1  # eval mode and the layer's own momentum are restored
    with torch.no_grad():
        feats = conv(EvalPreset(spec)(faces))
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-4)
    # Three equal batches: the cumulative average of their unbiased variances.
    per_batch = torch.stack([feats[i : i + 100].transpose(0, 1).reshape(3, -1).var(1) for i in (0, 100, 200)])
    assert torch.allclose(bn.running_var, per_batch.mean(0), rtol=1e-4)


def test_recompute_batchnorm_leaves_a_model_without_batchnorm_alone() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    faces = np.zeros((4, 48, 48), dtype=np.uint8)
    out = recompute_batchnorm(model, faces, Preprocessing(), device=torch.device("cpu"))
    assert out is model and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bn_sample_draws_distinct_faces_in_order_and_all_when_asked() -> None:
    pixels = np.arange(50, dtype=np.uint8).reshape(50, 1, 1)
    sample = bn_sample(pixels, 20, seed=3)
    assert len(sample) == 20 and len(np.unique(sample)) == 20 and np.all(np.diff(sample[:, 0, 0].astype(int)) > 0)
    assert bn_sample(pixels, 0) is pixels and bn_sample(pixels, 80) is pixels
