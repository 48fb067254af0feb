"""``cxrssl train-seg``, ``cxrssl train-lesion`` and ``cxrssl predict``: supervised
segmentation, and lesions with an optional prior map (``predict`` also writes
``detections.csv`` for a lesion run)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cxrssl.errors import CxrsslError
from cxrssl.metrics import EMPTY_CONVENTIONS
from cxrssl.nets import ENCODERS, NETS
from cxrssl.tasks.seg_data import CROPS
from cxrssl.tasks.seg_task import POSTPROCESS
from cxrssl.tasks.segmentation import SegConfig, predict, train_seg
from cxrssl.train import distributed

_DEFAULT = SegConfig()


def register(sub: Any) -> None:
    """Add ``train-seg`` and ``predict`` to the ``cxrssl`` sub-parsers."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "train-seg",
        help="train a segmentation model with patient-level k-fold cross-validation",
        formatter_class=fmt,
    )
    p.add_argument("--images", type=Path, required=True, help="folder of radiographs")
    p.add_argument("--masks", type=Path, required=True, help="folder of 0/255 masks, same stems")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--model", default=_DEFAULT.model, choices=sorted(NETS), help="network")
    p.add_argument("--loss", default=_DEFAULT.loss, help="loss name (cxrssl.losses)")
    _add_loss_arg(p)
    p.add_argument("--size", type=int, default=_DEFAULT.size, help="letterboxed input side")
    p.add_argument(
        "--crop",
        choices=CROPS,
        default=None,
        help="crop each image and mask to its rule-based lung box (seed option 4) before "
        "letterboxing: 'lung-box'; the checkpoint carries it, so predict crops the same way and "
        "pastes masks back into the full image; metrics are always at the full size against the "
        "full mask. Default: the --init checkpoint's crop, else 'none'",
    )
    p.add_argument("--epochs", type=int, default=_DEFAULT.epochs, help="epochs per fold")
    p.add_argument("--batch-size", type=int, default=_DEFAULT.batch_size, help="batch size")
    p.add_argument("--lr", type=float, default=_DEFAULT.lr, help="peak learning rate")
    p.add_argument(
        "--folds",
        type=int,
        default=_DEFAULT.folds,
        help="patient folds (1: one model on every patient)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=_DEFAULT.val_fraction,
        help="share of each fold's training patients held out to choose the epoch and the "
        "threshold (0: last epoch, threshold 0.5)",
    )
    p.add_argument("--n-labelled", type=int, default=None, help="labelled images per fold")
    p.add_argument("--init", default=None, help="checkpoint to initialise from")
    p.add_argument(
        "--init-whole",
        action="store_true",
        help="load the whole model from --init, not the encoder",
    )
    p.add_argument(
        "--encoder-lr-mult", type=float, default=1.0, help="encoder learning-rate multiplier"
    )
    p.add_argument("--freeze-encoder", action="store_true", help="train the decoder only")
    p.add_argument("--dropout", type=float, default=0.0, help="bottleneck channel dropout")
    _add_input_args(p, _DEFAULT.postprocess)
    p.add_argument(
        "--target-sensitivity",
        type=float,
        default=None,
        help="tune the threshold for this sensitivity",
    )
    p.add_argument(
        "--empty",
        choices=sorted(EMPTY_CONVENTIONS),
        default=_DEFAULT.empty,
        help="empty-mask convention of the reported metrics: 'nan' leaves an image whose "
        "metric is undefined (0/0, e.g. no lesion and none predicted) out and counts it",
    )
    p.add_argument("--patience", type=int, default=0, help="early-stopping patience (0: off)")
    _add_run_args(p, _DEFAULT.seed, _DEFAULT.device, "seed of splits and training")
    p.set_defaults(func=run_train_seg)

    q = sub.add_parser(
        "predict",
        help="write 0/255 PNG masks at each image's original size (cropped as the model was "
        "trained)",
        formatter_class=fmt,
    )
    q.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        help="best.pt, or a run folder (fold ensemble)",
    )
    q.add_argument("images", type=Path, metavar="IMAGES_DIR", help="folder of radiographs")
    q.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="where the masks go")
    q.add_argument("--device", default="auto", help="auto, cpu, cuda")
    q.add_argument(
        "--priors",
        default=None,
        help="lesion runs: prior maps, a folder (maps by stem) or heatmap, pathology, lungs "
        "(none: the kind the run was trained with, when it can be generated)",
    )
    q.add_argument("--points", type=Path, default=None, help="lesion runs: points for a heatmap")
    q.add_argument(
        "--pixel-mm", type=float, default=None, help="lesion runs: pixel size (none: the run's)"
    )
    q.add_argument(
        "--prior-shift-mm", type=float, default=0.0, help="lesion runs: largest heatmap point shift"
    )
    q.add_argument("--seed", type=int, default=0, help="lesion runs: seed of the shifts")
    q.set_defaults(func=run_predict)
    _register_lesion(sub, fmt)


def _register_lesion(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    from cxrssl.tasks.lesion import DEFAULT_ENCODER, LesionConfig

    d = LesionConfig()
    p = sub.add_parser(
        "train-lesion",
        help="train a nodule/lesion model (prior-guided, seed 004) with patient-level k-fold "
        "cross-validation; writes masks, detections.csv and detection figures",
        formatter_class=fmt,
    )
    p.add_argument("--images", type=Path, required=True, help="folder of radiographs")
    truth = p.add_mutually_exclusive_group(required=True)
    truth.add_argument("--masks", type=Path, help="folder of 0/255 lesion masks, same stems")
    truth.add_argument(
        "--points",
        type=Path,
        help="nodule points CSV (file, x, y, diameter_mm or diameter_px): masks are grown from "
        "them into RUN/masks/, an image without a point is a negative",
    )
    p.add_argument("--pixel-mm", type=float, default=d.pixel_mm, help="pixel size of the images")
    p.add_argument(
        "--priors",
        default=None,
        help="prior map as a second input: a folder (maps by stem), heatmap (from the points), "
        "pathology or lungs; none: the network trains without its attention branch",
    )
    p.add_argument(
        "--prior-shift-mm",
        type=float,
        default=d.prior_shift_mm,
        help="displace each heatmap point by up to this much (uniform over the disc, seeded)",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--model", default=d.model, choices=sorted(NETS), help="network")
    p.add_argument(
        "--encoder",
        default=None,
        choices=sorted(ENCODERS),
        help=f"prior_guided's encoder (none: the --init checkpoint's, else {DEFAULT_ENCODER})",
    )
    p.add_argument("--loss", default=d.loss, help="loss name (cxrssl.losses)")
    _add_loss_arg(p)
    p.add_argument("--size", type=int, default=d.size, help="letterboxed input side")
    p.add_argument(
        "--crop", choices=CROPS, default=None, help="input crop (none: --init's, else 'none')"
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs per fold")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of all but the encoder")
    p.add_argument(
        "--encoder-lr",
        type=float,
        default=d.lr * d.encoder_lr_mult,
        help="learning rate of the encoder",
    )
    p.add_argument(
        "--freeze-stages",
        type=int,
        default=None,
        help="encoder stages frozen from the finest (none: all but the last two with --init, "
        "else 0)",
    )
    p.add_argument("--freeze-encoder", action="store_true", help="freeze the whole encoder")
    p.add_argument("--folds", type=int, default=d.folds, help="patient folds")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of each fold's training patients that chooses the epoch and threshold",
    )
    p.add_argument("--n-labelled", type=int, default=None, help="labelled images per fold")
    p.add_argument("--init", default=None, help="checkpoint to initialise the encoder from")
    _add_input_args(p, d.postprocess)
    p.add_argument(
        "--min-diameter-px",
        type=float,
        default=d.min_diameter_px,
        help="smallest detection kept",
    )
    p.add_argument(
        "--empty",
        choices=sorted(EMPTY_CONVENTIONS),
        default=d.empty,
        help="empty-mask convention of the reported metrics",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help=f"early-stopping patience (none: {d.patience} with validation patients, else 0)",
    )
    _add_run_args(p, d.seed, d.device, "seed of splits, priors and training")
    p.set_defaults(func=run_train_lesion)


_RECIPE = (
    "model", "loss", "size", "crop", "epochs", "batch_size", "lr", "folds", "val_fraction",
    "n_labelled", "init", "freeze_encoder", "patch", "postprocess", "tta", "empty", "seed",
    "device",
)  # fmt: skip


def _add_input_args(p: argparse.ArgumentParser, postprocess: str) -> None:
    """Flags of ``train-seg`` and ``train-lesion``: clean-up, TTA, augmentation, patches."""
    p.add_argument("--postprocess", default=postprocess, choices=POSTPROCESS, help="mask clean-up")
    p.add_argument("--tta", action="store_true", help="average with the flipped prediction")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument(
        "--patch",
        type=int,
        default=None,
        help="train on PATCH-px crops of the --size input, a third around foreground",
    )


def _add_run_args(p: argparse.ArgumentParser, seed: int, device: str, seed_help: str) -> None:
    """Flags of ``train-seg`` and ``train-lesion``: seed, device, resume, progress."""
    p.add_argument("--seed", type=int, default=seed, help=seed_help)
    p.add_argument("--device", default=device, help="auto, cpu, cuda")
    p.add_argument("--resume", action="store_true", help="continue a killed run from last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_loss_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--loss-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a numeric argument of the loss, repeatable (the loss ablation: "
        "--loss lesion --loss-arg weighted_bce_weight=0)",
    )


def _loss_kwargs(items: list[str]) -> dict[str, float]:
    """``["a=1", "b=0.5"]`` -> ``{"a": 1.0, "b": 0.5}``; a clear error for anything else."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise CxrsslError(f"--loss-arg takes NAME=NUMBER, got {item!r}") from None
    return out


def _recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The settings ``train-seg`` and ``train-lesion`` take from the same flags."""
    return {
        **{k: getattr(args, k) for k in _RECIPE},
        "loss_kwargs": _loss_kwargs(args.loss_arg),
        "augment": not args.no_augment,
        "progress": not args.no_progress,
    }


def run_train_seg(args: argparse.Namespace) -> int:
    """Train, then print the mean +- std over folds."""
    config = SegConfig(
        **_recipe(args),
        model_kwargs={"dropout": args.dropout} if args.dropout else {},
        init_encoder_only=not args.init_whole,
        encoder_lr_mult=args.encoder_lr_mult,
        target_sensitivity=args.target_sensitivity,
        patience=args.patience,
    )
    summary = train_seg(args.images, args.masks, args.out, config, resume=args.resume)
    _report(summary, args.out)
    return 0


def _report(summary: dict[str, Any], out: Path) -> None:
    """Print the mean +- std over folds and the per-image figures (rank 0 alone)."""
    if not distributed.is_main():  # under torchrun rank 0 alone reports
        return
    over_folds = summary.get("mean_std_over_folds", {})
    if over_folds:
        print(f"{'metric':<12} {'mean ± std over folds':>22}  {'per image [95% CI by patient]'}")
    for name, s in over_folds.items():
        pooled = summary["per_image"][name]
        ci = f"{pooled['mean']:.4f} [{pooled['ci_low']:.4f}, {pooled['ci_high']:.4f}]"
        print(f"{name:<12} {s['mean']:>13.4f} ± {s['std']:.4f}  {ci} n {pooled['n']}")
    if over_folds:
        print(summary["empty_convention"])
    found = summary.get("detection")
    if found:
        print(
            f"detection: {found['found']} of {found['n_truth']} nodules found (sensitivity "
            f"{found['sensitivity']:.4f}), precision {found['precision']:.4f}, "
            f"{found['fp_per_image']:.3f} false positives per image"
        )
    print(f"run folder: {out}")


def run_train_lesion(args: argparse.Namespace) -> int:
    """Train a lesion model, then print the figures over folds and the detections."""
    from cxrssl.tasks.lesion import LesionConfig, train_lesion

    if args.lr <= 0 or args.encoder_lr < 0:
        raise CxrsslError(f"learning rates must be positive, got {args.lr} and {args.encoder_lr}")
    default = LesionConfig()
    patience = args.patience
    if patience is None:
        patience = default.patience if args.val_fraction > 0 else 0
    if args.encoder and args.model != "prior_guided":
        raise CxrsslError(f"--encoder applies to --model prior_guided, not {args.model}")
    config = LesionConfig(
        **_recipe(args),
        model_kwargs={"encoder": args.encoder} if args.encoder else {},
        encoder_lr_mult=args.encoder_lr / args.lr,
        freeze_stages=args.freeze_stages,
        patience=patience,
        priors=args.priors,
        prior_shift_mm=args.prior_shift_mm,
        pixel_mm=args.pixel_mm,
        min_diameter_px=args.min_diameter_px,
    )
    summary = train_lesion(
        args.images, args.out, config, args.masks, args.points, resume=args.resume
    )
    _report(summary, args.out)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Predict a folder (masks, and detections.csv for a lesion run); exit 1 when some
    images could not be read."""
    from cxrssl.tasks.lesion import lesion_extra, predict_lesions

    lesion_options = {
        "--priors": args.priors,
        "--points": args.points,
        "--pixel-mm": args.pixel_mm,
    }
    if lesion_extra(args.checkpoint) is not None:
        written, failed, detections = predict_lesions(
            args.checkpoint,
            args.images,
            args.out_dir,
            args.priors,
            args.points,
            args.pixel_mm,
            args.prior_shift_mm,
            args.seed,
            args.device,
        )
    else:
        given = [k for k, v in lesion_options.items() if v is not None]
        if given:
            raise CxrsslError(f"{args.checkpoint}: {', '.join(given)} apply to lesion runs only")
        written, failed = predict(args.checkpoint, args.images, args.out_dir, device=args.device)
        detections = None
    for line in failed:
        print(f"failed: {line}")
    print(f"{len(written)} mask(s) written to {args.out_dir}")
    if detections is not None:
        print(f"detections: {detections}")
    return 1 if failed else 0
