"""Nodule candidates on a radiograph and the features a classifier scores them by.

A classical detector (in the line of Schilham et al. 2006, Hardie et al. 2008): bright blobs
of nodule size inside the rule-based lungs are the candidates; each gets a fixed set of
measurements (blob response, shape of the intensity surface, contrast against its ring,
gradient convergence, position in the lung) that :mod:`cxrssl.lesions.detector` learns to
rank. No network: it trains in seconds on a CPU from a hundred nodules.

On a working copy at ``WORK_MM`` per pixel (the image's pixel size given in mm):

1. Normalise: subtract the background (Gaussian, ``BACKGROUND_MM``) and divide by the local
   standard deviation over the same scale, so films of any exposure look alike.
2. Blobs: the scale-normalised negative Laplacian of Gaussian at each of ``SIGMAS_MM`` (a
   bright disc of radius sqrt(2) sigma answers most at sigma); candidates are its local maxima
   over scales, at least ``NMS_MM`` apart, inside the lungs grown by ``LUNG_MARGIN_MM``, the
   ``N_CANDIDATES`` strongest per image.
3. Features, sampled at each candidate from maps computed with filters for every scale:
   see :data:`FEATURE_NAMES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cxrssl.anatomy import lung_masks
from cxrssl.anatomy._image import as_uint8
from cxrssl.errors import DatasetError

WORK_MM = 0.7  # working pixel size (mm): JSRT's 1024 px films at 512 px
SIGMAS_MM = (2.0, 3.0, 4.5, 6.5, 9.0)  # blob scales: nodules of 5.7-25 mm diameter answer most
BACKGROUND_MM = 15.0  # scale of the background removed and of the local contrast
NMS_MM = 4.0  # candidates are local maxima over a disc of this radius
LUNG_MARGIN_MM = 3.0  # the rule-based lungs grown by this much (nodules at the lung edge)
N_CANDIDATES = 100  # candidates kept per image, strongest first
MAX_WORK_PX = 4096  # a working image beyond this (2.9 m across) means a wrong pixel size

_PER_SCALE = ("blob", "hess_min", "hess_max", "contrast", "ring_sd", "convergence")
_GLOBAL = (
    "best_blob",
    "best_sigma_mm",
    "rank",
    "blob_z",
    "height_in_lung",
    "off_centre",
    "depth_mm",
    "inside_lungs",
    "intensity",
    "background",
    "mirror_blob",
    "blob_over_mirror",
)
_OWN = tuple(f"{name}_{s:g}mm" for name in _PER_SCALE for s in SIGMAS_MM) + _GLOBAL
FEATURE_NAMES = _OWN + tuple(f"{name}_in_image" for name in _OWN)
"""Per scale sigma (disc radius r = sqrt(2) sigma): ``blob`` (-sigma^2 LoG), ``hess_min`` /
``hess_max`` (the Hessian's eigenvalues times sigma^2: both negative on a blob, one near 0 on
a rib or vessel), ``contrast`` (disc mean minus ring mean, r..2r), ``ring_sd`` (spread over
the ring: rib edges), ``convergence`` (mean cosine between the gradient and the direction to
the centre over 0.3r..1.3r, Kobatake's convergence index). Then: the strongest blob response
and its sigma, its rank among the image's candidates (0 first) and z-score over the lungs,
height in the lungs' box (0 top), horizontal distance from the box's centre (0 midline, 1
edge), depth inside the lungs (mm, 0 outside), inside the lungs or not, grey level (0-1) and
background level; the strongest blob response near the mirrored place in the other lung,
and the candidate's response minus it (asymmetry). Then each of these again as a z-score over
the image's own candidates (``_in_image``): a nodule stands out from the rest of its film,
whatever the film (+0.02 CPM on JSRT)."""


PRIOR_RADII_MM = (0.0, 5.0, 10.0, 20.0)
PRIOR_FEATURE_NAMES = tuple(f"prior_within_{r:g}mm" for r in PRIOR_RADII_MM)
"""With a prior (:func:`with_prior`): the prior's largest value within each radius of the
candidate (0 mm: at the candidate)."""


@dataclass(frozen=True)
class Candidates:
    """The candidates of one image: ``xy`` (n, 2) centres in image pixels (x column, y row),
    ``diameter_px`` (n,) the disc diameter of each one's best scale, ``features`` (n, F)
    float32 in the order of :data:`FEATURE_NAMES` (then :data:`PRIOR_FEATURE_NAMES` with a
    prior); with a prior, ``region`` (n,) the connected part of the search region each lies
    in (1, 2, ...)."""

    xy: np.ndarray
    diameter_px: np.ndarray
    features: np.ndarray
    region: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.xy)


def _disc(radius: float, inner: float = 0.0) -> np.ndarray:
    """Normalised kernel: 1 where inner < d <= radius (inner = 0: the whole disc)."""
    k = int(np.ceil(radius))
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
    d = np.hypot(yy, xx)
    w = ((d <= radius) & ((d > inner) | (inner == 0))).astype(np.float32)
    return w / w.sum()


def _convergence_kernels(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Kernels whose correlations with the unit gradient give the convergence index."""
    k = int(np.ceil(1.3 * radius))
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1].astype(np.float32)
    d = np.hypot(yy, xx)
    ann = (d > 0.3 * radius) & (d <= 1.3 * radius)
    n = max(int(ann.sum()), 1)
    safe = np.maximum(d, 1e-6)
    # a bright blob's gradient points inwards: towards the centre, at -offset / |offset|
    return (np.where(ann, -xx / safe, 0) / n).astype(np.float32), (
        np.where(ann, -yy / safe, 0) / n
    ).astype(np.float32)


def _filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(image, cv2.CV_32F, kernel, borderType=cv2.BORDER_REFLECT)


def _scale_maps(
    norm: np.ndarray, unit_x: np.ndarray, unit_y: np.ndarray, sigma: float
) -> list[np.ndarray]:
    """The per-scale feature maps of ``_PER_SCALE`` at ``sigma`` working px."""
    g = cv2.GaussianBlur(norm, (0, 0), sigma)
    dxx = cv2.Sobel(g, cv2.CV_32F, 2, 0, ksize=3)
    dyy = cv2.Sobel(g, cv2.CV_32F, 0, 2, ksize=3)
    dxy = cv2.Sobel(g, cv2.CV_32F, 1, 1, ksize=3)
    trace = dxx + dyy
    root = np.sqrt((dxx - dyy) ** 2 + 4 * dxy**2)
    s2 = np.float32(sigma * sigma)
    r = np.sqrt(2.0) * sigma
    disc = _filter(norm, _disc(r))
    ring_kernel = _disc(2 * r, r)
    ring = _filter(norm, ring_kernel)
    ring_sq = _filter(norm * norm, ring_kernel)
    kx, ky = _convergence_kernels(r)
    convergence = _filter(unit_x, kx) + _filter(unit_y, ky)
    return [
        -trace * s2,
        (trace - root) / 2 * s2,
        (trace + root) / 2 * s2,
        disc - ring,
        np.sqrt(np.maximum(ring_sq - ring * ring, 0)),
        convergence,
    ]


def _working(image: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, float, float]:
    """(working image float32 in [0, 1], x scale, y scale: working px per image px)."""
    scale = pixel_mm / WORK_MM
    h, w = image.shape
    size = (max(round(w * scale), 16), max(round(h * scale), 16))
    if max(size) > MAX_WORK_PX:
        raise DatasetError(
            f"a {w} x {h} px image at {pixel_mm} mm per pixel is {w * pixel_mm:.0f} mm wide; "
            "is the pixel size right?"
        )
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, size, interpolation=interp).astype(np.float32) / 255
    return small, size[0] / w, size[1] / h


def find_candidates(
    image: np.ndarray,
    pixel_mm: float,
    lungs: np.ndarray | None = None,
    n_candidates: int = N_CANDIDATES,
    search: np.ndarray | None = None,
) -> Candidates:
    """The nodule candidates of one radiograph with their features.

    Args:
        image: (H, W) uint8, or float in [0, 1].
        pixel_mm: the image's pixel size in mm (JSRT at 1024 px: 0.35).
        lungs: (H, W) lung mask; default: the rule-based lungs (``lung_masks``). Where
            the mask is empty the whole frame is searched.
        n_candidates: the most candidates kept.
        search: (H, W) mask of where to look (a prior's neighbourhood); default: the lungs
            grown by ``LUNG_MARGIN_MM`` (the whole frame without lungs). An empty one finds
            no candidate.

    Raises:
        DatasetError: not a 2-D image, a pixel size that is not positive (or makes the
            film metres wide), fewer than one candidate asked for.
    """
    if image.ndim != 2:
        raise DatasetError(f"a radiograph must be H x W, got shape {image.shape}")
    if not (pixel_mm > 0 and math.isfinite(pixel_mm)):
        raise DatasetError(f"the pixel size must be a positive number, got {pixel_mm} mm")
    if n_candidates < 1:
        raise DatasetError(f"at least one candidate per image is needed, got {n_candidates}")
    gray = as_uint8(image)
    if lungs is None:
        lungs = lung_masks(gray, "default").both
    small, sx, sy = _working(gray, pixel_mm)
    h, w = small.shape
    lung = cv2.resize((lungs > 0).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    margin = max(1, round(LUNG_MARGIN_MM / WORK_MM))
    grown = cv2.dilate(lung, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1,) * 2))
    if not grown.any():  # no lungs found: search the whole frame rather than nothing
        grown[:] = 1
    if search is not None:
        grown = cv2.resize((search > 0).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)

    bg_sigma = BACKGROUND_MM / WORK_MM
    background = cv2.GaussianBlur(small, (0, 0), bg_sigma)
    high = small - background
    norm = high / (np.sqrt(cv2.GaussianBlur(high * high, (0, 0), bg_sigma)) + 1e-3)
    smooth = cv2.GaussianBlur(small, (0, 0), 1.5)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    magnitude = np.sqrt(gx * gx + gy * gy) + 1e-6
    sigmas = [s / WORK_MM for s in SIGMAS_MM]
    unit_x, unit_y = gx / magnitude, gy / magnitude
    maps = np.stack([m for s in sigmas for m in _scale_maps(norm, unit_x, unit_y, s)])
    n_scales, n_kinds = len(sigmas), len(_PER_SCALE)
    blob = maps[0::n_kinds]  # (S, h, w): the first kind of every scale
    best = blob.max(axis=0)
    best_scale = blob.argmax(axis=0)

    nms = max(1, round(NMS_MM / WORK_MM))
    masked = np.where(grown > 0, best, -np.inf).astype(np.float32)
    peak = cv2.dilate(masked, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * nms + 1,) * 2))
    ys, xs = np.nonzero((masked == peak) & (grown > 0) & (best > 0))
    order = np.argsort(-best[ys, xs], kind="stable")[:n_candidates]
    ys, xs = ys[order], xs[order]

    sampled = maps[:, ys, xs].reshape(n_scales, n_kinds, -1).transpose(1, 0, 2)
    per_scale = sampled.reshape(n_kinds * n_scales, -1).T  # FEATURE_NAMES order
    rows, cols = np.nonzero(lung)
    if rows.size:
        y0, y1, x0, x1 = rows.min(), rows.max(), cols.min(), cols.max()
        inside = best[lung > 0]
        mean, sd = float(inside.mean()), float(inside.std()) + 1e-6
    else:  # no lungs found: the whole frame
        y0, y1, x0, x1 = 0, h - 1, 0, w - 1
        mean, sd = float(best.mean()), float(best.std()) + 1e-6
    # depth inside the lungs; the film's edge bounds them too (a mask filling the frame)
    depth = cv2.distanceTransform(np.pad(lung, 1), cv2.DIST_L2, 5)[1:-1, 1:-1] * WORK_MM
    # the same place in the other lung (mirrored about the lungs' box): ribs and vessels
    # repeat there, a nodule does not
    nearby = cv2.dilate(best, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * nms + 1,) * 2))
    mirror = nearby[ys, np.clip(x0 + x1 - xs, 0, w - 1)]
    k = best_scale[ys, xs]
    glob = np.stack(
        [
            best[ys, xs],
            np.asarray(SIGMAS_MM, np.float32)[k],
            np.arange(len(ys), dtype=np.float32) / max(n_candidates, 1),
            (best[ys, xs] - mean) / sd,
            (ys - y0) / max(y1 - y0, 1),
            np.abs(xs - (x0 + x1) / 2) / max((x1 - x0) / 2, 1),
            depth[ys, xs],
            lung[ys, xs].astype(np.float32),
            small[ys, xs],
            background[ys, xs],
            mirror,
            best[ys, xs] - mirror,
        ],
        axis=1,
    )
    own = np.concatenate([per_scale, glob], axis=1)
    spread = own.std(axis=0) if len(own) > 1 else np.ones(own.shape[1])
    in_image = (own - own.mean(axis=0)) / (spread + 1e-6) if len(own) else own
    features = np.concatenate([own, in_image], axis=1).astype(np.float32)
    xy = np.stack([(xs + 0.5) / sx - 0.5, (ys + 0.5) / sy - 0.5], axis=1)
    diameter = 2 * np.sqrt(2.0) * np.asarray(sigmas, np.float32)[k] / sx
    return Candidates(xy.astype(np.float64), diameter.astype(np.float64), features)


def with_prior(
    found: Candidates, prior: np.ndarray, search: np.ndarray, pixel_mm: float
) -> Candidates:
    """``found`` (searched inside ``search``) with the prior's features appended
    (:data:`PRIOR_FEATURE_NAMES`) and each candidate's part of the search region."""
    h, w = prior.shape
    cols = np.clip(np.round(found.xy[:, 0]).astype(int), 0, w - 1)
    rows = np.clip(np.round(found.xy[:, 1]).astype(int), 0, h - 1)
    feats = np.zeros((len(found), len(PRIOR_RADII_MM)), np.float32)
    for i, (x, y) in enumerate(zip(cols, rows, strict=True)):
        for j, r_mm in enumerate(PRIOR_RADII_MM):
            r = round(r_mm / pixel_mm)
            y0, x0 = max(y - r, 0), max(x - r, 0)
            window = prior[y0 : y + r + 1, x0 : x + r + 1]
            yy, xx = np.ogrid[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]]
            feats[i, j] = window[(yy - y) ** 2 + (xx - x) ** 2 <= r * r].max()
    _, parts = cv2.connectedComponents((search > 0).astype(np.uint8))
    region = parts[rows, cols].astype(np.int64)
    stray = np.flatnonzero(region == 0)  # found on the coarser grid just outside the region
    if stray.size and parts.any():
        py, px = np.nonzero(parts)
        for k in stray:  # the nearest part
            j = int(np.argmin((py - rows[k]) ** 2 + (px - cols[k]) ** 2))
            region[k] = parts[py[j], px[j]]
    features = np.concatenate([found.features, feats], axis=1)
    return Candidates(found.xy, found.diameter_px, features, region)
