"""NIH ChestX-ray14 (ChestX-ray8): 112,120 frontal radiographs of 30,805 patients, 14 findings.

X. Wang, Y. Peng, L. Lu, Z. Lu, M. Bagheri, R. M. Summers, "ChestX-ray8: Hospital-scale Chest
X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of Common
Thorax Diseases", CVPR 2017. Data: https://nihcc.app.box.com/v/ChestXray-NIHCC (cite the
paper, acknowledge the NIH Clinical Center).

Layout read (the official release and its Kaggle copy)::

    root/Data_Entry_2017_v2020.csv[.gz]   (or Data_Entry_2017.csv; the v2020 one is preferred)
    root/images/*.png  or  root/images_001/images/*.png ... root/images_012/images/*.png
    root/train_val_list.txt, root/test_list.txt   (optional: the official patient-wise split)

"Finding Labels" holds findings joined by "|" or "No Finding"; labels are the 14 findings in
the official order, every one 0 or 1 ("No Finding" = all zero).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cxrssl.data.datasets import DatasetWarning, FolderDataset, Record
from cxrssl.data.splits import check_no_leak, make_split
from cxrssl.errors import DatasetError

__all__ = ["FINDINGS", "NO_FINDING", "find_csv", "finding_counts", "load", "official_split"]

FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)  # fmt: skip
NO_FINDING = "No Finding"
_META = {
    "Follow-up #": "follow_up",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
}
_LISTS = {"train_val": "train_val_list.txt", "test": "test_list.txt"}


def find_csv(root: str | Path) -> Path:
    """The ``Data_Entry_2017*.csv[.gz]`` table in ``root`` (the v2020 revision if several).

    Raises:
        DatasetError: none found.
    """
    root = Path(root)
    found = sorted(root.glob("Data_Entry_2017*.csv")) + sorted(root.glob("Data_Entry_2017*.csv.gz"))
    if not found:
        raise DatasetError(f"{root}: no Data_Entry_2017*.csv(.gz) table")
    return max(found, key=lambda p: ("v2020" in p.name, p.name.endswith(".csv"), p.name))


def load(
    root: str | Path,
    *,
    csv_path: str | Path | None = None,
    images_dir: str | Path | None = None,
    require_images: bool = True,
) -> FolderDataset:
    """Read the NIH table and find the images.

    Args:
        root: dataset folder.
        csv_path: the Data_Entry table; default :func:`find_csv` (root).
        images_dir: folder holding the PNGs; default ``root/images`` and every
            ``root/images_*/images`` (or ``root/images_*`` holding PNGs directly).
        require_images: keep only rows whose image exists (the others are counted in one
            :class:`DatasetWarning`); ``False`` keeps every row (metadata only: counts,
            splits), with paths under ``root/images`` where the file is absent.

    Returns:
        A dataset with the 14 ``FINDINGS`` as labels; ``Record.meta`` holds follow_up, age,
        sex, view and, when the official lists are present, ``official_split``
        (``"train_val"`` or ``"test"``).

    Raises:
        DatasetError: no table, a malformed table, an unknown finding, or no image at all
            while ``require_images``.
    """
    root = Path(root)
    table = Path(csv_path) if csv_path is not None else find_csv(root)
    folders = [Path(images_dir)] if images_dir is not None else _image_folders(root)
    for folder in folders:
        if not folder.is_dir():
            raise DatasetError(f"{folder}: NIH image folder not found")
    on_disk = {name: Path(folder, name) for folder in folders for name in _pngs(folder)}
    official = _official_lists(root)
    shared: dict[str, dict[str, float]] = {}  # one labels dict per finding combination
    records, absent = [], 0
    placeholder = root / "images"
    for line, row in _rows(table):
        name = row["Image Index"]
        path = on_disk.get(name)
        if path is None:
            absent += 1
            if require_images:
                continue
            path = placeholder / name
        findings = row["Finding Labels"]
        if findings not in shared:
            shared[findings] = _labels(table, line, findings)
        meta = {key: row.get(col, "") for col, key in _META.items()}
        if name in official:
            meta["official_split"] = official[name]
        records.append(Record(path, row["Patient ID"].strip() or None, {}, shared[findings], meta))
    if require_images and absent:
        if not records:
            raise DatasetError(
                f"{root}: none of the {absent} images of {table.name} found "
                "(looked in images/ and images_*/images/); pass "
                "require_images=False for metadata only"
            )
        warnings.warn(
            f"{table}: {absent} of {absent + len(records)} rows have no image "
            f"under {root}; kept {len(records)} (require_images=False keeps all)",
            DatasetWarning,
            stacklevel=2,
        )
    return FolderDataset(records, root=root, name="nih", label_names=FINDINGS)


def finding_counts(dataset: FolderDataset) -> dict[str, int]:
    """Images per finding, in the official order, then ``"No Finding"`` (all 14 negative).

    Raises:
        DatasetError: the dataset lacks some of the 14 NIH labels.
    """
    missing = [f for f in FINDINGS if f not in dataset.label_names]
    if missing:
        raise DatasetError(f"dataset {dataset.name!r} lacks the NIH labels {missing}")
    columns = [dataset.label_names.index(f) for f in FINDINGS]
    positive = dataset.labels()[:, columns] == 1
    counts = {f: int(n) for f, n in zip(FINDINGS, positive.sum(axis=0), strict=True)}
    counts[NO_FINDING] = int((~positive.any(axis=1)).sum())
    return counts


def official_split(dataset: FolderDataset, *, val: float = 0.1, seed: int = 0) -> np.ndarray:
    """The official test list as ``"test"``; ``val`` of the train_val patients as ``"val"``.

    Args:
        dataset: from :func:`load` with ``train_val_list.txt`` and ``test_list.txt`` present.
        val: fraction of the train_val patients held out for validation (stratified).
        seed: random seed of the validation draw.

    Returns:
        str array of shape (N,): ``"train"``, ``"val"`` or ``"test"``.

    Raises:
        DatasetError: some records are in neither list.
        SplitLeakError: a patient is on two sides (the official lists are patient-wise).
    """
    lists = np.array([r.meta.get("official_split", "") for r in dataset.records])
    if (lists == "").any():
        raise DatasetError(
            f"{int((lists == '').sum())} image(s) are in neither "
            f"{_LISTS['train_val']} nor {_LISTS['test']}"
        )
    side = np.where(lists == "test", "test", "train").astype("<U5")
    pool = np.flatnonzero(lists == "train_val")
    pids = dataset.patient_ids()
    side[pool] = make_split(
        [pids[i] for i in pool], dataset.labels()[pool], val=val, test=0, seed=seed
    )
    check_no_leak(pids, side, dataset.files())
    return side


def _rows(table: Path) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        raw = table.read_bytes()
        text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        reader = csv.DictReader(io.StringIO(text.decode("utf-8-sig"), newline=""))
        header = reader.fieldnames or []
        missing = [c for c in ("Image Index", "Finding Labels", "Patient ID") if c not in header]
        if missing:
            raise DatasetError(f"{table}: not an NIH Data_Entry table (no columns {missing})")
        yield from enumerate(reader, start=2)
    except FileNotFoundError:
        raise DatasetError(f"{table}: NIH table not found") from None
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{table}: cannot read the NIH table ({e})") from None


def _labels(table: Path, line: int, findings: str) -> dict[str, float]:
    names = set(findings.split("|")) - {NO_FINDING}
    unknown = names - set(FINDINGS)
    if unknown:
        raise DatasetError(f"{table}: line {line}: unknown finding(s) {sorted(unknown)}")
    return {f: float(f in names) for f in FINDINGS}


def _image_folders(root: Path) -> list[Path]:
    parts = sorted(p for p in root.glob("images_*") if p.is_dir())
    nested = [p / "images" if (p / "images").is_dir() else p for p in parts]
    return [p for p in (root / "images", *nested) if p.is_dir()]


def _pngs(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return [e.name for e in it if e.name.lower().endswith(".png")]


def _official_lists(root: Path) -> dict[str, str]:
    sides: dict[str, str] = {}
    for side, file_name in _LISTS.items():
        path = root / file_name
        if path.is_file():
            sides.update(dict.fromkeys(path.read_text().split(), side))
    return sides
