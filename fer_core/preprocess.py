"""Crop geometry and the two preprocessing presets (train and eval).

Colour order: frames and crops in this library are RGB (decord and PyAV decode to RGB); OpenCV calls that need
BGR convert at their own boundary. Classifier input is built only by :class:`EvalPreset` (serving and evaluation)
and :class:`TrainPreset` (training), both configured from the checkpoint's ``preprocessing`` record.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported inside the presets only: the decode + detect + crop stage uses this module's crop geometry
# in processes that never touch torch, and importing it there costs seconds and memory per worker.


@dataclass(frozen=True)
class Preprocessing:
    """How a checkpoint expects its input; stored in the checkpoint JSON."""

    input_size: int = 48
    """Side of the square network input in pixels."""
    channels: int = 1
    """1 = grayscale, 3 = RGB."""
    mean: tuple[float, ...] = (0.5,)
    """Per-channel mean subtracted after scaling pixels to [0, 1]."""
    std: tuple[float, ...] = (0.25,)
    """Per-channel standard deviation divided after the mean."""
    crop_margin: float = 0.01
    """Share of the detected box side added on each side before the square crop is cut from the frame. FER-2013's
    faces fill their image: YuNet's box spans 1/1.026 of the side (benchmarks/fer_framing.py), so about 0.01."""
    align: bool = False
    """Crops are turned about the face's centre so that the eye line (the detector's landmarks) is level before
    they are cut; faces without landmarks keep the upright crop. A model trained on aligned faces records True;
    checkpoints from before this field read False."""

    def __post_init__(self) -> None:
        if self.input_size < 8:
            raise ValueError(f"input_size must be >= 8, got {self.input_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values, got {self.mean} and {self.std}")
        if self.crop_margin < 0:
            raise ValueError(f"crop_margin must be >= 0, got {self.crop_margin}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def square_crop_box(box_xywh: np.ndarray, margin: float) -> np.ndarray:
    """Square boxes centred on each face box, side = max(w, h) * (1 + 2 * margin), as int (x0, y0, side).

    The result may extend beyond the frame; :func:`crop_faces` pads with edge pixels there.
    """
    box = np.asarray(box_xywh, dtype=np.float64).reshape(-1, 4)
    cx = box[:, 0] + box[:, 2] / 2
    cy = box[:, 1] + box[:, 3] / 2
    side = np.maximum(box[:, 2], box[:, 3]) * (1 + 2 * margin)
    side = np.maximum(np.round(side), 1)
    x0 = np.round(cx - side / 2)
    y0 = np.round(cy - side / 2)
    return np.stack([x0, y0, side], axis=1).astype(np.int64)


def crop_faces(
    image: np.ndarray, boxes_xywh: np.ndarray, *, margin: float, out_size: int, roll_deg: np.ndarray | None = None
) -> np.ndarray:
    """Cut square face crops (with margin) from a frame and resize them to ``out_size``.

    Args:
        image: the frame, HxWx3 RGB or HxW grayscale, uint8.
        boxes_xywh: (N, 4) face boxes in the frame's pixels.
        margin: share of the box side added on each side.
        out_size: side of the returned crops. Crops are kept small (e.g. 2x the network input) so only
            small arrays travel between processes.
        roll_deg: optional (N,) roll of each face (:func:`fer_core.measures.roll_from_eyes`): the square is
            turned by it about the box's centre so that the eyes come out level; NaN keeps the upright crop.

    Returns:
        (N, out_size, out_size[, 3]) uint8, same colour layout as ``image``. Parts outside the frame are
        filled by replicating the edge.
    """
    boxes = np.asarray(boxes_xywh).reshape(-1, 4)
    shape = (len(boxes), out_size, out_size) + image.shape[2:]
    out = np.empty(shape, dtype=np.uint8)
    rolls = np.full(len(boxes), np.nan) if roll_deg is None else np.asarray(roll_deg, dtype=np.float64).reshape(-1)
    if len(rolls) != len(boxes):
        raise ValueError(f"roll_deg has {len(rolls)} values for {len(boxes)} boxes")
    for i, (x0, y0, side) in enumerate(square_crop_box(boxes, margin)):
        if np.isfinite(rolls[i]):
            out[i] = _turned_crop(image, int(x0), int(y0), int(side), float(rolls[i]), out_size)
            continue
        patch = _square_patch(image, x0, y0, side)
        interp = cv2.INTER_AREA if side > out_size else cv2.INTER_LINEAR
        out[i] = cv2.resize(patch, (out_size, out_size), interpolation=interp)
    return out


def _square_patch(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The square ``[x0, x0 + side) x [y0, y0 + side)`` of the image, edge pixels replicated outside it."""
    h, w = image.shape[:2]
    pad_l, pad_t = max(0, -x0), max(0, -y0)
    pad_r, pad_b = max(0, x0 + side - w), max(0, y0 + side - h)
    patch = image[max(0, y0) : min(h, y0 + side), max(0, x0) : min(w, x0 + side)]
    if pad_l or pad_t or pad_r or pad_b:
        patch = cv2.copyMakeBorder(patch, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_REPLICATE)
    return patch


def _turned_crop(image: np.ndarray, x0: int, y0: int, side: int, roll_deg: float, out_size: int) -> np.ndarray:
    """The crop of the square (x0, y0, side) turned by ``roll_deg`` about its centre, at ``out_size``.

    The square's surroundings (enough for any angle) are cut first and, for a face much larger than the output,
    reduced with area averaging to twice the output's scale, so the bilinear turn does not alias.
    """
    ext = int(math.ceil(side * math.sqrt(2))) + 2
    px0, py0 = x0 + side // 2 - ext // 2, y0 + side // 2 - ext // 2
    patch = _square_patch(image, px0, py0, ext)
    scale = out_size / side
    # Pixel centres: the square's centre sits at (x0 + side / 2 - 0.5) in index coordinates.
    c = np.array([x0 + side / 2 - 0.5 - px0, y0 + side / 2 - 0.5 - py0])
    if scale < 0.5:
        reduced = max(2, int(round(ext * scale * 2)))
        r = reduced / ext
        patch = cv2.resize(patch, (reduced, reduced), interpolation=cv2.INTER_AREA)
        c, scale = (c + 0.5) * r - 0.5, scale / r
    # cv2 turns counter-clockwise for a positive angle: that levels a face whose roll (clockwise) is positive.
    m = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), roll_deg, scale)
    m[:, 2] += (out_size / 2 - 0.5) - c
    turned = cv2.warpAffine(patch, m, (out_size, out_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return turned.reshape((out_size, out_size) + image.shape[2:])


def face_crops(image: np.ndarray, boxes_xywh: np.ndarray, landmarks: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """The crops a checkpoint expects from a frame: its margin, and turned level by the eye landmarks where its
    record says ``align`` (landmarks NaN, as from Haar, keep the upright crop)."""
    roll = None
    if spec.align:
        from fer_core.measures import roll_from_eyes

        roll = roll_from_eyes(np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2))
    return crop_faces(image, boxes_xywh, margin=spec.crop_margin, out_size=spec.input_size, roll_deg=roll)


def to_channels(crops: np.ndarray, channels: int) -> np.ndarray:
    """(N, H, W) or (N, H, W, 3) uint8 -> (N, H, W, channels) uint8."""
    if crops.ndim == 3:
        crops = crops[..., None]
    if crops.ndim != 4 or crops.shape[-1] not in (1, 3):
        raise ValueError(f"expected crops as N x H x W (grayscale) or N x H x W x 3 (RGB) uint8, got shape {crops.shape}")
    if crops.shape[-1] == channels:
        return crops
    if channels == 1:
        # ITU-R 601 luma, as cv2.COLOR_RGB2GRAY.
        gray = crops[..., 0] * 0.299 + crops[..., 1] * 0.587 + crops[..., 2] * 0.114
        return np.clip(np.round(gray), 0, 255).astype(np.uint8)[..., None]
    return np.repeat(crops, 3, axis=-1)


@dataclass(frozen=True)
class EvalPreset:
    """Deterministic preprocessing for evaluation and serving: to the checkpoint's channels and size, normalised."""

    spec: Preprocessing = field(default_factory=Preprocessing)

    def __call__(self, crops: np.ndarray) -> torch.Tensor:
        """uint8 crops (N x H x W or N x H x W x 3 RGB, any size) -> float tensor (N, C, S, S)."""
        crops = np.asarray(crops)
        if crops.dtype != np.uint8:
            raise ValueError(f"expected uint8 crops, got dtype {crops.dtype}")
        crops = to_channels(crops, self.spec.channels)
        size = self.spec.input_size
        if crops.shape[1:3] != (size, size):
            resized = np.empty((len(crops), size, size, crops.shape[-1]), dtype=np.uint8)
            for i, crop in enumerate(crops):
                interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
                resized[i] = cv2.resize(crop, (size, size), interpolation=interp).reshape(size, size, -1)
            crops = resized
        import torch

        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
        return normalize(x, self.spec)


def normalize(x: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """Subtract the spec's mean and divide by its std, per channel, on a (N, C, H, W) tensor in [0, 1]."""
    import torch

    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


@dataclass(frozen=True)
class TrainPreset:
    """Batched training augmentation on tensors, so it runs on the GPU as well as the CPU.

    Input: uint8 or float tensor (N, C, S, S) at the checkpoint's input size; output: normalised float.
    Random crop from a reflect-padded image, horizontal flip, small rotation / scale / shift, brightness and
    contrast, optional video-like corruptions (:mod:`fer_core.corrupt`), random erasing.
    """

    spec: Preprocessing = field(default_factory=Preprocessing)
    pad: int = 4
    """Reflect padding before the random crop, in pixels."""
    flip: bool = True
    rotate_deg: float = 10.0
    scale: float = 0.1
    """Maximum relative zoom in or out."""
    translate: float = 0.0
    """Maximum shift as a share of the side (the random crop already shifts)."""
    brightness: float = 0.2
    contrast: float = 0.2
    erase_p: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.2)
    corruptions: dict[str, float] = field(default_factory=dict)
    """Video-like corruptions (names in :data:`fer_core.corrupt.CORRUPTIONS`), each applied to an image with its
    own probability, after the geometric and photometric steps and before normalisation."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        n, _, s, _ = x.shape
        dev = x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device="cpu").to(dev)

        if self.pad > 0:
            x = F.pad(x, (self.pad,) * 4, mode="reflect")
            # Random crop as a per-sample shift folded into the affine grid below.
        shift = (rand(n, 2) * 2 - 1) * (self.pad / (s + 2 * self.pad) * 2) if self.pad > 0 else torch.zeros(n, 2, device=dev)
        shift = shift + (rand(n, 2) * 2 - 1) * self.translate * 2
        angle = (rand(n) * 2 - 1) * math.radians(self.rotate_deg)
        zoom = 1 + (rand(n) * 2 - 1) * self.scale
        flip = torch.where(rand(n) < 0.5, -1.0, 1.0) if self.flip else torch.ones(n, device=dev)
        # Output covers the central s x s window of the padded image, rotated / zoomed about its centre.
        ratio = s / x.shape[-1]
        cos, sin = torch.cos(angle) / zoom * ratio, torch.sin(angle) / zoom * ratio
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta, [n, x.shape[1], s, s], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.brightness or self.contrast:
            b = 1 + (rand(n, 1, 1, 1) * 2 - 1) * self.brightness
            c = 1 + (rand(n, 1, 1, 1) * 2 - 1) * self.contrast
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - m) * c + m * b).clamp_(0, 1)
        if any(p > 0 for p in self.corruptions.values()):
            from fer_core.corrupt import CorruptionAugment

            x = CorruptionAugment(dict(self.corruptions))(x, rand)
        x = normalize(x, self.spec)
        if self.erase_p > 0:
            x = _random_erase(x, self.erase_p, self.erase_area, rand)
        return x


def _random_erase(x: torch.Tensor, p: float, area: tuple[float, float], rand) -> torch.Tensor:
    """Zero (the normalised mean) a random rectangle in a share ``p`` of the images, vectorised over the batch."""
    import torch

    n, _, s, _ = x.shape
    frac = area[0] + rand(n) * (area[1] - area[0])
    aspect = torch.exp((rand(n) * 2 - 1) * math.log(3.0))
    eh = (torch.sqrt(frac * aspect) * s).clamp(1, s)
    ew = (torch.sqrt(frac / aspect) * s).clamp(1, s)
    y0 = rand(n) * (s - eh)
    x0 = rand(n) * (s - ew)
    coords = torch.arange(s, device=x.device, dtype=x.dtype)
    in_y = (coords[None, :] >= y0[:, None]) & (coords[None, :] < (y0 + eh)[:, None])
    in_x = (coords[None, :] >= x0[:, None]) & (coords[None, :] < (x0 + ew)[:, None])
    mask = (in_y[:, :, None] & in_x[:, None, :]) & (rand(n) < p)[:, None, None]
    return x.masked_fill(mask[:, None], 0.0)
