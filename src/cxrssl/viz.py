"""Contour overlays a person can scan: masks drawn as outlines on the radiograph.

One set of drawing helpers for every overlay in cxrssl (rule-based masks, predictions
against expert masks in reports).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

GREEN = (0, 200, 0)  # BGR: reference / expert, or the patient's right lung
RED = (0, 0, 255)  # BGR: prediction, pathology
BLUE = (255, 128, 0)  # BGR: the patient's left lung
YELLOW = (0, 255, 255)  # BGR: boxes, captions


def canvas(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The radiograph as a BGR uint8 picture whose long side is at most ``max_side``.

    Args:
        image: (H, W) float in [0, 1] or uint8.
        max_side: longest side of the picture (never enlarged).

    Returns:
        (picture (h, w, 3) uint8, scale from image to picture pixels).
    """
    grey = image if image.dtype == np.uint8 else np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    height, width = grey.shape
    scale = min(1.0, max_side / max(height, width))
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA) if scale < 1 else grey
    return cv2.cvtColor(small, cv2.COLOR_GRAY2BGR), scale


def outline(picture: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Draw the outline of ``mask`` (any size, {0, 1}) on ``picture`` in place."""
    if mask.shape != picture.shape[:2]:
        size = (picture.shape[1], picture.shape[0])
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    thickness = 1 if max(picture.shape[:2]) < 400 else 2
    cv2.drawContours(picture, contours, -1, colour, thickness, lineType=cv2.LINE_AA)


def caption(picture: np.ndarray, text: str, colour: tuple[int, int, int] = YELLOW) -> None:
    """Write ``text`` in the top-left corner of ``picture``, in place, legible on any grey."""
    for ink, width in (((0, 0, 0), 3), (colour, 1)):
        cv2.putText(picture, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, ink, width, cv2.LINE_AA)


def overlay(
    image: np.ndarray,
    masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]],
    text: str = "",
    max_side: int = 320,
) -> np.ndarray:
    """The radiograph with each mask's outline, in order, and an optional caption.

    Args:
        image: (H, W) float in [0, 1] or uint8.
        masks: (mask (H, W) {0, 1}, BGR colour) pairs.
        text: caption.
        max_side: longest side of the picture.

    Returns:
        (h, w, 3) uint8 BGR picture.
    """
    picture, _ = canvas(image, max_side)
    for mask, colour in masks:
        outline(picture, mask, colour)
    if text:
        caption(picture, text)
    return picture


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 image as PNG bytes."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(buf)


def jpeg_bytes(image: np.ndarray, quality: int = 85) -> bytes:
    """Encode a uint8 image as JPEG bytes (report galleries: a tenth of the PNG's weight)."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buf)
