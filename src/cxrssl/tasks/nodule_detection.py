"""Train and run the classical nodule detector (``cxrssl train-detector``,
``cxrssl detect-nodules``): candidates and features (:mod:`cxrssl.lesions.candidates`), a
linear classifier (:mod:`cxrssl.lesions.detector`), patient-level k-fold cross-validation.

Run folder of :func:`train_detector`:

- ``detector.json``: the classifier fitted on every image (what ``detect-nodules`` loads),
  with the score thresholds at 0.125-4 false positives per image read off the
  cross-validated FROC (the pooled out-of-fold scores of the fold models: on new films of
  the same kind the all-image model's rate is near, not exactly, that one);
- ``detections.csv``: every image's candidates scored by the fold model that did not train
  on the image's patient (out of fold), for ``cxrssl evaluate-detections``;
- ``folds.csv`` (image, patient, fold), ``summary.json`` (the out-of-fold FROC, the share of
  nodules any candidate hits, counts, the command), ``failures.csv`` when some images could
  not be read (they are left out, the run goes on).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cxrssl import __version__
from cxrssl.data.datasets import MASK_SUFFIXES, DatasetWarning, FolderDataset, index_files
from cxrssl.data.splits import kfold, resolve_patient_ids
from cxrssl.errors import CxrsslError, DatasetError
from cxrssl.files import atomic_open, write_text_atomic
from cxrssl.io import read_gray8, read_mask
from cxrssl.lesions.candidates import N_CANDIDATES, Candidates, find_candidates
from cxrssl.lesions.detect import write_detections
from cxrssl.lesions.detector import (
    Detector,
    fit_detector,
    label_candidates,
    load_detector,
    nodules_hit,
)
from cxrssl.lesions.froc import FP_RATES, froc
from cxrssl.lesions.points import PIXEL_MM, Point, by_stem, read_points
from cxrssl.parallel import pool_context

log = logging.getLogger(__name__)


def _find(job: tuple[Path, Path | None, float, int]) -> tuple[Path, Candidates | None, str]:
    path, lungs_path, pixel_mm, n = job
    try:
        image = read_gray8(path)
        lungs = None if lungs_path is None else read_mask(lungs_path, image.shape)
        return path, find_candidates(image, pixel_mm, lungs, n), ""
    except CxrsslError as e:
        return path, None, str(e)


def candidates_of(
    paths: Sequence[Path],
    pixel_mm: float,
    n_candidates: int,
    workers: int = 2,
    lungs: str | Path | None = None,
) -> tuple[dict[Path, Candidates], list[tuple[str, str]]]:
    """The candidates of every image, inside the lung masks of the folder ``lungs``
    (matched by stem) or the rule-based lungs; images that cannot be read, or lack a lung
    mask, are returned as (file name, reason) and left out."""
    masks = index_files(Path(lungs), MASK_SUFFIXES) if lungs is not None else {}
    if lungs is not None and not masks:
        raise DatasetError(f"{lungs}: no lung masks ({', '.join(MASK_SUFFIXES)})")
    missing = [(p.name, f"no lung mask in {lungs}") for p in paths if masks and p.stem not in masks]
    jobs = [
        (p, masks.get(p.stem), pixel_mm, n_candidates)
        for p in paths
        if not masks or p.stem in masks
    ]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
            results = list(pool.map(_find, jobs, chunksize=4))
    else:
        results = [_find(j) for j in jobs]
    found = {p: c for p, c, _ in results if c is not None}
    failed = missing + [(p.name, why) for p, c, why in results if c is None]
    for name, why in failed:
        log.warning("left out %s: %s", name, why)
    return found, failed


def _fit(
    found: Sequence[Candidates], truth: Sequence[Sequence[Point]], pixel_mm: float, n: int
) -> Detector:
    x = np.concatenate([c.features for c in found])
    y = np.concatenate([label_candidates(c, t) for c, t in zip(found, truth, strict=True)])
    return fit_detector(x, y, pixel_mm, n)


def train_detector(
    images: str | Path,
    points: str | Path,
    out: str | Path,
    folds: int = 5,
    pixel_mm: float = PIXEL_MM,
    n_candidates: int = N_CANDIDATES,
    seed: int = 0,
    workers: int = 2,
    command: str = "",
    lungs: str | Path | None = None,
) -> dict[str, Any]:
    """Cross-validate and fit the nodule detector on a folder of radiographs.

    Args:
        images: folder of radiographs; patient ids from a ``labels.csv`` beside it, if any
            (each image its own patient otherwise).
        points: nodule points CSV (an image without a row has no nodule).
        out: run folder.
        folds: patient-level folds (>= 2) for the out-of-fold detections; 0 or 1: fit on
            everything, no figures.
        pixel_mm: pixel size of the images, mm.
        n_candidates: candidates per image.
        seed: seed of the fold assignment.
        workers: processes finding candidates.
        command: the command line, kept in the summary.
        lungs: folder of lung masks (by stem) to search in; default: the rule-based lungs.

    Returns:
        The summary (also ``out/summary.json``).

    Raises:
        DatasetError: a missing folder or table, no image, no nodule in the images.
    """
    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise DatasetError(f"{images}: image folder not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)  # a labels.csv without labels
        ds = FolderDataset.from_folder(images.parent, images=images.name, masks={})
    if not len(ds):
        raise DatasetError(f"{images}: no images")
    truth_all = read_points(points, pixel_mm)
    stems = {r.image.stem for r in ds.records}
    stray = sorted({p.file for p in truth_all if p.stem not in stems})
    if stray:
        warnings.warn(
            f"{points}: {len(stray)} point row(s) name no image of {images} and are left "
            f"out: {', '.join(stray[:5])}{' ...' if len(stray) > 5 else ''}",
            DatasetWarning,
            stacklevel=2,
        )
    out.mkdir(parents=True, exist_ok=True)
    found, failed = candidates_of(
        [r.image for r in ds.records], pixel_mm, n_candidates, workers, lungs
    )
    if failed:
        with atomic_open(out / "failures.csv", "w") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "reason"])
            w.writerows(failed)
    records = [r for r in ds.records if r.image in found]
    if not records:
        raise DatasetError(f"{images}: no image could be read")
    truth_by = by_stem(p for p in truth_all if p.stem in {r.image.stem for r in records})
    truth = [truth_by.get(r.image.stem, []) for r in records]
    cands = [found[r.image] for r in records]
    if not any(truth):
        raise DatasetError(f"{points}: no nodule on the images of {images}")

    summary: dict[str, Any] = {
        "cxrssl_version": __version__,
        "command": command,
        "images": len(records),
        "failed": len(failed),
        "nodules": sum(map(len, truth)),
        "candidates_per_image": n_candidates,
        "nodules_hit_by_a_candidate": int(
            sum(nodules_hit(c, t) for c, t in zip(cands, truth, strict=True))
        ),
        "pixel_mm": pixel_mm,
        "folds": folds if folds >= 2 else 0,
    }
    detector = _fit(cands, truth, pixel_mm, n_candidates)
    if folds >= 2:
        pids = resolve_patient_ids([r.patient_id for r in records], [r.name for r in records])
        fold = kfold(pids, folds, seed=seed)
        oof: list[Point] = []
        for k in range(folds):
            train = [i for i in range(len(records)) if fold[i] != k]
            try:
                model = _fit(
                    [cands[i] for i in train], [truth[i] for i in train], pixel_mm, n_candidates
                )
            except DatasetError as e:
                raise DatasetError(f"fold {k} of {folds}: {e}; try fewer --folds") from None
            for i in np.flatnonzero(fold == k):
                oof.extend(model.detections(records[i].name, cands[i]))
        write_detections(out / "detections.csv", oof)
        with atomic_open(out / "folds.csv", "w") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "patient_id", "fold"])
            w.writerows((r.name, p, int(f)) for r, p, f in zip(records, pids, fold, strict=True))
        result = froc(oof, [p for t in truth for p in t], len(records), FP_RATES, seed=seed)
        detector.thresholds = {
            f"{r:g}": float(t)
            for r, t in zip(result.rates, result.thresholds, strict=True)
            if math.isfinite(t)
        }
        plain = result.as_dict()
        keys = ("rates", "sensitivity", "ci_low", "ci_high", "cpm", "cpm_low", "cpm_high")
        summary["froc"] = {k: plain[k] for k in keys}
    detector.save(out / "detector.json")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def detect_nodules(
    detector: str | Path,
    images: str | Path,
    out_dir: str | Path,
    pixel_mm: float | None = None,
    fp_per_image: float | None = None,
    workers: int = 2,
    lungs: str | Path | None = None,
) -> tuple[Path, int, list[tuple[str, str]]]:
    """Score the candidates of every image in ``images``; write ``out_dir/detections.csv``.

    Args:
        detector: ``detector.json`` or the run folder holding it.
        images: folder of radiographs.
        out_dir: where ``detections.csv`` goes.
        pixel_mm: pixel size of the images; default: that of the training images.
        fp_per_image: keep only detections at or above the score threshold that gave this
            many false positives per image in cross-validation (one of 0.125, 0.25, 0.5, 1,
            2, 4); default: every candidate, scored.
        workers: processes finding candidates.
        lungs: folder of lung masks (by stem); default: the rule-based lungs.

    Returns:
        (detections.csv, number of detections written, failures as (file name, reason)).

    Raises:
        DatasetError: a bad detector file, a rate it has no threshold for, no images.
    """
    det = load_detector(detector)
    threshold = -math.inf
    if fp_per_image is not None:
        key = f"{fp_per_image:g}"
        if key not in det.thresholds:
            raise DatasetError(
                f"{detector}: no threshold for {key} false positives per image; it has "
                f"{', '.join(det.thresholds) or 'none (trained without cross-validation)'}"
            )
        threshold = det.thresholds[key]
    images = Path(images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        ds = FolderDataset.from_folder(images.parent, images=images.name, masks={}, labels_csv=None)
    if not len(ds):
        raise DatasetError(f"{images}: no images")
    mm = det.pixel_mm if pixel_mm is None else pixel_mm
    found, failed = candidates_of(
        [r.image for r in ds.records], mm, det.n_candidates, workers, lungs
    )
    detections = [
        d
        for r in ds.records
        if r.image in found
        for d in det.detections(r.name, found[r.image])
        if (d.score or 0.0) >= threshold
    ]
    path = Path(out_dir) / "detections.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_detections(path, detections)
    return path, len(detections), failed
