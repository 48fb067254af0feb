"""Contour overlays a person can scan: masks drawn as outlines on the radiograph."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

GREEN = (0, 200, 0)  # BGR: reference / expert
RED = (0, 0, 255)  # BGR: prediction
YELLOW = (0, 220, 255)


def overlay(
    image: np.ndarray,
    masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]],
    text: str = "",
    width: int = 320,
) -> np.ndarray:
    """Draw each mask's outline on the image, scaled to ``width`` pixels wide.

    Args:
        image: (H, W) float in [0, 1] or uint8.
        masks: (mask (H, W) {0, 1}, BGR colour) pairs, drawn in order.
        text: a caption written in the top-left corner.
        width: output width; the height keeps the aspect ratio.

    Returns:
        (h, width, 3) uint8 BGR image.
    """
    grey = image if image.dtype == np.uint8 else np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    height = max(1, round(grey.shape[0] * width / grey.shape[1]))
    canvas = cv2.cvtColor(
        cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR
    )
    for mask, colour in masks:
        small = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colour, 2, lineType=cv2.LINE_AA)
    if text:
        cv2.putText(canvas, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(
            canvas, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
        )
    return canvas


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 image as PNG bytes."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(buf)
