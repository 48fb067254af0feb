"""Batched augmentation: shapes, determinism, image/mask alignment, CXR-safe defaults."""

from __future__ import annotations

import torch

from cxrssl.augment import AugmentConfig, augment, random_affine, warp

GEOMETRY_ONLY = AugmentConfig(brightness=0.0, contrast=0.0, noise=0.0)


def blobs(n: int = 6, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    for i in range(n):
        cy, cx = 14 + 3 * i, 10 + i
        masks[i, 0] = (((yy - cy) / 9) ** 2 + ((xx - cx) / 6) ** 2 <= 1).to(torch.uint8)
    images = masks.float() * 0.6 + 0.2
    return images, masks


def test_shapes_dtypes_and_range() -> None:
    images, masks = blobs()
    out, out_masks = augment(images, masks, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out_masks is not None and out_masks.dtype == torch.uint8
    assert set(out_masks.unique().tolist()) <= {0, 1}
    assert out.min() >= 0 and out.max() <= 1
    image_only, none = augment(images, None, torch.Generator().manual_seed(0))
    assert none is None and image_only.shape == images.shape


def test_same_seed_same_batch_other_seed_other_batch() -> None:
    images, masks = blobs()
    a = augment(images, masks, torch.Generator().manual_seed(1))
    b = augment(images, masks, torch.Generator().manual_seed(1))
    c = augment(images, masks, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # type: ignore[arg-type]
    assert not torch.equal(a[0], c[0])


def test_mask_follows_the_image_geometry() -> None:
    # The image is the mask itself: after the same warp, thresholding the image must give
    # the warped mask, for every sample's own random affine.
    images, masks = blobs()
    theta = random_affine(
        len(images),
        AugmentConfig(rotation=10, scale=0.1, translate=0.05),
        torch.Generator().manual_seed(3),
    )
    warped, warped_masks = warp(masks.float(), theta, masks)
    assert warped_masks is not None
    assert torch.equal((warped >= 0.5).to(torch.uint8), warped_masks)
    # ... and the geometry really moved things.
    assert not torch.equal(warped_masks, masks)


def test_photometry_leaves_masks_alone() -> None:
    images, masks = blobs()
    cfg = AugmentConfig(rotation=0, scale=0, translate=0, brightness=0.2, contrast=0.2, noise=0.05)
    out, out_masks = augment(images, masks, torch.Generator().manual_seed(4), cfg)
    assert out_masks is not None and torch.equal(out_masks, masks)
    assert not torch.allclose(out, images)
    # Brightness within +-20 %: the mean moves by at most 0.2 (+ noise, + clipping).
    assert (out.mean((1, 2, 3)) - images.mean((1, 2, 3))).abs().max() < 0.25


def test_zero_ranges_are_the_identity() -> None:
    images, masks = blobs()
    none = AugmentConfig(0, 0, 0, 0, 0, 0, 0)
    out, out_masks = augment(images, masks, torch.Generator().manual_seed(0), none)
    assert torch.allclose(out, images, atol=1e-5)
    assert out_masks is not None and torch.equal(out_masks, masks)


def test_no_horizontal_flip_by_default() -> None:
    images, masks = blobs()  # every blob sits in the left half
    left = masks[..., :24].sum()
    for seed in range(5):
        _, out_masks = augment(images, masks, torch.Generator().manual_seed(seed), GEOMETRY_ONLY)
        assert out_masks is not None
        assert out_masks[..., :24].sum() > 0.9 * out_masks.sum()
    flip = AugmentConfig(0, 0, 0, 0, 0, 0, hflip=1.0)
    _, flipped = augment(images, masks, torch.Generator().manual_seed(0), flip)
    assert flipped is not None and flipped[..., 24:].sum() == left
