"""Batched, CXR-safe augmentation of tensors: one random affine per sample, one
``grid_sample`` per batch, masks following the image's geometry exactly.

Defaults suit chest radiographs: small rotations and scalings, brightness/contrast within
+-20 %, mild Gaussian noise, and no horizontal flip (left and right are not interchangeable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (each drawn uniformly per sample).

    Attributes:
        rotation: Maximum absolute rotation in degrees.
        scale: Maximum relative zoom in or out (0.1 -> factor in [0.9, 1.1]).
        translate: Maximum shift as a fraction of the side.
        brightness: Maximum additive brightness change (fraction of the [0, 1] range).
        contrast: Maximum relative contrast change around the image mean.
        noise: Maximum standard deviation of additive Gaussian noise.
        hflip: Probability of a horizontal flip (0 for CXR unless left/right is irrelevant).
    """

    rotation: float = 10.0
    scale: float = 0.1
    translate: float = 0.05
    brightness: float = 0.2
    contrast: float = 0.2
    noise: float = 0.02
    hflip: float = 0.0


def _uniform(n: int, bound: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator, device=generator.device) * 2 - 1) * bound


def random_affine(n: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Draw ``n`` affine matrices in the normalised coordinates of ``F.affine_grid``.

    Returns:
        (n, 2, 3) float32 tensor on the generator's device.
    """
    angle = _uniform(n, math.radians(config.rotation), generator)
    zoom = 1 + _uniform(n, config.scale, generator)
    shift = _uniform(2 * n, config.translate * 2, generator).view(n, 2)
    flip = torch.rand(n, generator=generator, device=generator.device) < config.hflip
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    sign = torch.where(flip, -1.0, 1.0)
    theta = torch.stack(
        [
            torch.stack([cos * sign, -sin, shift[:, 0]], 1),
            torch.stack([sin * sign, cos, shift[:, 1]], 1),
        ],
        1,
    )
    return theta


def warp(
    images: torch.Tensor, theta: torch.Tensor, masks: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply per-sample affines to images (bilinear) and masks (bilinear, then >= 0.5).

    Args:
        images: (B, C, H, W) float.
        theta: (B, 2, 3) affine matrices.
        masks: Optional (B, M, H, W) {0, 1} tensor of any dtype.

    Returns:
        The warped images (B, C, H, W) and masks (B, M, H, W, same dtype) or None.
    """
    theta = theta.to(device=images.device, dtype=images.dtype)
    stack = images if masks is None else torch.cat([images, masks.to(images.dtype)], 1)
    grid = F.affine_grid(theta, list(stack.shape), align_corners=False)
    out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    channels = images.shape[1]
    if masks is None:
        return out, None
    return out[:, :channels], (out[:, channels:] >= 0.5).to(masks.dtype)


def photometric(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Random brightness, contrast and Gaussian noise, clipped to [0, 1].

    Args:
        images: (B, C, H, W) float in [0, 1].

    Returns:
        (B, C, H, W) float in [0, 1].
    """
    n = images.shape[0]
    gen_device = generator.device
    brightness = _uniform(n, config.brightness, generator).view(n, 1, 1, 1)
    contrast = 1 + _uniform(n, config.contrast, generator).view(n, 1, 1, 1)
    sigma = torch.rand(n, generator=generator, device=gen_device).view(n, 1, 1, 1) * config.noise
    noise = torch.randn(images.shape, generator=generator, device=gen_device) * sigma
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    out = (images - mean) * contrast.to(images) + mean + brightness.to(images) + noise.to(images)
    return out.clamp_(0, 1)


def augment(
    images: torch.Tensor,
    masks: torch.Tensor | None,
    generator: torch.Generator,
    config: AugmentConfig = AugmentConfig(),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment a batch: geometry on images and masks alike, photometry on images only.

    Args:
        images: (B, C, H, W) float in [0, 1].
        masks: Optional (B, M, H, W) {0, 1} masks that must follow the geometry.
        generator: Source of all randomness (its device is where parameters are drawn).
        config: Ranges of the transforms.

    Returns:
        Augmented images (B, C, H, W) and masks (B, M, H, W) or None.
    """
    theta = random_affine(images.shape[0], config, generator)
    images, masks = warp(images, theta, masks)
    return photometric(images, config, generator), masks
