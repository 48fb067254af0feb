"""Letterbox geometry: aspect-preserving resize to a square and its exact inverse.

Every image enters the models through :func:`letterbox` and every prediction leaves
through :func:`unletterbox`, so predictions always return to each image's original size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from cxrssl.errors import CxrsslError


@dataclass(frozen=True)
class Letterbox:
    """Where an image of ``height`` x ``width`` sits inside its ``size`` x ``size`` square.

    Attributes:
        height: Original height in pixels.
        width: Original width in pixels.
        size: Side of the square canvas.
        top: First canvas row covered by the image.
        left: First canvas column covered by the image.
        inner_height: Rows the resized image covers.
        inner_width: Columns the resized image covers.
    """

    height: int
    width: int
    size: int
    top: int
    left: int
    inner_height: int
    inner_width: int

    @classmethod
    def fit(cls, height: int, width: int, size: int) -> Letterbox:
        """The centred letterbox of a ``height`` x ``width`` image in a ``size`` square."""
        if height < 1 or width < 1 or size < 1:
            raise CxrsslError(f"letterbox needs positive sizes, got {height}x{width} -> {size}")
        scale = size / max(height, width)
        inner_h = min(size, max(1, round(height * scale)))
        inner_w = min(size, max(1, round(width * scale)))
        return cls(
            height, width, size, (size - inner_h) // 2, (size - inner_w) // 2, inner_h, inner_w
        )

    def as_dict(self) -> dict[str, int]:
        """Plain-type form (for checkpoints and JSON)."""
        return asdict(self)


def _resize(array: np.ndarray, height: int, width: int, interpolation: str) -> np.ndarray:
    if array.shape[:2] == (height, width):
        return array.copy()
    if interpolation == "nearest":
        flag = cv2.INTER_NEAREST
    elif interpolation == "linear":
        shrink = height < array.shape[0] or width < array.shape[1]
        flag = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    else:
        raise CxrsslError(f"unknown interpolation {interpolation!r}; use 'linear' or 'nearest'")
    out: np.ndarray = cv2.resize(array, (width, height), interpolation=flag)
    return out


def letterbox(
    image: np.ndarray, size: int, interpolation: str = "linear"
) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` to fit a ``size`` square, keeping its aspect, padding with zeros.

    Args:
        image: (H, W) array (float32 image or uint8 mask).
        size: Side of the output square.
        interpolation: ``"linear"`` (area when shrinking) or ``"nearest"``.

    Returns:
        The (size, size) array of ``image``'s dtype and its :class:`Letterbox`.
    """
    if image.ndim != 2:
        raise CxrsslError(f"letterbox expects an (H, W) array, got shape {image.shape}")
    box = Letterbox.fit(image.shape[0], image.shape[1], size)
    return apply_letterbox(image, box, interpolation), box


def apply_letterbox(image: np.ndarray, box: Letterbox, interpolation: str = "linear") -> np.ndarray:
    """Place ``image`` (H, W) into the canvas described by ``box``: (size, size)."""
    if image.shape[:2] != (box.height, box.width):
        raise CxrsslError(
            f"array of shape {image.shape[:2]} does not match letterbox of {box.height}x{box.width}"
        )
    inner = _resize(image, box.inner_height, box.inner_width, interpolation)
    canvas = np.zeros((box.size, box.size), dtype=image.dtype)
    canvas[box.top : box.top + box.inner_height, box.left : box.left + box.inner_width] = inner
    return canvas


def letterbox_mask(mask: np.ndarray, box: Letterbox) -> np.ndarray:
    """Resize a {0, 1} mask (H, W) like its image: area-average, then threshold at 0.5.

    Returns:
        (size, size) uint8 mask in {0, 1}.
    """
    soft = apply_letterbox(mask.astype(np.float32), box, "linear")
    return (soft >= 0.5).astype(np.uint8)


def unletterbox(array: np.ndarray, box: Letterbox, interpolation: str = "linear") -> np.ndarray:
    """Crop the image area out of a (size, size) prediction and resize it to (H, W).

    Args:
        array: (size, size) probability map (float) or mask.
        box: The letterbox its input was made with.
        interpolation: ``"linear"`` for probabilities, ``"nearest"`` for labels.

    Returns:
        (box.height, box.width) array of ``array``'s dtype.
    """
    if array.shape[:2] != (box.size, box.size):
        raise CxrsslError(f"prediction of shape {array.shape[:2]} does not match size {box.size}")
    inner = array[box.top : box.top + box.inner_height, box.left : box.left + box.inner_width]
    if interpolation == "linear":
        # Bilinear on the way up (never area-average a probability map into blocks).
        out: np.ndarray = cv2.resize(
            np.ascontiguousarray(inner), (box.width, box.height), interpolation=cv2.INTER_LINEAR
        )
        return out
    return _resize(np.ascontiguousarray(inner), box.height, box.width, interpolation)
