"""Crop box and letterbox resize and their inverses: shapes, placement, round trips, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxrssl.errors import CxrsslError
from cxrssl.geometry import (
    Letterbox,
    apply_crop,
    letterbox,
    letterbox_mask,
    restore,
    uncrop,
    unletterbox,
    whole_box,
)


def ellipse_mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (w // 3, h // 4), 20, 0, 360, 1, -1)
    return mask


def test_wide_image_is_centred_with_zero_bands() -> None:
    image = np.full((50, 100), 0.5, np.float32)
    out, box = letterbox(image, 64)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert box == Letterbox(50, 100, 64, top=16, left=0, inner_height=32, inner_width=64)
    assert np.all(out[:16] == 0) and np.all(out[48:] == 0)
    assert np.allclose(out[16:48], 0.5)


def test_tall_image_keeps_aspect() -> None:
    _, box = letterbox(np.zeros((300, 120), np.float32), 256)
    assert (box.inner_height, box.inner_width, box.left) == (256, 102, 77)
    assert box.as_dict()["height"] == 300


@pytest.mark.parametrize(("h", "w", "size"), [(512, 430, 256), (97, 211, 64), (40, 30, 128)])
def test_mask_round_trip_returns_to_the_original_size(h: int, w: int, size: int) -> None:
    mask = ellipse_mask(h, w)
    small, box = letterbox(mask.astype(np.float32), size)
    small_mask = letterbox_mask(mask, box)
    assert set(np.unique(small_mask)) <= {0, 1}
    back = (unletterbox(small, box) >= 0.5).astype(np.uint8)
    assert back.shape == (h, w)
    inter = np.count_nonzero(back & mask)
    dice = 2 * inter / (back.sum() + mask.sum())
    assert dice > 0.97


def test_nearest_unletterbox_keeps_labels() -> None:
    labels = np.kron(np.array([[0, 1], [2, 3]], np.uint8), np.ones((20, 30), np.uint8))
    small, box = letterbox(labels, 32, interpolation="nearest")
    back = unletterbox(small, box, interpolation="nearest")
    assert set(np.unique(back)) == {0, 1, 2, 3}
    assert np.mean(back == labels) > 0.95


def test_errors_name_the_problem() -> None:
    with pytest.raises(CxrsslError, match=r"expects an \(H, W\) array, got shape \(4, 4, 3\)"):
        letterbox(np.zeros((4, 4, 3), np.float32), 8)
    _, box = letterbox(np.zeros((10, 20), np.float32), 16)
    with pytest.raises(CxrsslError, match=r"prediction of shape \(8, 8\) does not match size 16"):
        unletterbox(np.zeros((8, 8), np.float32), box)
    with pytest.raises(CxrsslError, match="unknown interpolation 'cubic'"):
        letterbox(np.zeros((10, 20), np.float32), 16, interpolation="cubic")


@pytest.mark.parametrize(
    ("h", "w", "box"),
    [(64, 48, (0, 0, 43, 49)), (97, 211, (30, 5, 190, 90)), (40, 30, (0, 0, 30, 40))],
)
def test_uncrop_is_the_exact_inverse_of_the_crop(
    h: int, w: int, box: tuple[int, int, int, int]
) -> None:
    rng = np.random.default_rng(0)
    mask = (rng.random((h, w)) > 0.5).astype(np.uint8)
    x0, y0, x1, y1 = box
    part = apply_crop(mask, box)
    assert part.shape == (y1 - y0, x1 - x0) and part.flags.c_contiguous
    back = uncrop(part, box, (h, w))
    inside = np.zeros_like(mask)
    inside[y0:y1, x0:x1] = 1
    assert back.dtype == mask.dtype and np.array_equal(back, mask * inside)
    assert np.array_equal(apply_crop(back, box), part)
    probs = rng.random((y1 - y0, x1 - x0)).astype(np.float32)
    assert np.array_equal(apply_crop(uncrop(probs, box, (h, w)), box), probs)


@pytest.mark.parametrize(("h", "w", "size"), [(512, 430, 256), (97, 211, 64)])
def test_crop_then_letterbox_restores_into_the_full_image(h: int, w: int, size: int) -> None:
    mask = ellipse_mask(h, w)
    box = (w // 5, h // 6, w - w // 7, h - h // 4)  # cuts through the ellipse
    x0, y0, x1, y1 = box
    small, lb = letterbox(apply_crop(mask, box).astype(np.float32), size)
    assert (lb.height, lb.width) == (y1 - y0, x1 - x0)
    back = (restore(small, lb, box, (h, w)) >= 0.5).astype(np.uint8)
    assert back.shape == (h, w)
    outside = np.ones((h, w), bool)
    outside[y0:y1, x0:x1] = False
    assert not back[outside].any()  # exactly nothing outside the box
    expected = np.where(outside, 0, mask)
    dice = 2 * np.count_nonzero(back & expected) / (back.sum() + expected.sum())
    assert dice > 0.97  # the letterbox tolerance of the round trip above
    full, whole = letterbox(mask.astype(np.float32), size)
    assert np.array_equal(restore(full, whole, whole_box(h, w), (h, w)), unletterbox(full, whole))


def test_crop_errors_name_the_problem() -> None:
    with pytest.raises(CxrsslError, match=r"crop box \(0, 0, 21, 10\) is empty or outside"):
        apply_crop(np.zeros((10, 20), np.float32), (0, 0, 21, 10))
    with pytest.raises(CxrsslError, match="is empty or outside an image of 10x20"):
        uncrop(np.zeros((0, 5), np.float32), (5, 5, 5, 5), (10, 20))
    with pytest.raises(CxrsslError, match=r"does not match crop box \(2, 3, 12, 8\) \(5x10\)"):
        uncrop(np.zeros((5, 9), np.float32), (2, 3, 12, 8), (10, 20))
