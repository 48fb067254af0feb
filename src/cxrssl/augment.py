"""Batched, CXR-safe augmentation of tensors: one random affine per sample, one
``grid_sample`` per batch and interpolation mode, every map following the image's geometry
exactly.

Geometry is a (B, 2, 3) ``theta`` in the normalised coordinates of ``F.affine_grid``
(``align_corners=False``): it maps each *output* point to the *input* point it samples, with
(-1, -1) the top-left corner of the top-left pixel and (1, 1) the bottom-right corner of the
bottom-right pixel. Thetas compose (:func:`compose`), invert (:func:`invert`) and relate two
views of one image (:func:`relative`), so region correspondence and view-to-view consistency
are computed from the thetas :func:`two_views` returns. Transforms assume square canvases
(letterboxes); on a non-square one a rotation in normalised coordinates is also a shear.

Maps follow the geometry according to their kind (:data:`MapKind`):

- ``"image"``: bilinear, values as they come.
- ``"binary"``: {0, 1} masks, bilinear then ``>= 0.5``.
- ``"label"``: integer label maps (e.g. the six lung regions, 0-6), nearest; integer dtype
  and value set kept (values must be exact in the image dtype: below 2**24 for float32).
- ``"soft"``: maps in [0, 1] (pathology candidates, priors, attention targets), bilinear, no
  threshold.

Samples outside the input read 0, so warping keeps the letterbox convention that padding is
exactly 0; photometric changes apply to the non-zero (content) pixels only.

Defaults suit chest radiographs: small rotations and scalings, brightness/contrast within
+-20 %, mild Gaussian noise, and no horizontal flip (left and right are not interchangeable).
:data:`PRETRAIN_AUGMENT` is the seed's pre-training recipe (with flips and random crops).
A flip moves labels with the tissue: a region label keeps naming the same anatomy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from cxrssl.errors import CxrsslError

MapKind = Literal["image", "binary", "label", "soft"]
MAP_KINDS: tuple[str, ...] = get_args(MapKind)

# Maps to warp: name -> ((B, C, H, W) or (B, H, W) tensor, kind).
Maps = Mapping[str, tuple[torch.Tensor, MapKind]]
_IMAGE = "__image__"  # the images' name among the maps of one warp


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (each drawn uniformly per sample).

    Attributes:
        rotation: Maximum absolute rotation in degrees.
        scale: Maximum relative zoom in or out (0.1 -> factor in [0.9, 1.1]).
        translate: Maximum shift as a fraction of the side.
        brightness: Maximum additive brightness change (fraction of the [0, 1] range).
        contrast: Maximum relative contrast change around the image mean.
        noise: Maximum standard deviation of additive Gaussian noise.
        hflip: Probability of a horizontal flip (0 for CXR unless left/right is irrelevant).
        crop_scale: Range of the random-resized crop's area, as a fraction of the input's;
            (1, 1) with ``crop_ratio`` (1, 1) is no crop.
        crop_ratio: Range of the crop's width / height (drawn log-uniformly).
        noise_p: Probability that a sample gets noise at all.
    """

    rotation: float = 10.0
    scale: float = 0.1
    translate: float = 0.05
    brightness: float = 0.2
    contrast: float = 0.2
    noise: float = 0.02
    hflip: float = 0.0
    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop_ratio: tuple[float, float] = (1.0, 1.0)
    noise_p: float = 1.0

    @property
    def crops(self) -> bool:
        """Whether the config draws a random-resized crop."""
        return self.crop_scale != (1.0, 1.0) or self.crop_ratio != (1.0, 1.0)


# Seed 000's pre-training augmentation: rotation +-10 deg, horizontal flip p 0.5, brightness
# and contrast +-20 %, Gaussian noise (sigma up to 0.02) with p 0.6, random-resized crop. The
# seed gives no crop ranges; area 0.5-1 keeps most of the chest ("don't over-crop"), and the
# aspect range is the usual 3/4-4/3. Crops take the place of the zoom and the shift.
PRETRAIN_AUGMENT = AugmentConfig(
    rotation=10.0,
    scale=0.0,
    translate=0.0,
    brightness=0.2,
    contrast=0.2,
    noise=0.02,
    hflip=0.5,
    crop_scale=(0.5, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    noise_p=0.6,
)


def _uniform(n: int, bound: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator, device=generator.device) * 2 - 1) * bound


def _between(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + torch.rand(n, generator=generator, device=generator.device) * (high - low)


def _affine(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
) -> torch.Tensor:
    """(n,) entries -> (n, 2, 3) ``[[a, b, tx], [c, d, ty]]``."""
    return torch.stack([torch.stack([a, b, tx], 1), torch.stack([c, d, ty], 1)], 1)


def random_affine(n: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Draw ``n`` rotation/zoom/shift/flip affines in normalised coordinates.

    Returns:
        (n, 2, 3) float32 tensor on the generator's device.
    """
    angle = _uniform(n, math.radians(config.rotation), generator)
    zoom = 1 + _uniform(n, config.scale, generator)
    shift = _uniform(2 * n, config.translate * 2, generator).view(n, 2)
    flip = torch.rand(n, generator=generator, device=generator.device) < config.hflip
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    sign = torch.where(flip, -1.0, 1.0)
    return _affine(cos * sign, -sin, sin * sign, cos, shift[:, 0], shift[:, 1])


def random_resized_crop(
    n: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Draw ``n`` random-resized crops as affines: each crop, resized, fills the output.

    The area fraction is drawn uniformly in ``scale`` and the width / height log-uniformly in
    ``ratio`` (in the input's pixels for a square input); a side that would exceed the input
    is clipped to it (one draw, no retries), and the crop lies inside the input.

    Returns:
        (n, 2, 3) float32 tensor on the generator's device.
    """
    area = _between(n, scale[0], scale[1], generator)
    log_ratio = _between(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    # Half-sides in normalised units (the input is 2 wide), clipped to the input.
    half_w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    half_h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    centre = _uniform(2 * n, 1.0, generator).view(n, 2)
    zero = torch.zeros_like(area)
    tx, ty = centre[:, 0] * (1 - half_w), centre[:, 1] * (1 - half_h)
    return _affine(half_w, zero, zero, half_h, tx, ty)


def box_affine(
    boxes: torch.Tensor | Sequence[Sequence[float]], height: int, width: int
) -> torch.Tensor:
    """Affines that crop each sample to its box and resize the box to the whole output.

    Args:
        boxes: (B, 4) ``(x0, y0, x1, y1)`` in pixels of the ``height`` x ``width`` input,
            ends exclusive (``image[y0:y1, x0:x1]``, as ``cxrssl.anatomy.crop.lung_box``).
        height: Input rows.
        width: Input columns.

    Returns:
        (B, 2, 3) float32 tensor (on ``boxes``' device when it is a tensor).
    """
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    x0, y0, x1, y1 = b.unbind(1)
    zero = torch.zeros_like(x0)
    tx, ty = (x0 + x1) / width - 1, (y0 + y1) / height - 1
    return _affine((x1 - x0) / width, zero, zero, (y1 - y0) / height, tx, ty)


def patch_boxes(
    masks: torch.Tensor, patch: int, foreground: float, generator: torch.Generator
) -> torch.Tensor:
    """One ``patch`` x ``patch`` box per sample for :func:`augment_view`'s ``boxes``: with
    probability ``foreground`` (where the sample has a positive pixel) around a positive
    pixel drawn uniformly, off-centre by up to a quarter of the side; otherwise anywhere.
    Foreground oversampling as nnU-Net's (a third of its patches): small lesions in large
    images are otherwise rare in a batch.

    Args:
        masks: (B, 1, H, W) {0, 1} masks.
        patch: Side of the boxes in pixels, at most min(H, W).
        foreground: Share of samples centred on foreground, in [0, 1].
        generator: Source of the draws (its device is where they are drawn).

    Returns:
        (B, 4) float32 ``(x0, y0, x1, y1)`` integer-valued boxes inside the input.
    """
    n, _, height, width = masks.shape
    if not 0 < patch <= min(height, width):
        raise CxrsslError(f"patch side {patch} must lie in 1..{min(height, width)}")
    dev = generator.device
    draws = torch.rand(n, 3, generator=generator, device=dev).cpu()
    out = torch.empty(n, 4)
    for i in range(n):
        cy = float(draws[i, 0]) * height
        cx = float(draws[i, 1]) * width
        if float(draws[i, 2]) < foreground:
            rows, cols = torch.nonzero(masks[i, 0] > 0.5, as_tuple=True)
            if len(rows):
                k = int(torch.randint(len(rows), (1,), generator=generator, device=dev))
                off = (torch.rand(2, generator=generator, device=dev).cpu() - 0.5) * (patch / 2)
                cy, cx = float(rows[k]) + 0.5 + float(off[0]), float(cols[k]) + 0.5 + float(off[1])
        y0 = min(max(round(cy - patch / 2), 0), height - patch)
        x0 = min(max(round(cx - patch / 2), 0), width - patch)
        out[i] = torch.tensor([x0, y0, x0 + patch, y0 + patch], dtype=torch.float32)
    return out


def _homogeneous(theta: torch.Tensor) -> torch.Tensor:
    """(..., 2, 3) -> (..., 3, 3)."""
    bottom = torch.zeros_like(theta[..., :1, :])
    bottom[..., 0, 2] = 1
    return torch.cat([theta, bottom], -2)


def compose(*thetas: torch.Tensor) -> torch.Tensor:
    """One affine for several in a row: warping by ``thetas[0]``, then by ``thetas[1]``, ...
    samples the input where warping once by the result does.

    Args:
        thetas: (B, 2, 3) each (or (1, 2, 3), broadcast).

    Returns:
        (B, 2, 3), the product ``thetas[0] @ thetas[1] @ ...`` in homogeneous form.
    """
    out = _homogeneous(thetas[0])
    for theta in thetas[1:]:
        out = out @ _homogeneous(theta.to(out))
    return out[..., :2, :]


def invert(theta: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) -> (B, 2, 3) inverse affines (computed in float64)."""
    inv = torch.linalg.inv(_homogeneous(theta.double()))
    return inv[..., :2, :].to(theta.dtype)


def relative(theta_a: torch.Tensor, theta_b: torch.Tensor) -> torch.Tensor:
    """The affine that maps view A's frame into view B's: warping a map seen in view A by
    it gives the map as view B sees it (zero where B sees what A does not).

    Args:
        theta_a: (B, 2, 3) affines that made view A from the source.
        theta_b: (B, 2, 3) affines that made view B from the same source.

    Returns:
        (B, 2, 3) ``invert(theta_a) @ theta_b``. Warp an all-ones map by it to get the part
        of view B that view A covers.
    """
    return compose(invert(theta_a), theta_b)


def warp_maps(
    maps: Maps, theta: torch.Tensor, size: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """Warp named maps of one batch by per-sample affines, each as its kind requires.

    One bilinear ``grid_sample`` covers every image, binary and soft channel, and one
    nearest ``grid_sample`` every label channel; both use the same grid.

    Args:
        maps: name -> (tensor, kind); tensors (B, C, H, W) or (B, H, W) with the same B, H
            and W. The first float tensor sets the working dtype (float32 otherwise).
        theta: (B, 2, 3) affines (output -> input, normalised coordinates), or (1, 2, 3)
            for the whole batch.
        size: Output (height, width); the input's by default.

    Returns:
        name -> warped tensor, with its input's dtype and number of dimensions: images as
        sampled, binary maps in {0, 1}, label maps with the input's values only, soft maps in
        [0, 1].

    Raises:
        CxrsslError: For an unknown kind or maps of different batch or image sizes.
    """
    if not maps:
        return {}
    tensors = {name: t if t.ndim == 4 else t.unsqueeze(1) for name, (t, _) in maps.items()}
    kinds = {name: kind for name, (_, kind) in maps.items()}
    for name, kind in kinds.items():
        if kind not in MAP_KINDS:
            raise CxrsslError(f"map {name!r}: unknown kind {kind!r}; choose one of {MAP_KINDS}")
    shapes = {(t.shape[0], *t.shape[2:]) for t in tensors.values()}
    if len(shapes) != 1 or any(t.ndim != 4 for t in tensors.values()):
        raise CxrsslError(f"maps must share batch and image size, got {sorted(shapes)}")
    first = next(iter(tensors.values()))
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    n, _, height, width = first.shape
    out_h, out_w = size if size is not None else (height, width)
    theta = theta.to(device=first.device, dtype=dtype).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, 1, out_h, out_w], align_corners=False)

    def sample(names: list[str], mode: str) -> dict[str, torch.Tensor]:
        if not names:
            return {}
        stack = torch.cat([tensors[k].to(dtype) for k in names], 1)
        out = F.grid_sample(stack, grid, mode=mode, padding_mode="zeros", align_corners=False)
        return dict(zip(names, out.split([tensors[k].shape[1] for k in names], 1), strict=True))

    warped = sample([k for k in tensors if kinds[k] != "label"], "bilinear")
    warped |= sample([k for k in tensors if kinds[k] == "label"], "nearest")
    result = {}
    for name, (source, kind) in maps.items():
        out = warped[name]
        if kind == "binary":
            out = out >= 0.5
        elif kind == "label":
            out = out.round()
        elif kind == "soft":
            out = out.clamp(0, 1)  # bilinear is a convex mix; this only absorbs rounding
        out = out.to(source.dtype)
        result[name] = out if source.ndim == 4 else out.squeeze(1)
    return result


def warp(
    images: torch.Tensor, theta: torch.Tensor, masks: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply per-sample affines to images (bilinear) and binary masks (bilinear, >= 0.5).

    Args:
        images: (B, C, H, W) float.
        theta: (B, 2, 3) affine matrices.
        masks: Optional (B, M, H, W) {0, 1} tensor of any dtype.

    Returns:
        The warped images (B, C, H, W) and masks (B, M, H, W, same dtype) or None.
    """
    maps: dict[str, tuple[torch.Tensor, MapKind]] = {"image": (images, "image")}
    if masks is not None:
        maps["masks"] = (masks, "binary")
    out = warp_maps(maps, theta)
    return out["image"], out.get("masks")


def photometric(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Random brightness, contrast and Gaussian noise on the content, clipped to [0, 1].

    Padding (pixels that are 0 in every channel: letterbox and warp borders) stays exactly 0,
    and the contrast's centre is the mean of the content pixels.

    Args:
        images: (B, C, H, W) float in [0, 1].

    Returns:
        (B, C, H, W) float in [0, 1].
    """
    n = images.shape[0]
    gen_device = generator.device
    brightness = _uniform(n, config.brightness, generator).view(n, 1, 1, 1)
    contrast = 1 + _uniform(n, config.contrast, generator).view(n, 1, 1, 1)
    sigma = torch.rand(n, generator=generator, device=gen_device).view(n, 1, 1, 1) * config.noise
    noise = torch.randn(images.shape, generator=generator, device=gen_device) * sigma
    if config.noise_p < 1:
        noise *= torch.rand(n, 1, 1, 1, generator=generator, device=gen_device) < config.noise_p
    content = (images != 0).any(dim=1, keepdim=True)
    count = content.sum(dim=(1, 2, 3), keepdim=True) * images.shape[1]
    mean = (images * content).sum(dim=(1, 2, 3), keepdim=True) / count.clamp(min=1)
    out = (images - mean) * contrast.to(images) + mean + brightness.to(images) + noise.to(images)
    return torch.where(content, out.clamp_(0, 1), 0.0)


@dataclass(frozen=True)
class View:
    """One augmented view of a batch.

    Attributes:
        image: (B, C, h, w) augmented images.
        maps: name -> warped map (see :func:`warp_maps`); no photometric change.
        theta: (B, 2, 3) affines from the view back to the source images (box crop, random
            crop and random affine composed): ``relative(a.theta, b.theta)`` relates views.
    """

    image: torch.Tensor
    maps: dict[str, torch.Tensor]
    theta: torch.Tensor


def augment_view(
    images: torch.Tensor,
    maps: Maps,
    generator: torch.Generator,
    config: AugmentConfig = PRETRAIN_AUGMENT,
    boxes: torch.Tensor | Sequence[Sequence[float]] | None = None,
    size: tuple[int, int] | None = None,
) -> View:
    """One view: crop to ``boxes`` (if given), random-resized crop (if the config has one),
    random affine, one warp of images and maps, then photometry on the images.

    Args:
        images: (B, C, H, W) float in [0, 1], padding exactly 0.
        maps: name -> (tensor, kind) maps that follow the geometry (see :func:`warp_maps`).
        generator: Source of all randomness.
        config: Ranges of the transforms.
        boxes: Optional (B, 4) ``(x0, y0, x1, y1)`` pixel boxes of the input (e.g. the lung
            box) that each view is cropped to before the random transforms.
        size: Output (height, width); the input's by default.

    Returns:
        The :class:`View`.
    """
    n, _, height, width = images.shape
    thetas = [] if boxes is None else [box_affine(boxes, height, width)]
    if config.crops:
        thetas.append(random_resized_crop(n, config.crop_scale, config.crop_ratio, generator))
    thetas.append(random_affine(n, config, generator))
    theta = compose(*[t.to(images.device) for t in thetas])
    if _IMAGE in maps:
        raise CxrsslError(f"map name {_IMAGE!r} is reserved for the images")
    out = warp_maps({_IMAGE: (images, "image"), **maps}, theta, size)
    image = photometric(out.pop(_IMAGE), config, generator)
    return View(image, out, theta)


def two_views(
    images: torch.Tensor,
    maps: Maps,
    generator: torch.Generator,
    config: AugmentConfig = PRETRAIN_AUGMENT,
    boxes: torch.Tensor | Sequence[Sequence[float]] | None = None,
    size: tuple[int, int] | None = None,
) -> tuple[View, View]:
    """Two independent views of each image for contrastive pre-training, each with its maps
    and its theta (arguments as :func:`augment_view`).

    Region correspondence: warping view A's maps by ``relative(a.theta, b.theta)`` gives
    view B's (up to resampling), where B sees what A does.
    """
    first = augment_view(images, maps, generator, config, boxes, size)
    return first, augment_view(images, maps, generator, config, boxes, size)


def augment(
    images: torch.Tensor,
    masks: torch.Tensor | None,
    generator: torch.Generator,
    config: AugmentConfig = AugmentConfig(),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment a batch: geometry on images and masks alike, photometry on images only.

    Args:
        images: (B, C, H, W) float in [0, 1].
        masks: Optional (B, M, H, W) {0, 1} masks that must follow the geometry.
        generator: Source of all randomness (its device is where parameters are drawn).
        config: Ranges of the transforms.

    Returns:
        Augmented images (B, C, H, W) and masks (B, M, H, W) or None.
    """
    maps: dict[str, tuple[torch.Tensor, MapKind]] = {}
    if masks is not None:
        maps["masks"] = (masks, "binary")
    view = augment_view(images, maps, generator, config)
    return view.image, view.maps.get("masks")
