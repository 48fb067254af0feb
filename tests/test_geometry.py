"""Letterbox resize and its inverse: shapes, placement, round trips, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxrssl.errors import CxrsslError
from cxrssl.geometry import Letterbox, letterbox, letterbox_mask, unletterbox


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
