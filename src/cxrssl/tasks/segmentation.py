"""Supervised segmentation end to end: patient-level k-fold training, evaluation at each
image's original size, and prediction with one model or a fold ensemble.

With ``crop="lung-box"`` every image (and its mask) is cropped to its rule-based lung box
before letterboxing, in training and in prediction alike (the checkpoint carries the crop);
predictions are pasted back into the full image, and evaluation is always at the full size
against the full mask, so lung outside the box counts as missed.

Run folder of :func:`train_seg`::

    OUT/summary.json         per-fold and mean +- std metrics, the resolved config, the
                             empty-mask convention; per-image figures with 95 % CIs
                             bootstrapped over patients
    OUT/per_image.csv        every scored image's metrics at its original size
    OUT/predictions/         every scored image's mask (0/255 PNG, original size, its stem),
                             for ``cxrssl evaluate-masks`` with other options
    OUT/fold_<k>/            the engine's run folder: config.yaml, metrics.csv, best.pt,
                             last.pt, tensorboard/
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from cxrssl.augment import AugmentConfig
from cxrssl.data.datasets import index_files
from cxrssl.data.splits import kfold, make_split, resolve_patient_ids
from cxrssl.errors import CxrsslError, DatasetError, ImageReadError
from cxrssl.files import write_text_atomic
from cxrssl.geometry import apply_crop, letterbox, restore, uncrop, unletterbox
from cxrssl.io import IMAGE_SUFFIXES, read_image, read_mask, write_mask
from cxrssl.losses import get_loss
from cxrssl.metrics import (
    DEFAULT_EMPTY,
    binary_metrics,
    check_empty,
    convention_note,
    nanmean,
    summarise,
)
from cxrssl.nets import create_net
from cxrssl.tasks.seg_data import (
    PriorFn,
    SegCache,
    check_crop,
    crop_from_init,
    draw_labelled,
    fit_prior,
    input_box,
    load_cache,
    loader,
    open_folders,
    to_uint8,
)
from cxrssl.tasks.seg_task import (
    THRESHOLDS,
    SegmentationTask,
    postprocess,
    predict_probs,
    tune_threshold,
)
from cxrssl.train import (
    TrainConfig,
    Trainer,
    distributed,
    load_checkpoint,
    load_init,
    resolve_device,
    save_checkpoint,
)
from cxrssl.train.engine import Callback
from cxrssl.train.runlog import write_history_csv

log = logging.getLogger(__name__)

REPORTED = ("dice", "iou", "precision", "sensitivity", "specificity", "detected", "clear")


@dataclass
class SegConfig:
    """A segmentation run; the defaults are the recommended recipe.

    Attributes:
        model: Registry name (``cxrssl.nets.NETS``).
        model_kwargs: Extra network arguments (``features``, ``dropout``, ``norm``...).
        loss: ``cxrssl.losses`` name.
        loss_kwargs: Arguments of that loss (e.g. ``{"weighted_bce_weight": 0}`` switches a
            component of ``lesion`` off: the loss ablation).
        size: Side of the letterboxed network input.
        crop: Input crop (``CROPS``): ``"none"`` (whole image) or ``"lung-box"`` (each image
            and its mask cropped to the seed's option-4 box of its rule-based lungs before
            letterboxing; the checkpoint carries it, so prediction crops the same way and
            pastes back into the full image). ``None`` (the default) is auto: the crop in
            the ``init`` checkpoint's ``extra``, else ``"none"``; :func:`train_seg` resolves
            it before anything is written, so config.yaml and summary.json hold the value used.
        epochs: Training epochs per fold.
        batch_size: Images per batch.
        lr: Peak learning rate (AdamW, warm-up then cosine).
        folds: Patient-level folds, each scored once by the model trained on the others;
            1 trains one model on all patients (less ``val_fraction``) and scores nothing else.
        val_fraction: Share of each fold's training patients held out to choose the epoch
            (and the threshold); 0 keeps the last epoch and threshold 0.5. The scored fold
            never chooses anything.
        n_labelled: Train on this many labelled images per fold (patient-aware draw, after
            the validation patients are set aside).
        init: Checkpoint to initialise from.
        init_encoder_only: Load only the encoder from ``init``.
        encoder_lr_mult: Learning-rate multiplier of the encoder (e.g. 0.1 after ``init``).
        freeze_encoder: Train the decoder only.
        augment: Batch augmentation (rotation, scale, shift, brightness, contrast, noise).
        patch: Train on ``patch`` x ``patch`` crops of the letterboxed inputs, a third of them
            around foreground (``cxrssl.augment.patch_boxes``): small lesions at a high
            ``size`` for the cost of a small one. A multiple of 32, below ``size``;
            validation and prediction see whole inputs. None: whole inputs.
        postprocess: ``"none"``, ``"lungs"`` (two largest parts, holes filled), ``"largest"``.
        tta: Average with the horizontally flipped prediction.
        target_sensitivity: Tune the threshold for this sensitivity instead of best Dice.
        empty: Empty-mask convention of the reported metrics (``cxrssl.metrics``): ``"nan"``
            leaves undefined values out of the means and counts them, ``"one"`` scores them 1.
        patience: Early-stopping patience in epochs (0: off).
        seed: Seed of splits, draws and training.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        progress: Progress bars.
        tensorboard: TensorBoard logs.
    """

    model: str = "unet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: str = "bce_dice"
    loss_kwargs: dict[str, float] = field(default_factory=dict)
    size: int = 256
    crop: str | None = None
    epochs: int = 12
    batch_size: int = 8
    lr: float = 3e-3
    folds: int = 5
    val_fraction: float = 0.0
    n_labelled: int | None = None
    init: str | None = None
    init_encoder_only: bool = True
    encoder_lr_mult: float = 1.0
    freeze_encoder: bool = False
    augment: bool = True
    patch: int | None = None
    postprocess: str = "lungs"
    tta: bool = False
    target_sensitivity: float | None = None
    empty: str = DEFAULT_EMPTY
    patience: int = 0
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    tensorboard: bool = True

    # Not fields (so not in config.yaml or summary.json): what a recipe built on this one
    # (``cxrssl.tasks.lesion.LesionConfig``) changes about a run.
    KIND: ClassVar[str] = "segmentation"
    """The run's kind: the key of the config in ``config.yaml`` and the checkpoints."""
    MONITOR: ClassVar[str] = "dice"
    """Validation metric choosing the epoch (``SegmentationTask.evaluate``'s names)."""
    THRESHOLDS: ClassVar[tuple[float, ...]] = THRESHOLDS
    """Candidates of the tuned threshold."""

    def __post_init__(self) -> None:
        if self.crop is not None:
            check_crop(self.crop)
        get_loss(self.loss, **self.loss_kwargs)  # a bad name or argument fails before any work
        if self.patch is not None and not (0 < self.patch < self.size and self.patch % 32 == 0):
            raise CxrsslError(
                f"--patch must be a multiple of 32 below --size {self.size}, got {self.patch}"
            )

    def param_settings(self, net: nn.Module) -> tuple[dict[str, float], tuple[str, ...]]:
        """The engine's learning-rate multipliers and frozen prefixes for ``net``: the encoder
        at ``encoder_lr_mult``, all of it frozen with ``freeze_encoder``."""
        lr_mult = {"encoder.": self.encoder_lr_mult} if self.encoder_lr_mult != 1 else {}
        return lr_mult, ("encoder.",) if self.freeze_encoder else ()

    def make_task(self, prior_channels: int = 0) -> SegmentationTask:
        """The engine task of this recipe for inputs with ``prior_channels`` prior maps."""
        return SegmentationTask(
            get_loss(self.loss, **self.loss_kwargs),
            AugmentConfig() if self.augment else None,
            self.target_sensitivity,
            prior_channels,
            pooled_dice=self.MONITOR == "dice_pooled",
            thresholds=self.THRESHOLDS,
            patch=self.patch,
        )

    def checkpoint_extra(self) -> dict[str, Any]:
        """Recipe data stored in every checkpoint's ``extra`` besides the segmentation's."""
        return {}


_Config = TypeVar("_Config", bound=SegConfig)


def resolve_crop(config: _Config) -> _Config:
    """``config`` with its crop decided (see ``SegConfig.crop`` and
    :func:`cxrssl.tasks.seg_data.crop_from_init`)."""
    return replace(config, crop=crop_from_init(config.init, config.crop))


def _assign_folds(cache: SegCache, config: SegConfig) -> tuple[np.ndarray, int]:
    """Fold of each image; with one fold every image is a training image (-1)."""
    if config.folds >= 2:
        return kfold(cache.patient_ids, config.folds, seed=config.seed), config.folds
    if config.folds != 1:
        raise CxrsslError(f"--folds must be 1 or more, got {config.folds}")
    return np.full(len(cache), -1), 1


def _hold_out(
    rows: np.ndarray, patient_ids: np.ndarray, config: SegConfig, seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Split a fold's training rows into (train, validation) by patient."""
    if not config.val_fraction:
        return rows, None
    side = make_split(list(patient_ids[rows]), val=config.val_fraction, test=0.0, seed=seed)
    return rows[side == "train"], rows[side == "val"]


def _build_net(config: SegConfig, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights are part of the seeded run
        net = create_net(config.model, **config.model_kwargs)
    if config.init:
        load_init(net, config.init, encoder_only=config.init_encoder_only)
    return net


def _batched_probs(
    models: Sequence[nn.Module], images: torch.Tensor, device: torch.device, tta: bool
) -> torch.Tensor:
    """Probabilities (N, 1, S, S) on the CPU, 16 images at a time."""
    out = [
        predict_probs(models, images[i : i + 16].to(device), tta).cpu()
        for i in range(0, len(images), 16)
    ]
    return torch.cat(out)


def original_probs(
    net: nn.Module, cache: SegCache, device: torch.device, tta: bool = False
) -> list[np.ndarray]:
    """``net``'s probabilities for every row of ``cache`` at its image's original size
    (float32 (H, W) in [0, 1], 0 outside the crop box)."""
    net.eval()
    probs = _batched_probs([net], cache.images, device, tta)
    return [
        np.clip(restore(probs[i, 0].numpy(), box, region, shape), 0.0, 1.0)
        for i, (box, region, shape) in enumerate(
            zip(cache.boxes, cache.crops, cache.shapes, strict=True)
        )
    ]


def original_masks(
    probs: torch.Tensor, cache: SegCache, threshold: float, mode: str
) -> list[np.ndarray]:
    """Letterboxed probabilities (N, 1, S, S) -> post-processed {0, 1} masks at each image's
    original size (thresholded at the crop's size, then pasted into the full image)."""
    out = []
    for i, box in enumerate(cache.boxes):
        mask = (unletterbox(probs[i, 0].numpy(), box) >= threshold).astype(np.uint8)
        out.append(postprocess(uncrop(mask, cache.crops[i], cache.shapes[i]), mode))
    return out


def _score(masks: list[np.ndarray], cache: SegCache, empty: str) -> list[dict[str, float]]:
    """Metrics of original-size masks against the cache's mask files."""
    return [
        binary_metrics(pred, read_mask(path, pred.shape), hd95=False, empty=empty)
        for pred, path in zip(masks, cache.mask_paths, strict=True)
    ]


def evaluate_original(
    net: nn.Module, cache: SegCache, threshold: float, config: SegConfig, device: torch.device
) -> tuple[list[dict[str, float]], list[np.ndarray]]:
    """Per-image metrics and masks of ``cache`` at each image's original size (held-out
    test images: the threshold comes from validation)."""
    net.eval()
    probs = _batched_probs([net], cache.images, device, tta=config.tta)
    masks = original_masks(probs, cache, threshold, config.postprocess)
    return _score(masks, cache, config.empty), masks


def score_fold(
    net: nn.Module, test: SegCache, fitted: FoldFit, config: SegConfig
) -> tuple[list[dict[str, float]], list[np.ndarray], dict[str, float]]:
    """Measure each image of ``test`` at its original size, step by step of the recipe.

    Each threshold is applied to the probabilities it was tuned on: ``threshold_plain`` to
    plain ones, ``threshold`` to the recipe's (flip-averaged with ``tta``).

    Returns:
        (per-image metric rows and masks of the configured recipe, mean Dice after each step:
        ``plain`` (threshold 0.5), ``+threshold`` (the validation threshold), ``+post``
        (post-processing), ``+tta`` (flip averaging, its own threshold)).
    """
    net.eval()
    probs = _batched_probs([net], test.images, fitted.device, tta=False)
    steps: dict[str, list[dict[str, float]]] = {}

    def step(name: str, threshold: float, mode: str) -> list[np.ndarray]:
        masks = original_masks(probs, test, threshold, mode)
        steps[name] = _score(masks, test, config.empty)
        return masks

    step("plain", 0.5, "none")
    if fitted.threshold_plain != 0.5:
        step("+threshold", fitted.threshold_plain, "none")
    masks = step("+post", fitted.threshold_plain, config.postprocess)
    if config.tta:
        probs = _batched_probs([net], test.images, fitted.device, tta=True)
        masks = step("+tta", fitted.threshold, config.postprocess)
    worth = {k: nanmean([r["dice"] for r in v]) for k, v in steps.items()}
    return steps[list(steps)[-1]], masks, worth


def engine_config(
    config: SegConfig, net: nn.Module, validated: bool, seed: int, device: torch.device
) -> TrainConfig:
    """The engine settings of a fold of ``config`` training ``net``: the recipe's parameter
    groups (:meth:`SegConfig.param_settings`), its monitor when there are validation
    patients (``validated``), else none (the last epoch)."""
    lr_mult, freeze = config.param_settings(net)
    return TrainConfig(
        epochs=config.epochs,
        lr=config.lr,
        patience=config.patience,
        lr_mult=lr_mult,
        freeze=freeze,
        monitor=config.MONITOR if validated else None,
        monitor_mode="max",
        seed=seed,
        device=str(device),
        progress=config.progress,
        tensorboard=config.tensorboard,
    )


@dataclass
class FoldFit:
    """A trained fold: the chosen model, its threshold for the recipe's probabilities
    (flip-averaged with ``tta``) and for plain ones (equal without ``tta``)."""

    net: nn.Module
    threshold: float
    best_epoch: int
    history: list[dict[str, float]]
    device: torch.device
    threshold_plain: float = 0.5


def fit_fold(
    train: SegCache,
    val: SegCache | None,
    config: SegConfig,
    run_dir: Path,
    seed: int,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    meta: dict[str, Any] | None = None,
) -> FoldFit:
    """Train on ``train``; keep the best epoch on ``val`` and tune the threshold there (the
    last epoch and 0.5 without ``val``); store the threshold in ``run_dir/best.pt``.

    The checkpoints' ``extra`` records ``train.crop``, the crop the images were loaded with.

    Args:
        train: Training images and masks.
        val: Validation images and masks (epoch choice, threshold), or None.
        config: Recipe.
        run_dir: The engine's run folder.
        seed: Seed of the initial weights and of training.
        resume: Continue from ``run_dir/last.pt``.
        callbacks: Passed to the :class:`cxrssl.train.Trainer`.
        meta: Extra run description stored in the checkpoints.
    """
    if val is None and (config.target_sensitivity is not None or config.patience):
        raise CxrsslError(
            "a target sensitivity or early stopping needs validation patients (--val-fraction)"
        )
    check_empty(config.empty)
    if config.crop is not None and config.crop != train.crop:
        raise CxrsslError(
            f"crop {config.crop} configured, but the images were loaded with crop {train.crop}"
        )
    if val is not None and val.crop != train.crop:
        raise CxrsslError(f"validation images cropped {val.crop}, training images {train.crop}")
    device = resolve_device(config.device)
    net = _build_net(config, seed)
    task = config.make_task(int(train.images.shape[1]) - 1)
    train_config = engine_config(config, net, val is not None, seed, device)
    spec = {"name": config.model, "kwargs": {**config.model_kwargs}}
    extra = {
        "size": config.size,
        "crop": train.crop,
        "threshold": 0.5,
        "postprocess": config.postprocess,
        "tta": config.tta,
        **config.checkpoint_extra(),
    }
    trainer = Trainer(
        net,
        task,
        train_config,
        run_dir,
        spec,
        extra,
        meta or {config.KIND: asdict(config)},
        callbacks,
    )
    val_loader = loader(val, 16, False) if val is not None else None
    result = trainer.fit(loader(train, config.batch_size, True), val_loader, resume=resume)
    best = load_checkpoint(run_dir / "best.pt", map_location=device)
    net.load_state_dict(best["state_dict"])
    net.eval()
    threshold = plain = 0.5
    if val is not None:  # each threshold tuned on the probabilities it will be applied to
        probs = _batched_probs([net], val.images, device, tta=False)
        sens, grid = config.target_sensitivity, config.THRESHOLDS
        threshold = plain = tune_threshold(probs, val.masks, sens, grid)[0]
        if config.tta:
            probs = _batched_probs([net], val.images, device, tta=True)
            threshold, _ = tune_threshold(probs, val.masks, sens, grid)
    best["extra"] = {**best["extra"], "threshold": threshold}
    if distributed.is_main():
        save_checkpoint(run_dir / "best.pt", best)
    distributed.barrier()
    return FoldFit(net, threshold, int(best["epoch"]), result.history, device, plain)


def train_seg(
    images: str | Path,
    masks: str | Path,
    out: str | Path,
    config: SegConfig | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train and cross-validate a segmentation model; write ``out`` (see the module doc).

    The crop is resolved first (:func:`resolve_crop`); images and masks are cropped and
    letterboxed once, and every prediction and metric is at each image's full size.

    Args:
        images: Folder of radiographs (patient ids from ``labels.csv`` beside it, if any).
        masks: Folder of 0/255 masks with the images' stems.
        out: Run folder.
        config: Recipe; None for the defaults.
        resume: Continue every fold from its ``last.pt`` (finished folds are not retrained).
        callbacks: Passed to each fold's :class:`cxrssl.train.Trainer`.

    Returns:
        The summary also written to ``out/summary.json``.
    """
    config = resolve_crop(config or SegConfig())
    assert config.crop is not None
    check_empty(config.empty)
    cache = load_cache(open_folders(images, masks), config.size, crop=config.crop)
    return cross_validate(cache, config, out, resume, callbacks)


FoldExtra = Callable[[int, SegCache, FoldFit], dict[str, Any]]
"""Called after each fold is scored as ``extra(fold, test_cache, fitted)``; the returned
plain-type figures join that fold's entry of summary.json."""


def cross_validate(
    cache: SegCache,
    config: SegConfig,
    out: str | Path,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    fold_extra: FoldExtra | None = None,
) -> dict[str, Any]:
    """Patient-level k-fold training and scoring of a loaded ``cache`` into ``out`` (the
    body of :func:`train_seg`; see the module doc for what is written).

    Args:
        cache: Images (with any prior channels) and masks, loaded with ``config``'s size and
            crop.
        config: Recipe, its crop resolved.
        out: Run folder.
        resume: Continue every fold from its ``last.pt``.
        callbacks: Passed to each fold's :class:`cxrssl.train.Trainer`.
        fold_extra: More figures per scored fold (:data:`FoldExtra`).

    Returns:
        The summary also written to ``out/summary.json``.
    """
    out = Path(out)
    check_empty(config.empty)
    pids = np.asarray(resolve_patient_ids(cache.patient_ids, [p.name for p in cache.paths]))
    cache.patient_ids = list(pids)
    assignment, n_folds = _assign_folds(cache, config)
    per_image: list[dict[str, Any]] = []
    folds: list[dict[str, Any]] = []
    for fold in range(n_folds):
        train_rows, val_rows = _hold_out(
            np.flatnonzero(assignment != fold), pids, config, config.seed + fold
        )
        if config.n_labelled:
            pick = draw_labelled(list(pids[train_rows]), config.n_labelled, config.seed + fold)
            train_rows = train_rows[pick]
        train = cache.subset(train_rows)
        val = cache.subset(val_rows) if val_rows is not None else None
        test = cache.subset(np.flatnonzero(assignment == fold))
        log.info(
            "fold %d/%d: %d training, %d validation, %d scored images",
            fold + 1,
            n_folds,
            len(train),
            len(val) if val is not None else 0,
            len(test),
        )
        fitted = fit_fold(
            train,
            val,
            config,
            out / f"fold_{fold}",
            config.seed + fold,
            resume,
            callbacks,
            {config.KIND: asdict(config), "fold": fold},
        )
        if not len(test):
            log.info("one fold: trained on every patient, nothing left to score")
            summary = _summary(config, [], [], n_folds)
            if distributed.is_main():
                write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
            break
        rows, fold_masks, worth = score_fold(fitted.net, test, fitted, config)
        for path, mask in zip(test.paths, fold_masks, strict=True):
            if distributed.is_main():
                write_mask(out / "predictions" / f"{path.stem}.png", mask)
        means = {k: nanmean([r[k] for r in rows]) for k in REPORTED}
        folds.append(
            {
                "fold": fold,
                "n_train": len(train),
                "n_val": len(val) if val is not None else 0,
                "n_scored": len(test),
                "best_epoch": fitted.best_epoch,
                "threshold": fitted.threshold,
                **means,
                "dice_by_step": worth,
                **(fold_extra(fold, test, fitted) if fold_extra is not None else {}),
            }
        )
        per_image += [
            {"fold": fold, "file": p.name, "patient_id": pid, **r}
            for p, pid, r in zip(test.paths, test.patient_ids, rows, strict=True)
        ]
        log.info(
            "fold %d: %s; Dice by step: %s",
            fold + 1,
            ", ".join(f"{k} {v:.4f}" for k, v in means.items()),
            ", ".join(f"{k} {v:.4f}" for k, v in worth.items()),
        )
        # Rewritten after every fold, so a stopped run still shows its finished folds.
        summary = _summary(config, folds, per_image, n_folds)
        if distributed.is_main():
            write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
            write_history_csv(out / "per_image.csv", per_image)
    return summary


def _summary(
    config: SegConfig, folds: list[dict[str, Any]], per_image: list[dict[str, Any]], n_folds: int
) -> dict[str, Any]:
    across: dict[str, dict[str, float]] = {}
    if not folds:  # one model trained on everything: no scored fold
        return {"config": asdict(config), "complete": True, "folds": []}
    for k in REPORTED:
        values = np.array([f[k] for f in folds], dtype=np.float64)
        values = values[~np.isnan(values)]
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        across[k] = {"mean": nanmean(values), "std": std, "n_folds": len(values)}
    pooled = summarise(
        [{k: r[k] for k in REPORTED} for r in per_image],
        groups=[r["patient_id"] for r in per_image],
    )
    return {
        "config": asdict(config),
        "complete": len(folds) == n_folds,
        "empty_convention": convention_note(config.empty),
        "folds": folds,
        "mean_std_over_folds": across,
        "per_image": {k: v.as_dict() for k, v in pooled.items()},
        "per_image_note": "mean over images, 95 % CI bootstrapped over patients",
    }


@dataclass
class Predictor:
    """One model or a fold ensemble with what it was trained with: input size, crop
    (``CROPS``; ``"none"`` for checkpoints that name none), threshold, post-processing, TTA,
    and the kind of prior map it takes as a second input channel (``extra["prior"]``; None
    for none). ``extra`` is the first checkpoint's ``extra``."""

    models: list[nn.Module]
    size: int
    threshold: float
    postprocess: str
    tta: bool
    device: torch.device
    crop: str = "none"
    prior: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "auto") -> Predictor:
        """From a ``best.pt`` file, or a run folder (every ``fold_*/best.pt``: an ensemble
        whose threshold is the mean of the folds'; they must share size and crop)."""
        path = Path(checkpoint)
        files = sorted(path.glob("fold_*/best.pt")) if path.is_dir() else [path]
        if not files:
            raise CxrsslError(f"{path}: no fold_*/best.pt in this run folder")
        dev = resolve_device(device)
        models, extras = [], []
        for file in files:
            ckpt = load_checkpoint(file, map_location=dev)
            spec = ckpt.get("model") or {}
            if "name" not in spec:
                raise CxrsslError(f"{file}: checkpoint does not name its model")
            net = create_net(spec["name"], **spec.get("kwargs", {}))
            net.load_state_dict(ckpt["state_dict"])
            fast = net.to(dev, memory_format=torch.channels_last)  # type: ignore[call-overload]
            models.append(fast.eval())
            extras.append(ckpt.get("extra", {}))
        sizes = {int(e.get("size", 256)) for e in extras}
        if len(sizes) > 1:
            raise CxrsslError(f"{path}: the folds were trained at different sizes {sorted(sizes)}")
        crops = {str(e.get("crop", "none")) for e in extras}
        if len(crops) > 1:
            raise CxrsslError(
                f"{path}: the folds were trained with different crops {sorted(crops)}"
            )
        crop = check_crop(crops.pop())
        priors = {e.get("prior") for e in extras}
        if len(priors) > 1:
            raise CxrsslError(f"{path}: the folds were trained with different priors {priors}")
        threshold = float(np.mean([e.get("threshold", 0.5) for e in extras]))
        first = extras[0]
        prior = priors.pop()
        return cls(
            models,
            sizes.pop(),
            threshold,
            str(first.get("postprocess", "none")),
            bool(first.get("tta", False)),
            dev,
            crop,
            None if prior is None else str(prior),
            dict(first),
        )

    def probs(self, image: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """(H, W) float image in [0, 1] (and its (H, W) prior map in [0, 1] for a model that
        takes one) -> (H, W) float32 probabilities at the same size (0 outside the crop box).

        Raises:
            CxrsslError: A prior missing for a model that takes one, given to one that does
                not, or of the wrong size or range.
        """
        self.check_prior(prior is not None)
        region = input_box(image, self.crop)
        canvas, box = letterbox(apply_crop(image, region), self.size)
        channels = [to_uint8(canvas)]
        if prior is not None:
            channels.append(fit_prior(prior, image.shape, region, box))
        x = torch.from_numpy(np.stack(channels))[None].to(self.device)
        probs = predict_probs(self.models, x, self.tta)[0, 0].cpu().numpy()
        # Bilinear resizing may overshoot 1 by a rounding error: keep probabilities in [0, 1].
        return np.clip(restore(probs, box, region, image.shape[:2]), 0.0, 1.0)

    def check_prior(self, given: bool, where: str = "the model") -> None:
        """Raise a ``CxrsslError`` when a prior is ``given`` to a model that takes none, or
        missing for one that takes one (``where`` names the model in the message)."""
        if given != (self.prior is not None):
            need = f"takes a {self.prior} prior map" if self.prior else "takes no prior map"
            raise CxrsslError(f"{where} {need}; one was {'not ' * (not given)}given")

    def mask(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities from :meth:`probs` -> (H, W) uint8 {0, 1} mask: thresholded and
        post-processed (the threshold > 0, so nothing outside the crop box)."""
        return postprocess((probs >= self.threshold).astype(np.uint8), self.postprocess)

    def __call__(self, image: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """(H, W) float image in [0, 1] (and its prior, see :meth:`probs`) -> (H, W) uint8
        {0, 1} mask at the same size."""
        return self.mask(self.probs(image, prior))


ProbsFn = Callable[[Path, np.ndarray, float], None]
"""Called by :func:`predict` as ``on_probs(image_path, probabilities, threshold)`` with each
image's (H, W) probabilities at its original size."""


def predict(
    checkpoint: str | Path,
    images: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    prior: PriorFn | None = None,
    on_probs: ProbsFn | None = None,
) -> tuple[list[Path], list[str]]:
    """Segment every image of a folder and write 0/255 PNG masks at each image's original
    size, same stem, into ``out_dir`` (cropped as the checkpoint was trained, pasted back).

    Args:
        checkpoint: ``best.pt``, or a run folder (fold ensemble).
        images: Folder of radiographs.
        out_dir: Where the masks go.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        prior: Each image's prior map, for a model trained with one (:data:`PriorFn`; an
            image whose prior fails with a ``CxrsslError`` is reported like an unreadable
            one).
        on_probs: Sees each image's probabilities (:data:`ProbsFn`).

    Returns:
        (written mask files, one ``"path: problem"`` line per image that could not be read).

    Raises:
        CxrsslError: No images; a model that takes a prior without ``prior`` (or the other
            way round).
    """
    files = index_files(Path(images))
    if not files:
        raise DatasetError(f"{images}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    predictor = Predictor.load(checkpoint, device)
    predictor.check_prior(prior is not None, f"{checkpoint}: the model")
    written, failed = [], []
    for stem, path in sorted(files.items()):
        try:
            image = read_image(path)
            probs = predictor.probs(image, None if prior is None else prior(path, image))
        except ImageReadError as err:
            failed.append(str(err))
            continue
        except CxrsslError as err:
            failed.append(f"{path}: {err}")
            continue
        if on_probs is not None:
            on_probs(path, probs, predictor.threshold)
        target = Path(out_dir) / f"{stem}.png"
        write_mask(target, predictor.mask(probs))
        written.append(target)
    return written, failed
