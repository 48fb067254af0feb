"""Prior maps aligned with a radiograph: a second input channel for lesion segmentation.

Generated kinds (:data:`PRIOR_KINDS`):

- ``heatmap``: a Gaussian of peak 1 and sigma ``HEATMAP_SIGMA`` x the radius at each nodule
  point, displaced by up to ``shift_px`` (:func:`displacement`: uniform over that disc, the
  inexact location a follow-up study or a referring note gives); the maximum where they
  overlap; zeros without points.
- ``pathology``: the rule-based candidate score (:func:`cxrssl.anatomy.pathology_map`) / 255.
- ``lungs``: the rule-based lung mask (:func:`cxrssl.anatomy.lung_mask`) as 0.0 / 1.0.

Or a folder of prior images matched by stem (:func:`read_prior`), such as the ``priors/``
that ``cxrssl simulate-nodules`` writes.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cxrssl.anatomy import lung_mask, pathology_map
from cxrssl.data.datasets import index_files
from cxrssl.errors import CxrsslError, DatasetError, ImageReadError
from cxrssl.io import IMAGE_SUFFIXES, read_image
from cxrssl.lesions.points import PIXEL_MM, Point, by_stem

__all__ = [
    "PRIOR_KINDS",
    "PriorBuilder",
    "check_prior",
    "displacement",
    "make_prior",
    "parse_prior",
    "prior_builder",
    "read_prior",
    "search_region",
]

PRIOR_KINDS = ("heatmap", "pathology", "lungs")
HEATMAP_SIGMA = 0.5  # heatmap Gaussian sigma, share of the nodule's radius
_MIN_SIGMA = 1.0  # px: the smallest heatmap sigma
_REACH = 4.0  # the Gaussian is drawn out to this many sigmas
PRIOR_LEVEL = 0.1  # a prior at or above this (of 1) marks a place to search
SEARCH_MM = 10.0  # how far from a marked place to search: the prior's expected error


def displacement(rng: np.random.Generator, max_px: float) -> tuple[float, float]:
    """A (dy, dx) drawn uniformly over the disc of radius ``max_px``: a registration error
    of up to ``max_px`` in any direction (mean distance 2/3 of it)."""
    turn, reach = rng.uniform(0, 2 * math.pi), max_px * math.sqrt(rng.random())
    return reach * math.sin(turn), reach * math.cos(turn)


def _heatmap(
    shape: tuple[int, int], points: Sequence[Point], shift_px: float, rng: np.random.Generator
) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    h, w = shape
    for p in points:
        dy, dx = displacement(rng, shift_px)
        cy, cx = p.y + dy, p.x + dx
        sigma = max(HEATMAP_SIGMA * p.radius_px, _MIN_SIGMA)
        reach = _REACH * sigma
        y0, y1 = max(math.floor(cy - reach), 0), min(math.ceil(cy + reach) + 1, h)
        x0, x1 = max(math.floor(cx - reach), 0), min(math.ceil(cx + reach) + 1, w)
        if y1 <= y0 or x1 <= x0:
            continue  # displaced off the image
        yy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        xx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        g = np.exp(-(yy**2 + xx**2) / np.float32(2 * sigma**2))
        np.maximum(out[y0:y1, x0:x1], g, out=out[y0:y1, x0:x1])
    return out


def make_prior(
    kind: str,
    image: np.ndarray,
    points: Sequence[Point] = (),
    *,
    shift_px: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A generated prior for one radiograph (see the module notes).

    Args:
        kind: one of :data:`PRIOR_KINDS`.
        image: (H, W) radiograph, float in [0, 1] or uint8.
        points: the image's nodules (``heatmap`` only).
        shift_px: the largest displacement of a heatmap peak (px).
        rng: draws the displacements; ``default_rng(0)`` when None.

    Returns:
        float32 (H, W) in [0, 1].

    Raises:
        DatasetError: an unknown kind.
        ValueError: an image that is not 2-D.
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"priors are made for a 2-D image, got shape {arr.shape}")
    if kind == "heatmap":
        return _heatmap(arr.shape, points, shift_px, rng or np.random.default_rng(0))
    if kind == "pathology":
        return pathology_map(arr).astype(np.float32) / np.float32(255)
    if kind == "lungs":
        return lung_mask(arr).astype(np.float32)
    raise DatasetError(f"unknown prior kind {kind!r}; choose from {list(PRIOR_KINDS)}")


def _constant(path: Path) -> np.ndarray:
    """A constant prior image (``read_image`` refuses those), scaled by its dtype."""
    raw = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_GRAYSCALE)
    if raw is None:
        raise ImageReadError(path, "constant image that OpenCV cannot decode")
    top = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(raw.dtype, 1.0)
    out: np.ndarray = np.clip(raw.astype(np.float32) / np.float32(top), 0, 1)
    return out


def read_prior(folder: Path, stem: str, shape: tuple[int, int]) -> np.ndarray:
    """The prior image of ``stem`` in ``folder``, resized (bilinear) to ``shape`` if needed.

    Any image format :func:`cxrssl.io.read_image` reads; an all-black (or constant) prior,
    the prior of an image without a nodule, is read too.

    Returns:
        float32 (H, W) in [0, 1].

    Raises:
        DatasetError: no prior of that stem in ``folder``.
        ImageReadError: an unreadable prior.
    """
    folder = Path(folder)
    path = next(
        (folder / f"{stem}{s}" for s in IMAGE_SUFFIXES if (folder / f"{stem}{s}").is_file()),
        None,
    )
    if path is None:  # another case of the suffix, or a missing folder (named in the error)
        path = index_files(folder).get(stem)
    if path is None:
        raise DatasetError(f"{folder}: no prior image for {stem!r}")
    try:
        prior = read_image(path)
    except ImageReadError as err:
        if not err.problem.startswith("constant image"):
            raise
        prior = _constant(path)
    h, w = shape
    if prior.shape != (h, w):
        prior = cv2.resize(prior, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(prior, 0, 1).astype(np.float32)


def parse_prior(spec: str) -> tuple[str, Path | None]:
    """A prior spec: a kind of :data:`PRIOR_KINDS` -> (kind, None); a folder -> ("dir", it).

    Raises:
        DatasetError: neither a kind nor an existing folder (the message lists the choices).
    """
    if spec in PRIOR_KINDS:
        return spec, None
    path = Path(spec)
    if path.is_dir():
        return "dir", path
    raise DatasetError(
        f"prior {spec!r} is neither one of {list(PRIOR_KINDS)} nor an existing folder"
    )


def check_prior(kind: str | None, points: Sequence[Point] | None) -> None:
    """Refuse a heatmap prior without points to draw it from."""
    if kind == "heatmap" and points is None:
        raise CxrsslError("a heatmap prior is drawn from nodule points: give --points")


@dataclass(frozen=True)
class PriorBuilder:
    """Each image's prior map for a prior spec: called as ``builder(path, image)``; plain
    data, so it travels to worker processes (see :func:`prior_builder`)."""

    kind: str
    folder: Path | None = None
    points: dict[str, list[Point]] = field(default_factory=dict)
    shift_px: float = 0.0
    seed: int = 0

    def __call__(self, path: Path, image: np.ndarray) -> np.ndarray:
        if self.folder is not None:
            return read_prior(self.folder, path.stem, image.shape[:2])
        rng = np.random.default_rng([self.seed, zlib.crc32(path.stem.encode())])
        found = self.points.get(path.stem, ())
        return make_prior(self.kind, image, found, shift_px=self.shift_px, rng=rng)


def prior_builder(
    spec: str | None,
    points: Sequence[Point] | None = None,
    shift_mm: float = 0.0,
    pixel_mm: float = PIXEL_MM,
    seed: int = 0,
) -> PriorBuilder | None:
    """The builder of each image's prior map for a prior ``spec``.

    A folder spec reads the map with the image's stem (``read_prior``); a generated kind is
    made from the image (and, for ``heatmap``, its points, each displaced by up to
    ``shift_mm`` (:func:`displacement`) drawn from
    ``numpy.random.default_rng([seed, crc32(stem)])``, so an image's prior does not depend on
    which other images are in the run).

    Returns:
        None for no ``spec``.

    Raises:
        CxrsslError: An unknown spec, or a heatmap without points.
    """
    if spec is None:
        return None
    kind, folder = parse_prior(spec)
    check_prior(kind, points)
    return PriorBuilder(kind, folder, by_stem(points or ()), shift_mm / pixel_mm, seed)


def search_region(prior: np.ndarray, pixel_mm: float, search_mm: float = SEARCH_MM) -> np.ndarray:
    """Where a prior says to look: its pixels at or above ``PRIOR_LEVEL``, grown by
    ``search_mm`` (the prior's expected registration error). uint8 {0, 1}; empty for an
    empty prior (an image without a nodule)."""
    marked = (np.asarray(prior) >= PRIOR_LEVEL).astype(np.uint8)
    r = max(round(search_mm / pixel_mm), 0)
    if r == 0 or not marked.any():
        return marked
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(marked, disc)
