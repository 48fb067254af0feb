"""A per-mask plausibility score in [0, 1]: flags likely failures without any label.

The score multiplies six soft checks, each 1 when the masks look like two lungs: area
fraction of the image, balance of the two lung areas, overlap of their vertical extents, how
much of each lung's bounding box it fills, each lung's height over its width (a lung is
taller than wide; a short wide mask is usually the aerated top of an opaque lung) and each
lung's height over the image height. SSL uses it as the seed's
"mask quality" weight; the engine writes it beside every mask.

Given the image, two image checks join them, since shape alone cannot see a mask that has
the right shape in the wrong place (a leak below the diaphragm, an outline around the air
outside the body): *contrast*, how much darker each lung is than a ring of tissue just
outside it (median difference over the image's interquartile range, the worse lung), and
*edge*, the mean gradient magnitude along the outline over the image's 90th percentile (a
good outline runs along the ribs, the heart border and the diaphragm). Both are read on a
copy with long side ``CHECK_SIZE`` px. The shape score then only scales the result down
to ``SHAPE_FLOOR``, so that the image checks still rank masks that fail a shape check.
Spearman correlation with Dice of the default method (``benchmarks/rules_accuracy.py``):
0.41 JSRT, 0.56 GeneralBlockchain, 0.53 v7labs, 0.66 the sample (shape checks alone: 0.07,
0.56, 0.37, 0.26). The image checks cost about 1 ms per image.
"""

from __future__ import annotations

import cv2
import numpy as np

from cxrssl.anatomy._image import quantile

CHECK_SIZE = 128  # long side of the copy the image checks are read on (px)
RING = 9  # ring outside each lung for the contrast check (px at CHECK_SIZE, square)
CONTRAST_RAMP = (0.0, 0.8)  # lung-to-ring contrast (IQR units) scored 0 and 1
EDGE_RAMP = (0.2, 0.7)  # outline gradient (90th-percentile units) scored 0 and 1
SHAPE_FLOOR = 0.2  # the shape score maps [0, 1] onto [SHAPE_FLOOR, 1] when image is given


def _ramp(value: float, zero: float, one: float) -> float:
    """0 at ``zero``, 1 at ``one``, linear between (either order), clipped."""
    if one == zero:
        return float(value >= one)
    return float(np.clip((value - zero) / (one - zero), 0.0, 1.0))


def _box(mask: np.ndarray) -> tuple[int, int, int, float]:
    """Top row, bottom row (exclusive), width and box fill of a non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    width = int(cols[-1] - cols[0] + 1)
    box = (rows[-1] - rows[0] + 1) * width
    return int(rows[0]), int(rows[-1]) + 1, width, float(np.count_nonzero(mask)) / float(box)


def image_checks(image: np.ndarray, right: np.ndarray, left: np.ndarray) -> tuple[float, float]:
    """(contrast, edge) of two non-empty lung masks on their image (see the module docstring).

    Args:
        image: (H, W) uint8 radiograph.
        right: (H, W) uint8 {0,1} mask of the patient's right lung.
        left: (H, W) uint8 {0,1} mask of the patient's left lung.

    Returns:
        contrast: the worse lung's (ring median - lung median) / (IQR + 1), unbounded.
        edge: mean gradient magnitude on the outline / the image's 90th percentile.
    """
    height, width = image.shape
    scale = CHECK_SIZE / max(height, width)
    size = (max(round(width * scale), 8), max(round(height * scale), 8))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    grey = cv2.resize(image, size, interpolation=interp)  # uint8: exact histogram quantiles
    sides = [cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in (right, left)]
    spread = quantile(grey, 0.75) - quantile(grey, 0.25) + 1.0
    ring_kernel = np.ones((RING, RING), np.uint8)
    contrast = np.inf
    for side in sides:
        ring = cv2.dilate(side, ring_kernel) - side
        if not (side.any() and ring.any()):
            return 0.0, 0.0
        contrast = min(contrast, (quantile(grey, 0.5, ring) - quantile(grey, 0.5, side)) / spread)
    outline = cv2.morphologyEx(
        cv2.bitwise_or(sides[0], sides[1]), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)
    )
    if not outline.any():
        return contrast, 0.0
    smooth = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), 1.0)
    magnitude = cv2.magnitude(
        cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    )
    edge = float(cv2.mean(magnitude, outline)[0]) / (quantile(magnitude, 0.9) + 1e-6)
    return contrast, edge


def mask_quality(right: np.ndarray, left: np.ndarray, image: np.ndarray | None = None) -> float:
    """Plausibility of a pair of lung masks, optionally checked against their image.

    Args:
        right: (H, W) uint8 {0,1} mask of the patient's right lung (image left).
        left: (H, W) uint8 {0,1} mask of the patient's left lung (image right).
        image: (H, W) uint8 radiograph the masks were computed on; without it only the
            shape checks count.

    Returns:
        Score in [0, 1]; 0 when either lung is missing.
    """
    shape = _shape_quality(right, left)
    if image is None or not (right.any() and left.any()):
        return shape
    contrast, edge = image_checks(image, right, left)
    score = (SHAPE_FLOOR + (1 - SHAPE_FLOOR) * shape) * _ramp(contrast, *CONTRAST_RAMP)
    return round(score * _ramp(edge, *EDGE_RAMP), 4)


def _shape_quality(right: np.ndarray, left: np.ndarray) -> float:
    """The six shape checks (module docstring) of a pair of lung masks, in [0, 1]."""
    step = max(1, max(right.shape) // 256)  # the checks need no more than ~256 px
    right, left = right[::step, ::step], left[::step, ::step]
    area_r = float(np.count_nonzero(right))
    area_l = float(np.count_nonzero(left))
    if area_r == 0 or area_l == 0:
        return 0.0
    fraction = (area_r + area_l) / float(right.size)
    area = min(_ramp(fraction, 0.05, 0.15), _ramp(fraction, 0.75, 0.55))
    balance = _ramp(min(area_r, area_l) / max(area_r, area_l), 0.3, 0.7)
    top_r, bottom_r, width_r, fill_r = _box(right)
    top_l, bottom_l, width_l, fill_l = _box(left)
    overlap = min(bottom_r, bottom_l) - max(top_r, top_l)
    span = max(bottom_r, bottom_l) - min(top_r, top_l)
    extent = _ramp(overlap / span, 0.4, 0.75)
    fill = _ramp(min(fill_r, fill_l), 0.35, 0.55)
    heights = (bottom_r - top_r, bottom_l - top_l)
    aspect = _ramp(min(heights[0] / width_r, heights[1] / width_l), 1.0, 1.4)
    height = _ramp(min(heights) / right.shape[0], 0.3, 0.5)
    return round(area * balance * extent * fill * aspect * height, 4)
