"""Overlays a person can scan: the radiograph with the computed outlines drawn on it."""

from __future__ import annotations

import cv2
import numpy as np

from cxrssl.anatomy.crop import Box
from cxrssl.viz import BLUE, GREEN, RED, YELLOW, canvas, caption, outline

MAX_SIDE = 768  # overlays are shrunk to this long side (px)


def draw_overlay(
    image: np.ndarray,
    right: np.ndarray,
    left: np.ndarray,
    quality: float,
    extra: np.ndarray | None = None,
    box: Box | None = None,
) -> np.ndarray:
    """BGR picture of ``image`` with the lung outlines, an optional extra map and box.

    Args:
        image: (H, W) uint8 radiograph.
        right: (H, W) {0,1} patient's right lung (drawn green).
        left: (H, W) {0,1} patient's left lung (drawn blue).
        quality: mask quality, printed in the corner.
        extra: (H, W) uint8 label map or {0,1} mask (pathology, regions) drawn red, one
            outline per label.
        box: crop box (x0, y0, x1, y1) in image pixels, drawn yellow.

    Returns:
        (h, w, 3) uint8 BGR picture, long side at most ``MAX_SIDE``.
    """
    picture, scale = canvas(image, MAX_SIDE)
    outline(picture, right, GREEN)
    outline(picture, left, BLUE)
    if extra is not None:
        for label in np.unique(extra)[1:]:
            outline(picture, (extra == label).astype(np.uint8), RED)
    if box is not None:
        x0, y0, x1, y1 = (round(v * scale) for v in box)
        cv2.rectangle(picture, (x0, y0), (max(x1 - 1, x0), max(y1 - 1, y0)), YELLOW, 1)
    caption(picture, f"quality {quality:.2f}")
    return picture
