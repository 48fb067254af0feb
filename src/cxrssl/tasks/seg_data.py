"""Segmentation data in memory: each file decoded once, optionally cropped to its lung box,
letterboxed, kept as uint8 tensors.

A hundred 512 px radiographs at 256 px take 6.5 MB, so the whole set lives in memory and
batches are tensor slices: no decoding, no worker processes, augmentation on whole batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from cxrssl.anatomy import crop_box, lung_masks
from cxrssl.data.datasets import FolderDataset
from cxrssl.data.splits import resolve_patient_ids
from cxrssl.errors import CxrsslError, DatasetError
from cxrssl.geometry import (
    Box,
    Letterbox,
    apply_crop,
    apply_letterbox,
    letterbox,
    letterbox_mask,
    whole_box,
)
from cxrssl.io import read_image, read_mask
from cxrssl.train import distributed
from cxrssl.train.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

PriorFn = Callable[[Path, np.ndarray], np.ndarray]
"""The prior map of an image: ``prior(path, image)`` with the decoded (H, W) image in [0, 1]
-> an (H, W) float map in [0, 1] on the image's grid (see :func:`fit_prior`)."""

CROPS = ("none", "lung-box")
"""Input crops: ``"none"`` (the whole image) or ``"lung-box"`` (the seed's option-4 box,
``cxrssl.anatomy.crop_box`` of the rule-based lungs of the full-resolution image)."""


def check_crop(crop: str) -> str:
    """``crop`` if it is one of :data:`CROPS`.

    Raises:
        CxrsslError: Any other value.
    """
    if crop not in CROPS:
        raise CxrsslError(f"unknown crop {crop!r}; choose one of {', '.join(CROPS)}")
    return crop


def crop_from_init(init: str | Path | None, crop: str | None) -> str:
    """The crop of a run: ``crop`` when chosen, else the one the ``init`` checkpoint was
    trained with (``extra["crop"]``; pre-training with lung-box views writes ``"lung-box"``),
    else ``"none"``.

    A crop taken from the checkpoint is logged; a chosen crop that differs from the
    checkpoint's wins, with a warning.
    """
    stored = None
    if init:
        extra = load_checkpoint(init).get("extra") or {}
        stored = extra.get("crop") if isinstance(extra, dict) else None
        if stored is not None and stored not in CROPS:
            log.warning("--init %s names an unknown crop %r: ignored", init, stored)
            stored = None
    if crop is None:
        chosen = stored or "none"
        if chosen != "none":
            log.info(
                "crop %s: the --init checkpoint %s was trained with it (--crop none to override)",
                chosen,
                init,
            )
        return chosen
    check_crop(crop)
    if stored is not None and stored != crop:
        log.warning(
            "crop %s chosen, but the --init checkpoint %s was trained with crop %s",
            crop,
            init,
            stored,
        )
    return crop


def input_box(image: np.ndarray, crop: str) -> Box:
    """The box an (H, W) image is cropped to before letterboxing: the whole image for
    ``"none"``; for ``"lung-box"`` the lung box of ``lung_masks(image, "default")`` at the
    image's own resolution (the whole image when no plausible lungs are found)."""
    check_crop(crop)
    if crop == "none":
        return whole_box(*image.shape[:2])
    return crop_box(lung_masks(image, "default"))


@dataclass
class SegCache:
    """Cropped, letterboxed images and masks of a data set.

    Row ``i`` is ``letterbox(apply_crop(image, crops[i]), S)``; ``restore(.., boxes[i],
    crops[i], shapes[i])`` maps a prediction back to the original image.

    Attributes:
        images: (N, C, S, S) uint8, image * 255 rounded; C = 1, or 2 with a prior map as
            channel 1 (cropped and letterboxed exactly like the image, * 255 rounded).
        masks: (N, 1, S, S) uint8 in {0, 1}.
        boxes: Letterbox of each (cropped) image.
        paths: Image file of each row.
        mask_paths: Mask file of each row.
        patient_ids: Patient of each row (``None`` when unknown).
        crop: The crop of every row (:data:`CROPS`).
        crops: Crop box ``(x0, y0, x1, y1)`` of each row in its original image (the whole
            image for ``"none"``); empty: the whole image of each letterbox.
        shapes: Original (H, W) of each row; empty: the size of each letterbox's image.
    """

    images: torch.Tensor
    masks: torch.Tensor
    boxes: list[Letterbox]
    paths: list[Path]
    mask_paths: list[Path]
    patient_ids: list[str | None]
    crop: str = "none"
    crops: list[Box] = field(default_factory=list)
    shapes: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_crop(self.crop)
        if not self.crops:
            self.crops = [whole_box(b.height, b.width) for b in self.boxes]
        if not self.shapes:
            self.shapes = [(b.height, b.width) for b in self.boxes]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: Sequence[int] | np.ndarray) -> SegCache:
        """Rows ``index`` (integers) as a new cache sharing nothing mutable."""
        idx = [int(i) for i in index]
        t = torch.as_tensor(idx, dtype=torch.long)
        return SegCache(
            self.images[t],
            self.masks[t],
            [self.boxes[i] for i in idx],
            [self.paths[i] for i in idx],
            [self.mask_paths[i] for i in idx],
            [self.patient_ids[i] for i in idx],
            self.crop,
            [self.crops[i] for i in idx],
            [self.shapes[i] for i in idx],
        )


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 [0, 255], rounded."""
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def open_folders(images: str | Path, masks: str | Path) -> FolderDataset:
    """Pair ``images`` with ``masks`` by stem; patient ids from a ``labels.csv`` beside
    the image folder when there is one.

    Raises:
        DatasetError: Missing folders, or no image has a mask.
    """
    images, masks = Path(images), Path(masks)
    ds = FolderDataset.from_folder(
        images.parent, images=images.name, masks={"mask": masks.resolve()}
    )
    keep = [i for i, r in enumerate(ds.records) if "mask" in r.masks]
    if not keep:
        raise DatasetError(f"{masks}: no mask matches an image of {images} (same stem expected)")
    if len(keep) < len(ds):
        log.warning("%d image(s) without a mask in %s are left out", len(ds) - len(keep), masks)
    return ds.subset(keep)


def fit_prior(prior: np.ndarray, shape: tuple[int, ...], region: Box, box: Letterbox) -> np.ndarray:
    """A prior map through the image's geometry: checked against the image's (H, W)
    ``shape`` and [0, 1], cropped to ``region`` and letterboxed into ``box`` (bilinear, area
    when shrinking), as uint8 * 255 rounded, the cache's form of an input channel.

    Raises:
        CxrsslError: A map of another size, or with values outside [0, 1] (or not finite).
    """
    prior = np.asarray(prior, dtype=np.float32)
    if prior.shape != tuple(shape[:2]):
        raise CxrsslError(
            f"prior map of shape {prior.shape} does not match its image's {tuple(shape[:2])}"
        )
    if prior.size and not (np.isfinite(prior).all() and prior.min() >= 0 and prior.max() <= 1):
        raise CxrsslError("prior map values must lie in [0, 1]")
    return to_uint8(apply_letterbox(apply_crop(prior, region), box, "linear"))


def load_cache(
    dataset: FolderDataset,
    size: int,
    mask: str = "mask",
    crop: str = "none",
    prior: PriorFn | None = None,
) -> SegCache:
    """Decode every image and its mask once, crop both to the image's box (:func:`input_box`,
    computed once here from the full-resolution image) and letterbox them to ``size``.

    Args:
        dataset: Records with a mask called ``mask``.
        size: Side of the square network input.
        mask: Mask name in the records.
        crop: One of :data:`CROPS`.
        prior: Builds each image's prior map (:data:`PriorFn`), cached as channel 1 after
            the same crop and letterbox as the image (:func:`fit_prior`); None for none.

    Raises:
        ImageReadError: An unreadable image or a mask of another size.
        CxrsslError: An unknown ``crop``; a prior of the wrong size or range (the message
            names the image).
    """
    check_crop(crop)
    n = len(dataset)
    images = np.zeros((n, 1 if prior is None else 2, size, size), np.uint8)
    masks = np.zeros((n, 1, size, size), np.uint8)
    boxes, crops, shapes = [], [], []
    for i, record in enumerate(dataset.records):
        image = read_image(record.image)
        target = read_mask(record.masks[mask], image.shape)
        region = input_box(image, crop)
        canvas, box = letterbox(apply_crop(image, region), size)
        images[i, 0] = to_uint8(canvas)
        masks[i, 0] = letterbox_mask(apply_crop(target, region), box)
        if prior is not None:
            values = prior(record.image, image)  # its own errors name their files
            try:
                images[i, 1] = fit_prior(values, image.shape, region, box)
            except CxrsslError as err:
                raise CxrsslError(f"{record.image}: {err}") from err
        boxes.append(box)
        crops.append(region)
        shapes.append((int(image.shape[0]), int(image.shape[1])))
    if crop != "none":
        whole = sum(c == whole_box(*s) for c, s in zip(crops, shapes, strict=True))
        log.info(
            "%s crop: %d of %d image(s) cropped, %d kept whole (no plausible lung box)",
            crop,
            n - whole,
            n,
            whole,
        )
    return SegCache(
        torch.from_numpy(images),
        torch.from_numpy(masks),
        boxes,
        [r.image for r in dataset.records],
        [r.masks[mask] for r in dataset.records],
        dataset.patient_ids(),
        crop,
        crops,
        shapes,
    )


def draw_labelled(patient_ids: Sequence[str | None], k: int, seed: int) -> np.ndarray:
    """Choose ``k`` rows spread over as many patients as possible, reproducibly.

    Patients are shuffled with ``seed``; rows are then taken round-robin, one image per
    patient before any patient's second, so a label budget covers the most patients.
    Unknown ids count as their own patient (``cxrssl.data.splits.resolve_patient_ids``).

    Returns:
        Sorted row indices, shape (min(k, N),).

    Raises:
        DatasetError: ``k`` < 1.
    """
    if k < 1:
        raise DatasetError(f"--n-labelled must be at least 1, got {k}")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, pid in enumerate(resolve_patient_ids(patient_ids)):
        groups.setdefault(pid, []).append(i)
    order = [groups[key] for key in sorted(groups)]
    rng.shuffle(order)
    for rows in order:
        rng.shuffle(rows)
    picked: list[int] = []
    depth = 0
    while len(picked) < min(k, len(patient_ids)):
        picked += [rows[depth] for rows in order if depth < len(rows)]
        depth += 1
    return np.sort(np.asarray(picked[:k], dtype=np.int64))


def loader(cache: SegCache, batch_size: int, train: bool) -> DataLoader:
    """Batches of (images uint8 (B, C, S, S), masks uint8 (B, 1, S, S)).

    Training loaders shuffle (with the global torch RNG, which the engine seeds per epoch)
    and drop a last batch of one (batch norm cannot train on it). Under ``torchrun`` with
    several processes a training loader gives each process its shard of every global batch
    (a ``DistributedSampler``; ``batch_size`` is per process, incomplete batches dropped).
    """
    data = TensorDataset(cache.images, cache.masks)
    sampler = distributed.train_sampler(data) if train else None
    if sampler is not None:
        return DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=True)
    drop = train and len(cache) % batch_size == 1
    return DataLoader(data, batch_size=batch_size, shuffle=train, drop_last=drop)
