"""Disease classification end to end: patient-level split or k-fold CV, label fractions drawn
by patient, training on the streaming pool, temperature and thresholds chosen on validation,
per-label AUC with CIs over patients on images no choice saw, and the lung focus of Grad-CAM.

Protocol of each fold: the scored patients (the test split, or the fold) are set aside; a
``val_fraction`` of the remaining patients chooses the epoch (mean validation AUC), the
temperature (NLL) and each label's threshold (Youden's J, or a target sensitivity); a
``label_fraction`` of the rest, drawn by patient and stratified, trains. The validation set
stays the same whatever the fraction (the usual label-efficiency protocol: MRM, MaCo).

Under ``torchrun`` each process trains on its shard of every epoch (one shuffled pass over
the training images; ``batch_size`` is per process, ``epoch_steps`` is not used) and only
rank 0 writes.

Run folder of :func:`train_cls`::

    OUT/summary.json       per-label ROC AUC and PR AUC (95 % CI bootstrapped over patients),
                           mean AUC, per-fold AUC mean +- std, sensitivity and specificity at
                           the validation threshold, calibration (ECE before and after
                           temperature scaling), lung focus, the data and the config
    OUT/predictions.csv    every scored image: file, patient, fold, labels, probabilities
    OUT/roc.png            ROC curves; OUT/reliability.png: reliability diagram
    OUT/lung_focus.png     Grad-CAM of the most and least lung-focused scored images
    OUT/fold_<k>/          the engine's run folder and split.csv (train / val / test / unused)
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrssl.augment import AugmentConfig
from cxrssl.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from cxrssl.cls_plots import reliability_figure, roc_figure, save_png
from cxrssl.data.splits import kfold, make_split, write_split_csv
from cxrssl.errors import CxrsslError, DatasetError
from cxrssl.files import atomic_open, write_bytes_atomic, write_text_atomic
from cxrssl.metrics import (
    MetricError,
    mean_auc,
    roc_auc_per_class,
    threshold_for_sensitivity,
    threshold_youden,
)
from cxrssl.nets.classifier import Classifier
from cxrssl.tasks.cls_data import (
    ClsData,
    LabelSet,
    build_data,
    cls_loader,
    draw_fraction,
    image_records,
    open_labelled,
    select_labels,
)
from cxrssl.tasks.cls_task import (
    ClassificationTask,
    has_auc,
    macro_auc,
    positive_weights,
    probabilities,
)
from cxrssl.tasks.explain import cam_picture, grad_cam, lung_focus, montage
from cxrssl.tasks.seg_data import check_crop, crop_from_init
from cxrssl.train import (
    TrainConfig,
    Trainer,
    distributed,
    load_checkpoint,
    load_init,
    save_checkpoint,
)
from cxrssl.train.device import resolve_device, to_device
from cxrssl.viz import png_bytes

log = logging.getLogger(__name__)

SPLITS = ("auto", "random", "official")


@dataclass
class ClsConfig:
    """A classification run; the defaults are the recommended recipe.

    Attributes:
        model: Encoder name (``cxrssl.nets.ENCODERS``): ``resnet18``, ``resnet50``,
            ``densenet121`` (MONAI, one input channel) or ``unet`` (the U-Net encoder).
        model_kwargs: Encoder keywords (``create_encoder``).
        size: Side of the letterboxed input (the pool's canvas).
        crop: ``"none"``, ``"lung-box"`` (seed 000, option 4: every image cropped to its
            rule-based lung box, the same in training and prediction) or None: the ``init``
            checkpoint's crop, else none.
        epochs: Epochs per fold.
        batch_size: Images per batch.
        lr: Peak learning rate (AdamW, warm-up then cosine).
        encoder_lr_mult: Encoder learning-rate multiplier; None: 0.1 with ``init``, else 1.
        linear_probe: Freeze the encoder; train the linear layer only.
        dropout: Dropout before the linear layer.
        label_fraction: Share of the training patients whose labels are used (stratified).
        folds: Patient-level folds (>= 2: each scored by the model trained on the others);
            1: one train / val / test split.
        val_fraction: Share of each fold's non-scored patients that chooses epoch,
            temperature and thresholds.
        test_fraction: Share of the patients scored (one split only).
        split: ``"official"`` (NIH ``test_list.txt``; the validation patients are drawn from
            ``train_val_list.txt``), ``"random"`` (by patient, stratified) or ``"auto"``
            (official when every image is on an official list).
        init: Checkpoint whose encoder initialises the model (pre-training or supervised).
        multiclass: One class per image (softmax over the label columns).
        pos_weight: Up-weight the positives of rare labels (negatives / positives).
        augment: Batch augmentation (rotation, scale, shift, brightness, contrast, noise).
        epoch_steps: Batches per epoch, drawn from the training images (a small labelled set
            is cycled, a large one sampled); None: one pass, at least 10 batches.
        patience: Early-stopping patience in epochs (0: off).
        target_sensitivity: Thresholds for this validation sensitivity instead of Youden's J.
        explain: Grad-CAM lung focus of the scored images.
        n_boot: Bootstrap resamples of the CIs.
        workers: Loader worker processes.
        mask_workers: Processes that compute missing pool entries.
        cache_dir: Pool folder (default ``~/.cache/cxrssl/pool``).
        seed: Seed of the label-fraction draw and of training.
        split_seed: Seed of the patient split (test patients, folds, validation); None: the
            ``seed``. A study keeps it fixed so every seed is scored on the same patients.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        progress: Progress bars.
        tensorboard: TensorBoard logs.
    """

    model: str = "resnet18"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    size: int = 224
    crop: str | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    encoder_lr_mult: float | None = None
    linear_probe: bool = False
    dropout: float = 0.0
    label_fraction: float = 1.0
    folds: int = 1
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split: str = "auto"
    init: str | None = None
    multiclass: bool = False
    pos_weight: bool = True
    augment: bool = True
    epoch_steps: int | None = None
    patience: int = 0
    target_sensitivity: float | None = None
    explain: bool = True
    n_boot: int = 1000
    workers: int = 0
    mask_workers: int = 1
    cache_dir: str | None = None
    seed: int = 0
    split_seed: int | None = None
    device: str = "auto"
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.crop is not None:
            check_crop(self.crop)
        if self.split not in SPLITS:
            raise CxrsslError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if self.folds < 1:
            raise CxrsslError(f"--folds must be 1 or more, got {self.folds}")

    @property
    def split_rng(self) -> int:
        """The seed of the patient split."""
        return self.seed if self.split_seed is None else self.split_seed


def _strata(labels: LabelSet) -> np.ndarray:
    return labels.targets() if labels.multiclass else labels.values


def assign(data: ClsData, config: ClsConfig) -> np.ndarray:
    """Per row: its fold (``folds`` >= 2) or ``0`` for the test rows and ``-1`` for the
    others of a single split."""
    if config.folds >= 2:
        return kfold(data.patient_ids, config.folds, _strata(data.labels), seed=config.split_rng)
    official = [m.get("official_split", "") for m in data.meta]
    use_official = config.split == "official" or (
        config.split == "auto" and official and all(official)
    )
    if use_official:
        if not all(official):
            raise DatasetError(
                "--split official: some images are on neither train_val_list.txt nor test_list.txt"
            )
        log.info("official split: %d test image(s)", sum(s == "test" for s in official))
        return np.where(np.array(official) == "test", 0, -1)
    side = make_split(
        data.patient_ids,
        _strata(data.labels),
        val=0.0,
        test=config.test_fraction,
        seed=config.split_rng,
    )
    return np.where(side == "test", 0, -1)


def fold_rows(
    data: ClsData, assignment: np.ndarray, fold: int, config: ClsConfig
) -> dict[str, np.ndarray]:
    """Row indices of ``train``, ``val``, ``test`` and ``unused`` (the labels the fraction
    leaves out) of one fold."""
    test = np.flatnonzero(assignment == fold)
    rest = np.flatnonzero(assignment != fold)
    pids = np.asarray(data.patient_ids)
    val = np.array([], np.int64)
    if config.val_fraction:
        side = make_split(
            list(pids[rest]),
            _strata(data.labels)[rest],
            val=config.val_fraction,
            test=0.0,
            seed=config.split_rng + fold,
        )
        val, rest = rest[side == "val"], rest[side == "train"]
    sub = data.subset(rest)
    picked = draw_fraction(sub.patient_ids, sub.labels, config.label_fraction, config.seed + fold)
    train = rest[picked]
    unused = np.setdiff1d(rest, train)
    return {"train": train, "val": val, "test": test, "unused": unused}


def _write_split(path: Path, data: ClsData, rows: dict[str, np.ndarray]) -> None:
    side = np.full(len(data), "", dtype="<U6")
    for name, idx in rows.items():
        side[idx] = name
    keep = np.flatnonzero(side != "")
    files = data.files  # the property builds the list: once, not per row
    write_split_csv(path, [files[i] for i in keep], [data.patient_ids[i] for i in keep], side[keep])


def build_model(config: ClsConfig, n_outputs: int, seed: int) -> nn.Module:
    """The classifier with seeded initial weights, its encoder loaded from ``config.init``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Classifier(config.model, n_outputs, 1, config.dropout, dict(config.model_kwargs))
    if config.init:
        load_init(net, config.init, encoder_only=True)
    return net


def _thresholds(probs: np.ndarray, labels: np.ndarray, target: float | None) -> list[float]:
    """Each label's threshold on validation (0.5 where it has one class only)."""
    out = []
    for c in range(labels.shape[1]):
        known = ~np.isnan(labels[:, c])
        try:
            if target is None:
                out.append(threshold_youden(probs[known, c], labels[known, c]))
            else:
                out.append(threshold_for_sensitivity(probs[known, c], labels[known, c], target))
        except MetricError:
            out.append(0.5)
    return out


@dataclass
class FittedFold:
    """A trained fold: the chosen model and what validation chose for it."""

    net: nn.Module
    task: ClassificationTask
    temperature: float
    thresholds: list[float]
    best_epoch: int
    device: torch.device


def fit_fold(
    train: ClsData,
    val: ClsData,
    config: ClsConfig,
    run_dir: Path,
    seed: int,
    resume: bool = False,
) -> FittedFold:
    """Train on ``train``; choose the epoch, temperature and thresholds on ``val``; store them
    in ``run_dir/best.pt``."""
    if not len(train):
        raise DatasetError("no training image left (raise --label-fraction)")
    crop = config.crop or "none"
    multiclass = train.labels.multiclass
    weights = (
        positive_weights(train.labels.values) if config.pos_weight and not multiclass else None
    )
    task = ClassificationTask(
        multiclass,
        weights.tolist() if weights is not None else None,
        AugmentConfig() if config.augment else None,
        crop == "lung-box",
    )
    device = resolve_device(config.device)
    net = build_model(config, len(train.labels.names), seed)
    mult = config.encoder_lr_mult
    if mult is None:
        mult = 0.1 if config.init else 1.0
    monitor = "auc" if len(val) and has_auc(val.labels.values) else "loss"
    if len(val) and monitor == "loss":
        log.warning("validation has no label with both classes: the epoch is chosen by its loss")
    train_config = TrainConfig(
        epochs=config.epochs,
        lr=config.lr,
        warmup_epochs=min(2.0, config.epochs / 5),
        patience=config.patience,
        lr_mult={"encoder.": mult} if mult != 1 else {},
        freeze=("encoder.",) if config.linear_probe else (),
        monitor=monitor if len(val) else None,
        monitor_mode="max" if monitor == "auc" else "min",
        seed=seed,
        device=str(device),
        progress=config.progress,
        tensorboard=config.tensorboard,
    )
    extra = {
        "task": "classify",
        "size": config.size,
        "crop": crop,
        "labels": list(train.labels.names),
        "multiclass": multiclass,
        "temperature": 1.0,
        "thresholds": [0.5] * len(train.labels.names),
    }
    spec = {
        "name": "classifier",
        "kwargs": {
            "encoder": config.model,
            "n_outputs": len(train.labels.names),
            "dropout": config.dropout,
            "encoder_kwargs": dict(config.model_kwargs),
        },
    }
    trainer = Trainer(net, task, train_config, run_dir, spec, extra, {"classify": asdict(config)})
    batch = min(config.batch_size, len(train))
    steps = config.epoch_steps or max(-(-len(train) // batch), 10)
    train_loader = cls_loader(train, batch, True, config.workers, samples=steps * batch)
    val_loader = cls_loader(val, 64, False, config.workers) if len(val) else None
    trainer.fit(train_loader, val_loader, resume=resume)
    best = load_checkpoint(run_dir / "best.pt", map_location=device)
    net.load_state_dict(best["state_dict"])
    net.eval()
    temperature, thresholds = 1.0, [0.5] * len(train.labels.names)
    if val_loader is not None:
        logits, labels = _logits(net, task, val_loader, device)
        temperature = fit_temperature(logits, labels, multiclass=multiclass)
        probs = probabilities(apply_temperature(logits, temperature), multiclass)
        thresholds = _thresholds(probs, labels, config.target_sensitivity)
    best["extra"] = {**best["extra"], "temperature": temperature, "thresholds": thresholds}
    if distributed.is_main():
        save_checkpoint(run_dir / "best.pt", best)
    distributed.barrier()
    return FittedFold(net, task, temperature, thresholds, int(best["epoch"]), device)


def _logits(
    net: nn.Module, task: ClassificationTask, loader: Any, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    net.eval()
    return task.logits(net, (to_device(b, device) for b in loader))


@dataclass
class Focus:
    """Grad-CAM lung focus of a set of images, in the network's input frame.

    Attributes:
        lungs: (N, C) share of each map's mass inside the rule-based lungs.
        box: (N, C) share inside the lung box (1 for a lung-box model: its input is the box).
        lung_area: (N,) the lungs' share of the input.
        pictures: per image, (2 + C, S, S): the input, its lungs, its maps.
    """

    lungs: np.ndarray
    box: np.ndarray
    lung_area: np.ndarray
    pictures: list[np.ndarray]


def _focus(net: nn.Module, task: ClassificationTask, data: ClsData, device: torch.device) -> Focus:
    """Grad-CAM of every image and label, and its lung focus."""
    shares, in_box, areas, pictures = [], [], [], []
    net.eval()
    outputs = list(range(len(data.labels.names)))
    for batch in cls_loader(data, 16, False):
        batch = to_device(batch, device)
        x, lungs = task.view(batch)
        cam = grad_cam(net, x, outputs)  # type: ignore[arg-type]
        boxes = None if task.crop else batch[2]
        focus = lung_focus(cam, lungs, boxes)
        shares.append(focus["lungs"].cpu())
        in_box.append(focus["box"].cpu() if "box" in focus else torch.ones_like(shares[-1]))
        areas.append(focus["lung_area"].cpu())
        for i in range(len(x)):
            pictures.append(
                np.concatenate(
                    [x[i, :1].cpu().numpy(), lungs[i, :1].cpu().numpy(), cam[i].cpu().numpy()]
                )
            )
    return Focus(
        torch.cat(shares).numpy(), torch.cat(in_box).numpy(), torch.cat(areas).numpy(), pictures
    )


def _focus_montage(
    rows: list[dict[str, Any]], pictures: list[np.ndarray], names: Sequence[str], path: Path
) -> None:
    """Grad-CAM of the 4 most and the 4 least lung-focused images (of the label with the most
    positives; images whose map is all zero have no focus and are left out), as one PNG."""
    shares = np.array([r["lung_focus"] for r in rows], np.float64)
    finite = np.flatnonzero(np.isfinite(shares))  # an all-zero map has no focus
    if not finite.size:
        return
    order = finite[np.argsort(shares[finite])]
    picks = list(order[::-1][:4]) + list(order[: min(4, max(len(order) - 4, 0))])
    tiles = []
    for i in picks:
        stack = pictures[i]
        label = rows[i]["focus_label"]
        k = list(names).index(label)
        text = f"{label} lungs {shares[i]:.0%}"
        tiles.append(cam_picture(stack[0], stack[2 + k], stack[1], text, side=224))
    write_bytes_atomic(path, montage(tiles, 4))


def _sens_spec(
    probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray
) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for c in range(labels.shape[1]):
        known = ~np.isnan(labels[:, c])
        y = labels[known, c].astype(bool)
        pred = probs[known, c] >= thresholds[known, c]
        out[c] = {
            "sensitivity": float(pred[y].mean()) if y.any() else float("nan"),
            "specificity": float((~pred[~y]).mean()) if (~y).any() else float("nan"),
        }
    return out


def _calibration(
    raw: np.ndarray, calibrated: np.ndarray, labels: np.ndarray, multiclass: bool
) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """ECE before and after temperature scaling (top-label for multi-class, pooled over the
    known labels otherwise) and the reliability bins of both."""
    if multiclass:
        truth = np.nan_to_num(labels).argmax(1)
        pairs = [(p.max(1), (p.argmax(1) == truth).astype(np.float64)) for p in (raw, calibrated)]
    else:
        known = ~np.isnan(labels)
        pairs = [(p[known], labels[known]) for p in (raw, calibrated)]
    ece = {
        "ece_before": expected_calibration_error(*pairs[0]),
        "ece_after": expected_calibration_error(*pairs[1]),
    }
    return ece, reliability_bins(*pairs[0]), reliability_bins(*pairs[1])


def summarise(
    scored: list[dict[str, Any]],
    names: Sequence[str],
    folds: list[dict[str, Any]],
    config: ClsConfig,
    multiclass: bool,
    out: Path,
) -> dict[str, Any]:
    """Pooled metrics of every scored image (each scored once), with plots."""
    labels = np.array([[r[f"label_{n}"] for n in names] for r in scored], np.float64)
    probs = np.array([[r[f"prob_{n}"] for n in names] for r in scored], np.float64)
    raw = np.array([[r[f"raw_{n}"] for n in names] for r in scored], np.float64)
    thresholds = np.array([r["thresholds"] for r in scored], np.float64)
    groups = [r["patient_id"] for r in scored]
    aucs = roc_auc_per_class(
        labels, probs, list(names), n_boot=config.n_boot, seed=config.seed, groups=groups
    )
    rates = _sens_spec(probs, labels, thresholds)
    per_label = {n: {**aucs[n].as_dict(), **rates[c]} for c, n in enumerate(names)}
    target = config.target_sensitivity
    rule = "Youden's J" if target is None else f"sensitivity {target}"
    fold_aucs = np.array([f["auc"] for f in folds if np.isfinite(f["auc"])])
    ece, before, after = _calibration(raw, probs, labels, multiclass)
    if distributed.is_main():
        save_png(roc_figure(labels, probs, list(names), aucs), out / "roc.png")
        save_png(reliability_figure(before, after), out / "reliability.png")
    summary: dict[str, Any] = {
        "mean_auc": mean_auc(aucs),
        "per_label": per_label,
        "auc_over_folds": {
            "mean": float(fold_aucs.mean()) if fold_aucs.size else float("nan"),
            "std": float(fold_aucs.std(ddof=1)) if fold_aucs.size > 1 else 0.0,
            "n_folds": int(fold_aucs.size),
        },
        "calibration": ece,
        "n_scored": len(scored),
        "n_patients_scored": len(set(groups)),
        "ci_note": "95 % CI, percentile bootstrap over patients",
        "threshold_note": "per label, chosen on validation: " + rule,
    }
    focus = [r["lung_focus"] for r in scored if "lung_focus" in r]
    if focus:
        summary["lung_focus"] = {
            "mean": float(np.nanmean(focus)),
            "median": float(np.nanmedian(focus)),
            "box_mean": float(np.nanmean([r["box_focus"] for r in scored])),
            "lung_area": float(np.mean([r["lung_area"] for r in scored])),
            "label": scored[0]["focus_label"],
            "note": "share of the Grad-CAM mass inside the rule-based lungs; lung_area is "
            "the lungs' share of the input (what an even map would score); box_mean: the share "
            "inside the lung box (1 for a lung-box model, whose input is the box)",
        }
    return summary


def _write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = [k for k in rows[0] if k != "thresholds"]
    with atomic_open(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def train_cls(
    images: str | Path,
    out: str | Path,
    config: ClsConfig | None = None,
    labels_csv: str | Path | None = None,
    label_columns: Sequence[str] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train and evaluate a classifier; write ``out`` (see the module doc).

    Args:
        images: Folder of radiographs in any layout ``cxrssl data`` reads.
        out: Run folder.
        config: Recipe; None for the defaults.
        labels_csv: Labels table (file, patient and label columns); default: the folder's.
        label_columns: Labels to learn; default: every 0/1 column.
        resume: Continue every fold from its ``last.pt``.

    Returns:
        The summary also written to ``out/summary.json``.
    """
    config = config or ClsConfig()
    config = replace(config, crop=crop_from_init(config.init, config.crop))
    out = Path(out)
    dataset = open_labelled(images, labels_csv, label_columns)
    dataset, labels = select_labels(dataset, label_columns, config.multiclass)
    known = ~np.isnan(labels.values).all(1)
    if not known.all():
        log.warning("%d image(s) without any known label are left out", int((~known).sum()))
        dataset = dataset.subset(np.flatnonzero(known))
        labels = LabelSet(labels.names, labels.values[known], labels.multiclass)
    data = build_data(
        dataset, labels, config.size, config.cache_dir, config.mask_workers, config.progress
    )
    names = data.labels.names
    focus_label = int(np.argmax(np.nansum(data.labels.values, axis=0)))
    assignment = assign(data, config)
    n_folds = max(config.folds, 1)
    scored: list[dict[str, Any]] = []
    pictures: list[np.ndarray] = []
    folds: list[dict[str, Any]] = []
    for fold in range(n_folds):
        rows = fold_rows(data, assignment, fold, config)
        run_dir = out / f"fold_{fold}"
        run_dir.mkdir(parents=True, exist_ok=True)
        if distributed.is_main():
            _write_split(run_dir / "split.csv", data, rows)
        log.info(
            "fold %d/%d: %s",
            fold + 1,
            n_folds,
            ", ".join(f"{len(v)} {k}" for k, v in rows.items()),
        )
        train, val, test = (data.subset(rows[k]) for k in ("train", "val", "test"))
        fitted = fit_fold(train, val, config, run_dir, config.seed + fold, resume)
        logits, truth = _logits(fitted.net, fitted.task, cls_loader(test, 64, False), fitted.device)
        raw = probabilities(logits, labels.multiclass)
        probs = probabilities(apply_temperature(logits, fitted.temperature), labels.multiclass)
        test_files = test.files
        fold_rows_out = []
        for i in range(len(test)):
            row: dict[str, Any] = {
                "file": test_files[i],
                "patient_id": test.patient_ids[i],
                "fold": fold,
            }
            row |= {f"label_{n}": truth[i, c] for c, n in enumerate(names)}
            row |= {f"prob_{n}": float(probs[i, c]) for c, n in enumerate(names)}
            row |= {f"raw_{n}": float(raw[i, c]) for c, n in enumerate(names)}
            row["thresholds"] = fitted.thresholds
            fold_rows_out.append(row)
        if config.explain and len(test):
            focus = _focus(fitted.net, fitted.task, test, fitted.device)
            k = focus_label
            for i, row in enumerate(fold_rows_out):
                row |= {
                    "lung_focus": float(focus.lungs[i, k]),
                    "box_focus": float(focus.box[i, k]),
                    "lung_area": float(focus.lung_area[i]),
                    "focus_label": names[k],
                }
            pictures += focus.pictures
        folds.append(
            {
                "fold": fold,
                **{f"n_{k}": len(v) for k, v in rows.items()},
                "best_epoch": fitted.best_epoch,
                "temperature": fitted.temperature,
                "thresholds": dict(zip(names, fitted.thresholds, strict=True)),
                "auc": macro_auc(truth, probs),
            }
        )
        scored += fold_rows_out
    if not scored:
        raise DatasetError("no image was scored (no test patients)")
    summary = summarise(scored, names, folds, config, labels.multiclass, out)
    counts = {n: int(np.nansum(data.labels.values[:, c])) for c, n in enumerate(names)}
    summary |= {
        "labels": list(names),
        "multiclass": labels.multiclass,
        "data": {
            "images": len(data),
            "patients": len(set(data.patient_ids)),
            "positives": counts,
            "failed": len(data.pool.failures),
        },
        "folds": folds,
        "config": asdict(config),
    }
    if distributed.is_main():
        if pictures and config.explain:
            _focus_montage(scored, pictures, names, out / "lung_focus.png")
        _write_predictions(out / "predictions.csv", scored)
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float))
    distributed.barrier()
    return summary


# --------------------------------------------------------------------------- prediction


@dataclass
class ClsPredictor:
    """One classifier or a fold ensemble with what it was trained with."""

    models: list[nn.Module]
    temperatures: list[float]
    thresholds: np.ndarray
    names: tuple[str, ...]
    size: int
    crop: str
    multiclass: bool
    device: torch.device

    @classmethod
    def load(cls, run: str | Path, device: str = "auto") -> ClsPredictor:
        """From a ``best.pt`` file or a run folder (every ``fold_*/best.pt``: an ensemble;
        its probabilities are the folds' mean, its thresholds the folds' mean)."""
        path = Path(run)
        files = sorted(path.glob("fold_*/best.pt")) if path.is_dir() else [path]
        if not files:
            raise CxrsslError(f"{path}: no fold_*/best.pt in this run folder")
        dev = resolve_device(device)
        models: list[nn.Module] = []
        extras = []
        for file in files:
            ckpt = load_checkpoint(file, map_location=dev)
            extra = ckpt.get("extra") or {}
            spec = ckpt.get("model") or {}
            if extra.get("task") != "classify" or spec.get("name") != "classifier":
                raise CxrsslError(f"{file}: not a classification checkpoint (train-cls writes one)")
            net = Classifier(**spec["kwargs"])
            net.load_state_dict(ckpt["state_dict"])
            models.append(net.to(dev).eval())
            extras.append(extra)
        first = extras[0]
        for key in ("size", "crop", "labels", "multiclass"):
            if any(e.get(key) != first.get(key) for e in extras):
                raise CxrsslError(f"{path}: the folds differ in {key}")
        return cls(
            models,
            [float(e.get("temperature", 1.0)) for e in extras],
            np.mean([e["thresholds"] for e in extras], axis=0),
            tuple(first["labels"]),
            int(first["size"]),
            check_crop(str(first.get("crop", "none"))),
            bool(first.get("multiclass", False)),
            dev,
        )

    @property
    def task(self) -> ClassificationTask:
        """The task that prepares inputs as in training (crop, no augmentation)."""
        return ClassificationTask(self.multiclass, None, None, self.crop == "lung-box")

    def probs(self, data: ClsData) -> np.ndarray:
        """(N, C) calibrated probabilities, the mean over the ensemble."""
        total = np.zeros((len(data), len(self.names)))
        for net, t in zip(self.models, self.temperatures, strict=True):
            logits, _ = _logits(net, self.task, cls_loader(data, 64, False), self.device)
            total += probabilities(apply_temperature(logits, t), self.multiclass)
        return total / len(self.models)


def predict_cls(
    run: str | Path,
    images: str | Path,
    out_csv: str | Path,
    explain: str | Path | None = None,
    device: str = "auto",
    cache_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``out_csv`` (``file``, then one probability column per label) for every image
    of ``images``; with ``explain`` also a Grad-CAM PNG per image and label, ``lung_focus.csv``
    and ``lung_focus.png`` (most and least lung-focused) there.

    Returns:
        ``{"written": n, "failed": [(file, reason)], "lung_focus": mean share or None}``.
    """
    predictor = ClsPredictor.load(run, device)
    dataset = image_records(images)
    empty = LabelSet(predictor.names, np.full((len(dataset), len(predictor.names)), np.nan))
    data = build_data(dataset, empty, predictor.size, cache_dir, 1, progress, patients=False)
    probs = predictor.probs(data)
    with atomic_open(Path(out_csv), "w") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *predictor.names])
        for name, p in zip(data.files, probs, strict=True):
            writer.writerow([name, *(f"{v:.6f}" for v in p)])
    result: dict[str, Any] = {
        "written": len(data),
        "failed": list(data.pool.failures),
        "lung_focus": None,
    }
    if explain is not None:
        result["lung_focus"] = _explain(predictor, data, probs, Path(explain))
    return result


def _explain(predictor: ClsPredictor, data: ClsData, probs: np.ndarray, folder: Path) -> float:
    """Grad-CAM per image and label (mean over the ensemble), its lung focus, pictures."""
    task = predictor.task
    names = predictor.names
    each = [_focus(net, task, data, predictor.device) for net in predictor.models]
    pics_all = [f.pictures for f in each]
    cams = [np.mean([p[i][2:] for p in pics_all], axis=0) for i in range(len(data))]
    shares = np.mean([f.lungs for f in each], axis=0)
    in_box = np.mean([f.box for f in each], axis=0)
    areas = each[0].lung_area
    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(data.files):
        base = pics_all[0][i]
        for c, label in enumerate(names):
            text = f"{label} p {probs[i, c]:.2f} lungs {shares[i, c]:.0%}"
            picture = cam_picture(base[0], cams[i][c], base[1], text)
            stem = Path(name).stem
            write_bytes_atomic(folder / f"{stem}__{label}.png", png_bytes(picture))
            rows.append(
                {
                    "file": name,
                    "label": label,
                    "prob": float(probs[i, c]),
                    "lung_focus": float(shares[i, c]),
                    "box_focus": float(in_box[i, c]),
                    "lung_area": float(areas[i]),
                }
            )
    with atomic_open(folder / "lung_focus.csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    top = int(np.argmax(probs.mean(0)))
    tiles_rows = [
        {"lung_focus": float(shares[i, top]), "focus_label": names[top]} for i in range(len(data))
    ]
    pictures = [np.concatenate([pics_all[0][i][:2], cams[i]]) for i in range(len(data))]
    _focus_montage(tiles_rows, pictures, names, folder / "lung_focus.png")
    return float(np.nanmean(shares))
