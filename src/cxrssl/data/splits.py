"""Patient-level splits: train/val/test and k-fold, seeded, stratified where labels exist.

Patients, not images, are split: scikit-learn's splitters run on the unique patient ids and
every image follows its patient, so no patient is on two sides. Images without a patient
id each count as their own patient: :func:`resolve_patient_ids` is the one place that decides
so, and one :class:`DatasetWarning` says how many. Callers that split more than once resolve
the ids first and pass the resolved ones on, so the warning is given once.

Stratification uses one key per patient. A row's key is its label (1-D labels) or its
rarest positive finding (multi-label, "none" when no finding is positive); a patient takes
the rarest key among its rows. Keys with too few patients are pooled.

Splits are stored as a CSV (``file, patient_id, split`` or ``file, patient_id, fold``)
that later commands reuse; reading it checks again that no patient leaks.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from cxrssl.data.datasets import DatasetWarning
from cxrssl.data.table import read_table
from cxrssl.errors import DatasetError, SplitLeakError
from cxrssl.files import atomic_open

__all__ = [
    "SplitTable",
    "check_no_leak",
    "kfold",
    "make_split",
    "read_split_csv",
    "resolve_patient_ids",
    "write_split_csv",
]

UNKNOWN_PREFIX = "(no patient id) "

PatientIds = Sequence[str | None]


def make_split(
    patient_ids: PatientIds,
    labels: np.ndarray | None = None,
    *,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
) -> np.ndarray:
    """Assign each image to ``"train"``, ``"val"`` or ``"test"`` by patient.

    Args:
        patient_ids: one id per image; ``None`` or ``""`` = unknown (own group).
        labels: optional, shape (N,) class labels or (N, L) multi-label 1/0/NaN, for
            stratification.
        val: fraction of patients for validation (0 for none).
        test: fraction of patients for test (0 for none).
        seed: random seed; the same inputs and seed give the same split.

    Returns:
        str array of shape (N,).

    Raises:
        DatasetError: bad fractions or too few patients for the requested parts.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DatasetError(
            f"split fractions must be >= 0 with val + test < 1, got val={val}, test={test}"
        )
    groups = _group_codes(patient_ids)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    keys = _group_keys(groups, n_groups, labels)
    side = np.full(n_groups, "train", dtype="<U5")
    rest = np.arange(n_groups)
    for name, frac in (("test", test), ("val", val / (1 - test))):
        if frac == 0:
            continue
        strata = _pool(keys[rest], min_count=math.ceil(1 / min(frac, 1 - frac)))
        try:
            rest, taken = train_test_split(rest, test_size=frac, stratify=strata, random_state=seed)
        except ValueError as e:
            raise DatasetError(
                f"cannot split {n_groups} patient(s) into val={val}, test={test}: {e}"
            ) from None
        side[taken] = name
    return side[groups]


def kfold(
    patient_ids: PatientIds, k: int = 5, labels: np.ndarray | None = None, *, seed: int = 0
) -> np.ndarray:
    """Assign each image to one of ``k`` folds by patient.

    Args:
        patient_ids: one id per image; ``None`` or ``""`` = unknown (own group).
        k: number of folds (>= 2).
        labels: optional (N,) or (N, L) labels for stratification (see the module notes).
        seed: random seed.

    Returns:
        int64 array of shape (N,), values in ``0..k-1``.

    Raises:
        DatasetError: ``k`` < 2 or more folds than patients.
    """
    groups = _group_codes(patient_ids)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if k < 2 or k > n_groups:
        raise DatasetError(f"cannot make {k} folds from {n_groups} patient(s)")
    strata = _pool(_group_keys(groups, n_groups, labels), min_count=k)
    if strata is None:
        splitter = KFold(k, shuffle=True, random_state=seed).split(np.arange(n_groups))
    else:
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed).split(
            np.arange(n_groups), strata
        )
    fold = np.empty(n_groups, np.int64)
    for i, (_, held_out) in enumerate(splitter):
        fold[held_out] = i
    return fold[groups]


def check_no_leak(
    patient_ids: PatientIds,
    assignment: Sequence[object] | np.ndarray,
    files: Sequence[str] | None = None,
) -> None:
    """Refuse a split in which a patient is on two sides.

    Args:
        patient_ids: one id per image; unknown ids are not checked.
        assignment: side (split name or fold) per image.
        files: image names, quoted in the error when given.

    Raises:
        SplitLeakError: names the first leaking patient, its two sides and an image of each.
        DatasetError: the lengths differ.
    """
    side = np.asarray(assignment)
    if len(side) != len(patient_ids):
        raise DatasetError(f"{len(patient_ids)} patient ids but {len(side)} split entries")
    first: dict[str, int] = {}
    sides = side.tolist()
    for i, pid in enumerate(patient_ids):
        if not pid:
            continue
        j = first.setdefault(pid, i)
        if sides[j] != sides[i]:
            where = [files[j], files[i]] if files is not None else [f"row {j}", f"row {i}"]
            raise SplitLeakError(
                f"patient {pid!r} is on two sides of the split: "
                f"{sides[j]!r} ({where[0]}) and {sides[i]!r} ({where[1]})"
            )


@dataclass(frozen=True)
class SplitTable:
    """A split read from CSV: one row per image.

    Attributes:
        files: image file names.
        patient_ids: patient id per image (``None`` where empty).
        assignment: str (split) or int64 (fold) array of shape (N,).
        column: ``"split"`` or ``"fold"``.
    """

    files: tuple[str, ...]
    patient_ids: tuple[str | None, ...]
    assignment: np.ndarray
    column: str

    def for_files(self, files: Sequence[str]) -> np.ndarray:
        """The assignment of ``files`` (a dataset's ``files()``), in their order.

        Raises:
            DatasetError: some files are not in the table (the first few are named).
        """
        row = {f: i for i, f in enumerate(self.files)}
        missing = [f for f in files if f not in row]
        if missing:
            raise DatasetError(
                f"{len(missing)} image(s) are not in the split: {', '.join(missing[:5])}"
            )
        return self.assignment[[row[f] for f in files]]


def write_split_csv(
    path: str | Path,
    files: Sequence[str],
    patient_ids: PatientIds,
    assignment: Sequence[object] | np.ndarray,
) -> None:
    """Write ``file, patient_id, split`` (or ``fold`` for integers) atomically.

    Raises:
        SplitLeakError: a patient is on two sides (nothing is written).
        DatasetError: the lengths differ.
    """
    path = Path(path)
    side = np.asarray(assignment)
    if len(files) != len(side):
        raise DatasetError(f"{path}: {len(files)} files but {len(side)} split entries")
    check_no_leak(patient_ids, side, files)
    column = "fold" if np.issubdtype(side.dtype, np.integer) else "split"
    with atomic_open(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "patient_id", column])
        for row in zip(files, patient_ids, side.tolist(), strict=True):
            writer.writerow([row[0], row[1] or "", row[2]])


def read_split_csv(path: str | Path) -> SplitTable:
    """Read a split CSV written by :func:`write_split_csv` and check it for leaks.

    Raises:
        DatasetError: missing file or columns, a duplicate file, a non-integer fold.
        SplitLeakError: a patient is on two sides; the message names the CSV and patient.
    """
    path = Path(path)
    header, rows = read_table(path, "split file")
    column = "split" if "split" in header else "fold"
    if not {"file", "patient_id", column} <= set(header):
        raise DatasetError(
            f"{path}: expected columns file, patient_id and split or fold; found {header}"
        )
    files = tuple(r["file"] for r in rows)
    if len(set(files)) != len(files):
        dup = next(f for i, f in enumerate(files) if f in files[:i])
        raise DatasetError(f"{path}: file {dup!r} is listed twice")
    pids = tuple((r["patient_id"] or "").strip() or None for r in rows)
    values = [(r[column] or "").strip() for r in rows]
    if column == "fold":
        bad = [v for v in values if not v.lstrip("-").isdigit()]
        if bad:
            raise DatasetError(f"{path}: fold {bad[0]!r} is not an integer")
        side = np.array(values, np.int64)
    else:
        side = np.array(values, dtype=str)
    try:
        check_no_leak(pids, side, files)
    except SplitLeakError as e:
        raise SplitLeakError(f"{path}: {e}") from None
    return SplitTable(files, pids, side, column)


def resolve_patient_ids(
    patient_ids: PatientIds, names: Sequence[str] | None = None, stacklevel: int = 2
) -> list[str]:
    """Patient ids with every unknown one (``None`` or ``""``) made a patient of its own.

    The one rule for missing ids: each such image is its own patient, named
    ``"(no patient id) <image name>"`` (or ``<row index>``), and one :class:`DatasetWarning`
    gives their count. Ids already resolved pass through silently.

    Args:
        patient_ids: one id per image.
        names: image names for the placeholders (row indices without them).
        stacklevel: of the warning, counted from the caller.

    Returns:
        One non-empty id per image.
    """
    unknown = [i for i, p in enumerate(patient_ids) if not p]
    if not unknown:
        return [str(p) for p in patient_ids]
    warnings.warn(
        f"{len(unknown)} of {len(patient_ids)} image(s) have no patient id; "
        "each is split and counted as its own patient",
        DatasetWarning,
        stacklevel=stacklevel + 1,
    )
    out = [str(p) if p else "" for p in patient_ids]
    for i in unknown:
        out[i] = f"{UNKNOWN_PREFIX}{names[i] if names is not None else i}"
    return out


def _group_codes(patient_ids: PatientIds) -> np.ndarray:
    """Integer group per image, by :func:`resolve_patient_ids`."""
    ids = resolve_patient_ids(patient_ids, stacklevel=3)
    _, codes = np.unique(np.asarray(ids, dtype=object).astype(str), return_inverse=True)
    return codes.astype(np.int64).ravel()


def _group_keys(groups: np.ndarray, n_groups: int, labels: np.ndarray | None) -> np.ndarray:
    """One stratification key per group (all 0 without labels)."""
    if labels is None:
        return np.zeros(n_groups, np.int64)
    y = np.asarray(labels)
    if y.shape[:1] != groups.shape or y.ndim not in (1, 2):
        raise DatasetError(f"labels of shape {y.shape} for {len(groups)} images")
    if y.ndim == 1:
        _, row_key = np.unique(y.astype(str), return_inverse=True)
    else:
        positive = np.nan_to_num(y.astype(np.float64)) > 0
        rank = np.argsort(np.argsort(positive.sum(axis=0), kind="stable"), kind="stable")
        row_key = np.where(positive, rank, y.shape[1]).min(axis=1, initial=y.shape[1])
    freq = np.bincount(row_key)[row_key]
    order = np.lexsort((row_key, freq, groups))  # per group: rarest key first
    first = order[np.r_[True, groups[order][1:] != groups[order][:-1]]]
    keys = np.zeros(n_groups, np.int64)
    keys[groups[first]] = row_key[first]
    return keys


def _pool(keys: np.ndarray, min_count: int) -> np.ndarray | None:
    """Keys with fewer than ``min_count`` groups pooled; ``None`` when one stratum is left."""
    values, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    rare = counts < min_count
    if rare.any():
        pooled = np.where(rare[inverse], -1, keys)
        if counts[rare].sum() < min_count and (~rare).any():
            pooled[pooled == -1] = values[~rare][np.argmax(counts[~rare])]
        keys = pooled
    return keys if len(np.unique(keys)) > 1 else None
