"""Lung fields: the method registry and the in-memory API used by the CLI and SSL training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cxrssl.anatomy._image import AnatomyError, as_uint8
from cxrssl.anatomy.baselines import otsu_lungs, seed_lungs
from cxrssl.anatomy.polarity import upright
from cxrssl.anatomy.quality import mask_quality
from cxrssl.anatomy.rules import default_lungs

SideMethod = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class LungMasks:
    """Lung masks of one radiograph, each (H, W) uint8 in {0, 1}.

    Attributes:
        left: the patient's left lung (on the image right).
        right: the patient's right lung (on the image left).
        both: their union.
        quality: plausibility score in [0, 1] from the masks' shape and how they sit on
            the image (see ``cxrssl.anatomy.quality``).
    """

    left: np.ndarray
    right: np.ndarray
    both: np.ndarray
    quality: float


def split_sides(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a union mask at the image's middle column into (right lung, left lung)."""
    right = mask.copy()
    left = mask.copy()
    half = mask.shape[1] // 2
    right[:, half:] = 0
    left[:, :half] = 0
    return right, left


def _sides(method: Callable[[np.ndarray], np.ndarray]) -> SideMethod:
    def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return split_sides(method(image))

    run.__doc__ = method.__doc__
    return run


METHODS: dict[str, SideMethod] = {
    "otsu": _sides(otsu_lungs),
    "seed": _sides(seed_lungs),
    "default": default_lungs,
}
"""Lung methods by name: each maps an (H, W) uint8 image to (right lung, left lung) masks.
"otsu" and "seed" (seed option 1) find one union mask, split at the image's middle column."""


def lung_masks(image: np.ndarray, method: str = "default") -> LungMasks:
    """Left, right and union lung masks of one radiograph, with a quality score.

    Args:
        image: (H, W) float in [0, 1] (as from ``cxrssl.io.read_image``) or uint8.
        method: a name in ``METHODS``: "default", "seed" (seed option 1) or "otsu".

    An inverted film (white lungs, black bones; ``polarity.is_inverted``) is flipped first,
    so every method sees the usual polarity.

    Returns:
        LungMasks with (H, W) uint8 {0,1} masks.

    Raises:
        AnatomyError: unknown method, or an image that is not 2-D.
    """
    if method not in METHODS:
        raise AnatomyError(f"unknown lung method {method!r}; choose from {sorted(METHODS)}")
    img, _ = upright(as_uint8(image))
    right, left = METHODS[method](img)
    return LungMasks(
        left=left, right=right, both=left | right, quality=mask_quality(right, left, img)
    )


def lung_mask(image: np.ndarray, method: str = "default") -> np.ndarray:
    """Union lung mask (H, W) uint8 {0,1} of one radiograph (see ``lung_masks``)."""
    return lung_masks(image, method).both
