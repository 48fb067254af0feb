"""Classification data: labelled images on the streaming pool, label sets, patient-level
label fractions and the lung-box crop.

Images come from the pool of :mod:`cxrssl.data.pool` (uint8 letterboxed canvas, rule-based
lungs and lung box per image, in a content-hash cache): nothing decoded is held in memory, so
112,120 NIH images train like 500. Labels are float32 (N, C): 1 and 0 are known, NaN is
unknown (an empty cell or -1 in the CSV, as NIH and CheXpert users write it) and is masked
out of the loss and the metrics.

The lung-box crop (seed 000, option 4) is :func:`crop_to_box`, the same function in training
(before augmentation), validation and prediction: a box in canvas pixels resampled to the
full canvas.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from cxrssl.augment import MapKind, box_affine, warp_maps
from cxrssl.data.datasets import FolderDataset, Record, index_files, read_labels_table
from cxrssl.data.pool import Pool, build_pool, open_sources
from cxrssl.data.splits import make_split, resolve_patient_ids
from cxrssl.errors import DatasetError
from cxrssl.parallel import pool_context
from cxrssl.train import distributed

log = logging.getLogger(__name__)


@dataclass
class LabelSet:
    """Labels of a dataset.

    Attributes:
        names: Label (column) names, in output order.
        values: (N, C) float32: 1, 0 or NaN (unknown).
        multiclass: Exactly one class per image (softmax) instead of independent labels.
    """

    names: tuple[str, ...]
    values: np.ndarray
    multiclass: bool = False

    def targets(self) -> np.ndarray:
        """Class index per row (multi-class only)."""
        return np.nanargmax(self.values, axis=1)


def select_labels(
    dataset: FolderDataset, columns: Sequence[str] | None, multiclass: bool = False
) -> tuple[FolderDataset, LabelSet]:
    """The dataset's labels restricted to ``columns`` (all when None), -1 read as unknown.

    Multi-class keeps the rows with exactly one positive and every other label 0 (one
    warning gives how many rows are left out).

    Raises:
        DatasetError: an unknown column, no labels at all, or a label value other than
            1, 0, -1 or empty (the message names the column and value).
    """
    names = tuple(columns) if columns else dataset.label_names
    if not names:
        raise DatasetError(
            f"{dataset.root or dataset.name}: no label columns found; name them with "
            "--label-columns (and --labels CSV)"
        )
    missing = [c for c in names if c not in dataset.label_names]
    if missing:
        raise DatasetError(
            f"label column(s) {missing} not found; the data has {list(dataset.label_names)}"
        )
    index = [dataset.label_names.index(c) for c in names]
    values = dataset.labels()[:, index].astype(np.float32)
    values[values == -1] = np.nan
    bad = ~np.isnan(values) & (values != 0) & (values != 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DatasetError(
            f"{dataset.records[row].image}: label {names[col]!r} is {values[row, col]:g}; "
            "expected 1, 0, -1 or empty"
        )
    if multiclass:
        if len(names) < 2:
            raise DatasetError("multi-class needs at least two label columns")
        ok = (np.nan_to_num(values, nan=-1) == 1).sum(1) == 1
        ok &= ~np.isnan(values).any(1)
        if not ok.all():
            log.warning(
                "multi-class: %d of %d image(s) without exactly one positive class are left out",
                int((~ok).sum()),
                len(ok),
            )
        dataset, values = dataset.subset(np.flatnonzero(ok)), values[ok]
    return dataset, LabelSet(names, values, multiclass)


def open_labelled(
    images: str | Path,
    labels_csv: str | Path | None = None,
    label_columns: Sequence[str] | None = None,
    file_column: str | None = None,
    patient_column: str | None = None,
) -> FolderDataset:
    """The images of ``images`` (any layout :func:`cxrssl.data.pool.open_sources` reads) with
    their labels: from ``labels_csv`` when given (rows matched by file stem; its patient
    column replaces the folder's), else the layout's own (``labels.csv``, NIH, ieee8023).
    """
    dataset = open_sources(images)
    if labels_csv is None:
        return dataset
    found = {r.image.stem: r.image for r in dataset.records}
    rows, names = read_labels_table(
        Path(labels_csv), found, file_column, patient_column, label_columns
    )
    records = []
    for r in dataset.records:
        pid, labels, meta = rows.get(r.image.stem, (None, dict.fromkeys(names, math.nan), {}))
        merged = {**r.meta, **meta}
        records.append(replace(r, patient_id=pid or r.patient_id, labels=labels, meta=merged))
    return FolderDataset(records, root=dataset.root, name=dataset.name, label_names=names)


@dataclass
class ClsData:
    """Pool rows with their labels, aligned row by row.

    Attributes:
        pool: The images in the streaming cache.
        labels: The labels of the pool's rows.
        patient_ids: Resolved patient id per row (unknown ones made unique).
        meta: ``Record.meta`` per row (``official_split``, ``source``...).
    """

    pool: Pool
    labels: LabelSet
    patient_ids: list[str]
    meta: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pool)

    def subset(self, index: Sequence[int] | np.ndarray) -> ClsData:
        """Rows ``index`` (integers)."""
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        labels = LabelSet(self.labels.names, self.labels.values[idx], self.labels.multiclass)
        meta = [self.meta[i] for i in idx] if self.meta else []
        return ClsData(self.pool.subset(idx), labels, [self.patient_ids[i] for i in idx], meta)

    @property
    def files(self) -> list[str]:
        """Image file name per row."""
        return [p.name for p in self.pool.files]


def build_data(
    dataset: FolderDataset,
    labels: LabelSet,
    size: int,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    progress: bool = True,
    patients: bool = True,
) -> ClsData:
    """Find or compute the pool entry of every labelled image; images that fail are left
    out (``pool.failures``), their labels with them. Without ``patients`` (prediction) each
    image is its own patient, silently."""
    pool = build_pool(dataset, size, cache_dir=cache_dir, workers=workers, progress=progress)
    row = {r.image: i for i, r in enumerate(dataset.records)}
    rows = np.array([row[p] for p in pool.files], dtype=np.int64)
    names = [p.name for p in pool.files]
    pids = resolve_patient_ids(pool.patient_ids, names) if patients else names
    kept = LabelSet(labels.names, labels.values[rows], labels.multiclass)
    meta = [dict(dataset.records[i].meta) for i in rows]
    return ClsData(pool, kept, pids, meta)


def image_records(images: str | Path) -> FolderDataset:
    """Every image in a folder (any layout), for prediction."""
    path = Path(images)
    if path.is_dir() and not index_files(path) and not (path / "images").is_dir():
        raise DatasetError(f"{path}: no images found")
    dataset = open_sources(path)
    return FolderDataset((Record(r.image, r.patient_id) for r in dataset.records), root=path)


def draw_fraction(
    patient_ids: Sequence[str], labels: LabelSet, fraction: float, seed: int
) -> np.ndarray:
    """Rows of a ``fraction`` of the patients, drawn stratified by label, with ``seed``.

    Returns:
        Sorted row indices (every row for ``fraction`` 1).

    Raises:
        DatasetError: ``fraction`` outside (0, 1], or too few patients to draw from.
    """
    if not 0 < fraction <= 1:
        raise DatasetError(f"--label-fraction must lie in (0, 1], got {fraction}")
    if fraction == 1:
        return np.arange(len(patient_ids))
    strata = labels.targets() if labels.multiclass else labels.values
    side = make_split(list(patient_ids), strata, val=0.0, test=1 - fraction, seed=seed)
    return np.flatnonzero(side == "train")


class LabelledPool(Dataset[tuple[torch.Tensor, ...]]):
    """Items ``(image uint8 (1, S, S), lungs uint8 (1, S, S), box float32 (4,), labels
    float32 (C,))`` read from the pool entry of each row."""

    def __init__(self, data: ClsData) -> None:
        self.items = data.pool.dataset()
        self.labels = torch.from_numpy(np.ascontiguousarray(data.labels.values, np.float32))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        item = self.items[i]
        return item["image"], item["lungs"], item["box"], self.labels[i]


def cls_loader(
    data: ClsData,
    batch_size: int,
    train: bool,
    workers: int = 0,
    samples: int | None = None,
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """Batches of :class:`LabelledPool` items.

    Training draws ``samples`` items an epoch (default N) from the global torch RNG, which
    the engine seeds per epoch: a small labelled set is cycled through several times, a large
    one sampled without replacement. A last batch of one is dropped (batch norm cannot train
    on it). Under ``torchrun`` with several processes a training loader is one shuffled
    pass, each process its shard (``samples`` does not apply; ``batch_size`` is per process).
    """
    dataset = LabelledPool(data)
    sampler: Sampler[int] | None = distributed.train_sampler(dataset) if train else None
    drop = sampler is not None  # torchrun: each process its shard of one shuffled pass
    if train and sampler is None:
        n = samples or len(dataset)
        sampler = RandomSampler(dataset, num_samples=n)
        drop = n % batch_size == 1
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop,
        persistent_workers=workers > 0,
        multiprocessing_context=pool_context() if workers > 0 else None,
    )


def crop_to_box(
    images: torch.Tensor, boxes: torch.Tensor, lungs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample each (B, C, S, S) float image and its (B, 1, S, S) lungs from its (B, 4)
    canvas box to the full canvas: the lung-box crop, the same wherever it is applied."""
    theta = box_affine(boxes.float(), images.shape[-2], images.shape[-1]).to(images.device)
    maps: dict[str, tuple[torch.Tensor, MapKind]] = {
        "image": (images, "image"),
        "lungs": (lungs.float(), "binary"),
    }
    out = warp_maps(maps, theta)
    return out["image"], out["lungs"]


__all__ = [
    "ClsData",
    "LabelSet",
    "LabelledPool",
    "build_data",
    "cls_loader",
    "crop_to_box",
    "draw_fraction",
    "image_records",
    "open_labelled",
    "select_labels",
]
