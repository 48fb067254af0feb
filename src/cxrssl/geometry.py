"""Input geometry: an optional crop box, then an aspect-preserving resize to a square, and
the inverse of both.

Every image enters the models through :func:`apply_crop` (the whole image when nothing is cropped)
and :func:`letterbox`, and every prediction leaves through :func:`restore`
(:func:`unletterbox`, then :func:`uncrop` into a zero canvas of the original size), so
predictions always return to each image's original size and place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from cxrssl.errors import CxrsslError

Box = tuple[int, int, int, int]
"""A crop box ``(x0, y0, x1, y1)`` with exclusive ends: ``array[y0:y1, x0:x1]`` (the layout
of ``cxrssl.anatomy.lung_box``)."""


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


def whole_box(height: int, width: int) -> Box:
    """The box of a whole ``height`` x ``width`` image: ``(0, 0, width, height)``."""
    return 0, 0, int(width), int(height)


def check_box(box: Box, shape: tuple[int, ...]) -> Box:
    """``box`` as four ints, checked to be non-empty and inside an image of ``shape`` (H, W).

    Raises:
        CxrsslError: A box of the wrong length, empty, or reaching outside the image.
    """
    if len(box) != 4:
        raise CxrsslError(f"a crop box is (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    height, width = int(shape[0]), int(shape[1])
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise CxrsslError(f"crop box {box!r} is empty or outside an image of {height}x{width}")
    return x0, y0, x1, y1


def apply_crop(array: np.ndarray, box: Box) -> np.ndarray:
    """``array[y0:y1, x0:x1]`` as a contiguous copy (the box checked against the array)."""
    x0, y0, x1, y1 = check_box(box, array.shape)
    return np.ascontiguousarray(array[y0:y1, x0:x1]).copy()


def uncrop(array: np.ndarray, box: Box, shape: tuple[int, int]) -> np.ndarray:
    """The exact inverse of :func:`apply_crop`: paste ``array`` (of the box's size) at ``box`` into
    a zero canvas of ``shape`` (H, W) and ``array``'s dtype.

    Raises:
        CxrsslError: ``array`` is not the box's size, or the box is not inside ``shape``.
    """
    x0, y0, x1, y1 = check_box(box, shape)
    if array.shape[:2] != (y1 - y0, x1 - x0):
        raise CxrsslError(
            f"array of shape {array.shape[:2]} does not match crop box {box!r} "
            f"({y1 - y0}x{x1 - x0})"
        )
    canvas = np.zeros((int(shape[0]), int(shape[1]), *array.shape[2:]), dtype=array.dtype)
    canvas[y0:y1, x0:x1] = array
    return canvas


def restore(
    array: np.ndarray,
    box: Letterbox,
    crop_box: Box,
    shape: tuple[int, int],
    interpolation: str = "linear",
) -> np.ndarray:
    """Inverse of crop-then-letterbox: :func:`unletterbox` a (size, size) prediction to the
    crop's size, then :func:`uncrop` it into a zero canvas of the original ``shape`` (H, W).

    Args:
        array: (size, size) probability map (float) or mask.
        box: The letterbox of the cropped image.
        crop_box: The crop box in the original image (:func:`whole_box` when uncropped).
        shape: Original (H, W).
        interpolation: ``"linear"`` for probabilities, ``"nearest"`` for labels.

    Returns:
        (H, W) array of ``array``'s dtype, zero outside ``crop_box``.
    """
    return uncrop(unletterbox(array, box, interpolation), crop_box, shape)
