"""Montgomery County chest X-ray set (NLM): 138 PA radiographs, 58 with tuberculosis, lung masks.

S. Jaeger, S. Candemir, S. Antani, Y.-X. J. Wang, P.-X. Lu, G. Thoma, "Two public chest X-ray
datasets for computer-aided screening of pulmonary diseases", Quant. Imaging Med. Surg.
4(6):475-477, 2014. Data: https://lhncbc.nlm.nih.gov/publication/pub9931

Layout read (``root`` may also be the folder holding ``MontgomerySet``)::

    MontgomerySet/CXR_png/MCUCXR_0001_0.png          last digit: 1 = tuberculosis, 0 = normal
    MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png
    MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png
    MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt  (sex, age, reading)

Masks: ``masks_left`` from ``leftMask`` and ``masks_right`` from ``rightMask``, taken as the
patient's sides (radiographic convention, left lung on the image right; assumed from the
folder names, not stated by the release), and their union ``masks``. The release gives no
patient ids: each image is taken as its own patient (``patient_id`` = file stem).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from cxrssl.data.datasets import FolderDataset, Record
from cxrssl.errors import DatasetError

__all__ = ["LABEL", "find_set", "load", "read_clinical", "tb_records"]

LABEL = "Tuberculosis"
_SEX = re.compile(r"\b(?:sex:\s*([MF])\b|(male|female)\b)", re.IGNORECASE)
_AGE = re.compile(r"(?:age:\s*0*(\d+)|\b0*(\d+)\s*(?:yrs?|years?|y)\b)", re.IGNORECASE)


def load(root: str | Path) -> FolderDataset:
    """Read the Montgomery set with its left/right lung masks and TB labels.

    Raises:
        DatasetError: no ``CXR_png`` folder, or missing mask folders.
    """
    base = find_set(root, "MontgomerySet")
    masks = {"masks_left": "ManualMask/leftMask", "masks_right": "ManualMask/rightMask"}
    folder = FolderDataset.from_folder(base, images="CXR_png", masks=masks, labels_csv=None)
    return FolderDataset(
        tb_records(folder, base / "ClinicalReadings"),
        root=base,
        name="montgomery",
        label_names=(LABEL,),
        mask_names=folder.mask_names,
        mask_unions={"masks": ("masks_left", "masks_right")},
    )


def find_set(root: str | Path, name: str) -> Path:
    """``root`` if it holds ``CXR_png``, else ``root/name`` if that does.

    Raises:
        DatasetError: neither holds ``CXR_png``.
    """
    root = Path(root)
    for base in (root, root / name):
        if (base / "CXR_png").is_dir():
            return base
    raise DatasetError(
        f"{root}: no CXR_png folder (expected {root}/CXR_png or {root}/{name}/CXR_png)"
    )


def tb_records(dataset: FolderDataset, readings: Path) -> list[Record]:
    """Records of an NLM TB set with patient = stem, the TB label and the clinical reading.

    The label is the last character of the stem (``_1`` tuberculosis, ``_0`` normal); other
    names get NaN.
    """
    records = []
    for r in dataset.records:
        stem = r.image.stem
        digit = stem.rsplit("_", 1)[-1]
        label = float(digit) if digit in ("0", "1") else float("nan")
        meta = read_clinical(readings / f"{stem}.txt")
        records.append(replace(r, patient_id=stem, labels={LABEL: label}, meta=meta))
    return records


def read_clinical(path: Path) -> dict[str, str]:
    """Sex (``M``/``F``), age (years) and reading text of an NLM clinical-readings file.

    Both formats are read: Montgomery (``Patient's Sex: M`` / ``Patient's Age: 040Y`` /
    reading) and Shenzhen (``male 35yrs`` / reading). A missing file gives empty values.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {"sex": "", "age": "", "reading": ""}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    sex = age = ""
    header = 0  # leading lines that carry sex or age
    for line in lines:
        s, a = _SEX.search(line), _AGE.search(line)
        if not (s or a):
            break
        sex = sex or ((s.group(1) or s.group(2))[0].upper() if s else "")
        age = age or ((a.group(1) or a.group(2)) if a else "")
        header += 1
    return {"sex": sex, "age": age, "reading": " ".join(lines[header:])}
