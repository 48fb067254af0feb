"""Nodule and lesion segmentation with an optional prior map (seed 004), a thin layer over the
segmentation task: the same cache, engine, patient-level k-fold cross-validation, scoring at
each image's original size and run folder, with

- truth masks grown from nodule points (:func:`cxrssl.lesions.grow.grow_masks`) when a
  points CSV is given instead of a mask folder: every image gets one, empty for an image
  without a point (a negative), written to ``OUT/masks/`` (0/255 PNG, the image's stem and
  size, with ``grown.csv``) so that scoring, ``cxrssl evaluate-masks`` and the run read the
  same truth;
- a prior map per image as a second input channel (:mod:`cxrssl.lesions.priors`: a folder
  matched by stem, or generated: ``heatmap`` from the points, each displaced by up
  to ``prior_shift_mm`` (uniform over that disc) with a generator seeded by the run's seed
  and the image's stem; ``pathology``; ``lungs``), built on the full image, then cropped and
  letterboxed exactly like it (:func:`cxrssl.tasks.seg_data.fit_prior`) and cached with it;
  augmentation moves it with the image and never changes its values;
- the recipe of :class:`LesionConfig`: the ``prior_guided`` network, the ``lesion`` loss,
  learning rate 2e-5 with the encoder at 5e-6 (the engine's parameter groups), the first
  encoder stages frozen when starting from ``--init``, the epoch chosen by the pooled
  validation Dice;
- detections (:func:`cxrssl.lesions.detect.detect` on each scored image's probabilities at its
  original size: the components at the fold's threshold, then fainter separate candidates
  down the ``THRESHOLDS`` grid, each scored by its peak, the ``CANDIDATES`` highest) in
  ``OUT/detections.csv``, and,
  where points are the truth, per-fold and per-run detection figures (of the detections at
  the fold's threshold) in ``summary.json``: a truth nodule is
  found when a detection's centre lies within its radius, a detection is true when its centre
  lies within some truth nodule's radius (``cxrssl evaluate-detections`` gives the FROC).

Run folder of :func:`train_lesion`: that of :func:`cxrssl.tasks.segmentation.train_seg`
(``summary.json``, ``per_image.csv``, ``predictions/``, ``fold_<k>/``) plus ``masks/`` (with
points) and ``detections.csv``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from cxrssl.errors import CxrsslError
from cxrssl.files import write_text_atomic
from cxrssl.lesions.detect import detect, write_detections
from cxrssl.lesions.grow import grow_masks
from cxrssl.lesions.points import PIXEL_MM, Point, by_stem, read_points
from cxrssl.lesions.priors import check_prior, parse_prior, prior_builder
from cxrssl.nets.prior_guided import encoder_stage_prefixes
from cxrssl.tasks.seg_data import SegCache, load_cache, open_folders
from cxrssl.tasks.seg_task import HIGH_THRESHOLDS
from cxrssl.tasks.segmentation import (
    FoldFit,
    SegConfig,
    cross_validate,
    original_probs,
    predict,
    resolve_crop,
)
from cxrssl.train import distributed, load_checkpoint
from cxrssl.train.checkpoint import CheckpointError
from cxrssl.train.engine import Callback

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "resnet18"
"""The prior-guided network's encoder when neither the config nor ``--init`` names one."""

HIT_RULE = (
    "a truth nodule is found when a detection's centre lies within its radius; a detection is "
    "true when its centre lies within some truth nodule's radius"
)


@dataclass
class LesionConfig(SegConfig):
    """A lesion run: :class:`~cxrssl.tasks.segmentation.SegConfig` with the seed-004 recipe
    as defaults and the prior and detection settings.

    Attributes (beyond and overriding ``SegConfig``'s):
        model: ``prior_guided`` (with a prior the branch gates the encoder; without one the
            same network trains without it, the ablation); any registry network works, e.g.
            ``unet`` for the plain baseline (a prior is then just a second input channel).
        model_kwargs: Network keywords; ``in_channels`` is set by the run (2 with a prior,
            else 1) and ``prior_guided``'s ``encoder`` defaults to the ``init`` checkpoint's
            encoder, else :data:`DEFAULT_ENCODER`.
        loss: ``lesion`` (Tversky + focal Tversky + weighted BCE, ``cxrssl.losses``).
        size: 512, the seed's input side (nodules are small).
        lr: 2e-5, the learning rate of everything but the encoder.
        encoder_lr_mult: 0.25: the encoder at 5e-6.
        val_fraction: 0.2 of each fold's training patients choose the epoch and threshold.
        patience: Early stopping after 10 epochs without a better pooled validation Dice.
        postprocess: ``none`` (a lesion mask keeps every component).
        priors: Prior spec (``cxrssl.lesions.priors.parse_prior``): a folder of maps matched
            by stem, or ``heatmap`` (needs points), ``pathology``, ``lungs``; None: no prior.
        prior_shift_mm: Largest displacement of each point of a generated heatmap, in mm,
            drawn uniformly over that disc per image (seeded by ``seed`` and the stem).
        pixel_mm: Pixel size of the images as stored (points' ``diameter_mm``, the shift).
        freeze_stages: Encoder stages frozen from the finest (the engine's ``freeze``); None:
            all but the last two when starting from ``init`` (the seed's partial fine-tuning),
            none when training from scratch.
        min_diameter_px: Smallest detection kept (``cxrssl.lesions.detect.detect``).
    """

    model: str = "prior_guided"
    loss: str = "lesion"
    size: int = 512
    epochs: int = 30
    lr: float = 2e-5
    encoder_lr_mult: float = 0.25
    val_fraction: float = 0.2
    patience: int = 10
    postprocess: str = "none"
    priors: str | None = None
    prior_shift_mm: float = 0.0
    pixel_mm: float = PIXEL_MM
    freeze_stages: int | None = None
    min_diameter_px: float = 3.0

    KIND: ClassVar[str] = "lesion"
    MONITOR: ClassVar[str] = "dice_pooled"
    THRESHOLDS: ClassVar[tuple[float, ...]] = HIGH_THRESHOLDS
    CANDIDATES: ClassVar[int] = 20
    """Fainter candidates per image in ``detections.csv``, beside the mask's components."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pixel_mm <= 0:
            raise CxrsslError(f"--pixel-mm must be positive, got {self.pixel_mm}")
        if self.freeze_stages is not None and self.freeze_stages < 0:
            raise CxrsslError(f"--freeze-stages must be 0 or more, got {self.freeze_stages}")

    @property
    def prior_kind(self) -> str | None:
        """The kind of :attr:`priors` (``"dir"`` for a folder), None without a prior."""
        return None if self.priors is None else parse_prior(self.priors)[0]

    def param_settings(self, net: nn.Module) -> tuple[dict[str, float], tuple[str, ...]]:
        """``SegConfig``'s groups (the encoder at ``encoder_lr_mult``) plus the first
        ``freeze_stages`` encoder stages frozen (see the attribute for the default)."""
        lr_mult, freeze = super().param_settings(net)
        if self.freeze_encoder:
            return lr_mult, freeze
        n = self.freeze_stages
        if n is None:
            n = max(len(encoder_stage_prefixes(net)) - 2, 0) if self.init else 0
        if not n:
            return lr_mult, freeze
        stages = encoder_stage_prefixes(net)
        if n >= len(stages):
            raise CxrsslError(
                f"--freeze-stages {n} freezes all {len(stages)} encoder stages; use "
                "--freeze-encoder for that"
            )
        return lr_mult, (*freeze, *stages[:n])

    def checkpoint_extra(self) -> dict[str, Any]:
        """What prediction needs: the task, the prior kind, the pixel size and shift, the
        smallest detection."""
        return {
            "task": self.KIND,
            "prior": self.prior_kind,
            "pixel_mm": self.pixel_mm,
            "prior_shift_mm": self.prior_shift_mm,
            "min_diameter_px": self.min_diameter_px,
        }


def _init_encoder(init: str | None) -> dict[str, Any]:
    """``encoder`` / ``encoder_kwargs`` of the ``init`` checkpoint (a pre-training run names
    its encoder in ``extra["encoder"]``), or {}."""
    if not init:
        return {}
    spec = (load_checkpoint(init).get("extra") or {}).get("encoder")
    if not isinstance(spec, dict) or "name" not in spec:
        return {}
    log.info("encoder %s: the --init checkpoint %s was trained with it", spec["name"], init)
    return {"encoder": str(spec["name"]), "encoder_kwargs": dict(spec.get("kwargs") or {})}


def resolve_model(config: LesionConfig, has_prior: bool) -> LesionConfig:
    """``config`` with the network's input channels set (the prior is the last) and the
    prior-guided network's encoder decided (config, else ``init``, else the default)."""
    kw = dict(config.model_kwargs)
    kw["in_channels"] = 1 + int(has_prior)
    if config.model == "prior_guided" and "encoder" not in kw:
        kw |= _init_encoder(config.init) or {"encoder": DEFAULT_ENCODER}
    return replace(config, model_kwargs=kw)


def grow_truth(
    images: str | Path, points: str | Path, folder: str | Path, pixel_mm: float = PIXEL_MM
) -> Path:
    """Truth masks grown from a points CSV for every image of ``images``
    (:func:`cxrssl.lesions.grow.grow_masks`: empty for an image without a point, ``grown.csv``
    beside them) in ``folder``; under ``torchrun`` rank 0 writes and the others wait.

    Returns:
        ``folder``.
    """
    distributed.init_from_env()  # under torchrun: so that the other ranks wait for rank 0
    if distributed.is_main():
        done = grow_masks(images, points, folder, pixel_mm)
        log.info(
            "truth masks of %d image(s) (%d without a nodule) in %s: %d nodule(s) grown, "
            "%d drawn as discs (see grown.csv)",
            done.images,
            done.negatives,
            folder,
            done.grown,
            done.discs,
        )
    distributed.barrier()
    return Path(folder)


def match_detections(
    detections: Sequence[Point], truth: Sequence[Point], stems: Sequence[str]
) -> dict[str, Any]:
    """Detection figures over the images ``stems`` (see :data:`HIT_RULE`).

    Returns:
        ``n_images``, ``n_truth``, ``n_detections``, ``found`` (truth nodules found),
        ``true_detections``, ``sensitivity`` (found / truth; NaN without truth),
        ``precision`` (true / detections; NaN without detections), ``fp_per_image``.
    """
    keep = set(stems)
    truth_by, found_by = (
        by_stem(p for p in truth if p.stem in keep),
        by_stem(d for d in detections if d.stem in keep),
    )
    found = true = n_truth = n_det = 0
    for stem in keep:
        nodules, hits = truth_by.get(stem, []), found_by.get(stem, [])
        n_truth += len(nodules)
        n_det += len(hits)

        def inside(d: Point, p: Point) -> bool:
            return math.hypot(d.x - p.x, d.y - p.y) <= p.radius_px

        found += sum(any(inside(d, p) for d in hits) for p in nodules)
        true += sum(any(inside(d, p) for p in nodules) for d in hits)
    return {
        "n_images": len(keep),
        "n_truth": n_truth,
        "n_detections": n_det,
        "found": found,
        "true_detections": true,
        "sensitivity": found / n_truth if n_truth else math.nan,
        "precision": true / n_det if n_det else math.nan,
        "fp_per_image": (n_det - true) / len(keep) if keep else math.nan,
    }


def train_lesion(
    images: str | Path,
    out: str | Path,
    config: LesionConfig | None = None,
    masks: str | Path | None = None,
    points: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train and cross-validate a lesion model; write ``out`` (see the module doc).

    Args:
        images: Folder of radiographs (patient ids from ``labels.csv`` beside it, if any).
        out: Run folder.
        config: Recipe; None for the defaults.
        masks: Folder of 0/255 truth masks with the images' stems, or None with ``points``.
        points: Nodule points CSV (``cxrssl.lesions.points``; diameters in mm converted with
            ``config.pixel_mm``), or None with ``masks``.
        resume: Continue every fold from its ``last.pt`` (finished folds are not retrained).
        callbacks: Passed to each fold's :class:`cxrssl.train.Trainer`.

    Returns:
        The summary also written to ``out/summary.json``, with ``detection`` figures per fold
        and for the run when the truth is points.

    Raises:
        CxrsslError: Both or neither of ``masks`` and ``points``; a heatmap prior without
            points; and the errors of the segmentation run.
    """
    if (masks is None) == (points is None):
        raise CxrsslError("give the truth as --masks DIR or as --points CSV (one of them)")
    config = resolve_crop(config or LesionConfig())
    config = resolve_model(config, config.priors is not None)
    crop = config.crop
    assert crop is not None
    out = Path(out)
    truth = read_points(points, config.pixel_mm) if points is not None else None
    check_prior(config.prior_kind, truth)
    if points is not None:
        masks = grow_truth(images, points, out / "masks", config.pixel_mm)
    assert masks is not None
    prior = prior_builder(config.priors, truth, config.prior_shift_mm, config.pixel_mm, config.seed)
    cache = load_cache(open_folders(images, masks), config.size, crop=crop, prior=prior)
    found: list[Point] = []  # every candidate, for the FROC
    at_threshold: list[Point] = []  # those at each fold's mask threshold

    def fold_extra(fold: int, test: SegCache, fitted: FoldFit) -> dict[str, Any]:
        probs = original_probs(fitted.net, test, fitted.device, config.tta)
        fold_found = [
            d
            for path, p in zip(test.paths, probs, strict=True)
            for d in detect(
                p,
                path.name,
                fitted.threshold,
                config.min_diameter_px,
                config.THRESHOLDS,
                config.CANDIDATES,
            )
        ]
        found.extend(fold_found)
        kept = [d for d in fold_found if (d.score or 0.0) >= fitted.threshold]
        at_threshold.extend(kept)
        if distributed.is_main():
            write_detections(out / "detections.csv", found)
        if truth is None:
            return {}
        return {"detection": match_detections(kept, truth, [p.stem for p in test.paths])}

    summary = cross_validate(cache, config, out, resume, callbacks, fold_extra)
    if truth is not None and summary.get("folds"):
        scored = [p.stem for p in cache.paths]
        summary["detection"] = {
            **match_detections(at_threshold, truth, scored),
            "threshold": "each fold's",
            "hit_rule": HIT_RULE,
        }
        if distributed.is_main():
            write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def lesion_extra(checkpoint: str | Path) -> dict[str, Any] | None:
    """The ``extra`` of a lesion run's (first) checkpoint, None for any other run or for a
    checkpoint that cannot be read (the caller's own loading then reports it)."""
    path = Path(checkpoint)
    files = sorted(path.glob("fold_*/best.pt")) if path.is_dir() else [path]
    if not files:
        return None
    try:
        extra = load_checkpoint(files[0]).get("extra") or {}
    except CheckpointError:
        return None
    return dict(extra) if extra.get("task") == LesionConfig.KIND else None


def predict_lesions(
    checkpoint: str | Path,
    images: str | Path,
    out_dir: str | Path,
    priors: str | None = None,
    points: str | Path | None = None,
    pixel_mm: float | None = None,
    prior_shift_mm: float = 0.0,
    seed: int = 0,
    device: str = "auto",
) -> tuple[list[Path], list[str], Path]:
    """Masks (as :func:`cxrssl.tasks.segmentation.predict`) and ``out_dir/detections.csv``
    (every image's scored detections: those at the run's threshold, then fainter candidates,
    as in training) for a lesion run.

    Args:
        checkpoint: A lesion run's ``best.pt``, or its run folder (fold ensemble).
        images: Folder of radiographs.
        out_dir: Where the masks and ``detections.csv`` go.
        priors: Prior spec for a model trained with one: a folder of maps by stem, or a kind
            to generate; None: the training kind when it can be generated (``pathology``,
            ``lungs``; ``heatmap`` with ``points``).
        points: Nodule points CSV for a ``heatmap`` prior.
        pixel_mm: Pixel size of the images (points' mm, the shift); None: the run's.
        prior_shift_mm: Largest displacement of the heatmap's points
            (:func:`cxrssl.lesions.priors.prior_builder`).
        seed: Seed of the displacement directions.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.

    Returns:
        (written mask files, one line per image that failed, the detections file).

    Raises:
        CxrsslError: Not a lesion run; a prior missing for a model that takes one (or given
            to one that does not); a heatmap without points.
    """
    extra = lesion_extra(checkpoint)
    if extra is None:
        raise CxrsslError(f"{checkpoint}: not a lesion run (train it with cxrssl train-lesion)")
    trained = extra.get("prior")
    if priors is None and trained is not None:
        if trained == "dir":
            raise CxrsslError(
                f"{checkpoint}: the model was trained with priors from a folder; give --priors "
                "DIR (maps with the images' stems)"
            )
        if trained == "heatmap" and points is None:
            raise CxrsslError(
                f"{checkpoint}: the model was trained with a heatmap prior; give --points CSV "
                "(or --priors with another map)"
            )
        priors = str(trained)
    if priors is not None and trained is None:
        raise CxrsslError(f"{checkpoint}: the model was trained without a prior; drop --priors")
    if priors is not None and parse_prior(priors)[0] != trained:
        log.warning("the model was trained with a %s prior, predicting with %s", trained, priors)
    pixel = float(pixel_mm if pixel_mm is not None else extra.get("pixel_mm", PIXEL_MM))
    truth = read_points(points, pixel) if points is not None else None
    prior = prior_builder(priors, truth, prior_shift_mm, pixel, seed)
    min_diameter = float(extra.get("min_diameter_px", 3.0))
    found: list[Point] = []

    def on_probs(path: Path, probs: np.ndarray, threshold: float) -> None:
        found.extend(
            detect(
                probs,
                path.name,
                threshold,
                min_diameter,
                LesionConfig.THRESHOLDS,
                LesionConfig.CANDIDATES,
            )
        )

    written, failed = predict(checkpoint, images, out_dir, device, prior, on_probs)
    target = Path(out_dir) / "detections.csv"
    write_detections(target, found)
    return written, failed, target
