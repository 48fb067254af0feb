"""Shenzhen chest X-ray set (NLM): 662 PA radiographs, 336 with tuberculosis.

S. Jaeger, S. Candemir, S. Antani, Y.-X. J. Wang, P.-X. Lu, G. Thoma, "Two public chest X-ray
datasets for computer-aided screening of pulmonary diseases", Quant. Imaging Med. Surg.
4(6):475-477, 2014. Data: https://lhncbc.nlm.nih.gov/publication/pub9931

Layout read (``root`` may also be the folder holding ``ChinaSet_AllFiles``)::

    ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png          last digit: 1 = tuberculosis
    ChinaSet_AllFiles/ClinicalReadings/CHNCXR_0001_0.txt  ("male 35yrs", reading)
    <masks>/CHNCXR_0001_0_mask.png                        (optional, distributed separately)

The release has no lung masks; the commonly used manual ones (Stirenko et al., 2018, for
566 images) come separately as ``mask/<stem>_mask.png``. Pass their folder as ``masks``, or
place it in ``root`` as ``mask`` or ``masks``: it becomes the ``masks`` mask (both lungs).
The release gives no patient ids: each image is taken as its own patient (stem).
"""

from __future__ import annotations

from pathlib import Path

from cxrssl.data.adapters.montgomery import LABEL, find_set, tb_records
from cxrssl.data.datasets import FolderDataset
from cxrssl.errors import DatasetError

__all__ = ["LABEL", "load"]


def load(root: str | Path, *, masks: str | Path | None = None) -> FolderDataset:
    """Read the Shenzhen set with TB labels and, when found, the lung masks.

    Args:
        root: ``ChinaSet_AllFiles`` or its parent.
        masks: folder of lung masks (``<stem>.png`` or ``<stem>_mask.png``); default
            ``mask/`` or ``masks/`` in the set folder or in ``root`` when present.

    Raises:
        DatasetError: no ``CXR_png`` folder, or ``masks`` given but missing.
    """
    base = find_set(root, "ChinaSet_AllFiles")
    if masks is None:
        candidates = [p / n for p in (base, Path(root)) for n in ("mask", "masks")]
        folder = next((p for p in candidates if p.is_dir()), None)
    else:
        folder = Path(masks)
        if not folder.is_dir():
            raise DatasetError(f"{folder}: Shenzhen mask folder not found")
    mask_map = {"masks": folder.resolve()} if folder is not None else {}
    dataset = FolderDataset.from_folder(base, images="CXR_png", masks=mask_map, labels_csv=None)
    return FolderDataset(
        tb_records(dataset, base / "ClinicalReadings"),
        root=base,
        name="shenzhen",
        label_names=(LABEL,),
        mask_names=dataset.mask_names,
    )
