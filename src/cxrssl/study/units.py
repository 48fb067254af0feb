"""One label-efficiency unit: train on K labelled images (from scratch or from a
pre-training checkpoint), score on held-out patients and on any other test set."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cxrssl.io import write_mask
from cxrssl.study.config import StudyConfig
from cxrssl.study.runner import Unit
from cxrssl.tasks.seg_data import SegCache, draw_labelled
from cxrssl.tasks.segmentation import SegConfig, evaluate_original, fit_fold

EPOCH_IMAGES = 48  # small labelled sets are repeated to about this many images per epoch


def seg_config(
    config: StudyConfig,
    n_train: int,
    seed: int,
    init: str | None = None,
    init_whole: bool = False,
) -> SegConfig:
    """The segmentation recipe of a unit: a fixed step budget, whatever the number of images
    (``n_train`` counts repeated images), initialised from ``init`` (its encoder, or the whole
    network with ``init_whole``) when given."""
    batch = min(config.batch_size, n_train)
    steps_per_epoch = max(1, n_train // batch)
    return SegConfig(
        model=config.model,
        model_kwargs=dict(config.model_kwargs),
        loss=config.loss,
        size=config.size,
        epochs=max(1, round(config.steps / steps_per_epoch)),
        batch_size=batch,
        lr=config.lr,
        init=init,
        init_encoder_only=not init_whole,
        seed=seed,
        device=config.device,
        progress=False,
        tensorboard=False,
    )


def segmentation_unit(
    cache: SegCache,
    side: np.ndarray,
    unit: Unit,
    config: StudyConfig,
    out: Path,
    save_predictions: bool,
    *,
    init: str | None = None,
    init_whole: bool = False,
    tests: Mapping[str, SegCache] | None = None,
) -> dict[str, Any]:
    """Train on ``unit.n_labelled`` images of the training side, tune on validation, and score
    every test image at its original size.

    Args:
        cache: The labelled images (loaded with the crop the unit's model uses).
        side: ``train``/``val``/``test`` of each row.
        unit: Method, K and seed; the seed draws the K images and the initial weights.
        config: Study settings (model, size, steps...).
        out: Study folder (runs and predictions go below it).
        save_predictions: Write the test masks under ``out/predictions/<unit>``.
        init: Pre-training checkpoint to start from.
        init_whole: Load the whole network from ``init`` (MedSASS end to end).
        tests: Other test sets (name -> cache, same crop), scored too.

    Returns:
        JSON-ready: n_train, threshold, per-image test rows, rows of each other test set
        (``tests``), and the loss/Dice curves.
    """
    train_rows = np.flatnonzero(side == "train")
    if unit.n_labelled is not None:
        pids = [cache.patient_ids[i] for i in train_rows]
        train_rows = train_rows[draw_labelled(pids, unit.n_labelled, unit.seed)]
    n_train = len(train_rows)
    train = cache.subset(np.tile(train_rows, -(-EPOCH_IMAGES // n_train)))  # ceil division
    val = cache.subset(np.flatnonzero(side == "val"))
    test = cache.subset(np.flatnonzero(side == "test"))
    sc = seg_config(config, len(train), unit.seed, init, init_whole)
    fitted = fit_fold(train, val, sc, out / "runs" / unit.key, unit.seed)
    rows, masks = evaluate_original(fitted.net, test, fitted.threshold, sc, fitted.device)
    if save_predictions:
        for path, mask in zip(test.paths, masks, strict=True):
            write_mask(out / "predictions" / unit.key / f"{path.stem}.png", mask)
    other = {}
    for name, extra in (tests or {}).items():
        extra_rows, _ = evaluate_original(fitted.net, extra, fitted.threshold, sc, fitted.device)
        other[name] = [{"file": p.name, **r} for p, r in zip(extra.paths, extra_rows, strict=True)]
    return {
        "n_train": n_train,
        "threshold": fitted.threshold,
        "rows": [{"file": p.name, **r} for p, r in zip(test.paths, rows, strict=True)],
        "tests": other,
        "curves": {
            "train_loss": [h["train_loss"] for h in fitted.history],
            "val_dice": [h["val_dice"] for h in fitted.history if "val_dice" in h],
        },
    }
