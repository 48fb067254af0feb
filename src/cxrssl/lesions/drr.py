"""Digitally reconstructed radiographs: a CT volume projected in parallel along the AP axis.

HU become linear attenuation ``mu = mu_water * (1 + HU / 1000)`` (air -1000 HU -> 0,
clipped at 0), summed from front to back times the voxel length: a line integral ``I``
(optical depth) per ``(z, x)``. :func:`drr` maps it to a radiograph-like image linearly,
``I / I_ref`` clipped to [0, 1] with ``I_ref`` the 99.5th percentile of ``I``: radiographs
are shown after the detector's log, so their grey level follows ``I``; bone and the heart
are bright, lungs dark, air outside the body black. (``1 - exp(-I)``, the absorbed
fraction, saturates through a whole chest; ``raw=True`` gives ``I`` for any other mapping.)

Geometry, which :func:`drr`, :func:`drr_mask` and :func:`project_point` share
(:func:`drr_layout`): rows run from the head to the feet and columns from the patient's
right to the left (the patient's left on the image right), as a radiograph is displayed.
Pixels are square, ``pixel_mm`` on a side in the patient (a parallel projection does not
magnify: for a radiograph taken at magnification ``m``, pass its pixel size / ``m``).
"Aligned" means: the CT's coronal field of view (``Z * dz`` by ``X * dx`` mm) at that
pixel size, centred in an image of ``shape`` (padded with 0 or cropped). Without
``pixel_mm`` the field is fitted into ``shape``; without ``shape`` the image is the field.
Registering a DRR to one particular patient's radiograph (position, rotation) is not done.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxrssl.errors import CxrsslError
from cxrssl.lesions.volume import Volume

__all__ = ["MU_WATER", "DrrLayout", "attenuation", "drr", "drr_layout", "drr_mask", "project_point"]

MU_WATER = 0.02
"""Linear attenuation of water in 1/mm at about 60 keV (a chest radiograph's mean energy)."""

_SLAB = 16  # slices projected at a time (bounds the temporary memory)


@dataclass(frozen=True)
class DrrLayout:
    """Where the projected field sits in the output image.

    Attributes:
        pixel_mm: output pixel size in mm.
        height, width: the output image size.
        inner_height, inner_width: the size the projected field is resized to.
        top, left: where it starts in the output (negative: cropped).
        depth, across: the volume's Z and X it came from.
    """

    pixel_mm: float
    height: int
    width: int
    inner_height: int
    inner_width: int
    top: int
    left: int
    depth: int
    across: int

    def point(self, z: float, x: float) -> tuple[float, float]:
        """The (row, col) of volume index ``(z, x)`` (pixel centres on pixel centres)."""
        row = (z + 0.5) * self.inner_height / self.depth - 0.5 + self.top
        col = (x + 0.5) * self.inner_width / self.across - 0.5 + self.left
        return row, col


def drr_layout(
    volume_shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    pixel_mm: float | None = None,
    shape: tuple[int, int] | None = None,
) -> DrrLayout:
    """The layout of the DRR of a ``Z x Y x X`` volume (see the module notes)."""
    depth, _, across = volume_shape
    dz, _, dx = spacing
    if shape is not None and (len(shape) != 2 or min(shape) < 1):
        raise CxrsslError(f"the DRR size must be two positive numbers (H, W), got {shape}")
    if pixel_mm is None:
        pixel_mm = dx if shape is None else max(depth * dz / shape[0], across * dx / shape[1])
    if not pixel_mm > 0:
        raise CxrsslError(f"the DRR pixel size must be positive, got {pixel_mm} mm")
    inner_h = max(1, round(depth * dz / pixel_mm))
    inner_w = max(1, round(across * dx / pixel_mm))
    height, width = (inner_h, inner_w) if shape is None else (int(shape[0]), int(shape[1]))
    return DrrLayout(
        float(pixel_mm),
        height,
        width,
        inner_h,
        inner_w,
        (height - inner_h) // 2,
        (width - inner_w) // 2,
        depth,
        across,
    )


def attenuation(hu: np.ndarray, mu_water: float = MU_WATER) -> np.ndarray:
    """HU -> linear attenuation in 1/mm, float32, clipped at 0."""
    mu = np.asarray(hu, np.float32) * np.float32(mu_water / 1000) + np.float32(mu_water)
    return np.maximum(mu, 0, out=mu)


def drr(
    volume: Volume,
    pixel_mm: float | None = None,
    shape: tuple[int, int] | None = None,
    *,
    mu_water: float = MU_WATER,
    raw: bool = False,
) -> np.ndarray:
    """The DRR of a CT volume (HU) in the standard orientation.

    Args:
        volume: the CT.
        pixel_mm: output pixel size in mm (default: the CT's x spacing, or fitted to ``shape``).
        shape: output (H, W); the field is centred in it.
        mu_water: water's attenuation in 1/mm.
        raw: return the line integral ``I`` itself instead of ``I / I_ref`` in [0, 1].

    Returns:
        float32 (H, W): in [0, 1], dense bright (or ``I`` with ``raw``).
    """
    layout = drr_layout(volume.shape, volume.spacing, pixel_mm, shape)
    depth = volume.shape[0]
    integral = np.empty((depth, volume.shape[2]), np.float32)
    for z in range(0, depth, _SLAB):
        slab = attenuation(volume.array[z : z + _SLAB], mu_water)
        integral[z : z + _SLAB] = slab.sum(axis=1) * np.float32(volume.spacing[1])
    image = _place(integral, layout)
    if raw:
        return image
    ref = float(np.percentile(integral, 99.5))
    if ref <= 0:
        return np.zeros_like(image)
    image *= np.float32(1 / ref)
    return np.clip(image, 0, 1, out=image)


def drr_mask(
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    pixel_mm: float | None = None,
    shape: tuple[int, int] | None = None,
    *,
    thickness: bool = False,
) -> np.ndarray:
    """The projected footprint of a 3-D mask (``Z x Y x X``, the volume's grid), laid out as
    :func:`drr` with the same arguments.

    Returns:
        uint8 (H, W) in {0, 1}: where the projection crosses the mask (area-resampled,
        thresholded at 0.5); with ``thickness``, float32 mm of mask crossed (a soft prior).
    """
    if mask.ndim != 3:
        raise CxrsslError(f"expected a Z x Y x X mask, got shape {mask.shape}")
    z, y, x = mask.shape
    layout = drr_layout((z, y, x), spacing, pixel_mm, shape)
    crossed = mask.astype(bool)
    if thickness:
        length = np.asarray(crossed.sum(axis=1) * spacing[1], np.float32)
        return _place(length, layout)
    soft = _place(np.asarray(crossed.any(axis=1), np.float32), layout)
    return (soft >= 0.5).astype(np.uint8)


def project_point(
    volume: Volume,
    z: float,
    y: float,
    x: float,
    pixel_mm: float | None = None,
    shape: tuple[int, int] | None = None,
) -> tuple[float, float]:
    """The (row, col) in the DRR (made with the same ``pixel_mm`` and ``shape``) of voxel
    index ``(z, y, x)``; ``y`` (depth) does not move a parallel projection."""
    return drr_layout(volume.shape, volume.spacing, pixel_mm, shape).point(z, x)


def _place(plane: np.ndarray, layout: DrrLayout) -> np.ndarray:
    """Resize a (Z, X) projection to the layout's inner size and centre it in its image."""
    inner = _resize(plane, layout.inner_height, layout.inner_width)
    out = np.zeros((layout.height, layout.width), np.float32)
    r0, c0 = max(layout.top, 0), max(layout.left, 0)
    r1 = min(layout.top + layout.inner_height, layout.height)
    c1 = min(layout.left + layout.inner_width, layout.width)
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = inner[
            r0 - layout.top : r1 - layout.top, c0 - layout.left : c1 - layout.left
        ]
    return out


def _resize(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-average along an axis that shrinks, linear along one that grows."""
    out: np.ndarray = np.ascontiguousarray(plane, np.float32)
    if width != out.shape[1]:
        flag = cv2.INTER_AREA if width < out.shape[1] else cv2.INTER_LINEAR
        out = cv2.resize(out, (width, out.shape[0]), interpolation=flag)
    if height != out.shape[0]:
        flag = cv2.INTER_AREA if height < out.shape[0] else cv2.INTER_LINEAR
        out = cv2.resize(out, (out.shape[1], height), interpolation=flag)
    return out.reshape(height, width)
