"""Six anatomical regions inside the lungs: upper, middle and lower zone of each lung.

Each lung is cut into thirds of its own height (the radiological upper, middle and lower
zones), so the regions follow the patient's anatomy rather than the image frame (the seed's
fixed image thirds and halves are ``baselines.seed_regions``).

Labels: 0 outside the lungs, 1-3 the patient's right lung (image left) upper/middle/lower,
4-6 the patient's left lung (image right) upper/middle/lower.
"""

from __future__ import annotations

import numpy as np

from cxrssl.anatomy.lungs import LungMasks, lung_masks

REGION_NAMES: tuple[str, ...] = (
    "background",
    "right_upper",
    "right_middle",
    "right_lower",
    "left_upper",
    "left_middle",
    "left_lower",
)


def _zones(lung: np.ndarray, first_label: int) -> np.ndarray:
    """Label map of one lung's thirds of height: first_label .. first_label + 2."""
    out = np.zeros(lung.shape, np.uint8)
    rows = np.flatnonzero(lung.any(axis=1))
    if rows.size == 0:
        return out
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    cuts = np.linspace(top, bottom, 4).round().astype(int)
    for i in range(3):
        band = lung[cuts[i] : cuts[i + 1]]
        out[cuts[i] : cuts[i + 1]] = band * np.uint8(first_label + i)
    return out


def regions(source: np.ndarray | LungMasks, method: str = "default") -> np.ndarray:
    """Six-region label map of a radiograph or of its lung masks.

    Args:
        source: an (H, W) image (uint8, or float in [0, 1]) whose lungs are found with
            ``method``, or the ``LungMasks`` already computed for it.
        method: lung method used when ``source`` is an image.

    Returns:
        (H, W) uint8 label map with values 0..6 (see ``REGION_NAMES``).
    """
    lungs = source if isinstance(source, LungMasks) else lung_masks(source, method)
    right = _zones(lungs.right, 1)
    left = _zones(lungs.left & (1 - lungs.right), 4)
    return np.maximum(right, left)
