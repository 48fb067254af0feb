"""Pathology candidate map: a soft score of how abnormal each lung pixel looks.

What a radiologist reads, as rules on a small copy of the image (long side ``WORK_SIZE``):

1. **Density against the film's own references.** Grey levels are rescaled so that 0 is the
   most aerated lung (the lungs' ``DARK_QUANTILE``) and 1 the mediastinum and spine (the
   ``BRIGHT_QUANTILE`` of the image's central band): an opacity is lung that approaches soft
   tissue density. Lung normally gets denser towards the mediastinum (hila, heart border,
   partial volume at the medial edge), so the expected density is raised there: the score
   is lowered by ``MEDIAL_PENALTY`` at the medial edge, fading out ``MEDIAL_REACH`` (a share of
   the row's lung width) from it.
2. **Texture against the patient's own lung.** Aerated lung shows vessels and ribs as fine
   contrast; ground glass and consolidation blur it. The local gradient energy (scale
   ``TEXTURE_SIGMA``, averaged over ``ENERGY_SIGMA`` inside the lungs only) is compared with
   its median over both lungs: smoother than the patient's typical lung scores higher
   (a floor of ``ENERGY_FLOOR`` times that median keeps flat synthetic images finite).
3. **Asymmetry.** Each pixel's density minus that of the other lung at the same row and the
   same relative position between the medial and the lateral edge (both smoothed).

The three terms, each divided by its typical spread (texture and asymmetry clipped to
``TERM_LIMIT``), are weighted (``W_DENSITY``,
``W_TEXTURE``, ``W_ASYMMETRY``), summed and passed through a logistic: the map is uint8
0..255 (divide by 255 for a score in [0, 1]), 0 outside the lungs. ``candidates`` thresholds it
at ``CANDIDATE_LEVEL`` for a binary mask.

How the constants were chosen: the quantiles, scales and sigmas are round values, read off
the feature distributions on ieee8023_generalblockchain (GB) lung pixels; the weights, the
medial penalty and the threshold were picked from a handful of round candidates by the pixel
AUC against the GB lesion masks *and* the image-level AUC on a 600-image subsample of
kermany_pneumonia (a choice had to help both), with the JSRT nodule hit rate as a check
(``benchmarks/pathology_accuracy.py`` measures all three). Measured there: pixel AUC 0.667
(GB lesions, pooled; 0.645 ground glass, 0.691 consolidation), image AUC 0.656 (all 5,216
Kermany films), JSRT hit rate 0.113 (chance 0.047); the former median + IQR mask scored 0.499,
0.371 (600 films) and 0.000. Short of the 0.75 targets. No
weights are learned; nothing is fitted pixel by pixel. The seed's option 3 (adaptive
threshold AND Sobel) is ``baselines.seed_pathology``.
"""

from __future__ import annotations

import cv2
import numpy as np

from cxrssl.anatomy._image import quantile
from cxrssl.anatomy.lungs import LungMasks, lung_masks
from cxrssl.anatomy.polarity import upright

WORK_SIZE = 256  # long side of the working image (px)
SMOOTH_SIGMA = 2.0  # smoothing of the density term (working px)
DARK_QUANTILE = 0.02  # of lung grey levels: density 0 (aerated lung)
BRIGHT_QUANTILE = 0.9  # of the central band's grey levels: density 1 (mediastinum, spine)
DENSITY_CENTRE = 0.4  # density scored 0 before the other terms (typical lung median)
DENSITY_SPREAD = 0.2  # density per unit of score
MEDIAL_PENALTY = 3.0  # score removed at the medial lung edge (hila, heart border)
MEDIAL_REACH = 0.15  # fade-out of that penalty, share of the row's lung width
TEXTURE_SIGMA = 1.0  # gradient scale of the texture term (working px)
ENERGY_SIGMA = 4.0  # averaging of the gradient energy (working px)
TEXTURE_SPREAD = 0.2  # log energy ratio per unit of score
ENERGY_FLOOR = 0.05  # added to the energy, share of its median (flat or noiseless films)
TERM_LIMIT = 5.0  # texture and asymmetry terms are clipped to +- this many score units
ASYMMETRY_SIGMA = 4.0  # smoothing of both lungs before the left-right comparison
ASYMMETRY_SPREAD = 0.12  # density difference per unit of score
W_DENSITY = 1.0
W_TEXTURE = 0.5
W_ASYMMETRY = 0.3
LOGISTIC_SCALE = 1.5  # score units per logistic unit
CANDIDATE_LEVEL = 0.6  # ``candidates``: soft score (0..1) at or above which a pixel is kept


def _normalised_blur(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian mean of ``values`` over the pixels of ``mask`` only (0 where none is near)."""
    weight = mask.astype(np.float32)
    num = cv2.GaussianBlur(values * weight, (0, 0), sigma)
    den = cv2.GaussianBlur(weight, (0, 0), sigma)
    return num / np.maximum(den, np.float32(1e-3))


def _row_edges(mask: np.ndarray, medial_is_right: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the medial edge column and the lung width (0 on rows without lung)."""
    w = mask.shape[1]
    any_row = mask.any(axis=1)
    first = np.argmax(mask, axis=1)
    last = w - 1 - np.argmax(mask[:, ::-1], axis=1)
    width = np.where(any_row, last - first + 1, 0).astype(np.float32)
    edge = (last if medial_is_right else first).astype(np.float32)
    return edge, width


def _medial_fraction(mask: np.ndarray, medial_is_right: bool) -> np.ndarray:
    """(h, w) float32: distance from the row's medial lung edge over the row's lung width."""
    edge, width = _row_edges(mask, medial_is_right)
    cols = np.arange(mask.shape[1], dtype=np.float32)[None, :]
    dist = (edge[:, None] - cols) if medial_is_right else (cols - edge[:, None])
    return np.clip(dist / np.maximum(width[:, None], 1.0), 0, 1) * mask


def _asymmetry(density: np.ndarray, right: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Density minus the other lung's at the same row and relative medial-lateral position."""
    h, w = density.shape
    out = np.zeros((h, w), np.float32)
    rows = np.arange(h)[:, None]
    cols = np.arange(w, dtype=np.float32)[None, :]
    # right lung (image left): medial edge on its right; left lung: medial edge on its left
    lungs = ((right, True), (left, False))
    smooth = [_normalised_blur(density, m, ASYMMETRY_SIGMA) for m, _ in lungs]
    edges = [_row_edges(m, medial_is_right) for m, medial_is_right in lungs]
    for i, (mask, medial_is_right) in enumerate(lungs):
        (edge, width), (o_edge, o_width) = edges[i], edges[1 - i]
        frac = np.abs(cols - edge[:, None]) / np.maximum(width[:, None], 1.0)
        # the other lung's medial edge faces the other way
        target = o_edge[:, None] + (
            frac * o_width[:, None] if medial_is_right else -frac * o_width[:, None]
        )
        target = np.clip(np.rint(target), 0, w - 1).astype(np.intp)
        ok = (mask > 0) & (o_width[:, None] > 0) & (frac <= 1)
        ref = smooth[1 - i][rows, target]
        out[ok] = (smooth[i] - ref)[ok]
    return out


def pathology_map(
    image: np.ndarray, lungs: LungMasks | np.ndarray | None = None, method: str = "default"
) -> np.ndarray:
    """Soft pathology-candidate score of every lung pixel.

    Args:
        image: (H, W) uint8, or float in [0, 1].
        lungs: the image's ``LungMasks``, or an (H, W) {0,1} lung mask (split at the image's
            middle column into the two lungs); found with ``method`` when None.
        method: lung method used when ``lungs`` is None.

    Returns:
        (H, W) uint8 score 0..255 (255: most abnormal-looking), 0 outside the lungs.
    """
    img, _ = upright(image)  # an inverted film is scored as the usual polarity
    if lungs is None:
        lungs = lung_masks(img, method)
    if isinstance(lungs, LungMasks):
        right_full, left_full = lungs.right, lungs.left
    else:
        union = (np.asarray(lungs) > 0).astype(np.uint8)
        right_full, left_full = union.copy(), union.copy()
        right_full[:, img.shape[1] // 2 :] = 0
        left_full[:, : img.shape[1] // 2] = 0
    union_full = ((right_full > 0) | (left_full > 0)).astype(np.uint8)
    height, width = img.shape
    scale = WORK_SIZE / max(height, width)
    size = (max(round(width * scale), 8), max(round(height * scale), 8))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(img, size, interpolation=interp).astype(np.float32)
    right: np.ndarray = cv2.resize(
        (right_full > 0).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST
    )
    left: np.ndarray = cv2.resize(
        (left_full > 0).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST
    )
    both = cv2.bitwise_or(right, left)
    if np.count_nonzero(both) < 20:
        return np.zeros(img.shape, np.uint8)
    h, w = both.shape

    smooth = cv2.GaussianBlur(small, (0, 0), SMOOTH_SIGMA)
    dark = quantile(smooth, DARK_QUANTILE, both)
    band = np.ascontiguousarray(smooth[h // 5 : h - h // 5, (2 * w) // 5 : w - (2 * w) // 5])
    bright = quantile(band, BRIGHT_QUANTILE)
    density = (smooth - np.float32(dark)) / np.float32(max(bright - dark, 1.0))
    reach = np.float32(MEDIAL_REACH)
    ramp = np.clip(_medial_fraction(right, True) / reach, 0, 1) + np.clip(
        _medial_fraction(left, False) / reach, 0, 1
    )
    z_density = (density - DENSITY_CENTRE) / DENSITY_SPREAD - MEDIAL_PENALTY * (1 - ramp)

    fine = cv2.GaussianBlur(small, (0, 0), TEXTURE_SIGMA)
    grad = cv2.magnitude(cv2.Sobel(fine, cv2.CV_32F, 1, 0), cv2.Sobel(fine, cv2.CV_32F, 0, 1))
    energy = _normalised_blur(grad, both, ENERGY_SIGMA)
    typical = float(np.median(energy[both > 0])) + 1e-3
    floor = np.float32(ENERGY_FLOOR * typical)
    ratio = (energy + floor) / np.float32(typical + floor)
    z_texture = np.clip(-np.log(ratio) / TEXTURE_SPREAD, -TERM_LIMIT, TERM_LIMIT)

    z_asym = np.clip(_asymmetry(density, right, left) / ASYMMETRY_SPREAD, -TERM_LIMIT, TERM_LIMIT)

    total = W_DENSITY + W_TEXTURE + W_ASYMMETRY
    z = (W_DENSITY * z_density + W_TEXTURE * z_texture + W_ASYMMETRY * z_asym) / total
    score = 255.0 / (1.0 + np.exp(-z / LOGISTIC_SCALE))
    score = cv2.resize(score.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(np.rint(score), 0, 255).astype(np.uint8) * union_full


def candidates(score: np.ndarray) -> np.ndarray:
    """Binary candidates of a ``pathology_map`` score: (H, W) uint8 {0, 1}, at or above
    ``CANDIDATE_LEVEL`` (uint8 scores are read as 0..255, float scores as 0..1)."""
    arr = np.asarray(score)
    level = CANDIDATE_LEVEL * 255 if arr.dtype == np.uint8 else CANDIDATE_LEVEL
    return (arr >= level).astype(np.uint8) & (arr > 0).astype(np.uint8)
