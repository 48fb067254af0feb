"""Lung-box crops (seed option 4): the lungs' bounding box, padded, with a size fallback."""

from __future__ import annotations

import numpy as np

from cxrssl.anatomy.lungs import LungMasks

Box = tuple[int, int, int, int]

PAD_PX = 20  # the seed's padding, in pixels of a REFERENCE_SIDE image
REFERENCE_SIDE = 224  # the seed pads after resizing to 224 px; pads scale with the long side
MIN_RATIO = 0.5  # the seed's smallest crop side, as a fraction of the image side


def lung_box(lungs: LungMasks | np.ndarray, pad: int = 20, min_ratio: float = 0.5) -> Box:
    """Bounding box of the lungs, padded and clipped to the image.

    As in the seed, a box narrower or shorter than ``min_ratio`` of the image (or no lungs at
    all) falls back to the whole image.

    Args:
        lungs: ``LungMasks`` or an (H, W) {0,1} mask.
        pad: pixels added on every side.
        min_ratio: smallest accepted box side, as a fraction of the image side.

    Returns:
        (x0, y0, x1, y1) with exclusive ends: ``image[y0:y1, x0:x1]`` is the crop.
    """
    mask = lungs.both if isinstance(lungs, LungMasks) else np.asarray(lungs)
    height, width = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, 0, width, height
    x0, x1 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + 1 + pad, width)
    y0, y1 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + 1 + pad, height)
    if x1 - x0 < min_ratio * width or y1 - y0 < min_ratio * height:
        return 0, 0, width, height
    return x0, y0, x1, y1


def crop_box(lungs: LungMasks | np.ndarray) -> Box:
    """The seed's option-4 lung box at any resolution: ``lung_box`` with the 20 px pad of a
    224 px image scaled to this image's long side, minimum crop ratio 0.5, and the whole
    image as the fallback. Pre-training views, fine-tuning and prediction all use it."""
    mask = lungs.both if isinstance(lungs, LungMasks) else np.asarray(lungs)
    pad = round(PAD_PX * max(mask.shape) / REFERENCE_SIDE)
    return lung_box(mask, pad=pad, min_ratio=MIN_RATIO)


def crop_image(image: np.ndarray, box: Box) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` for a box from ``lung_box`` (a view, not a copy)."""
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1]
