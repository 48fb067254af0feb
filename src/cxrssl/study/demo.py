"""The demo study: rule-based masks, a label-efficiency curve and a report, on one folder.

Steps, each reported (or skipped with the reason):

1. read the data set (the built-in sample by default) and split it by patient;
2. rule-based lung masks for every image, scored against expert masks when there are some;
3. supervised lung segmentation trained on K labelled images for each K and seed, scored
   on the held-out patients (units cached in ``OUT/units``: re-runs compute what is missing);
4. the report: ``OUT/report.html``, ``OUT/report.json``, ``OUT/summary.md``.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cxrssl
from cxrssl.data import FolderDataset, make_split, sample, write_split_csv
from cxrssl.data.splits import resolve_patient_ids
from cxrssl.io import read_mask
from cxrssl.metrics import binary_metrics, convention_note, nanmean, summarise
from cxrssl.study.config import StudyConfig
from cxrssl.study.report import write_report
from cxrssl.study.runner import Unit, run_units
from cxrssl.viz import BLUE, GREEN, RED, overlay, png_bytes

log = logging.getLogger(__name__)
MASK = "masks"  # the expert lung masks (both lungs) of a data set folder
SUPERVISED = "supervised"  # trained from scratch on the labelled images only


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


def _data_summary(
    ds: FolderDataset, patient_ids: list[str], side: np.ndarray, name: str
) -> dict[str, Any]:
    ids = np.asarray(patient_ids, dtype=object)
    split = {
        s: {"images": int((side == s).sum()), "patients": len(set(ids[side == s]))}
        for s in ("train", "val", "test")
    }
    note = f"{name}; split by patient, written to split.csv; no patient is on two sides."
    return {"images": len(ds), "patients": len(set(ids)), "split": split, "note": note}


def _rules(
    ds: FolderDataset, methods: list[str], has_masks: bool
) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
    """Each rule-based method on every image, scored against the expert masks when there are
    some; without them, an overlay gallery of the default method's masks by quality score."""
    from cxrssl.anatomy import METHODS, lung_masks

    usable = [m for m in methods if m in METHODS]
    skipped = [f"rule-based method {m!r}: not in this version" for m in methods if m not in usable]
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in usable}
    quality: list[tuple[float, int]] = []
    for index, record in enumerate(ds.records):
        image = ds.reader(record.image)
        truth = read_mask(record.masks[MASK], image.shape) if MASK in record.masks else None
        for method in usable:
            lungs = lung_masks(image, method)
            if truth is not None:
                m = binary_metrics(lungs.both, truth, hd95=False)
                rows[method].append({"dice": m["dice"], "iou": m["iou"]})
            elif method == "default":
                quality.append((lungs.quality, index))
    if not has_masks:
        skipped.append(
            "rule-based vs expert Dice: no masks/ folder of expert lung masks; the gallery "
            "shows the default method's masks, sorted by their quality score instead"
        )
        return {}, skipped, _quality_gallery(ds, sorted(quality))
    summaries = {m: summarise(r) for m, r in rows.items()}
    rules = {
        "methods": {m: {k: v.as_dict() for k, v in s.items()} for m, s in summaries.items()},
        "per_image": {m: [r["dice"] for r in rs] for m, rs in rows.items()},
        "worst": {m: float(min(r["dice"] for r in rs)) for m, rs in rows.items()},
        "note": "Dice per image against the expert lung masks, every image (no training); "
        + convention_note(),
    }
    return rules, skipped, []


def _picks(n: int, per_group: int) -> dict[str, list[int]]:
    """Positions of the worst, median and best items of a list sorted by score."""
    mid = max(0, n // 2 - per_group // 2)
    return {
        "worst": list(range(min(per_group, n))),
        "median": list(range(mid, min(mid + per_group, n))),
        "best": list(range(n - 1, max(n - 1 - per_group, -1), -1)),
    }


def _quality_gallery(
    ds: FolderDataset, ranked: list[tuple[float, int]], per_group: int = 2
) -> list[dict[str, Any]]:
    from cxrssl.anatomy import lung_masks

    gallery = []
    for group, positions in _picks(len(ranked), per_group).items():
        for pos in positions:
            score, index = ranked[pos]
            record = ds.records[index]
            image = ds.reader(record.image)
            lungs = lung_masks(image)
            text = f"quality {score:.2f}"
            png = png_bytes(overlay(image, [(lungs.right, GREEN), (lungs.left, BLUE)], text))
            caption = f"{group} quality: {record.name}, {text}"
            gallery.append({"file": record.name, "quality": score, "caption": caption, "png": png})
    return gallery


def _efficiency(results: dict[str, dict[str, Any]], units: list[Unit]) -> dict[str, Any]:
    points = []
    for k in dict.fromkeys(u.n_labelled for u in units):
        mine = [results[u.key] for u in units if u.n_labelled == k]
        per_seed = [nanmean([r["dice"] for r in res["rows"]]) for res in mine]
        points.append(
            {
                "k": "all" if k is None else k,
                "n_train": int(np.mean([res["n_train"] for res in mine])),
                "mean": float(np.mean(per_seed)),
                "std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
                "n": len(per_seed),
                "values": per_seed,
            }
        )
    note = (
        "Mean Dice over the held-out test patients' images, at each image's original size; "
        "mean ± std over seeds (each seed draws its own labelled images and initialisation); "
        + convention_note()
    )
    return {"metric": "dice", "methods": {SUPERVISED: points}, "note": note}


def _gallery(
    ds: FolderDataset, result: dict[str, Any], pred_dir: Path, per_group: int
) -> list[dict[str, Any]]:
    """Best, median and worst test images by Dice, with expert and predicted outlines."""
    rows = sorted(result["rows"], key=lambda r: r["dice"])
    by_name = {r.name: r for r in ds.records}
    gallery = []
    for group, positions in _picks(len(rows), per_group).items():
        for pos in positions:
            row = rows[pos]
            record = by_name[row["file"]]
            image = ds.reader(record.image)
            truth = read_mask(record.masks[MASK], image.shape)
            pred = read_mask(pred_dir / f"{record.image.stem}.png", image.shape)
            text = f"Dice {row['dice']:.3f}"
            png = png_bytes(overlay(image, [(truth, GREEN), (pred, RED)], text))
            caption = f"{group}: {record.name}, {text}"
            gallery.append(
                {"file": record.name, "dice": row["dice"], "caption": caption, "png": png}
            )
    return gallery


def run_demo(
    config: StudyConfig, out: Path, data: Path | None = None, command: str = "cxrssl demo"
) -> dict[str, Path]:
    """Run the study on ``data`` (default: the built-in sample) and write the report in ``out``.

    Returns:
        Paths of ``report.html``, ``report.json`` and ``summary.md``.
    """
    from cxrssl.study.units import segmentation_unit
    from cxrssl.tasks.seg_data import load_cache
    from cxrssl.train.engine import resolve_device

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = sample() if data is None else FolderDataset.from_folder(data)
    name = "built-in CC BY sample" if data is None else str(data)
    has_masks = MASK in ds.mask_names
    ids = resolve_patient_ids(ds.patient_ids(), ds.files())
    side = make_split(ids, val=config.val, test=config.test, seed=config.split_seed)
    write_split_csv(out / "split.csv", ds.files(), ds.patient_ids(), side)
    device = str(resolve_device(config.device))
    study: dict[str, Any] = {
        "title": f"cxrssl demo: {name}",
        "command": command,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(device),
        "data": _data_summary(ds, ids, side, name),
        "config": config.__dict__,
        "skipped": [],
    }
    timings["read and split"] = time.perf_counter() - t0

    t = time.perf_counter()
    log.info("rule-based lung masks for %d images (%s)", len(ds), ", ".join(config.rules))
    study["rules"], skipped, gallery = _rules(ds, config.rules, has_masks)
    study["skipped"] += skipped
    if gallery:
        study["gallery"] = gallery
        study["gallery_note"] = (
            "Rule-based lung masks (default method): patient's right lung green, left lung blue."
        )
    timings["rule-based masks"] = time.perf_counter() - t

    if not has_masks:
        study["skipped"].append(
            "supervised label-efficiency curve and overlay gallery: no masks/ folder of expert "
            "lung masks beside images/"
        )
    else:
        t = time.perf_counter()
        with_mask = [i for i, r in enumerate(ds.records) if MASK in r.masks]
        masked, side = ds.subset(with_mask), side[with_mask]
        cache = load_cache(masked, config.size, mask=MASK)
        cache.patient_ids = [ids[i] for i in with_mask]
        units = [Unit(SUPERVISED, k, s) for k in config.k_values for s in config.seeds]
        gallery_unit = next((u for u in units if u.n_labelled is None), units[-1])

        def compute(unit: Unit) -> dict[str, Any]:
            return segmentation_unit(cache, side, unit, config, out, unit == gallery_unit)

        results = run_units(
            units,
            compute,
            out,
            {**config.training_settings(), "split": side.tolist(), "patients": cache.patient_ids},
            data=[p for r in masked.records for p in (r.image, r.masks[MASK])],
            device=device,
        )
        timings["supervised units"] = time.perf_counter() - t
        study["efficiency"] = _efficiency(results, units)
        study["curves"] = {u.key: results[u.key]["curves"] for u in units}
        study["gallery_note"] = (
            f"Held-out test images, model trained on all training images (seed "
            f"{gallery_unit.seed}): expert mask in green, prediction in red."
        )
        study["gallery"] = _gallery(
            masked,
            results[gallery_unit.key],
            out / "predictions" / gallery_unit.key,
            config.gallery,
        )
    timings["total"] = time.perf_counter() - t0
    study["timings"] = timings
    return write_report(study, out)
