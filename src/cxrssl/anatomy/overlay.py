"""Overlays a person can scan: the radiograph with the computed outlines drawn on it."""

from __future__ import annotations

import cv2
import numpy as np

from cxrssl.anatomy.crop import Box

MAX_SIDE = 768  # overlays are shrunk to this long side (px)
RIGHT_COLOUR = (0, 200, 0)  # BGR: patient's right lung (image left)
LEFT_COLOUR = (255, 128, 0)  # BGR: patient's left lung (image right)
PATHOLOGY_COLOUR = (0, 0, 255)
BOX_COLOUR = (0, 255, 255)


def _outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    if mask.shape != canvas.shape[:2]:
        size = (canvas.shape[1], canvas.shape[0])
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, colour, 1 if max(canvas.shape) < 400 else 2)


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
    height, width = image.shape
    scale = min(1.0, MAX_SIDE / max(height, width))
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    canvas = cv2.cvtColor(cv2.resize(image, size, interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
    _outline(canvas, right, RIGHT_COLOUR)
    _outline(canvas, left, LEFT_COLOUR)
    if extra is not None:
        for label in np.unique(extra)[1:]:
            _outline(canvas, (extra == label).astype(np.uint8), PATHOLOGY_COLOUR)
    if box is not None:
        x0, y0, x1, y1 = (round(v * scale) for v in box)
        cv2.rectangle(canvas, (x0, y0), (max(x1 - 1, x0), max(y1 - 1, y0)), BOX_COLOUR, 1)
    text = f"quality {quality:.2f}"
    cv2.putText(canvas, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3)
    cv2.putText(canvas, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1)
    return canvas
