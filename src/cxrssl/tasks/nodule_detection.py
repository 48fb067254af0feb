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

With a prior (``priors``: a folder of maps by stem, or ``heatmap`` drawn from the points,
displaced by up to ``prior_shift_mm``) the candidates are searched only within
``search_mm`` of where the prior marks (:func:`cxrssl.lesions.priors.search_region`) and
carry the prior's features; the best candidate of each marked place is the nodule found
there, its mask grown from it (:func:`cxrssl.lesions.grow.nodule_mask`) at the size the
detector predicts: ``masks/`` (out of fold) and, in the summary, Dice, precision and recall
against the masks grown from the truth points (or the truth masks of ``masks``), mean and std
over folds. Places the prior marks closer than about twice ``search_mm`` merge into one,
and get one nodule.
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
from cxrssl.io import read_gray8, read_image, read_mask, write_mask
from cxrssl.lesions.candidates import N_CANDIDATES, Candidates, find_candidates, with_prior
from cxrssl.lesions.detect import write_detections
from cxrssl.lesions.detector import (
    Detector,
    fit_detector,
    hit_diameters,
    label_candidates,
    load_detector,
    nodules_hit,
)
from cxrssl.lesions.froc import FP_RATES, froc
from cxrssl.lesions.grow import nodule_mask
from cxrssl.lesions.points import PIXEL_MM, Point, by_stem, read_points
from cxrssl.lesions.priors import (
    SEARCH_MM,
    PriorBuilder,
    parse_prior,
    prior_builder,
    search_region,
)
from cxrssl.metrics import binary_metrics, nanmean
from cxrssl.parallel import pool_context

log = logging.getLogger(__name__)


_Job = tuple[Path, Path | None, float, int, PriorBuilder | None, float]


def _find(job: _Job) -> tuple[Path, Candidates | None, str]:
    path, lungs_path, pixel_mm, n, prior_of, search_mm = job
    try:
        image = read_gray8(path)
        lungs = None if lungs_path is None else read_mask(lungs_path, image.shape)
        if prior_of is None:
            return path, find_candidates(image, pixel_mm, lungs, n), ""
        prior = prior_of(path, image)
        search = search_region(prior, pixel_mm, search_mm)
        found = find_candidates(image, pixel_mm, lungs, n, search=search)
        return path, with_prior(found, prior, search, pixel_mm), ""
    except CxrsslError as e:
        return path, None, str(e)


def candidates_of(
    paths: Sequence[Path],
    pixel_mm: float,
    n_candidates: int,
    workers: int = 2,
    lungs: str | Path | None = None,
    prior: PriorBuilder | None = None,
    search_mm: float = SEARCH_MM,
) -> tuple[dict[Path, Candidates], list[tuple[str, str]]]:
    """The candidates of every image, inside the lung masks of the folder ``lungs``
    (matched by stem) or the rule-based lungs, or with a ``prior`` within ``search_mm`` of
    where it marks; images that cannot be read, or lack a lung mask or prior, are returned
    as (file name, reason) and left out."""
    masks = index_files(Path(lungs), MASK_SUFFIXES) if lungs is not None else {}
    if lungs is not None and not masks:
        raise DatasetError(f"{lungs}: no lung masks ({', '.join(MASK_SUFFIXES)})")
    missing = [(p.name, f"no lung mask in {lungs}") for p in paths if masks and p.stem not in masks]
    jobs: list[_Job] = [
        (p, masks.get(p.stem), pixel_mm, n_candidates, prior, search_mm)
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
    found: Sequence[Candidates],
    truth: Sequence[Sequence[Point]],
    pixel_mm: float,
    n: int,
    search_mm: float | None = None,
) -> Detector:
    """Fit on the candidates of some images; ``search_mm`` set: they were searched around a
    prior."""
    pairs = list(zip(found, truth, strict=True))
    x = np.concatenate([c.features for c in found])
    y = np.concatenate([label_candidates(c, t) for c, t in pairs])
    sizes = np.concatenate([hit_diameters(c, t) for c, t in pairs])
    prior = search_mm is not None
    return fit_detector(x, y, pixel_mm, n, sizes, prior, search_mm or 0.0)


def _location_prior(spec: str | None) -> str | None:
    """``spec`` when it says where nodules are (a folder of maps or ``heatmap``); the lung
    and pathology maps mark whole lungs, not nodules."""
    if spec is not None and parse_prior(spec)[0] not in ("heatmap", "dir"):
        raise DatasetError(
            f"--priors {spec}: the detector takes a prior of where the nodules are (a folder "
            "of maps or heatmap), not a map of the whole lungs"
        )
    return spec


def _segment(
    records: Sequence[Any],
    picks: Sequence[Sequence[Point]],
    truth: Sequence[Sequence[Point]],
    fold: np.ndarray,
    masks_dir: Path,
    truth_masks: dict[str, Path],
) -> dict[str, Any]:
    """Write each image's mask grown from its picks; Dice, precision and recall against its
    truth mask (of ``truth_masks`` by stem when given, else grown from its truth points)
    over the images with a nodule (NaN-aware mean, then mean and std over folds), and the
    share of nodule-free images left clear. An image whose truth cannot be made (a missing
    or unreadable mask, a point off the film) is named in ``unscored`` and left out."""
    per_fold: dict[int, list[dict[str, float]]] = {}
    clear: list[float] = []
    unscored: list[list[str]] = []
    for r, found, nodules, k in zip(records, picks, truth, fold, strict=True):
        stem = r.image.stem
        try:
            image = read_image(r.image)
            mask = nodule_mask(image, found)
            write_mask(masks_dir / f"{stem}.png", mask)
            if not nodules:
                clear.append(float(not mask.any()))
                continue
            if truth_masks and stem not in truth_masks:
                raise DatasetError(f"no truth mask for {stem!r} in the --masks folder")
            if truth_masks:
                true = (read_mask(truth_masks[stem], image.shape) > 0).astype(np.uint8)
            else:
                true = nodule_mask(image, nodules)
        except CxrsslError as e:
            log.warning("mask of %s not scored: %s", r.name, e)
            unscored.append([r.name, str(e)])
            continue
        per_fold.setdefault(int(k), []).append(binary_metrics(mask, true, hd95=False))
    grown = "masks grown from the points (cxrssl grow-masks)"
    out: dict[str, Any] = {"truth": "the masks given (--masks)" if truth_masks else grown}
    for key in ("dice", "precision", "sensitivity", "detected"):
        means = [nanmean([m[key] for m in rows]) for rows in per_fold.values()]
        known = [v for v in means if not math.isnan(v)]
        spread = float(np.std(known)) if known else math.nan
        out[key] = {"mean": nanmean(means), "std": spread, "folds": means}
    out["clear"] = float(np.mean(clear)) if clear else math.nan
    out["images_with_nodules"] = sum(map(len, per_fold.values()))
    out["unscored"] = unscored
    return out


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
    priors: str | None = None,
    prior_shift_mm: float = 0.0,
    search_mm: float = SEARCH_MM,
    masks: str | Path | None = None,
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
        priors: a folder of prior maps (by stem) or ``heatmap`` (from ``points``); see the
            module notes.
        prior_shift_mm: a heatmap's largest displacement of each point (seeded by ``seed``).
        search_mm: how far from where the prior marks to search.
        masks: with a prior, truth nodule masks by stem to score the masks against
            (simulated nodules' exact ones); default: masks grown from ``points``.

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
    if search_mm < 0 or prior_shift_mm < 0:
        raise DatasetError("--search-mm and --prior-shift-mm cannot be negative")
    prior = prior_builder(_location_prior(priors), truth_all, prior_shift_mm, pixel_mm, seed)
    truth_masks = index_files(Path(masks), MASK_SUFFIXES) if masks is not None else {}
    if masks is not None and (prior is None or not truth_masks):
        why = "masks are scored only with --priors" if prior is None else "no masks in it"
        raise DatasetError(f"{masks}: {why}")
    search = search_mm if prior is not None else None
    out.mkdir(parents=True, exist_ok=True)
    found, failed = candidates_of(
        [r.image for r in ds.records], pixel_mm, n_candidates, workers, lungs, prior, search_mm
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
        "prior": priors,
        "prior_shift_mm": prior_shift_mm if priors == "heatmap" else None,
        "search_mm": search,
    }
    detector = _fit(cands, truth, pixel_mm, n_candidates, search)
    if folds >= 2:
        pids = resolve_patient_ids([r.patient_id for r in records], [r.name for r in records])
        fold = kfold(pids, folds, seed=seed)
        oof: list[Point] = []
        picks: list[list[Point]] = [[] for _ in records]
        for k in range(folds):
            train = [i for i in range(len(records)) if fold[i] != k]
            try:
                model = _fit(
                    [cands[i] for i in train],
                    [truth[i] for i in train],
                    pixel_mm,
                    n_candidates,
                    search,
                )
            except DatasetError as e:
                raise DatasetError(f"fold {k} of {folds}: {e}; try fewer --folds") from None
            for i in np.flatnonzero(fold == k):
                oof.extend(model.detections(records[i].name, cands[i]))
                if prior is not None:
                    picks[i] = model.picks(records[i].name, cands[i])
        write_detections(out / "detections.csv", oof)
        if prior is not None:
            summary["segmentation"] = _segment(
                records, picks, truth, fold, out / "masks", truth_masks
            )
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
    priors: str | None = None,
    points: str | Path | None = None,
    prior_shift_mm: float = 0.0,
    seed: int = 0,
) -> tuple[Path, int, list[tuple[str, str]]]:
    """Score the candidates of every image in ``images``; write ``out_dir/detections.csv``
    (and, for a detector trained with a prior, ``out_dir/masks/``: the nodule found at each
    place the prior marks).

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
        priors: a folder of prior maps by stem, or ``heatmap`` (from ``points``): needed by,
            and only by, a detector trained with a prior.
        points: points CSV of a heatmap prior.
        prior_shift_mm: largest displacement of the heatmap's points (seeded by ``seed``).
        seed: seed of the heatmap's displacements.

    Returns:
        (detections.csv, number of detections written, failures as (file name, reason)).

    Raises:
        DatasetError: a bad detector file, a rate it has no threshold for, no images, a
            prior given to a detector trained without one, or none to one trained with one.
    """
    det = load_detector(detector)
    if det.prior != (priors is not None):
        raise DatasetError(
            f"{detector}: trained {'with' if det.prior else 'without'} a prior; "
            f"{'give --priors' if det.prior else 'leave out --priors'}"
        )
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
    marks = None if points is None else read_points(points, mm)
    if prior_shift_mm < 0:
        raise DatasetError("--prior-shift-mm cannot be negative")
    prior = prior_builder(_location_prior(priors), marks, prior_shift_mm, mm, seed)
    found, failed = candidates_of(
        [r.image for r in ds.records], mm, det.n_candidates, workers, lungs, prior, det.search_mm
    )
    detections = [
        d
        for r in ds.records
        if r.image in found
        for d in det.detections(r.name, found[r.image], mm)
        if (d.score or 0.0) >= threshold
    ]
    path = Path(out_dir) / "detections.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_detections(path, detections)
    if prior is not None:
        for r in ds.records:
            if r.image in found:
                mask = nodule_mask(read_image(r.image), det.picks(r.name, found[r.image], mm))
                write_mask(Path(out_dir) / "masks" / f"{r.image.stem}.png", mask)
    return path, len(detections), failed
