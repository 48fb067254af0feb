"""The default rule-based lung method: basin depth, mediastinal barrier, hull, diaphragm cut.

All the work happens on a small copy of the image (long side ``WORK_SIZE`` px); the two lung
masks are scaled back with smooth edges. No learned weights: every step is an anatomical rule.

0. Frame: uniform bands at the borders (padding, letterboxing, the white edge of digitised
   film) are cut off first; a band counts as uniform when its grey levels span less than
   ``FRAME_RANGE`` after leaving out the extreme ``FRAME_OUTLIERS`` share of its pixels (a
   1 px scanner line along the film edge crosses the band).
1. Contrast: area resize, CLAHE, robust percentile stretch, light Gaussian smoothing.
2. Midline: the brightest column of the central band (spine and mediastinum) over the upper
   chest, as a line with a small tilt; a band around it is a barrier no lung crosses.
3. Lung evidence: the *basin depth* of each pixel along its row and its column (the 1-D
   grayscale hole filling ``min(cummax from one end, cummax from the other) - I``). Lungs are
   dark fields enclosed by brighter tissue on all sides; air outside the body, which reaches
   the image border, is not enclosed and gets no depth. Evidence = sqrt(row depth * col depth).
4. Per side: the strongest connected core of high evidence, grown geodesically (at most
   ``GROW_STEPS`` px, so a leak cannot run far) into lower evidence, opened to drop thin spurs
   (neck, axilla), filled to its convex hull and kept on its side of the barrier.
5. Diaphragm: per lung, a smooth curve (dynamic programming over columns) along the strongest
   downward dark-to-bright edge below ``DIAPHRAGM_START`` of the lung's height (starting
   lower keeps the trace off edges inside the lung: hila, vessels, the heart's lower border);
   when that edge is clear, everything below ``DIAPHRAGM_OFFSET`` px from it is removed (the
   blurred edge peaks half-way into the dome, so the cut sits just above it).
6. Opaque lungs: a lung much smaller than its partner is completed by the partner's mirror
   image about the midline; a lung still shorter than ``MIN_ASPECT`` times its width (the
   aerated top of a white lung: lungs are taller than wide) is extended down to that height.
"""

from __future__ import annotations

import cv2
import numpy as np

from cxrssl.anatomy._image import as_uint8, ellipse, quantile, resize_mask
from cxrssl.anatomy.trace import trace_path

WORK_SIZE = 128  # long side of the working image (px)
FRAME_RANGE = 12  # a border row/column whose grey levels span less is padding
FRAME_OUTLIERS = 0.02  # share of a row/column's extreme pixels left out of that span
CLAHE_CLIP = 2.0  # CLAHE clip limit on 4 x 4 tiles
SMOOTH_SIGMA = 1.0  # Gaussian smoothing before the basin depth (working px)
BARRIER_HALF_WIDTH = 0.045  # mediastinal barrier, fraction of the working width either side
MAX_TILT = 0.05  # largest midline slope (px across per px down)
CORE_LEVEL = 0.3  # evidence (fraction of the side's 99th percentile) of a lung core
GROW_LEVEL = 0.12  # evidence a lung grows into from its core
SPIKE_OPEN = 5  # opening before the hull: drops thin spurs (neck, axilla) (px)
GROW_STEPS = 5  # geodesic growth from the core (px, 3 x 3 steps)
DIAPHRAGM_SIGMA = 3.0  # smoothing of the vertical edge used for the diaphragm
DIAPHRAGM_SMOOTH = 0.1  # DP cost per px of vertical step between neighbouring columns
DIAPHRAGM_EDGE = 0.5  # mean edge strength (1 = image's 95th percentile) needed to cut
DIAPHRAGM_OFFSET = -1.0  # the cut lies this far below the traced edge (working px; < 0: above)
DIAPHRAGM_STEP = 4  # largest vertical step of the traced curve per 2 columns (working px)
DIAPHRAGM_START = 0.75  # the search starts this far down the lung (share of its height)
MIN_ASPECT = 1.2  # a lung shorter than this times its width is extended down to it
SYMMETRY_RATIO = 0.7  # a lung below this fraction of its partner's area takes its mirror


def _robust_range(small: np.ndarray, axis: int) -> np.ndarray:
    """Grey-level range of every row (axis 1) or column (axis 0), ignoring a few outliers.

    A 1 px line along the film edge (a scanner artefact) must not make a frame band count
    as image content.
    """
    n = small.shape[axis]
    k = min(int(FRAME_OUTLIERS * n), (n - 1) // 2)
    ordered = np.partition(small, (k, n - 1 - k), axis=axis)
    hi = np.take(ordered, n - 1 - k, axis=axis).astype(np.int16)
    return hi - np.take(ordered, k, axis=axis)


def _content_box(img: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the image without uniform frame bands (padding, letterboxing)."""
    h, w = img.shape
    step = max(1, max(h, w) // 128)
    small = img[::step, ::step]
    rows = np.flatnonzero(_robust_range(small, 1) > FRAME_RANGE)
    cols = np.flatnonzero(_robust_range(small, 0) > FRAME_RANGE)
    if rows.size < 2 or cols.size < 2:
        return 0, h, 0, w
    y0, y1 = int(rows[0]) * step, min(int(rows[-1] + 1) * step, h)
    x0, x1 = int(cols[0]) * step, min(int(cols[-1] + 1) * step, w)
    if (y1 - y0) < h // 2 or (x1 - x0) < w // 2:
        return 0, h, 0, w
    return y0, y1, x0, x1


def _prepare(img: np.ndarray) -> np.ndarray:
    """Working image: (h, w) float32 in about [0, 255], long side ``WORK_SIZE``."""
    height, width = img.shape
    scale = WORK_SIZE / max(height, width)
    h, w = max(round(height * scale), 8), max(round(width * scale), 8)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(img, (w, h), interpolation=interp)
    small = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=(4, 4)).apply(small)
    centre = small[h // 10 : h - h // 10, w // 10 : w - w // 10]
    lo, hi = quantile(centre, 0.01), quantile(centre, 0.99)
    gain = np.float32(255.0 / max(float(hi - lo), 1.0))
    work = (small.astype(np.float32) - np.float32(lo)) * gain
    np.clip(work, 0, 255, out=work)
    return cv2.GaussianBlur(work, (0, 0), SMOOTH_SIGMA)


def _midline(work: np.ndarray) -> np.ndarray:
    """Column of the mediastinum for every row: (h,) int, a line with a small tilt."""
    h, w = work.shape
    a, b = int(0.3 * w), max(int(0.7 * w), int(0.3 * w) + 1)
    band = cv2.GaussianBlur(work[:, a:b], (0, 0), 3)
    cols = a + np.argmax(band, axis=1)
    rows = np.arange(h)
    sel = slice(max(h // 10, 0), max(h // 2, 2))
    slope = 0.0
    if h >= 16:  # least-squares slope of the brightest columns over the upper chest
        y = rows[sel] - rows[sel].mean()
        slope = float(np.clip(np.dot(y, cols[sel]) / np.dot(y, y), -MAX_TILT, MAX_TILT))
    offset = float(np.median(cols[sel] - slope * rows[sel]))
    return np.clip(np.round(slope * rows + offset), 1, w - 2).astype(np.int32)


def _basin_depth(work: np.ndarray, axis: int) -> np.ndarray:
    """1-D grayscale hole filling along ``axis``: how far each pixel lies below its rims."""
    forward = np.maximum.accumulate(work, axis=axis)
    backward = np.flip(np.maximum.accumulate(np.flip(work, axis), axis=axis), axis)
    return np.minimum(forward, backward) - work


def _evidence(work: np.ndarray, mid: np.ndarray) -> np.ndarray:
    """Lung evidence (h, w) float32 with the mediastinal barrier raised to the image maximum."""
    w = work.shape[1]
    walled = work.copy()
    half = max(1, round(BARRIER_HALF_WIDTH * w))
    cols = np.arange(w)[None, :]
    walled[np.abs(cols - mid[:, None]) <= half] = walled.max()
    depth = _basin_depth(walled, 1) * _basin_depth(walled, 0)
    return np.sqrt(depth, out=depth)


def _hull(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(mask)
    if contours:
        cv2.fillPoly(out, [cv2.convexHull(np.vstack(contours))], 1)
    return out


def _lung_on_side(evidence: np.ndarray, side: np.ndarray) -> np.ndarray:
    """The lung of one side: strongest core, hysteresis growth, convex hull. (h, w) {0,1}."""
    empty = np.zeros(evidence.shape, np.uint8)
    ref = quantile(evidence, 0.99, side)
    if ref <= 1e-3:
        return empty
    core = (evidence > CORE_LEVEL * ref).astype(np.uint8) & side
    n, labels = cv2.connectedComponents(core, connectivity=8)
    if n < 2:
        return empty
    mass = np.bincount(labels.ravel(), weights=evidence.ravel(), minlength=n)
    mass[0] = -1.0
    seed = labels == int(np.argmax(mass))
    grow = (evidence > GROW_LEVEL * ref).astype(np.uint8) & side
    grow = cv2.morphologyEx(grow, cv2.MORPH_OPEN, ellipse(3))
    region = seed.astype(np.uint8)
    step = ellipse(3)
    for _ in range(GROW_STEPS):  # geodesic growth: at most GROW_STEPS px from the core
        region = cv2.bitwise_or(cv2.bitwise_and(cv2.dilate(region, step), grow), region)
    opened = cv2.morphologyEx(region, cv2.MORPH_OPEN, ellipse(SPIKE_OPEN))
    return _hull(opened if opened.any() else region) & side


def _cut_below_diaphragm(lung: np.ndarray, edge_down: np.ndarray) -> np.ndarray:
    """Remove what lies below the diaphragm curve traced under ``lung``."""
    ys, xs = np.nonzero(lung)
    if ys.size < 10:
        return lung
    x0, x1 = int(xs.min()), int(xs.max()) + 1
    start = int(int(ys.min()) + DIAPHRAGM_START * (int(ys.max()) - int(ys.min())))
    if start >= lung.shape[0] - 1 or x1 - x0 < 2:
        return lung
    cost = -edge_down[start:, x0:x1:2].T  # (every 2nd column, rows below the start)
    path = trace_path(np.ascontiguousarray(cost), DIAPHRAGM_STEP, DIAPHRAGM_SMOOTH / 2)
    if -float(cost[np.arange(path.size), path].mean()) < DIAPHRAGM_EDGE:
        return lung  # no clear diaphragm under this lung: keep its evidence-based bottom
    curve = start + np.interp(np.arange(x1 - x0), np.arange(0, x1 - x0, 2), path)
    rows = np.arange(lung.shape[0])[:, None]
    out = lung.copy()
    out[:, x0:x1] &= (rows <= curve[None, :] + DIAPHRAGM_OFFSET).astype(np.uint8)
    return out


def _mirror(lung: np.ndarray, mid: np.ndarray) -> np.ndarray:
    """``lung`` reflected about the midline, row by row."""
    ys, xs = np.nonzero(lung)
    out = np.zeros_like(lung)
    xm = 2 * mid[ys] - xs
    ok = (xm >= 0) & (xm < lung.shape[1])
    out[ys[ok], xm[ok]] = 1
    return cv2.morphologyEx(out, cv2.MORPH_CLOSE, ellipse(3))


def _complete_by_symmetry(
    lungs: list[np.ndarray], sides: list[np.ndarray], mid: np.ndarray
) -> None:
    """A lung much smaller than its partner (opaque lung) takes the partner's mirror image."""
    areas = [int(np.count_nonzero(m)) for m in lungs]
    for i in (0, 1):
        other = lungs[1 - i]
        if areas[i] < SYMMETRY_RATIO * areas[1 - i]:
            lungs[i] = _hull(lungs[i] | (_mirror(other, mid) & sides[i])) & sides[i]


def _extend_short(lung: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Extend a lung shorter than ``MIN_ASPECT`` x its width down to that height (hull)."""
    rows = np.flatnonzero(lung.any(axis=1))
    cols = np.flatnonzero(lung.any(axis=0))
    if rows.size < 3:
        return lung
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    if height >= MIN_ASPECT * width:
        return lung
    bottom = min(int(rows[0] + MIN_ASPECT * width), lung.shape[0])
    widths = lung[rows].sum(axis=1)
    widest = rows[int(np.argmax(widths))]
    line = np.flatnonzero(lung[widest])
    out = lung.copy()
    out[rows[-1] : bottom, line[0] : line[-1] + 1] = 1
    return _hull(out) & side


def default_lungs(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The default method on one radiograph.

    Args:
        image: (H, W) uint8 or float in [0, 1].

    Returns:
        (right, left): (H, W) uint8 {0,1} masks of the patient's right lung (image left) and
        left lung (image right).
    """
    full = as_uint8(image)
    y0, y1, x0, x1 = _content_box(full)
    img = full[y0:y1, x0:x1]
    work = _prepare(img)
    w = work.shape[1]
    mid = _midline(work)
    evidence = _evidence(work, mid)
    image_left = (np.arange(w)[None, :] < mid[:, None]).astype(np.uint8)
    blurred = cv2.GaussianBlur(work, (0, 0), DIAPHRAGM_SIGMA)
    edge_down = cv2.Sobel(blurred, cv2.CV_32F, 0, 1)
    scale = quantile(np.abs(edge_down), 0.95) + 1e-6
    np.clip(edge_down / np.float32(scale), 0, 3, out=edge_down)
    sides = [image_left, 1 - image_left]
    lungs = [_cut_below_diaphragm(_lung_on_side(evidence, side), edge_down) for side in sides]
    if SYMMETRY_RATIO > 0:
        _complete_by_symmetry(lungs, sides, mid)
    if MIN_ASPECT > 0:
        lungs = [_extend_short(lung, side) for lung, side in zip(lungs, sides, strict=True)]
    out = [resize_mask(lung, img.shape) for lung in lungs]
    if img.shape != full.shape:  # paste back into the frame
        for i, part in enumerate(out):
            out[i] = np.zeros(full.shape, np.uint8)
            out[i][y0:y1, x0:x1] = part
    return out[0], out[1]
