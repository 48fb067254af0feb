"""Shared helpers: input conversion, resizing and small mask operations (all OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np

from cxrssl.errors import CxrsslError


class AnatomyError(CxrsslError):
    """An input the rule-based anatomy cannot work on (wrong shape, dtype or size)."""


def as_uint8(image: np.ndarray) -> np.ndarray:
    """Return a 2-D uint8 view of ``image``.

    Args:
        image: (H, W) uint8, or float in [0, 1] as from ``cxrssl.io.read_image`` (a float
            image whose maximum is below 0.5 is stretched to use the 8-bit range).

    Returns:
        (H, W) uint8 array (the input itself when already uint8 and contiguous).

    Raises:
        AnatomyError: when the array is not 2-D, is empty, or has an unsupported dtype.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2 or arr.size == 0:
        raise AnatomyError(f"expected a 2-D (H, W) image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype in (np.float32, np.float64):
        # round(255 * x) saturated to [0, 255]; negatives and NaN become 0. A dim image
        # (say 12 bits read as 16) is first stretched so that 8 bits keep its detail.
        arr = np.fmax(arr, 0)
        hi = float(cv2.minMaxLoc(arr)[1])
        gain = 255.0 / hi if 0 < hi < 0.5 else 255.0
        return cv2.convertScaleAbs(arr, alpha=gain)
    if np.issubdtype(arr.dtype, np.floating):
        return as_uint8(arr.astype(np.float32))
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        scale = 255.0 / max(hi - lo, 1)
        return ((arr.astype(np.float32) - lo) * scale + 0.5).astype(np.uint8)
    raise AnatomyError(f"unsupported image dtype {arr.dtype}")


def ellipse(size: int) -> np.ndarray:
    """An elliptical structuring element ``size`` x ``size`` (at least 1 px)."""
    size = max(int(size), 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def largest_components(mask: np.ndarray, count: int) -> np.ndarray:
    """Keep the ``count`` largest 8-connected components of a {0,1} uint8 mask."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= count + 1:
        return (mask > 0).astype(np.uint8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(n, np.uint8)
    keep[1 + np.argsort(areas)[::-1][:count]] = 1
    return keep[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a {0,1} uint8 mask (external contours drawn filled)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(mask)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a {0,1} uint8 mask to ``shape`` (H, W) with smooth (linear + 0.5) edges."""
    h, w = shape
    if mask.shape == (h, w):
        return mask
    up = cv2.resize(mask * np.uint8(255), (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.threshold(up, 127, 1, cv2.THRESH_BINARY)[1]


def quantile(values: np.ndarray, q: float, mask: np.ndarray | None = None) -> float:
    """Approximate ``q`` quantile of non-negative values (256-bin histogram of [0, max]).

    Args:
        values: 2-D float32 or uint8 array of values >= 0.
        q: quantile in [0, 1].
        mask: optional uint8 mask of the same shape selecting the values.

    Returns:
        The quantile, to within max/256; 0.0 when nothing is selected or all is 0.
    """
    hi = float(cv2.minMaxLoc(values, mask)[1]) if values.size else 0.0
    if hi <= 0:
        return 0.0
    exact = values.dtype == np.uint8
    scaled = values if exact else cv2.convertScaleAbs(values, alpha=255 / hi)
    counts = cv2.calcHist([scaled], [0], mask, [256], [0, 256]).ravel().cumsum()
    level = min(int(np.searchsorted(counts, q * counts[-1])), 255)
    return float(level) if exact else (level + 0.5) * hi / 255.0
