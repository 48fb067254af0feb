"""The seed recipes (``seeds/000_segmentation_guided_ssl.md``, options 1-3) as named baselines.

They are kept as written in the seed, with its parameters, so that the default method can be
measured beside them. They run at the image's own resolution (kernels are in pixels).
"""

from __future__ import annotations

import cv2
import numpy as np

from cxrssl.anatomy._image import as_uint8, ellipse, largest_components

SEED_CLOSE = 20  # option 1: closing with a 20x20 ellipse
SEED_OPEN = 10  # option 1: opening with a 10x10 ellipse
SEED_BLOCK = 51  # option 3: adaptive Gaussian threshold block size
SEED_C = 10  # option 3: constant subtracted from the Gaussian-weighted mean
SEED_GRADIENT = 0.1  # option 3: Sobel magnitude threshold (magnitude / its maximum)
SEED_MIN_AREA = 100  # option 3: smallest kept candidate (pixels)


def otsu_lungs(image: np.ndarray) -> np.ndarray:
    """Plain inverted Otsu: every pixel darker than the Otsu threshold.

    Args:
        image: (H, W) uint8 or float in [0, 1].

    Returns:
        (H, W) uint8 mask in {0, 1}.
    """
    _, mask = cv2.threshold(as_uint8(image), 0, 1, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    return mask


def seed_lungs(image: np.ndarray) -> np.ndarray:
    """Seed option 1: inverted Otsu, closing 20x20, opening 10x10, two largest components.

    Args:
        image: (H, W) uint8 or float in [0, 1].

    Returns:
        (H, W) uint8 mask in {0, 1}.
    """
    mask = otsu_lungs(image)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, ellipse(SEED_CLOSE))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, ellipse(SEED_OPEN))
    return largest_components(mask, 2)


def seed_regions(shape: tuple[int, int]) -> np.ndarray:
    """Seed option 2: six fixed, overlapping image regions.

    Upper, middle and lower thirds of the height; left and right halves of the width (image
    left and right); the central third by third. They ignore anatomy.

    Args:
        shape: (H, W) of the image.

    Returns:
        (6, H, W) uint8 stack in {0, 1}: upper, middle, lower, image-left, image-right, central.
    """
    h, w = shape
    out = np.zeros((6, h, w), np.uint8)
    t1, t2 = h // 3, (2 * h) // 3
    out[0, :t1] = 1
    out[1, t1:t2] = 1
    out[2, t2:] = 1
    out[3, :, : w // 2] = 1
    out[4, :, w // 2 :] = 1
    out[5, t1:t2, w // 3 : (2 * w) // 3] = 1
    return out


def seed_pathology(image: np.ndarray) -> np.ndarray:
    """Seed option 3: adaptive Gaussian threshold AND Sobel magnitude, cleaned, size-filtered.

    The seed does not say which side of the adaptive threshold it keeps; this keeps pixels
    brighter than their Gaussian-weighted neighbourhood mean minus ``C`` (OpenCV
    ``THRESH_BINARY``), since opacities are brighter than aerated lung.

    Args:
        image: (H, W) uint8 or float in [0, 1].

    Returns:
        (H, W) uint8 mask in {0, 1} of candidate regions (not restricted to the lungs).
    """
    img = as_uint8(image)
    block = min(SEED_BLOCK, (min(img.shape) // 2) * 2 - 1)
    if block < 3:
        return np.zeros(img.shape, np.uint8)
    adaptive = cv2.adaptiveThreshold(
        img, 1, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, block, SEED_C
    )
    f = img.astype(np.float32) / 255.0
    mag = cv2.magnitude(cv2.Sobel(f, cv2.CV_32F, 1, 0), cv2.Sobel(f, cv2.CV_32F, 0, 1))
    peak = float(mag.max())
    edges: np.ndarray = (mag > SEED_GRADIENT * peak).astype(np.uint8)
    if peak <= 0:
        edges[:] = 0
    mask = adaptive & edges
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, ellipse(3))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, ellipse(5))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = (stats[:, cv2.CC_STAT_AREA] >= SEED_MIN_AREA).astype(np.uint8)
    keep[0] = 0
    return keep[labels]
