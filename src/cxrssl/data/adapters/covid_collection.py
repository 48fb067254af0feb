"""The ieee8023 COVID-19 image data collection, as staged in ``../shared/data``.

J. P. Cohen, P. Morrison, L. Dao, "COVID-19 Image Data Collection", arXiv:2003.11597 (2020),
https://github.com/ieee8023/covid-chestxray-dataset. Licences vary per image (see each
folder's ``SOURCE.md``).

Two layouts:

- segmentation folders (``ieee8023_v7labs``, ``ieee8023_generalblockchain``): ``images/``,
  ``masks*/`` and ``labels.csv`` (``filename``, ``patient_id``); read as folder datasets
  without labels (all columns go to ``Record.meta``).
- the classification table (``ieee8023_covid_chestxray_labels``): ``labels.csv`` with
  ``image_relpath`` (relative to the folder above this one), ``finding`` (findings joined by
  ``", "``) and ``patient_group_id`` (the patient id with duplicated rows merged), used as
  the patient. Labels are the findings present, in alphabetical order; ``No Finding`` rows
  are all zero. An ``image_relpath`` must stay inside that folder above: an absolute path,
  or one whose ``..`` parts climb out of it (``../../etc/passwd``), is refused with a
  :class:`DatasetError` naming the table's line; nothing is read from such a table. (The
  check is on the written path, so data staged through symbolic links still reads.)

The two mask folders share 64 images of 45 patients: split them by patient together.
"""

from __future__ import annotations

import csv
import posixpath
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath

from cxrssl.data.datasets import DatasetWarning, FolderDataset, Record
from cxrssl.data.table import read_table
from cxrssl.errors import DatasetError

__all__ = ["NO_FINDING", "covid_labels", "load"]

NO_FINDING = "No Finding"
_RELPATH = "image_relpath"


def load(root: str | Path) -> FolderDataset:
    """Read either ieee8023 layout, chosen by the columns of ``root/labels.csv``.

    Raises:
        DatasetError: missing folder or table (the message names the path).
    """
    root = Path(root)
    table = root / "labels.csv"
    if not table.is_file():
        raise DatasetError(f"{table}: ieee8023 labels table not found")
    with table.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    if _RELPATH in header:
        return covid_labels(root)
    return FolderDataset.from_folder(
        root,
        file_column="filename",
        patient_column="patient_id",
        label_columns=(),
        name=root.name,
    )


def covid_labels(root: str | Path) -> FolderDataset:
    """Read the classification table; images are found through ``image_relpath``.

    Rows whose image is missing are dropped with one :class:`DatasetWarning`.

    Raises:
        DatasetError: the table lacks ``image_relpath``, ``finding`` or ``patient_group_id``,
            or an ``image_relpath`` is absolute or climbs out of the folder above ``root``.
    """
    root = Path(root)
    table = root / "labels.csv"
    header, rows = read_table(table, "ieee8023 labels table")
    needed = [c for c in (_RELPATH, "finding", "patient_group_id") if c not in header]
    if needed:
        raise DatasetError(f"{table}: no columns {needed} (columns: {header})")
    findings = [_findings(r["finding"]) for r in rows]
    names = sorted(set().union(*findings) - {NO_FINDING})
    records, missing = [], []
    for line, (row, found) in enumerate(zip(rows, findings, strict=True), start=2):
        path = root.parent / _inside(table, line, row[_RELPATH])
        if not path.is_file():
            missing.append(row[_RELPATH])
            continue
        labels = {n: float(n in found) for n in names}
        meta = {k: v or "" for k, v in row.items() if k not in (_RELPATH, "patient_group_id")}
        records.append(Record(path, row["patient_group_id"].strip() or None, {}, labels, meta))
    if missing:
        warnings.warn(
            f"{table}: {len(missing)} image(s) not found, rows dropped: {', '.join(missing[:5])}",
            DatasetWarning,
            stacklevel=2,
        )
    return FolderDataset(records, root=root, name=root.name, label_names=names)


def _inside(table: Path, line: int, relpath: str | None) -> str:
    """``relpath`` when it names a file below the data root; refuses an absolute path or one
    whose ``..`` parts leave the root (judged on the text, before any file is touched)."""
    text = (relpath or "").strip().replace("\\", "/")
    absolute = PurePosixPath(text).is_absolute() or PureWindowsPath(text).drive != ""
    normal = posixpath.normpath(text) if text else ""
    if absolute or normal == ".." or normal.startswith("../"):
        raise DatasetError(
            f"{table}: line {line}: {_RELPATH} {relpath!r} is outside the data folder "
            f"{table.parent.parent}; paths must be relative and stay inside it"
        )
    return text


def _findings(text: str) -> set[str]:
    return {part.strip() for part in text.split(",") if part.strip()}
