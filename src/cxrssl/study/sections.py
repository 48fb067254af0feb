"""The study's sections besides the label-efficiency figures: the environment, the data, the
rule-based masks against the expert masks (with a gallery of lungs, regions and pathology
candidates), and best / median / worst overlays of a fine-tuned model.

A gallery item is ``{"file", "caption", "picture"}`` (JPEG or PNG bytes, HTML only) plus the
score it was ranked by.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

import cxrssl
from cxrssl.data import FolderDataset
from cxrssl.io import read_mask
from cxrssl.metrics import binary_metrics, convention_note, summarise
from cxrssl.viz import BLUE, GREEN, RED, caption, jpeg_bytes, overlay

MASK = "masks"  # the expert lung masks (both lungs) of a data set folder
SIDE = 256  # longest side of a gallery picture (thumbnails in the report, full size on click)


def environment(device: str) -> dict[str, str]:
    """Versions and machine, for the report."""
    import monai

    return {
        "cxrssl": cxrssl.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "torch threads": str(torch.get_num_threads()),
        "device": device,
    }


def data_summary(
    ds: FolderDataset, patient_ids: list[str], side: np.ndarray, name: str
) -> dict[str, Any]:
    """Images and patients, in all and per split side."""
    ids = np.asarray(patient_ids, dtype=object)
    split = {
        s: {"images": int((side == s).sum()), "patients": len(set(ids[side == s]))}
        for s in ("train", "val", "test")
    }
    note = f"{name}; split by patient, written to split.csv; no patient is on two sides."
    return {"images": len(ds), "patients": len(set(ids)), "split": split, "note": note}


def picks(n: int, per_group: int) -> dict[str, list[int]]:
    """Positions of the worst, median and best items of a list sorted by score."""
    mid = max(0, n // 2 - per_group // 2)
    return {
        "worst": list(range(min(per_group, n))),
        "median": list(range(mid, min(mid + per_group, n))),
        "best": list(range(n - 1, max(n - 1 - per_group, -1), -1)),
    }


def anatomy_picture(image: np.ndarray, truth: np.ndarray | None, text: str) -> np.ndarray:
    """Three panels of one radiograph: the rule-based lungs (right green, left blue; the
    expert outline red), the six regions in colour, and the pathology-candidate map."""
    from cxrssl.anatomy import lung_masks, pathology_map, regions

    lungs = lung_masks(image)
    masks = [(lungs.right, GREEN), (lungs.left, BLUE)] + (
        [(truth, RED)] if truth is not None else []
    )
    first = overlay(image, masks, text, max_side=SIDE)
    size = (first.shape[1], first.shape[0])
    grey = overlay(image, [], max_side=SIDE).astype(np.float32)
    labels = cv2.resize(regions(lungs), size, interpolation=cv2.INTER_NEAREST)
    colours = cv2.applyColorMap((labels * 40).astype(np.uint8), cv2.COLORMAP_JET)
    second = np.where(labels[..., None] > 0, (0.55 * grey + 0.45 * colours), grey).astype(np.uint8)
    caption(second, "six regions")
    score = cv2.resize(pathology_map(image, lungs), size, interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(score, cv2.COLORMAP_INFERNO)
    alpha = (score.astype(np.float32) / 255)[..., None] * 0.8
    third = (grey * (1 - alpha) + heat * alpha).astype(np.uint8)
    caption(third, "pathology candidates")
    gap = np.full((first.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([first, gap, second, gap, third], axis=1)


def rules_section(
    ds: FolderDataset, methods: list[str], per_group: int
) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
    """Each rule-based method on every image, scored against the expert masks where there
    are some, and a gallery of the default method's anatomy: the worst, median and best
    images by Dice (by quality score without expert masks).

    Returns:
        (the rules summary, or {} without expert masks; what was skipped; the gallery).
    """
    from cxrssl.anatomy import METHODS, lung_masks

    usable = [m for m in methods if m in METHODS]
    skipped = [f"rule-based method {m!r}: not in this version" for m in methods if m not in usable]
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in usable}
    ranked: list[tuple[float, int]] = []  # (Dice of the default method, or quality; index)
    for index, record in enumerate(ds.records):
        image = ds.reader(record.image)
        truth = read_mask(record.masks[MASK], image.shape) if MASK in record.masks else None
        for method in usable:
            lungs = lung_masks(image, method)
            if truth is not None:
                m = binary_metrics(lungs.both, truth, hd95=False)
                rows[method].append({"dice": m["dice"], "iou": m["iou"]})
                if method == "default":
                    ranked.append((m["dice"], index))
            elif method == "default":
                ranked.append((lungs.quality, index))
    has_truth = all(MASK in r.masks for r in ds.records)
    what = "Dice" if has_truth else "quality"
    gallery = []
    ranked.sort()
    for group, positions in picks(len(ranked), per_group).items():
        for pos in positions:
            score, index = ranked[pos]
            record = ds.records[index]
            image = ds.reader(record.image)
            truth = read_mask(record.masks[MASK], image.shape) if has_truth else None
            text = f"{what} {score:.3f}"
            picture = jpeg_bytes(anatomy_picture(image, truth, text))
            gallery.append(
                {
                    "file": record.name,
                    what.lower(): score,
                    "caption": f"{group}: {record.name}, {text}",
                    "picture": picture,
                }
            )
    if not has_truth:
        skipped.append(
            "rule-based vs expert Dice: no masks/ folder of expert lung masks for every image; "
            "the gallery shows the default method's anatomy, sorted by its quality score instead"
        )
        return {}, skipped, gallery
    summaries = {m: summarise(r) for m, r in rows.items()}
    rules = {
        "methods": {m: {k: v.as_dict() for k, v in s.items()} for m, s in summaries.items()},
        "per_image": {m: [r["dice"] for r in rs] for m, rs in rows.items()},
        "files": [r.name for r in ds.records],
        "worst": {m: float(min(r["dice"] for r in rs)) for m, rs in rows.items()},
        "note": "Dice per image against the expert lung masks, every image (no training); "
        + convention_note(),
    }
    return rules, skipped, gallery


def prediction_gallery(
    ds: FolderDataset, rows: list[dict[str, Any]], pred_dir: Path, per_group: int, label: str
) -> list[dict[str, Any]]:
    """Best, median and worst test images by Dice, expert outline green, prediction red."""
    rows = sorted(rows, key=lambda r: r["dice"])
    by_name = {r.name: r for r in ds.records}
    gallery = []
    for group, positions in picks(len(rows), per_group).items():
        for pos in positions:
            row = rows[pos]
            record = by_name[row["file"]]
            pred_path = pred_dir / f"{record.image.stem}.png"
            if not pred_path.is_file():
                continue  # a unit reused from a run whose predictions were removed
            image = ds.reader(record.image)
            truth = read_mask(record.masks[MASK], image.shape)
            pred = read_mask(pred_path, image.shape)
            text = f"{label} Dice {row['dice']:.3f}"
            picture = jpeg_bytes(overlay(image, [(truth, GREEN), (pred, RED)], text, max_side=SIDE))
            gallery.append(
                {
                    "file": record.name,
                    "dice": row["dice"],
                    "caption": f"{label}, {group}: {record.name}, Dice {row['dice']:.3f}",
                    "picture": picture,
                }
            )
    return gallery
