"""Tests for fer_core.preprocess: crop geometry, the eval preset and the train preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_core.preprocess import EvalPreset, Preprocessing, TrainPreset, crop_faces, square_crop_box

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRAY = Preprocessing()  # 48 px, 1 channel, mean 0.5, std 0.25
RGB = Preprocessing(input_size=32, channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def _ramp(h: int = 100, w: int = 120) -> np.ndarray:
    """A frame whose every pixel is distinct enough to locate a crop: value = (3 * y + x) mod 256."""
    y, x = np.mgrid[0:h, 0:w]
    return ((3 * y + x) % 256).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ crop geometry


@pytest.mark.parametrize(
    ("box", "margin", "expected"),
    [
        ((20, 30, 40, 40), 0.0, (20, 30, 40)),  # square box, no margin: itself
        ((40, 40, 20, 20), 0.5, (30, 30, 40)),  # margin 0.5 on each side doubles the side about the centre
        ((10, 20, 40, 20), 0.25, (0, 0, 60)),  # rectangle: side = max(w, h) * 1.5, centred
        ((-10, -5, 30, 30), 0.0, (-10, -5, 30)),  # may leave the frame; crop_faces pads there
    ],
)
def test_square_crop_box(box: tuple, margin: float, expected: tuple) -> None:
    np.testing.assert_array_equal(square_crop_box(np.array([box]), margin), [expected])


def test_crop_inside_frame_is_the_exact_square() -> None:
    frame = _ramp()
    crops = crop_faces(frame, np.array([[20, 30, 40, 40], [40, 40, 20, 20]]), margin=0.0, out_size=40)
    assert crops.shape == (2, 40, 40) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops[0], frame[30:70, 20:60])
    margin = crop_faces(frame, np.array([[40, 40, 20, 20]]), margin=0.5, out_size=40)
    np.testing.assert_array_equal(margin[0], frame[30:70, 30:70])


def test_crop_at_frame_edges_replicates_edge_pixels() -> None:
    frame = _ramp(60, 80)
    top_left = crop_faces(frame, np.array([[-10, -10, 30, 30]]), margin=0.0, out_size=30)[0]
    np.testing.assert_array_equal(top_left[10:, 10:], frame[:20, :20])
    np.testing.assert_array_equal(top_left[:10, 10:], np.broadcast_to(frame[0, :20], (10, 20)))
    np.testing.assert_array_equal(top_left[10:, :10], np.broadcast_to(frame[:20, :1], (20, 10)))
    bottom_right = crop_faces(frame, np.array([[70, 50, 20, 20]]), margin=0.0, out_size=20)[0]
    np.testing.assert_array_equal(bottom_right[:10, :10], frame[50:, 70:])
    np.testing.assert_array_equal(bottom_right[10:, :10], np.broadcast_to(frame[-1, 70:], (10, 10)))
    # A box entirely outside the frame still gives a crop of the requested size.
    assert crop_faces(frame, np.array([[500, 500, 10, 10]]), margin=0.0, out_size=8).shape == (1, 8, 8)


def test_crop_out_size_rgb_and_no_boxes() -> None:
    frame = np.dstack([_ramp(), _ramp() // 2, 255 - _ramp()])
    crops = crop_faces(frame, np.array([[20, 30, 40, 40], [0, 0, 10, 10]]), margin=0.15, out_size=24)
    assert crops.shape == (2, 24, 24, 3) and crops.dtype == np.uint8
    assert crop_faces(frame, np.zeros((0, 4)), margin=0.15, out_size=24).shape == (0, 24, 24, 3)
    assert crop_faces(_ramp(), np.zeros((0, 4)), margin=0.15, out_size=24).shape == (0, 24, 24)


# ------------------------------------------------------------------------------------------------ eval preset


@pytest.mark.parametrize("shape", [(3, 48, 48), (2, 96, 96), (1, 30, 30), (2, 64, 64, 3), (1, 48, 48, 3)])
def test_eval_preset_any_size_gray_or_rgb_to_network_input(shape: tuple) -> None:
    crops = np.full(shape, 128, dtype=np.uint8)
    x = EvalPreset(GRAY)(crops)
    assert x.shape == (shape[0], 1, 48, 48) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.full_like(x, (128 / 255 - 0.5) / 0.25))


def test_eval_preset_rgb_checkpoint_normalises_per_channel() -> None:
    crops = np.zeros((2, 40, 40, 3), dtype=np.uint8)
    crops[..., 0], crops[..., 1], crops[..., 2] = 51, 102, 153
    x = EvalPreset(RGB)(crops)
    assert x.shape == (2, 3, 32, 32)
    expected = [(51 / 255 - 0.4) / 0.2, (102 / 255 - 0.5) / 0.25, (153 / 255 - 0.6) / 0.3]
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.tensor(expected), atol=1e-5, rtol=0)
    gray_in = EvalPreset(RGB)(np.full((1, 32, 32), 51, dtype=np.uint8))  # gray crops are repeated to 3 channels
    assert gray_in.shape == (1, 3, 32, 32)


def test_eval_preset_rgb_to_gray_uses_luma() -> None:
    red = np.zeros((1, 48, 48, 3), dtype=np.uint8)
    red[..., 0] = 200
    x = EvalPreset(GRAY)(red)
    torch.testing.assert_close(x[0, 0, 0, 0], torch.tensor((round(200 * 0.299) / 255 - 0.5) / 0.25))


@pytest.mark.parametrize(
    ("crops", "message"),
    [(np.zeros((1, 48, 48), np.float32), "expected uint8"), (np.zeros((48, 48), np.uint8), "N x H x W"),
     (np.zeros((1, 48, 48, 4), np.uint8), "N x H x W x 3")],
)
def test_eval_preset_rejects_bad_crops(crops: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvalPreset(GRAY)(crops)


def test_preprocessing_validates_and_round_trips() -> None:
    assert Preprocessing.from_dict(RGB.to_dict()) == RGB
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        Preprocessing(channels=2, mean=(0.5, 0.5), std=(0.2, 0.2))
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        Preprocessing(channels=3)


# ------------------------------------------------------------------------------------------------ train preset

NO_AUG = dict(pad=0, flip=False, rotate_deg=0.0, scale=0.0, translate=0.0, brightness=0.0, contrast=0.0, erase_p=0.0)


def _faces(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, 48, 48), dtype=np.uint8))


def test_train_preset_shape_dtype_finite() -> None:
    x = TrainPreset(GRAY)(_faces(), generator=torch.Generator().manual_seed(0))
    assert x.shape == (16, 1, 48, 48) and x.dtype == torch.float32 and torch.isfinite(x).all()
    # Normalised: pixels in [0, 1] map to [-2, 2] with mean 0.5 and std 0.25.
    assert x.min() >= -2 - 1e-5 and x.max() <= 2 + 1e-5


def test_train_preset_is_deterministic_under_a_seeded_generator() -> None:
    preset, faces = TrainPreset(GRAY), _faces()
    a = preset(faces, generator=torch.Generator().manual_seed(7))
    b = preset(faces, generator=torch.Generator().manual_seed(7))
    c = preset(faces, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_train_preset_without_augmentation_equals_eval_preset() -> None:
    # Training and serving see the same pixels when every augmentation is off: the presets cannot drift.
    faces = _faces(4)
    train = TrainPreset(GRAY, **NO_AUG)(faces)
    evaluated = EvalPreset(GRAY)(faces[:, 0].numpy())
    torch.testing.assert_close(train, evaluated, atol=1e-5, rtol=0)


def test_train_preset_flip_mirrors_some_images() -> None:
    faces = _faces(1).repeat(32, 1, 1, 1)
    x = TrainPreset(GRAY, **{**NO_AUG, "flip": True})(faces, generator=torch.Generator().manual_seed(0))
    plain = EvalPreset(GRAY)(faces[:1, 0].numpy())[0]
    mirrored = torch.flip(plain, dims=[2])
    is_plain = torch.tensor([torch.allclose(img, plain, atol=1e-5) for img in x])
    is_mirrored = torch.tensor([torch.allclose(img, mirrored, atol=1e-5) for img in x])
    assert (is_plain ^ is_mirrored).all()  # each image is exactly one of the two
    assert is_plain.any() and is_mirrored.any()


def test_train_preset_random_erasing_changes_some_pixels() -> None:
    faces = torch.full((8, 1, 48, 48), 200, dtype=torch.uint8)  # normalises to about 1.14, never 0
    erased = TrainPreset(GRAY, **{**NO_AUG, "erase_p": 1.0})(faces, generator=torch.Generator().manual_seed(0))
    zeroed = (erased == 0).flatten(1).sum(1)
    assert (zeroed > 0).all()  # every image lost a rectangle (p = 1) ...
    assert (zeroed < 48 * 48 * 0.5).all()  # ... of at most 20% of the area (plus rounding)
    untouched = TrainPreset(GRAY, **NO_AUG)(faces)
    assert not (untouched == 0).any()


def test_train_preset_rgb_and_float_input() -> None:
    faces = torch.rand(4, 3, 32, 32)
    x = TrainPreset(RGB)(faces, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 32, 32) and torch.isfinite(x).all()
