"""Detections from a probability map or a mask: one point per connected component.

A detection is a :class:`~cxrssl.lesions.points.Point` with a ``score``: its centre is the
probability-weighted centroid of the component (x column, y row, 0-based pixel centres, as in
the points CSV), ``diameter_px`` the diameter of the circle of the same area, and ``score``
the component's highest probability. On a binary mask every score is 1.0: the FROC then has
one operating point; it needs graded scores (probabilities) to trace a curve, and fainter
candidates below the mask's threshold (``levels``) to reach more false positives per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from cxrssl.data.datasets import MASK_SUFFIXES, index_files
from cxrssl.errors import DatasetError
from cxrssl.io import read_mask
from cxrssl.lesions.points import Point, write_points


def detect(
    prob: np.ndarray,
    file: str,
    threshold: float = 0.5,
    min_diameter_px: float = 3.0,
    levels: Sequence[float] = (),
    max_candidates: int | None = None,
) -> list[Point]:
    """The connected components (8-connected) of ``prob >= threshold`` as detections; then,
    level by level down ``levels`` (those below ``threshold``), each component of ``prob >=
    level`` that holds no pixel of the level above: a fainter, separate candidate, scored by
    its own peak (so below every detection of the levels above). The detections at
    ``threshold`` are the mask's; the fainter ones extend a FROC to more false positives.

    Args:
        prob: (H, W) probabilities in [0, 1], or a 0/1 mask.
        file: the image's file name, given to every detection.
        threshold: the probability a pixel needs to belong to a component, in (0, 1].
        min_diameter_px: components whose equivalent diameter is below this are dropped.
        levels: lower thresholds for fainter candidates; values at or above ``threshold``
            are ignored.
        max_candidates: keep at most this many fainter candidates, the highest-scoring
            (the detections at ``threshold`` are always kept); None: all of them. A map
            near 1 everywhere (seed 004's weighted loss) breaks up into thousands of specks
            down the grid, of which a FROC to 4 false positives per image reads a handful.

    Returns:
        The detections, highest score first (ties: the larger first).

    Raises:
        DatasetError: not a 2-D map, values outside [0, 1] or a threshold outside (0, 1].
    """
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim != 2:
        raise DatasetError(f"{file}: a probability map must be H x W, got shape {p.shape}")
    if not 0.0 < threshold <= 1.0 or any(not 0.0 < t <= 1.0 for t in levels):
        raise DatasetError(
            f"{file}: detection thresholds must lie in (0, 1], got {threshold} and {levels}"
        )
    if p.size and (float(np.nanmin(p)) < 0.0 or float(np.nanmax(p)) > 1.0):
        raise DatasetError(
            f"{file}: probabilities must lie in [0, 1], got {np.nanmin(p):g} to "
            f"{np.nanmax(p):g} (pass masks as 0/1)"
        )
    above: np.ndarray | None = None
    found: list[Point] = []
    for level in [threshold, *sorted((t for t in levels if t < threshold), reverse=True)]:
        fg = p >= level
        found += _components(p, fg, file, min_diameter_px, above)
        above = fg
    found.sort(key=lambda d: (-(d.score or 0.0), -d.diameter_px))
    if max_candidates is not None:
        n_mask = sum((d.score or 0.0) >= threshold for d in found)
        found = found[: n_mask + max(0, max_candidates)]
    return found


def _components(
    p: np.ndarray, fg: np.ndarray, file: str, min_diameter_px: float, above: np.ndarray | None
) -> list[Point]:
    """Detections of the components of ``fg`` holding no pixel of ``above`` (if given)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    if n <= 1:
        return []
    rows, cols = np.nonzero(labels)
    lab = labels[rows, cols].astype(np.intp)
    w = p[rows, cols].astype(np.float64)
    weight = np.bincount(lab, weights=w, minlength=n)
    cx = np.bincount(lab, weights=w * cols, minlength=n) / weight.clip(min=1e-12)
    cy = np.bincount(lab, weights=w * rows, minlength=n) / weight.clip(min=1e-12)
    peak = np.zeros(n)
    np.maximum.at(peak, lab, w)
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    diameter = np.sqrt(4.0 * area / math.pi)
    taken = np.zeros(n, bool)
    if above is not None:
        taken[np.unique(labels[above])] = True
    return [
        Point(file, float(cx[i]), float(cy[i]), float(diameter[i]), score=float(peak[i]))
        for i in range(1, n)
        if diameter[i] >= min_diameter_px and not taken[i]
    ]


def detections_from_masks(masks_dir: Path, min_diameter_px: float = 3.0) -> list[Point]:
    """Detections (score 1.0) from every mask file in ``masks_dir``, for binary masks made by
    another tool. A mask named ``<stem>_mask.png`` stands for the image ``<stem>``.

    Raises:
        DatasetError: the folder is missing or holds no mask, two masks stand for one image.
        ImageReadError: a mask cannot be read.
    """
    masks_dir = Path(masks_dir)
    found = index_files(masks_dir, MASK_SUFFIXES)
    if not found:
        raise DatasetError(f"{masks_dir}: no mask files ({', '.join(MASK_SUFFIXES)})")
    names: dict[str, Path] = {}
    for stem, path in found.items():
        image = stem.removesuffix("_mask")
        if image in names:
            raise DatasetError(
                f"{masks_dir}: {names[image].name} and {path.name} are both masks of {image!r}"
            )
        names[image] = path
    out: list[Point] = []
    for image, path in sorted(names.items()):
        mask = read_mask(path).astype(np.float32)
        out.extend(detect(mask, image + path.suffix, 0.5, min_diameter_px))
    return out


def write_detections(path: Path, detections: Sequence[Point]) -> None:
    """Write a detections CSV atomically: filename, x, y, diameter_px, score."""
    write_points(path, [Point(d.file, d.x, d.y, d.diameter_px, score=d.score) for d in detections])
