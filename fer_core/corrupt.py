"""What video does to faces, as batched tensor operations: the corruptions of the robustness benchmark and of
robust training.

Every corruption takes float images in [0, 1], (N, C, S, S), on any device, and a per-image severity
``level`` (N,), and returns images of the same shape. The benchmark applies each one alone at fixed
severities (:data:`BENCHMARK_LEVELS`); training applies each with its own probability at a severity drawn
from :data:`TRAIN_RANGES` (:class:`CorruptionAugment`, used by :class:`fer_core.preprocess.TrainPreset`).

Order in training follows a camera: geometry (roll, the detector's crop jitter), then optics (blur, motion
blur, a small face upscaled), then the scene (occlusion, low light), then the sensor (noise) and last the
encoder (JPEG).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

Rand = Callable[..., torch.Tensor]
"""``rand(*shape)``: uniform [0, 1) samples on the images' device, from the caller's seeded generator."""

# Severity of each corruption, in the unit its name says:
#   gaussian_blur: sigma in pixels at 48 px; motion_blur: streak length in pixels (random direction);
#   downscale: side in pixels the face is reduced to before it is upscaled back; jpeg: quality;
#   noise: sigma in grey levels of 255; low_light: gamma, with a gain of 1 - 0.2 * (gamma - 1);
#   roll: degrees (random sign); crop_jitter: the largest shift, as a share of the side, and the largest
#   relative zoom; occlusion: the share of the face an occluder covers.
BENCHMARK_LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian_blur": (0.6, 1.2, 2.0),
    "motion_blur": (3.0, 5.0, 7.0),
    "downscale": (24.0, 20.0, 16.0),
    "jpeg": (30.0, 20.0, 10.0),
    "noise": (5.0, 10.0, 20.0),
    "low_light": (1.6, 2.2, 3.0),
    "roll": (15.0, 22.5, 30.0),
    "crop_jitter": (0.05, 0.10, 0.15),
    "occlusion": (0.10, 0.20, 0.30),
}
CORRUPTIONS: tuple[str, ...] = ("roll", "crop_jitter", "gaussian_blur", "motion_blur", "downscale", "occlusion",
                                "low_light", "noise", "jpeg")
"""Every corruption, in the order training applies them."""
TRAIN_RANGES: dict[str, tuple[float, float]] = {
    "gaussian_blur": (0.4, 2.2),
    "motion_blur": (2.0, 8.0),
    "downscale": (14.0, 30.0),
    "jpeg": (8.0, 40.0),
    "noise": (2.0, 22.0),
    "low_light": (1.2, 3.2),
    "roll": (8.0, 32.0),
    "crop_jitter": (0.02, 0.16),
    "occlusion": (0.06, 0.32),
}
"""Severity range each training corruption draws from (uniform); it spans the benchmark's levels."""


def low_light_gain(gamma: torch.Tensor) -> torch.Tensor:
    """The gain paired with a gamma: 0.8 at 2.0, 0.6 at 3.0 (a darker scene is also a dimmer one)."""
    return (1 - 0.2 * (gamma - 1)).clamp(0.2, 1.0)


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].clamp(min=1e-3)) ** 2)
    return k / k.sum(1, keepdim=True)


def _per_image_conv(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve image i with kernels[i] ((N, kh, kw)), every channel alike, replicate-padded."""
    n, c, s, _ = x.shape
    kh, kw = kernels.shape[1:]
    padded = F.pad(x.reshape(1, n * c, s, s), (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
    weight = kernels.repeat_interleave(c, 0)[:, None].to(x.dtype)
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, s, s)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, rand: Rand | None = None) -> torch.Tensor:
    """Out-of-focus blur: a separable Gaussian of ``sigma`` pixels per image."""
    radius = max(1, math.ceil(3 * float(sigma.max())))
    k = _gaussian_kernels(sigma.to(x.dtype), radius)
    x = _per_image_conv(x, k[:, None, :])
    return _per_image_conv(x, k[:, :, None])


def motion_blur(x: torch.Tensor, length: torch.Tensor, rand: Rand) -> torch.Tensor:
    """A streak of ``length`` pixels in a random direction per image (the face or the camera moved)."""
    n = len(x)
    radius = max(1, math.ceil(float(length.max()) / 2))
    angle = rand(n) * math.pi
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    dx, dy = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    along = xx[None] * dx + yy[None] * dy
    across = (-xx[None] * dy + yy[None] * dx).abs()
    half = (length.to(x.dtype) / 2)[:, None, None]
    # Each pixel's weight is its overlap with a one-pixel-wide segment of the given length.
    k = (1 - across).clamp(min=0) * (half + 0.5 - along.abs()).clamp(0, 1)
    return _per_image_conv(x, k / k.sum((1, 2), keepdim=True))


def downscale(x: torch.Tensor, side: torch.Tensor, rand: Rand | None = None) -> torch.Tensor:
    """A small face: reduced to ``side`` pixels (area average) and upscaled back (bilinear), as the job
    upscales a small crop to the network's input."""
    out = x.clone()
    s = x.shape[-1]
    sides = side.round().long().clamp(2, s)
    for v in sides.unique().tolist():
        m = sides == v
        small = F.interpolate(x[m], size=(v, v), mode="area")
        out[m] = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1)
    return out


def jpeg(x: torch.Tensor, quality: torch.Tensor, rand: Rand | None = None) -> torch.Tensor:
    """JPEG compression at ``quality`` (libjpeg through torchvision, on the CPU whatever the images' device: the
    same codec, and so the same pixels, in training on a GPU as in the benchmark on a CPU)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    out = x.clone()
    u8 = (x * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    qs = quality.round().long().clamp(1, 100).cpu()
    for q in qs.unique().tolist():
        idx = torch.nonzero(qs == q).flatten()
        decoded = torch.stack([decode_jpeg(e) for e in encode_jpeg([u8[i] for i in idx.tolist()], quality=int(q))])
        out[idx.to(x.device)] = decoded.reshape(len(idx), *x.shape[1:]).to(x.device, x.dtype) / 255
    return out


def noise(x: torch.Tensor, sigma: torch.Tensor, rand: Rand) -> torch.Tensor:
    """Sensor noise: Gaussian, ``sigma`` grey levels of 255, independent per pixel."""
    u1, u2 = rand(*x.shape).clamp(min=1e-7), rand(*x.shape)
    z = torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)  # Box-Muller: the caller's generator only
    return (x + z * (sigma.to(x.dtype) / 255).view(-1, 1, 1, 1)).clamp(0, 1)


def low_light(x: torch.Tensor, gamma: torch.Tensor, rand: Rand | None = None) -> torch.Tensor:
    """A dark scene: ``gamma`` applied to the intensities and then :func:`low_light_gain`."""
    g = gamma.to(x.dtype).view(-1, 1, 1, 1)
    return x.clamp(min=0) ** g * low_light_gain(g)


def _affine(x: torch.Tensor, angle: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def roll(x: torch.Tensor, degrees: torch.Tensor, rand: Rand) -> torch.Tensor:
    """An in-plane head tilt of ``degrees``, to a random side, about the crop's centre."""
    n = len(x)
    sign = torch.where(rand(n) < 0.5, -1.0, 1.0).to(x.device)
    ones = torch.ones(n, device=x.device)
    return _affine(x, torch.deg2rad(degrees.to(x.device) * sign), ones, torch.zeros(n, 2, device=x.device))


def crop_jitter(x: torch.Tensor, amount: torch.Tensor, rand: Rand) -> torch.Tensor:
    """A detector's box jitter: the crop shifted by up to ``amount`` of the side each way and zoomed by up to
    ``amount`` in or out."""
    n = len(x)
    a = amount.to(x.device)
    shift = (rand(n, 2) * 2 - 1) * a[:, None] * 2  # affine_grid's coordinates span 2 per side
    zoom = 1 + (rand(n) * 2 - 1) * a
    return _affine(x, torch.zeros(n, device=x.device), zoom, shift)


def occlusion(x: torch.Tensor, area: torch.Tensor, rand: Rand) -> torch.Tensor:
    """A hand, a microphone or a cup: a flat rectangle of random grey covering ``area`` of the face, at a random
    place and aspect (1:2 to 2:1)."""
    n, _, s, _ = x.shape
    aspect = torch.exp((rand(n) * 2 - 1) * math.log(2.0))
    a = area.to(x.device)
    h = (torch.sqrt(a * aspect) * s).clamp(1, s)
    w = (torch.sqrt(a / aspect) * s).clamp(1, s)
    y0, x0 = rand(n) * (s - h), rand(n) * (s - w)
    grey = rand(n)
    pos = torch.arange(s, device=x.device, dtype=x.dtype)
    in_y = (pos[None] >= y0[:, None]) & (pos[None] < (y0 + h)[:, None])
    in_x = (pos[None] >= x0[:, None]) & (pos[None] < (x0 + w)[:, None])
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    return torch.where(mask, grey.view(-1, 1, 1, 1).to(x.dtype), x)


_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur,
    "downscale": downscale,
    "jpeg": jpeg,
    "noise": noise,
    "low_light": low_light,
    "roll": roll,
    "crop_jitter": crop_jitter,
    "occlusion": occlusion,
}


def corrupt(x: torch.Tensor, name: str, level: float | torch.Tensor, rand: Rand) -> torch.Tensor:
    """Apply one corruption to every image of ``x`` at ``level`` (a number, or one per image).

    Raises:
        ValueError: for an unknown corruption name.
    """
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if len(x) == 0:
        return x
    levels = torch.as_tensor(level, dtype=torch.float32, device=x.device).expand(len(x)).clone()
    return _FUNCTIONS[name](x, levels, rand).clamp(0, 1)


def seeded_rand(seed: int, device: torch.device | str = "cpu") -> Rand:
    """A ``rand(*shape)`` drawing from a CPU generator with ``seed`` (the same numbers on every device)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen).to(device)

    return rand


@dataclass(frozen=True)
class CorruptionAugment:
    """Training augmentation: each corruption applied to a random share of the batch, at a random severity.

    ``probs`` maps corruption names to the probability that an image gets that corruption; an image can get
    several. Severities are uniform over :data:`TRAIN_RANGES`.
    """

    probs: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, p in self.probs.items():
            if name not in _FUNCTIONS:
                raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
            if not 0 <= p <= 1:
                raise ValueError(f"probability of {name} must be in [0, 1], got {p}")

    @property
    def active(self) -> bool:
        return any(p > 0 for p in self.probs.values())

    def __call__(self, x: torch.Tensor, rand: Rand) -> torch.Tensor:
        """Corrupt float images in [0, 1], (N, C, S, S)."""
        for name in CORRUPTIONS:
            p = self.probs.get(name, 0.0)
            if p <= 0:
                continue
            hit = torch.nonzero(rand(len(x)) < p).flatten()
            if len(hit) == 0:
                continue
            lo, hi = TRAIN_RANGES[name]
            levels = lo + rand(len(hit)) * (hi - lo)
            x = x.clone()
            x[hit] = _FUNCTIONS[name](x[hit], levels, rand).clamp(0, 1)
        return x
