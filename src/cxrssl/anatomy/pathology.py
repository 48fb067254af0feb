"""Pathology candidate map: lung pixels denser than that lung's aerated parenchyma.

Opacities (ground glass, consolidation, effusion, masses) are broad regions brighter than
aerated lung. On a small smoothed copy, a grey opening with a disc wider than a rib or vessel
removes thin bright lines; inside each lung, pixels whose opened intensity exceeds that lung's
median by ``LEVEL`` times its inter-quartile spread are candidates. Small specks are dropped
and the map is restricted to the lungs. The seed's option 3 (adaptive threshold AND Sobel) is
``baselines.seed_pathology``.
"""

from __future__ import annotations

import cv2
import numpy as np

from cxrssl.anatomy._image import as_uint8, ellipse, resize_mask
from cxrssl.anatomy.lungs import LungMasks, lung_masks

WORK_SIZE = 128  # long side of the working image (px)
OPEN_FRACTION = 0.05  # opening disc diameter, fraction of the long side (wider than a rib)
LEVEL = 0.25  # candidates: above median + LEVEL * (p75 - p25) of their lung
MIN_AREA = 0.002  # smallest kept candidate, fraction of the working image area


def pathology_map(
    image: np.ndarray, lungs: LungMasks | np.ndarray | None = None, method: str = "default"
) -> np.ndarray:
    """Candidate opacities inside the lungs.

    Args:
        image: (H, W) uint8, or float in [0, 1].
        lungs: the image's ``LungMasks``, or an (H, W) {0,1} lung mask (treated as one
            region); found with ``method`` when None.
        method: lung method used when ``lungs`` is None.

    Returns:
        (H, W) uint8 mask in {0, 1}, zero outside the lungs.
    """
    img = as_uint8(image)
    if lungs is None:
        lungs = lung_masks(img, method)
    parts = [lungs.right, lungs.left] if isinstance(lungs, LungMasks) else [np.asarray(lungs)]
    height, width = img.shape
    scale = WORK_SIZE / max(height, width)
    size = (max(round(width * scale), 8), max(round(height * scale), 8))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    work = cv2.GaussianBlur(cv2.resize(img, size, interpolation=interp), (0, 0), 1.0)
    opened = cv2.morphologyEx(work, cv2.MORPH_OPEN, ellipse(round(OPEN_FRACTION * max(size))))
    out = np.zeros(work.shape, np.uint8)
    for part in parts:
        small = cv2.resize((part > 0).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        values = opened[small > 0]
        if values.size < 20:
            continue
        p25, p50, p75 = np.percentile(values, (25, 50, 75))
        out |= (opened > p50 + LEVEL * (p75 - p25)).astype(np.uint8) & small
    n, labels, stats, _ = cv2.connectedComponentsWithStats(out, connectivity=8)
    keep = (stats[:, cv2.CC_STAT_AREA] >= MIN_AREA * out.size).astype(np.uint8)
    keep[0] = 0
    full = resize_mask(keep[labels] if n > 1 else out, img.shape)
    union = np.zeros(img.shape, np.uint8)
    for part in parts:
        union |= (part > 0).astype(np.uint8)
    return full & union
