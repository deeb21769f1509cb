"""The video-like corruptions (fer_core/corrupt.py) and their use as training augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_core.corrupt import BENCHMARK_LEVELS, CORRUPTIONS, TRAIN_RANGES, CorruptionAugment, corrupt, seeded_rand
from fer_core.preprocess import Preprocessing, TrainPreset
from training.config import CORRUPTION_KEYS, ConfigError, load_config
from training.loop import train_preset_of


@pytest.fixture(scope="module")
def faces(fer_data_dir) -> torch.Tensor:
    with np.load(fer_data_dir / "fer2013_test.npz") as d:
        return torch.from_numpy(d["pixels"][:64]).float()[:, None] / 255


def test_every_corruption_has_levels_a_training_range_and_a_config_key() -> None:
    assert set(CORRUPTIONS) == set(BENCHMARK_LEVELS) == set(TRAIN_RANGES)
    assert {f"aug_{name}_p" for name in CORRUPTIONS} == set(CORRUPTION_KEYS)
    for name, (lo, hi) in TRAIN_RANGES.items():
        # Training covers every severity the benchmark measures.
        assert lo <= min(BENCHMARK_LEVELS[name]) and max(BENCHMARK_LEVELS[name]) <= hi, name


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_keeps_shape_and_range_changes_the_face_and_repeats_for_a_seed(faces, name) -> None:
    level = BENCHMARK_LEVELS[name][1]
    a = corrupt(faces, name, level, seeded_rand(7))
    b = corrupt(faces, name, level, seeded_rand(7))
    assert a.shape == faces.shape and a.dtype == faces.dtype
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert float((a - faces).abs().mean()) > 0.01, "the corruption left the faces almost unchanged"


@pytest.mark.parametrize("name", ["gaussian_blur", "motion_blur", "downscale", "jpeg", "noise", "low_light", "roll", "occlusion"])
def test_a_higher_severity_changes_the_face_more(faces, name) -> None:
    diffs = [float((corrupt(faces, name, level, seeded_rand(1)) - faces).abs().mean()) for level in BENCHMARK_LEVELS[name]]
    assert diffs == sorted(diffs), diffs


def test_blur_keeps_a_flat_image_flat_and_low_light_darkens() -> None:
    flat = torch.full((2, 1, 48, 48), 0.5)
    assert torch.allclose(corrupt(flat, "gaussian_blur", 2.0, seeded_rand(0)), flat, atol=1e-5)
    assert torch.allclose(corrupt(flat, "motion_blur", 7.0, seeded_rand(0)), flat, atol=1e-5)
    dark = corrupt(flat, "low_light", 3.0, seeded_rand(0))
    assert torch.allclose(dark, torch.full_like(flat, 0.5**3 * 0.6), atol=1e-5)


def test_per_image_levels_and_an_empty_batch(faces) -> None:
    levels = torch.tensor([0.5, 2.0] * 32)
    out = corrupt(faces, "gaussian_blur", levels, seeded_rand(0))
    one = corrupt(faces[:1], "gaussian_blur", 0.5, seeded_rand(0))
    assert torch.allclose(out[:1], one, atol=1e-5)
    assert corrupt(faces[:0], "jpeg", 20, seeded_rand(0)).shape == (0, 1, 48, 48)
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(faces, "fog", 1.0, seeded_rand(0))


def test_augment_applies_each_corruption_with_its_own_probability(faces) -> None:
    assert torch.equal(CorruptionAugment({})(faces, seeded_rand(0)), faces)
    assert torch.equal(CorruptionAugment({"jpeg": 0.0})(faces, seeded_rand(0)), faces)
    every = CorruptionAugment({"noise": 1.0})(faces, seeded_rand(0))
    changed = (every - faces).abs().flatten(1).amax(1) > 0
    assert bool(changed.all())
    some = CorruptionAugment({"occlusion": 0.5})(faces.repeat(8, 1, 1, 1), seeded_rand(3))
    share = float(((some - faces.repeat(8, 1, 1, 1)).abs().flatten(1).amax(1) > 0).float().mean())
    assert 0.35 < share < 0.65, share
    with pytest.raises(ValueError, match="unknown corruption"):
        CorruptionAugment({"fog": 0.5})
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        CorruptionAugment({"jpeg": 1.5})


def test_train_preset_applies_the_config_corruptions(faces) -> None:
    cfg = load_config(None, {"aug_jpeg_p": "1", "aug_noise_p": 0.25})
    preset = train_preset_of(cfg)
    assert preset.corruptions["jpeg"] == 1.0 and preset.corruptions["noise"] == 0.25 and preset.corruptions["roll"] == 0
    plain = TrainPreset(spec=Preprocessing(), pad=0, flip=False, rotate_deg=0, scale=0, brightness=0, contrast=0, erase_p=0)
    jpeg = TrainPreset(spec=Preprocessing(), pad=0, flip=False, rotate_deg=0, scale=0, brightness=0, contrast=0, erase_p=0,
                       corruptions={"jpeg": 1.0})
    u8 = (faces * 255).round().to(torch.uint8)
    a = plain(u8, generator=torch.Generator().manual_seed(0))
    b = jpeg(u8, generator=torch.Generator().manual_seed(0))
    assert a.shape == b.shape and float((a - b).abs().mean()) > 0.01


@pytest.mark.parametrize("key", CORRUPTION_KEYS)
def test_config_refuses_a_probability_outside_0_1(key) -> None:
    with pytest.raises(ConfigError, match=f"{key}: must be in"):
        load_config(None, {key: "1.2"})
