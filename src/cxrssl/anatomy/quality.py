"""A per-mask plausibility score in [0, 1]: flags likely failures without any label.

The score multiplies six soft checks, each 1 when the masks look like two lungs: area
fraction of the image, balance of the two lung areas, overlap of their vertical extents, how
much of each lung's bounding box it fills, each lung's height over its width (a lung is
taller than wide; a short wide mask is usually the aerated top of an opaque lung) and each
lung's height over the image height. SSL uses it as the seed's
"mask quality" weight; the engine writes it beside every mask.
"""

from __future__ import annotations

import numpy as np


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


def mask_quality(right: np.ndarray, left: np.ndarray) -> float:
    """Plausibility of a pair of lung masks.

    Args:
        right: (H, W) uint8 {0,1} mask of the patient's right lung (image left).
        left: (H, W) uint8 {0,1} mask of the patient's left lung (image right).

    Returns:
        Score in [0, 1]; 0 when either lung is missing.
    """
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
