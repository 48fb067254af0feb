"""Batched augmentation: shapes, determinism, image/mask alignment, CXR-safe defaults, map
kinds (binary, label, soft) following each transform, crops, two views, padding kept at 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrssl.anatomy.lungs import LungMasks
from cxrssl.anatomy.regions import regions
from cxrssl.augment import (
    PRETRAIN_AUGMENT,
    AugmentConfig,
    Maps,
    augment,
    box_affine,
    compose,
    invert,
    patch_boxes,
    photometric,
    random_affine,
    random_resized_crop,
    relative,
    two_views,
    warp,
    warp_maps,
)
from cxrssl.errors import CxrsslError

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


# --- maps of every kind -------------------------------------------------------------------


def region_maps(n: int = 4, size: int = 64) -> torch.Tensor:
    """(n, size, size) uint8 six-region label maps (0-6) of two elliptic lungs each."""
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        cy, dx = size / 2 + i, size / 4 - i / 2
        right = ((yy - cy) / (size * 0.35)) ** 2 + ((xx - size / 2 + dx) / (size * 0.15)) ** 2
        left = ((yy - cy) / (size * 0.33)) ** 2 + ((xx - size / 2 - dx) / (size * 0.14)) ** 2
        r, lft = (right <= 1).astype(np.uint8), (left <= 1).astype(np.uint8)
        out.append(regions(LungMasks(left=lft, right=r, both=r | lft, quality=1.0)))
    return torch.from_numpy(np.stack(out))


def soft_maps(n: int = 4, size: int = 64) -> torch.Tensor:
    """(n, 1, size, size) float32 Gaussian blobs, every value strictly inside (0, 1)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blobs = [torch.exp(-((yy - 20 - 4 * i) ** 2 + (xx - 30) ** 2) / 150.0) for i in range(n)]
    return (0.05 + 0.9 * torch.stack(blobs)).unsqueeze(1).float()


def reference(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def rotation(n: int, seed: int = 0) -> torch.Tensor:
    return random_affine(
        n,
        AugmentConfig(rotation=10, scale=0.1, translate=0.05),
        torch.Generator().manual_seed(seed),
    )


def test_region_labels_follow_a_rotation_by_nearest_and_keep_their_values() -> None:
    labels = region_maps()
    assert set(labels.unique().tolist()) == set(range(7))
    theta = rotation(len(labels))
    out = warp_maps({"regions": (labels, "label")}, theta)["regions"]
    assert out.shape == labels.shape and out.dtype == torch.uint8
    assert set(out.unique().tolist()) == set(range(7))  # no 0.5-threshold, no blending
    expected = reference(labels.unsqueeze(1).float(), theta, "nearest").squeeze(1)
    assert torch.equal(out, expected.to(torch.uint8))
    assert not torch.equal(out, labels)


def test_soft_maps_are_bilinear_and_not_thresholded() -> None:
    soft = soft_maps()
    theta = rotation(len(soft), seed=1)
    out = warp_maps({"prior": (soft, "soft")}, theta)["prior"]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference(soft, theta, "bilinear"), rtol=0, atol=1e-6)
    inside = (out > 0) & (out < 1)
    assert inside.float().mean() > 0.5  # the soft values are kept, not cut at 0.5
    assert out.min() >= 0 and out.max() <= 1


def test_one_warp_moves_every_kind_with_the_same_geometry() -> None:
    # Images, binary masks, labels and soft maps of one batch share one grid: a binary mask
    # that is a label map's lungs stays its lungs, up to the border of the bilinear mix.
    labels = region_maps()
    lungs = (labels > 0).to(torch.uint8).unsqueeze(1)
    soft = soft_maps()
    images = lungs.float() * 0.5 + 0.25
    theta = rotation(len(labels), seed=2)
    out = warp_maps(
        {
            "image": (images, "image"),
            "lungs": (lungs, "binary"),
            "regions": (labels, "label"),
            "prior": (soft, "soft"),
        },
        theta,
    )
    assert torch.equal(out["image"], warp(images, theta)[0])
    assert torch.equal(out["lungs"], warp(images, theta, lungs)[1])  # type: ignore[arg-type]
    torch.testing.assert_close(out["prior"], reference(soft, theta, "bilinear"), rtol=0, atol=1e-6)
    agree = (out["lungs"].squeeze(1) == (out["regions"] > 0).to(torch.uint8)).float().mean()
    assert agree > 0.99


def test_integer_shifts_and_flips_move_maps_exactly() -> None:
    labels = region_maps(2, 32)
    soft = soft_maps(2, 32)
    lungs = (labels > 0).unsqueeze(1)  # bool masks stay bool
    k = 3
    shift = torch.tensor([[1.0, 0, 2 * k / 32], [0, 1, 0]]).expand(2, 2, 3)  # input x = out x + k
    flip = torch.tensor([[-1.0, 0, 0], [0, 1, 0]]).expand(2, 2, 3)
    maps: Maps = {"r": (labels, "label"), "s": (soft, "soft"), "m": (lungs, "binary")}
    for theta, move in [
        (shift, lambda t: F.pad(t[..., k:], (0, k))),
        (flip, lambda t: t.flip(-1)),
    ]:
        out = warp_maps(maps, theta)
        assert out["m"].dtype == torch.bool
        assert torch.equal(out["r"], move(labels))
        assert torch.equal(out["m"], move(lungs))
        torch.testing.assert_close(out["s"], move(soft), rtol=0, atol=1e-6)


def test_crop_to_a_box_fills_the_output_with_the_box() -> None:
    size = 40
    pattern = torch.arange(size * size).view(1, 1, size, size).repeat(2, 1, 1, 1)  # int64
    boxes = [(8, 4, 28, 34), (0, 10, 20, 40)]  # (x0, y0, x1, y1), ends exclusive
    theta = box_affine(boxes, size, size)
    # Output the box's own size: every output pixel is one box pixel.
    out = warp_maps(
        {"p": (pattern, "label"), "i": (pattern.float() / 1600, "image")}, theta, (30, 20)
    )
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        assert torch.equal(out["p"][i], pattern[i, :, y0:y1, x0:x1])
        torch.testing.assert_close(
            out["i"][i], pattern[i, :, y0:y1, x0:x1] / 1600, rtol=0, atol=1e-6
        )
    # At the input's size, a 20x20 box is zoomed 2x: each box pixel fills 2x2 output pixels.
    square = box_affine(torch.tensor([[8, 12, 28, 32]] * 2), size, size)
    zoomed = warp_maps({"p": (pattern, "label")}, square)["p"]
    crop = pattern[:, :, 12:32, 8:28]
    assert torch.equal(zoomed, crop.repeat_interleave(2, -2).repeat_interleave(2, -1))
    # Crops compose with the other transforms: box, then flip == flipped box.
    flip = torch.tensor([[[-1.0, 0, 0], [0, 1, 0]]] * 2)
    both = warp_maps({"p": (pattern, "label")}, compose(square, flip))["p"]
    assert torch.equal(both, zoomed.flip(-1))


def test_compose_and_invert_are_the_affine_algebra() -> None:
    a, b = rotation(5, seed=3), rotation(5, seed=4)
    eye = torch.eye(2, 3).expand(5, 2, 3)
    torch.testing.assert_close(compose(a, invert(a)), eye, rtol=0, atol=1e-6)
    torch.testing.assert_close(compose(a, relative(a, b)), b, rtol=0, atol=1e-6)
    # Warping by a then by b samples where warping by compose(a, b) does.
    soft = soft_maps(5)
    once = warp_maps({"s": (soft, "soft")}, compose(a, b))["s"]
    twice = warp_maps({"s": (warp_maps({"s": (soft, "soft")}, a)["s"], "soft")}, b)["s"]
    assert (once - twice)[..., 16:48, 16:48].abs().max() < 0.02  # resampled twice


def test_random_resized_crops_stay_inside_with_their_area_and_ratio() -> None:
    theta = random_resized_crop(2000, (0.3, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    half_w, half_h = theta[:, 0, 0], theta[:, 1, 1]
    assert torch.all(theta[:, 0, 1] == 0) and torch.all(theta[:, 1, 0] == 0)
    assert torch.all(half_w.abs() + theta[:, 0, 2].abs() <= 1 + 1e-6)  # inside the input
    assert torch.all(half_h.abs() + theta[:, 1, 2].abs() <= 1 + 1e-6)
    area, ratio = half_w * half_h, half_w / half_h
    assert area.min() >= 0.3 - 1e-6 and area.max() <= 1 + 1e-6
    unclipped = (half_w < 1) & (half_h < 1)
    assert unclipped.float().mean() > 0.8
    assert ratio[unclipped].min() >= 3 / 4 - 1e-5 and ratio[unclipped].max() <= 4 / 3 + 1e-5
    assert area.std() > 0.1 and theta[:, :, 2].std() > 0.1  # really random


def test_two_views_relate_through_their_thetas() -> None:
    n, size = 4, 64
    labels = region_maps(n, size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ramp = ((0.1 + 0.8 * (xx + 2 * yy) / (3 * size)).expand(n, 1, size, size)).float()
    images = (labels > 0).float().unsqueeze(1) * 0.5 + 0.25
    maps: Maps = {
        "regions": (labels, "label"),
        "ramp": (ramp, "soft"),
        "ones": (torch.ones(n, 1, size, size), "soft"),
        "lungs": ((labels > 0).to(torch.uint8).unsqueeze(1), "binary"),
    }
    boxes = torch.tensor([[4, 2, 60, 62]] * n)
    a, b = two_views(images, maps, torch.Generator().manual_seed(0), PRETRAIN_AUGMENT, boxes)
    assert not torch.allclose(a.theta, b.theta)
    assert a.image.shape == images.shape and a.maps["regions"].dtype == torch.uint8
    assert set(a.maps["lungs"].unique().tolist()) <= {0, 1}
    rel = relative(a.theta, b.theta)
    a_in_b = warp_maps({k: (a.maps[k], kind) for k, (_, kind) in maps.items()}, rel)
    # Where every sample is inside both views, a linear map survives resampling exactly ...
    valid = (a_in_b["ones"] == 1) & (b.maps["ones"] == 1)
    assert valid.float().mean() > 0.3
    diff = (a_in_b["ramp"] - b.maps["ramp"])[valid]
    assert diff.abs().max() < 1e-4
    # ... and the regions agree up to their boundaries (resampled twice, nearest).
    same = a_in_b["regions"] == b.maps["regions"]
    assert same[valid.squeeze(1)].float().mean() > 0.97


def test_two_views_are_reproducible_and_sized() -> None:
    images, masks = blobs()
    maps: Maps = {"m": (masks, "binary")}
    a1, b1 = two_views(images, maps, torch.Generator().manual_seed(5))
    a2, b2 = two_views(images, maps, torch.Generator().manual_seed(5))
    assert torch.equal(a1.image, a2.image) and torch.equal(b1.theta, b2.theta)
    small, _ = two_views(images, maps, torch.Generator().manual_seed(5), size=(24, 24))
    assert small.image.shape == (6, 1, 24, 24) and small.maps["m"].shape == (6, 1, 24, 24)


def test_bad_kinds_and_shapes_are_reported() -> None:
    masks = torch.zeros(2, 1, 8, 8)
    theta = torch.eye(2, 3).expand(2, 2, 3)
    with pytest.raises(CxrsslError, match="unknown kind 'mask'"):
        warp_maps({"m": (masks, "mask")}, theta)  # type: ignore[dict-item]
    with pytest.raises(CxrsslError, match="share batch and image size"):
        warp_maps({"m": (masks, "binary"), "r": (torch.zeros(2, 9, 9), "label")}, theta)


# --- padding stays 0 ----------------------------------------------------------------------


def letterboxed(content: torch.Tensor, side: int) -> torch.Tensor:
    """(H, W) content centred between zero columns: a (1, 1, H, side) letterbox."""
    h, w = content.shape
    out = torch.zeros(1, 1, h, side)
    out[..., (side - w) // 2 : (side - w) // 2 + w] = content
    return out


def test_photometry_leaves_padding_at_zero_and_centres_contrast_on_the_content() -> None:
    content = torch.rand(100, 60, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    wide, narrow = letterboxed(content, 100), letterboxed(content, 80)
    out = photometric(wide, AugmentConfig(), torch.Generator().manual_seed(1))
    assert torch.all(out[..., :20] == 0) and torch.all(out[..., 80:] == 0)
    assert not torch.allclose(out[..., 20:80], wide[..., 20:80])
    # Without noise the content's change is the same whatever the padding.
    cfg = AugmentConfig(noise=0.0)
    a = photometric(wide, cfg, torch.Generator().manual_seed(2))[..., 20:80]
    b = photometric(narrow, cfg, torch.Generator().manual_seed(2))[..., 10:70]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_noise_probability_spares_some_samples() -> None:
    images = torch.full((200, 1, 8, 8), 0.5)
    cfg = AugmentConfig(0, 0, 0, 0, 0, noise=0.05, noise_p=0.6)
    out = photometric(images, cfg, torch.Generator().manual_seed(0))
    noisy = (out != 0.5).flatten(1).any(1).float().mean()
    assert 0.45 < noisy < 0.75
    assert math.isclose(PRETRAIN_AUGMENT.hflip, 0.5) and PRETRAIN_AUGMENT.crops


def test_patch_boxes_hold_the_foreground_when_asked_and_stay_inside() -> None:
    masks = torch.zeros(64, 1, 96, 80)
    masks[:32, 0, 90, 3] = 1  # one positive pixel near a corner in the first half
    g = torch.Generator().manual_seed(0)
    boxes = patch_boxes(masks, 32, 1.0, g)
    assert boxes.shape == (64, 4)
    x0, y0, x1, y1 = boxes.unbind(1)
    assert torch.equal(x1 - x0, torch.full((64,), 32.0)) and torch.equal(y1 - y0, x1 - x0)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 80).all() and (y1 <= 96).all()
    assert torch.equal(boxes, boxes.round())
    hit = (x0 <= 3) & (3 < x1) & (y0 <= 90) & (90 < y1)
    assert hit[:32].all()  # foreground samples: the pixel is inside every box
    assert not hit[32:].all() and len({tuple(b) for b in boxes[32:].tolist()}) > 20  # anywhere
    never = patch_boxes(masks, 32, 0.0, torch.Generator().manual_seed(0))
    hit = (never[:, 0] <= 3) & (never[:, 1] <= 90) & (never[:, 1] + 32 > 90)
    assert hit[:32].float().mean() < 0.5
    with pytest.raises(CxrsslError, match="patch side 97"):
        patch_boxes(masks, 97, 0.5, g)
