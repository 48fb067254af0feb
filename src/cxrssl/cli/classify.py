"""``cxrssl train-cls`` and ``cxrssl predict-cls``: disease classification."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cxrssl.nets.encoders import ENCODERS
from cxrssl.tasks.classification import SPLITS, ClsConfig, predict_cls, train_cls
from cxrssl.tasks.seg_data import CROPS
from cxrssl.train import distributed

_DEFAULT = ClsConfig()


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def register(sub: Any) -> None:
    """Add ``train-cls`` and ``predict-cls`` to the ``cxrssl`` sub-parsers."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "train-cls",
        help="train a binary, multi-label or multi-class classifier; per-label AUC with CIs "
        "over patients",
        formatter_class=fmt,
    )
    p.add_argument(
        "--images",
        type=Path,
        required=True,
        help="folder of radiographs (any layout `cxrssl data` reads: images/ + labels.csv, "
        "NIH, ieee8023, plain files)",
    )
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="labels CSV (a file column, optionally a patient column, 1/0 label columns; "
        "empty or -1 is unknown); default: the folder's own labels",
    )
    p.add_argument(
        "--label-columns",
        type=_columns,
        default=None,
        help="comma-separated label columns (default: every 0/1 column)",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--model", default=_DEFAULT.model, choices=sorted(ENCODERS), help="encoder")
    p.add_argument("--init", default=None, help="checkpoint whose encoder initialises the model")
    p.add_argument(
        "--linear-probe", action="store_true", help="freeze the encoder; train the linear layer"
    )
    p.add_argument(
        "--encoder-lr-mult",
        type=float,
        default=None,
        help="encoder learning-rate multiplier (default 0.1 with --init, else 1)",
    )
    p.add_argument(
        "--crop",
        choices=CROPS,
        default=None,
        help="'lung-box': crop every image to its rule-based lung box (seed option 4), the "
        "same in training and prediction; default: the --init checkpoint's crop, else 'none'",
    )
    p.add_argument("--multiclass", action="store_true", help="one class per image (softmax)")
    p.add_argument(
        "--label-fraction",
        type=float,
        default=_DEFAULT.label_fraction,
        help="share of the training patients whose labels are used (stratified, seeded)",
    )
    p.add_argument("--folds", type=int, default=_DEFAULT.folds, help="patient folds (1: one split)")
    p.add_argument(
        "--split",
        choices=SPLITS,
        default=_DEFAULT.split,
        help="one split: NIH's official lists, a random patient split, or official when present",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=_DEFAULT.val_fraction,
        help="share of the non-scored patients that chooses epoch, temperature, thresholds",
    )
    p.add_argument(
        "--test-fraction", type=float, default=_DEFAULT.test_fraction, help="share scored"
    )
    p.add_argument("--size", type=int, default=_DEFAULT.size, help="letterboxed input side")
    p.add_argument("--epochs", type=int, default=_DEFAULT.epochs, help="epochs per fold")
    p.add_argument(
        "--epoch-steps",
        type=int,
        default=None,
        help="batches per epoch (default: one pass over the training images, at least 10)",
    )
    p.add_argument("--batch-size", type=int, default=_DEFAULT.batch_size, help="batch size")
    p.add_argument("--lr", type=float, default=_DEFAULT.lr, help="peak learning rate")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout before the linear layer")
    p.add_argument(
        "--target-sensitivity",
        type=float,
        default=None,
        help="thresholds for this validation sensitivity (default: Youden's J)",
    )
    p.add_argument("--no-pos-weight", action="store_true", help="no up-weighting of rare labels")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--no-explain", action="store_true", help="skip the Grad-CAM lung focus")
    p.add_argument("--patience", type=int, default=0, help="early-stopping patience (0: off)")
    p.add_argument("--workers", type=int, default=0, help="loader worker processes")
    p.add_argument("--mask-workers", type=int, default=1, help="processes computing the pool")
    p.add_argument(
        "--seed", type=int, default=_DEFAULT.seed, help="seed of the label draw and training"
    )
    p.add_argument(
        "--split-seed", type=int, default=None, help="seed of the patient split (default: --seed)"
    )
    p.add_argument("--device", default=_DEFAULT.device, help="auto, cpu, cuda")
    p.add_argument("--resume", action="store_true", help="continue a killed run from last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train_cls)

    q = sub.add_parser(
        "predict-cls",
        help="write one probability column per label for every image of a folder",
        formatter_class=fmt,
    )
    q.add_argument("run", type=Path, metavar="RUN", help="train-cls run folder, or a best.pt")
    q.add_argument("images", type=Path, metavar="IMAGES_DIR", help="folder of radiographs")
    q.add_argument("out_csv", type=Path, metavar="OUT.csv", help="the probabilities")
    q.add_argument(
        "--explain",
        type=Path,
        default=None,
        metavar="DIR",
        help="write Grad-CAM maps per image and label, and their share inside the lungs",
    )
    q.add_argument("--device", default="auto", help="auto, cpu, cuda")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.set_defaults(func=run_predict_cls)


def run_train_cls(args: argparse.Namespace) -> int:
    """Train, then print each label's AUC with its CI."""
    config = ClsConfig(
        model=args.model,
        size=args.size,
        crop=args.crop,
        epochs=args.epochs,
        epoch_steps=args.epoch_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        encoder_lr_mult=args.encoder_lr_mult,
        linear_probe=args.linear_probe,
        dropout=args.dropout,
        label_fraction=args.label_fraction,
        folds=args.folds,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        split=args.split,
        init=args.init,
        multiclass=args.multiclass,
        pos_weight=not args.no_pos_weight,
        augment=not args.no_augment,
        patience=args.patience,
        target_sensitivity=args.target_sensitivity,
        explain=not args.no_explain,
        workers=args.workers,
        mask_workers=args.mask_workers,
        seed=args.seed,
        split_seed=args.split_seed,
        device=args.device,
        progress=not args.no_progress,
    )
    summary = train_cls(
        args.images, args.out, config, args.labels, args.label_columns, resume=args.resume
    )
    if not distributed.is_main():  # under torchrun rank 0 alone reports
        return 0
    print(
        f"{'label':<20} {'ROC AUC [95% CI by patient]':>30} {'PR AUC':>8} {'sens':>6} {'spec':>6}"
    )
    for name, s in summary["per_label"].items():
        ci = f"{s['auc']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
        print(
            f"{name:<20} {ci:>30} {s['pr_auc']:>8.3f} {s['sensitivity']:>6.3f} "
            f"{s['specificity']:>6.3f}  (pos {s['n_pos']}, neg {s['n_neg']})"
        )
    folds = summary["auc_over_folds"]
    print(
        f"mean AUC {summary['mean_auc']:.4f}; over folds {folds['mean']:.4f} ± {folds['std']:.4f}"
        f" ({folds['n_folds']} fold(s)); {summary['n_scored']} images of "
        f"{summary['n_patients_scored']} patients scored"
    )
    cal = summary["calibration"]
    print(f"ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f} after temperature scaling")
    if "lung_focus" in summary:
        f = summary["lung_focus"]
        print(
            f"lung focus ({f['label']}): {f['mean']:.1%} of the Grad-CAM mass inside the lungs "
            f"(lungs cover {f['lung_area']:.1%} of the input)"
        )
    print(f"run folder: {args.out}")
    return 0


def run_predict_cls(args: argparse.Namespace) -> int:
    """Predict a folder; exit 1 when some images could not be used."""
    result = predict_cls(
        args.run,
        args.images,
        args.out_csv,
        explain=args.explain,
        device=args.device,
        progress=not args.no_progress,
    )
    for name, reason in result["failed"]:
        print(f"failed: {name}: {reason}")
    print(f"{result['written']} image(s) written to {args.out_csv}")
    if result["lung_focus"] is not None:
        print(f"mean lung focus {result['lung_focus']:.1%}; maps in {args.explain}")
    return 1 if result["failed"] else 0
