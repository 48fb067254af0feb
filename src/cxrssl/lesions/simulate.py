"""Simulated nodules on real radiographs, with exact masks, points and follow-up priors.

**Shape.** A nodule is a sphere or an ellipsoid (``ELLIPSOID_SHARE``; in-plane axes ratio
uniform in ``AXES_RATIO``, random rotation). Its projected profile is the normalised
thickness along the beam, ``sqrt(1 - q)`` with ``q = (u/a)^2 + (v/b)^2`` in the rotated
frame, blurred by a Gaussian of sigma uniform in ``EDGE_MM`` (soft edges) and scaled back to
a peak of 1. The diameter is the area-equivalent one, ``2 sqrt(a b)``, log-uniform in
``sizes_mm`` (small nodules are the common ones).

**Contrast.** Added attenuation brightens the film: ``out = image + c * profile * (1 -
image)``, with ``c`` uniform in ``contrasts`` (the peak added brightness on a black
background; on a background of level ``g`` it is ``c (1 - g)``). The output stays in
[0, 1], bone saturates first. The default range covers what the JSRT nodules show
(centre minus surroundings ``c (1 - g)`` of about 0.01 to 0.08 at lung levels ``g`` near 0.7).

**Truth.** The exact mask is the nodule's projected footprint, where its thickness along
the beam is above zero (``q <= 1``): the soft edge straddles that boundary (half of it
inside, half outside). The point is its centre (sub-pixel) and area-equivalent diameter.

**Placement.** The whole footprint lies inside the lung mask eroded by ``MARGIN_MM``, and
apart from the image's other nodules. Each nodule aims at a target drawn with
``TARGETS``: ``medial`` (the medial ``MEDIAL_ZONE`` of its row's lung width: hila, heart
border), ``rib`` (the brightest quarter of the local band-pass, mostly ribs and their
crossings) or ``any``. Recorded per nodule: ``site`` (``medial``; else ``apical`` /
``basal`` in the top / bottom ``APICAL`` / ``BASAL`` of its lung's height; else
``peripheral``), ``target``, and the local background under the footprint on the original
film: ``background`` (median grey), ``ridge`` (mean band-pass ``G(RIDGE_MM[0]) -
G(RIDGE_MM[1])``: positive over ribs) and ``clutter`` (its standard deviation).

**Prior.** ``OUT/priors/<stem>.png``: a DRR-like follow-up view of the image's nodules,
each profile blurred further by a Gaussian of sigma ``prior_blur_mm`` and displaced by up
to ``prior_shift_mm`` (:func:`cxrssl.lesions.priors.displacement`), peak values kept (a
blurred small nodule is fainter); 0 where there is none (all 0 for a negative).

Randomness: each image draws from ``default_rng([seed, crc32(stem)])``, so an image's
nodules do not depend on the other films of the folder.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cxrssl.anatomy.lungs import split_sides
from cxrssl.data.datasets import DatasetWarning, index_files, match_masks
from cxrssl.errors import DatasetError
from cxrssl.files import write_bytes_atomic
from cxrssl.io import read_image, read_mask, write_mask
from cxrssl.lesions.points import PIXEL_MM, Point, write_points
from cxrssl.lesions.priors import displacement

__all__ = ["Nodule", "SimulationSummary", "nodule_profile", "simulate_nodules"]

EDGE_MM = (0.5, 1.5)  # soft edge: Gaussian sigma of the profile's blur, uniform (mm)
ELLIPSOID_SHARE = 0.5  # share of ellipsoids (the rest are spheres)
AXES_RATIO = (0.6, 0.95)  # ellipsoids: minor / major in-plane axis, uniform
TARGETS = {"medial": 0.3, "rib": 0.2, "any": 0.5}  # placement aims and their weights
MEDIAL_ZONE = 1 / 3  # medial share of a row's lung width: site "medial"
APICAL = 0.25  # top share of a lung's height: site "apical"
BASAL = 0.25  # bottom share: site "basal"
MARGIN_MM = 1.0  # gap kept between a footprint and the lung edge or another nodule
RIDGE_MM = (1.0, 8.0)  # band-pass of the rib measure: Gaussian sigmas (mm)
RIB_QUANTILE = 0.75  # "rib" target: band-pass at or above this quantile of the candidates
_TRIES = 4  # smaller sizes tried when a nodule does not fit
_FOOTPRINT_SIGMAS = 2.5  # reach of the soft profile: semi-major axis + this many edge sigmas
_VISIBLE = 0.01  # share of the peak beyond which a nodule keeps others away


@dataclass
class Nodule:
    """One simulated nodule, in pixels of its image."""

    y: float
    x: float
    a: float  # semi-major axis
    b: float  # semi-minor axis
    angle: float  # rotation of the major axis, radians
    edge: float  # Gaussian sigma of the soft edge
    contrast: float

    @property
    def diameter(self) -> float:
        """Area-equivalent diameter."""
        return 2 * math.sqrt(self.a * self.b)

    @property
    def reach(self) -> float:
        """Radius of a disc holding the soft profile."""
        return self.a + _FOOTPRINT_SIGMAS * self.edge + 1


def nodule_profile(
    shape: tuple[int, int], n: Nodule, blur: float = 0.0, shift: tuple[float, float] = (0, 0)
) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """A nodule's projected profile on a box of the image: (values, footprint, the box).

    Args:
        shape: the image's (H, W).
        n: the nodule.
        blur: extra Gaussian sigma (px) on top of its soft edge (the prior's blur).
        shift: (dy, dx) displacement of the centre (px).

    Returns:
        float32 values (peak 1 for ``blur=0``; lower peaks with blur are kept), the
        footprint (bool, thickness above zero, the soft edge and blur left out) and the
        slices of the image they cover (empty boxes off the image).
    """
    sigma = math.hypot(n.edge, blur)
    cy, cx = n.y + shift[0], n.x + shift[1]
    half = math.ceil(n.a + 3 * sigma) + 2
    size = 2 * half + 1
    oy, ox = math.floor(cy) - half, math.floor(cx) - half
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy + oy - cy, xx + ox - cx
    cos, sin = math.cos(n.angle), math.sin(n.angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    q = (u / n.a) ** 2 + (v / n.b) ** 2
    sharp = np.sqrt(np.clip(1 - q, 0, None)).astype(np.float32)
    soft = cv2.GaussianBlur(sharp, (0, 0), n.edge, borderType=cv2.BORDER_CONSTANT)
    peak = float(soft.max())
    values = soft / np.float32(peak) if peak > 0 else soft
    if blur > 0:
        values = cv2.GaussianBlur(values, (0, 0), blur, borderType=cv2.BORDER_CONSTANT)
    h, w = shape
    y0, x0 = max(oy, 0), max(ox, 0)
    y1, x1 = min(oy + size, h), min(ox + size, w)
    if y1 <= y0 or x1 <= x0:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), bool), (slice(0, 0),) * 2
    inner = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
    return values[inner], q[inner] <= 1, (slice(y0, y1), slice(x0, x1))


def _zones(lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per lung pixel: (share of the row's lung width from the medial edge, share of the
    lung's height from its top); NaN outside the lungs."""
    medial = np.full(lungs.shape, np.nan, np.float32)
    height = np.full(lungs.shape, np.nan, np.float32)
    cols = np.arange(lungs.shape[1], dtype=np.float32)
    for side, medial_is_right in zip(split_sides(lungs), (True, False), strict=True):
        rows = np.flatnonzero(side.any(axis=1))
        if rows.size == 0:
            continue
        top, bottom = rows[0], rows[-1]
        for r in rows:
            c = np.flatnonzero(side[r])
            lo, hi = c[0], c[-1]
            width = max(hi - lo, 1)
            frac = (hi - cols[c]) / width if medial_is_right else (cols[c] - lo) / width
            medial[r, c] = frac
            height[r, c] = (r - top) / max(bottom - top, 1)
    return medial, height


def _site(medial: float, height: float) -> str:
    if medial < MEDIAL_ZONE:
        return "medial"
    if height < APICAL:
        return "apical"
    if height > 1 - BASAL:
        return "basal"
    return "peripheral"


@dataclass
class SimulationSummary:
    """What :func:`simulate_nodules` wrote."""

    images: int
    nodules: int
    negatives: int
    out_dir: Path
    points_csv: Path
    skipped: list[str] = field(default_factory=list)
    sites: dict[str, int] = field(default_factory=dict)


def _png(path: Path, image: np.ndarray) -> None:
    """Write a [0, 1] float image as an 8-bit PNG, atomically."""
    ok, buf = cv2.imencode(".png", np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8))
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode the image as PNG")
    write_bytes_atomic(path, buf.tobytes())


def _place(
    rng: np.random.Generator,
    lungs: np.ndarray,
    taken: np.ndarray,
    reach: float,
    medial: np.ndarray,
    ridge: np.ndarray,
) -> tuple[int, int, str] | None:
    """A centre pixel at least ``reach`` px inside the lungs and from ``taken``, and the
    target aimed at; None when nothing fits."""
    free = np.pad((lungs > 0) & ~taken, 1).astype(np.uint8)
    room = cv2.distanceTransform(free, cv2.DIST_L2, 5)[1:-1, 1:-1]
    fits = room >= reach
    if not fits.any():
        return None
    target = str(
        rng.choice(list(TARGETS), p=np.array(list(TARGETS.values())) / sum(TARGETS.values()))
    )
    pick = fits
    if target == "medial":
        pick = fits & (np.nan_to_num(medial, nan=1.0) < MEDIAL_ZONE)
    elif target == "rib":
        pick = fits & (ridge >= np.quantile(ridge[fits], RIB_QUANTILE))
    if not pick.any():
        pick, target = fits, "any"
    ys, xs = np.nonzero(pick)
    k = int(rng.integers(len(ys)))
    return int(ys[k]), int(xs[k]), target


def simulate_nodules(
    images_dir: str | Path,
    lung_masks_dir: str | Path,
    out_dir: str | Path,
    per_image: int = 1,
    seed: int = 0,
    pixel_mm: float = PIXEL_MM,
    sizes_mm: tuple[float, float] = (5.0, 30.0),
    contrasts: tuple[float, float] = (0.05, 0.25),
    prior_shift_mm: float = 0.0,
    prior_blur_mm: float = 2.0,
    negatives: float = 0.0,
) -> SimulationSummary:
    """Insert simulated nodules into the lungs of real radiographs (see the module notes).

    Writes ``OUT/images/`` (8-bit PNG, the film's stem and size), ``OUT/masks/`` (exact 0/255
    footprints), ``OUT/priors/`` (8-bit follow-up priors) and ``OUT/points.csv`` (file, x, y,
    diameter_px, diameter_mm, and contrast, shape, axes_ratio, angle_deg, edge_mm, site,
    target, background, ridge, clutter). Every film with a lung mask is written, also those
    left without a nodule.

    Args:
        images_dir: the radiographs.
        lung_masks_dir: their lung masks, matched by stem (``<stem>_mask`` too); a film
            without one is skipped with a warning naming it.
        out_dir: where to write.
        per_image: nodules per film (0: all negatives).
        seed: the seed; the same seed gives the same output.
        pixel_mm: pixel size of the films.
        sizes_mm: (smallest, largest) diameter.
        contrasts: (lowest, highest) peak added brightness ``c``.
        prior_shift_mm: the largest displacement of a nodule in the prior.
        prior_blur_mm: Gaussian sigma of the prior's extra blur.
        negatives: share of films left without a nodule, drawn per film.

    Raises:
        DatasetError: bad arguments, or no film with a lung mask.
        ImageReadError: an unreadable film or mask, or a mask of another size.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    lo_mm, hi_mm = sizes_mm
    if per_image < 0 or pixel_mm <= 0 or not 0 < lo_mm <= hi_mm:
        raise DatasetError(
            f"need per_image >= 0, pixel_mm > 0 and 0 < sizes; got {per_image}, {pixel_mm}, "
            f"{sizes_mm}"
        )
    if not 0 <= contrasts[0] <= contrasts[1] <= 1 or not 0 <= negatives <= 1:
        raise DatasetError(
            f"contrasts and negatives must lie in [0, 1]; got {contrasts}, {negatives}"
        )
    if prior_shift_mm < 0 or prior_blur_mm < 0:
        raise DatasetError("the prior's shift and blur cannot be negative")
    files = index_files(images_dir)
    lungs_of, _ = match_masks(files, Path(lung_masks_dir))
    skipped = [files[s].name for s in files if s not in lungs_of]
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"{len(skipped)} film(s) without a lung mask in {lung_masks_dir}, skipped: {shown}",
            DatasetWarning,
            stacklevel=2,
        )
    if not lungs_of:
        raise DatasetError(f"{images_dir}: no film has a lung mask in {lung_masks_dir}")
    points: list[Point] = []
    sites: dict[str, int] = {}
    n_negative = 0
    for stem in sorted(lungs_of):
        rng = np.random.default_rng([seed, zlib.crc32(stem.encode())])
        image = read_image(files[stem])
        lungs = read_mask(lungs_of[stem], image.shape)
        count = 0 if rng.random() < negatives else per_image
        found = _simulate_one(stem, image, lungs, count, rng, pixel_mm, sizes_mm, contrasts)
        film, mask = image.copy(), np.zeros(image.shape, np.uint8)
        prior = np.zeros(image.shape, np.float32)
        shift_px, blur_px = prior_shift_mm / pixel_mm, prior_blur_mm / pixel_mm
        for n, point in found:
            values, foot, box = nodule_profile(image.shape, n)
            film[box] += np.float32(n.contrast) * values * (1 - film[box])
            mask[box] |= foot.astype(np.uint8)
            values, _, box = nodule_profile(image.shape, n, blur_px, displacement(rng, shift_px))
            prior[box] = np.maximum(prior[box], values)
            points.append(point)
            sites[point.extra["site"]] = sites.get(point.extra["site"], 0) + 1
        n_negative += not found
        _png(out_dir / "images" / f"{stem}.png", film)
        write_mask(out_dir / "masks" / f"{stem}.png", mask)
        _png(out_dir / "priors" / f"{stem}.png", prior)
    table = out_dir / "points.csv"
    write_points(table, points, pixel_mm)
    return SimulationSummary(
        images=len(lungs_of),
        nodules=len(points),
        negatives=n_negative,
        out_dir=out_dir,
        points_csv=table,
        skipped=skipped,
        sites=sites,
    )


def _simulate_one(
    stem: str,
    image: np.ndarray,
    lungs: np.ndarray,
    count: int,
    rng: np.random.Generator,
    pixel_mm: float,
    sizes_mm: Sequence[float],
    contrasts: Sequence[float],
) -> list[tuple[Nodule, Point]]:
    """Draw and place ``count`` nodules on one film (a warning for those that do not fit)."""
    if count == 0:
        return []
    medial, height = _zones(lungs)
    fine, coarse = (s / pixel_mm for s in RIDGE_MM)
    ridge = cv2.GaussianBlur(image, (0, 0), fine) - cv2.GaussianBlur(image, (0, 0), coarse)
    taken = np.zeros(image.shape, bool)
    margin = MARGIN_MM / pixel_mm
    out = []
    for _ in range(count):
        diameter = math.exp(rng.uniform(math.log(sizes_mm[0]), math.log(sizes_mm[1])))
        ellipsoid = rng.random() < ELLIPSOID_SHARE
        ratio = rng.uniform(*AXES_RATIO) if ellipsoid else 1.0
        angle = rng.uniform(0, math.pi) if ellipsoid else 0.0
        edge_mm = rng.uniform(*EDGE_MM)
        contrast = rng.uniform(contrasts[0], contrasts[1])
        placed = None
        for _ in range(_TRIES):
            radius = diameter / 2 / pixel_mm  # area-equivalent radius sqrt(a b)
            a, b = radius / math.sqrt(ratio), radius * math.sqrt(ratio)
            n = Nodule(0, 0, a, b, angle, edge_mm / pixel_mm, contrast)
            placed = _place(rng, lungs, taken, n.reach + margin, medial, ridge)
            if placed is not None or diameter <= sizes_mm[0]:
                break
            diameter = max(diameter / 1.5, sizes_mm[0])
        if placed is None:
            warnings.warn(
                f"{stem}: no room in the lungs for another nodule of {diameter:.1f} mm",
                DatasetWarning,
                stacklevel=3,
            )
            break
        row, col, target = placed
        n.y, n.x = row + rng.uniform(-0.5, 0.5), col + rng.uniform(-0.5, 0.5)
        values, foot, box = nodule_profile(image.shape, n)
        under, band = image[box][foot], ridge[box][foot]
        taken[box] |= values >= _VISIBLE
        extra = {
            "contrast": f"{contrast:.4f}",
            "shape": "ellipsoid" if ellipsoid else "sphere",
            "axes_ratio": f"{ratio:.3f}",
            "angle_deg": f"{math.degrees(angle):.1f}",
            "edge_mm": f"{edge_mm:.2f}",
            "site": _site(float(medial[row, col]), float(height[row, col])),
            "target": target,
            "background": f"{float(np.median(under)):.4f}",
            "ridge": f"{float(band.mean()):.4f}",
            "clutter": f"{float(band.std()):.4f}",
        }
        out.append((n, Point(f"{stem}.png", n.x, n.y, n.diameter, extra=extra)))
    return out
