"""Folder datasets: images, optional mask folders matched by file stem, optional labels CSV.

A dataset is a plain sequence of :class:`Record` (paths, patient id, labels, metadata) plus
the reader that turns one into arrays. Nothing is decoded until an item is asked for.

Layout read by :meth:`FolderDataset.from_folder`::

    root/images/<stem>.<any image suffix>
    root/masks*/<stem>[_mask].<any image suffix>   (each folder is one mask name)
    root/labels.csv                                (file, patient id, label columns)

Labels follow the torchxrayvision contract: 1 positive, 0 negative, NaN unknown.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrssl.data.table import read_table
from cxrssl.errors import DatasetError
from cxrssl.io import IMAGE_SUFFIXES, read_image, read_mask

__all__ = [
    "MASK_SUFFIXES",
    "DatasetWarning",
    "FolderDataset",
    "Record",
    "index_files",
    "match_masks",
    "sample",
]

MASK_SUFFIXES: tuple[str, ...] = (*IMAGE_SUFFIXES, ".gif")
"""Lowercase suffixes accepted for mask files (GIF for the SCR masks of JSRT)."""

FILE_COLUMNS = ("filename", "file", "image", "image index", "image_path", "path")
PATIENT_COLUMNS = ("patient_id", "patient id", "patientid", "patient")
_DEFAULT_CSV = "labels.csv"
_SHOWN = 5  # names quoted in a warning


class DatasetWarning(UserWarning):
    """A dataset inconsistency that is tolerated: unmatched rows, masks or patient ids."""


@dataclass(frozen=True, slots=True)
class Record:
    """One radiograph and what is known about it.

    Attributes:
        image: path of the image file (may not exist for metadata-only datasets).
        patient_id: patient identifier, ``None`` when unknown.
        masks: mask name (``"masks"``, ``"masks_left"``...) -> mask file.
        labels: label name -> 1.0, 0.0 or NaN.
        meta: other columns of the source table, as strings.

    The mappings are read-only by convention: records of one dataset may share them.
    """

    image: Path
    patient_id: str | None = None
    masks: Mapping[str, Path] = field(default_factory=dict)
    labels: Mapping[str, float] = field(default_factory=dict)
    meta: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The image file name, the record's key in split CSVs."""
        return self.image.name


class FolderDataset:
    """A sequence of records whose items are numpy arrays.

    ``dataset[i]`` returns ``{"image": float32 (H, W) in [0, 1], "masks": {name: uint8 (H, W)
    in {0, 1}}, "labels": float32 (L,), "patient_id": str | None, "path": Path}``.

    Args:
        records: the records; image file names must be unique.
        root: the folder the dataset was read from (for display and relative paths).
        name: a short name shown by ``repr``.
        label_names: label order of the ``labels`` arrays; default: keys of the records.
        mask_names: mask order; default: keys of the records. Union names are appended.
        mask_unions: derived masks, name -> parts, e.g. ``{"masks": ("masks_left",
            "masks_right")}``; present for a record when all its parts are.
        reader: image reader, ``cxrssl.io.read_image`` by default.

    Raises:
        DatasetError: two records share an image file name.
    """

    def __init__(
        self,
        records: Iterable[Record],
        *,
        root: str | Path | None = None,
        name: str = "",
        label_names: Sequence[str] | None = None,
        mask_names: Sequence[str] | None = None,
        mask_unions: Mapping[str, Sequence[str]] | None = None,
        reader: Callable[[Path], np.ndarray] | None = None,
    ) -> None:
        self.records: tuple[Record, ...] = tuple(records)
        self.root = Path(root) if root is not None else None
        self.name = name
        self.reader = reader if reader is not None else read_image
        self.mask_unions = {k: tuple(v) for k, v in (mask_unions or {}).items()}
        seen: dict[str, Path] = {}
        masks: dict[str, None] = dict.fromkeys(mask_names or ())
        labels: dict[str, None] = {}
        for r in self.records:
            if r.name in seen:
                raise DatasetError(
                    f"two images share the file name {r.name!r}: {seen[r.name]} and {r.image}"
                )
            seen[r.name] = r.image
            if mask_names is None:
                masks.update(dict.fromkeys(r.masks))
            if label_names is None:
                labels.update(dict.fromkeys(r.labels))
        masks.update(dict.fromkeys(self.mask_unions))
        self.mask_names: tuple[str, ...] = tuple(masks)
        self.label_names: tuple[str, ...] = tuple(labels if label_names is None else label_names)
        self._labels: np.ndarray | None = None

    @classmethod
    def from_folder(
        cls,
        root: str | Path,
        *,
        images: str = "images",
        masks: Sequence[str] | Mapping[str, str | Path] | None = None,
        labels_csv: str | Path | None = _DEFAULT_CSV,
        file_column: str | None = None,
        patient_column: str | None = None,
        label_columns: Sequence[str] | None = None,
        name: str = "",
    ) -> FolderDataset:
        """Read ``root/images`` with its mask folders and labels table.

        Masks match images by stem, any suffix; a ``_mask`` stem suffix is tolerated
        (``a_mask.png`` for ``a.jpg``). Images without a mask in a folder get no entry for
        it (see :meth:`missing_masks`); masks without an image, CSV rows without an image and
        images without a row are each reported by one :class:`DatasetWarning`.

        Args:
            root: dataset folder.
            images: image folder, relative to ``root`` (not searched recursively).
            masks: ``None`` finds the folders named ``masks*`` in ``root``; a sequence names
                folders (the folder name is the mask name); a mapping gives name -> folder.
            labels_csv: table relative to ``root`` (or absolute); ``None`` for none. The
                default ``labels.csv`` may be absent.
            file_column: column with the image file name or stem; default: the first of
                ``filename``, ``file``, ``image``, ``Image Index``, ``image_path``, ``path``.
            patient_column: default: ``patient_id``, ``Patient ID``, ``patientid`` or
                ``patient`` when present, else no patient ids.
            label_columns: label columns; default: every other column whose non-empty values
                are all 0 or 1. Empty cells are NaN.
            name: shown by ``repr``.

        Returns:
            The dataset, in sorted image-name order.

        Raises:
            DatasetError: a missing folder or table, duplicate stems, a bad table; the
                message names the path.
        """
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset folder not found")
        found = index_files(root / images, IMAGE_SUFFIXES)
        folders = _mask_folders(root, masks)
        matched = {}
        for mask_name, folder in folders.items():
            matched[mask_name], orphans = match_masks(found, folder)
            if orphans:
                _warn(f"{folder}: {len(orphans)} mask file(s) match no image", orphans)
        rows: dict[str, tuple[str | None, dict[str, float], dict[str, str]]] = {}
        label_names: list[str] = []
        csv_path = root / labels_csv if labels_csv is not None else None
        if csv_path is not None and (csv_path.is_file() or str(labels_csv) != _DEFAULT_CSV):
            rows, label_names = _read_table(
                csv_path, found, file_column, patient_column, label_columns
            )
        records = []
        for stem in sorted(found, key=lambda s: found[s].name):
            pid, labels, meta = rows.get(stem, (None, dict.fromkeys(label_names, math.nan), {}))
            mask_paths = {m: matched[m][stem] for m in folders if stem in matched[m]}
            records.append(Record(found[stem], pid, mask_paths, labels, meta))
        return cls(records, root=root, name=name, label_names=label_names, mask_names=list(folders))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        image = self.reader(r.image)
        masks = {k: read_mask(p, image.shape) for k, p in r.masks.items()}
        for union, parts in self.mask_unions.items():
            if all(p in masks for p in parts):
                masks[union] = np.maximum.reduce([masks[p] for p in parts])
        labels = np.array([r.labels.get(k, math.nan) for k in self.label_names], np.float32)
        return {
            "image": image,
            "masks": masks,
            "labels": labels,
            "patient_id": r.patient_id,
            "path": r.image,
        }

    def __repr__(self) -> str:
        n_patients = len({p for p in self.patient_ids() if p is not None})
        head = f"name={self.name!r}, " if self.name else ""
        return (
            f"FolderDataset({head}root={str(self.root)!r}, n={len(self)}, "
            f"patients={n_patients}, masks={list(self.mask_names)}, "
            f"labels={list(self.label_names)})"
        )

    def patient_ids(self) -> list[str | None]:
        """Patient id of every record, ``None`` where unknown."""
        return [r.patient_id for r in self.records]

    def files(self) -> list[str]:
        """Image file name of every record: the key of split CSVs."""
        return [r.name for r in self.records]

    def labels(self) -> np.ndarray:
        """All labels as a float32 array of shape (N, L) in ``label_names`` order (NaN unknown)."""
        if self._labels is None:
            rows: dict[int, list[float]] = {}  # records may share one labels mapping
            for r in self.records:
                if id(r.labels) not in rows:
                    rows[id(r.labels)] = [r.labels.get(k, math.nan) for k in self.label_names]
            self._labels = np.array([rows[id(r.labels)] for r in self.records], np.float32).reshape(
                len(self.records), len(self.label_names)
            )
        return self._labels

    def label_counts(self) -> dict[str, int]:
        """Number of positive (1) records per label, in ``label_names`` order."""
        positives = (self.labels() == 1).sum(axis=0)
        return {k: int(n) for k, n in zip(self.label_names, positives, strict=True)}

    def missing_masks(self) -> dict[str, list[str]]:
        """For each mask name, the image file names that have no such mask."""
        missing: dict[str, list[str]] = {}
        for m in self.mask_names:
            parts = self.mask_unions.get(m, (m,))
            missing[m] = [r.name for r in self.records if not all(p in r.masks for p in parts)]
        return missing

    def subset(self, indices: Sequence[int] | np.ndarray) -> FolderDataset:
        """The records at ``indices`` (integers or a boolean mask), same names and reader."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {idx.shape} for {len(self)} records")
            idx = np.flatnonzero(idx)
        return FolderDataset(
            (self.records[int(i)] for i in idx),
            root=self.root,
            name=self.name,
            label_names=self.label_names,
            mask_names=self.mask_names,
            mask_unions=self.mask_unions,
            reader=self.reader,
        )


def sample() -> FolderDataset:
    """The built-in CC BY sample: 90 radiographs of 48 patients, 256 px, with lung masks.

    Returns:
        A dataset with masks ``masks`` (both lungs), ``masks_left`` (patient's left lung, on
        the image right) and ``masks_right``; ``labels.csv`` columns go to ``Record.meta``
        (licence and source of each image: see ``data/sample/ATTRIBUTION.md``).
    """
    return FolderDataset.from_folder(Path(__file__).parent / "sample", name="sample")


def index_files(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> dict[str, Path]:
    """Files directly in ``folder`` with one of ``suffixes`` (any case), by stem.

    Hidden files are skipped.

    Raises:
        DatasetError: the folder is missing, or two files share a stem (``a.png``, ``a.jpg``).
    """
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise DatasetError(
                f"{folder}: two files with the stem {path.stem!r}: "
                f"{found[path.stem].name} and {path.name}"
            )
        found[path.stem] = path
    return found


def match_masks(images: Mapping[str, Path], folder: Path) -> tuple[dict[str, Path], list[Path]]:
    """Match the masks in ``folder`` to image stems; ``<stem>_mask`` also matches ``<stem>``.

    Args:
        images: image stem -> image path.
        folder: a folder of mask files.

    Returns:
        (image stem -> mask path, mask files that match no image).
    """
    found = index_files(folder, MASK_SUFFIXES)
    matched = {s: p for s, p in found.items() if s in images}
    orphans = []
    for stem, path in found.items():
        base = stem.removesuffix("_mask")
        if stem in matched:
            continue
        if base != stem and base in images and base not in matched:
            matched[base] = path
        else:
            orphans.append(path)
    return matched, orphans


def _mask_folders(
    root: Path, masks: Sequence[str] | Mapping[str, str | Path] | None
) -> dict[str, Path]:
    if masks is None:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("masks"))
        return {n: root / n for n in sorted(names, key=lambda n: (n != "masks", n))}
    pairs = masks.items() if isinstance(masks, Mapping) else ((m, m) for m in masks)
    folders = {str(k): root / v for k, v in pairs}
    for folder in folders.values():
        if not folder.is_dir():
            raise DatasetError(f"{folder}: mask folder not found")
    return folders


def _pick(header: Sequence[str], given: str | None, candidates: Sequence[str]) -> str | None:
    if given is not None:
        return given
    lower = {h.lower(): h for h in header}
    return next((lower[c] for c in candidates if c in lower), None)


def _read_table(
    path: Path,
    images: Mapping[str, Path],
    file_column: str | None,
    patient_column: str | None,
    label_columns: Sequence[str] | None,
) -> tuple[dict[str, tuple[str | None, dict[str, float], dict[str, str]]], list[str]]:
    """Rows of a labels CSV keyed by image stem: (patient id, labels, other columns)."""
    header, table = read_table(path, "labels table")
    file_col = _pick(header, file_column, FILE_COLUMNS)
    patient_col = _pick(header, patient_column, PATIENT_COLUMNS)
    for col, what in ((file_col, "file"), (patient_col, "patient")):
        if col is not None and col not in header:
            raise DatasetError(f"{path}: no {what} column {col!r} (columns: {header})")
    if file_col is None:
        raise DatasetError(
            f"{path}: no file column; expected one of {list(FILE_COLUMNS)} "
            f"(columns: {header}); pass file_column="
        )
    others = [h for h in header if h not in (file_col, patient_col)]
    if label_columns is None:
        label_columns = [h for h in others if _is_binary(r.get(h) for r in table)]
    for col in label_columns:
        if col not in header:
            raise DatasetError(f"{path}: no label column {col!r} (columns: {header})")
    rows: dict[str, tuple[str | None, dict[str, float], dict[str, str]]] = {}
    unmatched = []
    for line, row in enumerate(table, start=2):
        stem = Path((row.get(file_col) or "").strip()).stem
        if stem not in images:
            unmatched.append(row.get(file_col) or f"(empty, line {line})")
            continue
        if stem in rows:
            raise DatasetError(f"{path}: line {line}: a second row for image {stem!r}")
        pid = (row.get(patient_col) or "").strip() if patient_col else ""
        labels = {c: _to_float(path, line, c, row.get(c)) for c in label_columns}
        meta = {c: row.get(c) or "" for c in others if c not in labels}
        rows[stem] = (pid or None, labels, meta)
    if unmatched:
        _warn(f"{path}: {len(unmatched)} row(s) match no image", unmatched)
    no_row = [images[s].name for s in images if s not in rows]
    if no_row:
        _warn(f"{path}: {len(no_row)} image(s) have no row", no_row)
    return rows, list(label_columns)


def read_labels_table(
    path: Path,
    images: Mapping[str, Path],
    file_column: str | None = None,
    patient_column: str | None = None,
    label_columns: Sequence[str] | None = None,
) -> tuple[dict[str, tuple[str | None, dict[str, float], dict[str, str]]], list[str]]:
    """Rows of a labels CSV keyed by image stem: ``(patient id, labels, other columns)``,
    and the label names (default: every column whose values are all 0, 1 or empty).

    Columns are found as in :meth:`FolderDataset.from_folder`; rows without an image and
    images without a row are each reported by one :class:`DatasetWarning`.

    Raises:
        DatasetError: a missing table or column, a duplicate row, a non-numeric label.
    """
    if not Path(path).is_file():
        raise DatasetError(f"{path}: labels table not found")
    return _read_table(Path(path), images, file_column, patient_column, label_columns)


def read_patient_ids(path: str | Path, images: Mapping[str, Path]) -> dict[str, str | None]:
    """Patient id of each image stem from a labels or split CSV (a file and a patient column).

    Args:
        path: the CSV.
        images: stem -> file of the images to look up (others are warned about).

    Raises:
        DatasetError: unreadable table, or no file or patient column.
    """
    path = Path(path)
    rows, _ = _read_table(path, images, None, None, [])
    header, _ = read_table(path, "labels table")
    if _pick(header, None, PATIENT_COLUMNS) is None:
        raise DatasetError(f"{path}: no patient column; expected one of {list(PATIENT_COLUMNS)}")
    return {stem: rows[stem][0] if stem in rows else None for stem in images}


def _is_binary(values: Iterable[str | None]) -> bool:
    seen = False
    for v in values:
        v = (v or "").strip()
        if not v:
            continue
        try:
            if float(v) not in (0.0, 1.0):
                return False
        except ValueError:
            return False
        seen = True
    return seen


def _to_float(path: Path, line: int, column: str, value: str | None) -> float:
    value = (value or "").strip()
    if not value:
        return math.nan
    try:
        return float(value)
    except ValueError:
        raise DatasetError(
            f"{path}: line {line}: label {column!r} is {value!r}, expected a number (1, 0 or empty)"
        ) from None


def _warn(message: str, names: Sequence[object]) -> None:
    shown = ", ".join(Path(str(n)).name for n in names[:_SHOWN])
    more = ", ..." if len(names) > _SHOWN else ""
    warnings.warn(f"{message}: {shown}{more}", DatasetWarning, stacklevel=3)
