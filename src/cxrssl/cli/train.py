"""``cxrssl train-seg`` and ``cxrssl predict``: supervised segmentation."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cxrssl.metrics import EMPTY_CONVENTIONS
from cxrssl.nets import NETS
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
    p.add_argument(
        "--postprocess", default=_DEFAULT.postprocess, choices=POSTPROCESS, help="mask clean-up"
    )
    p.add_argument("--tta", action="store_true", help="average with the flipped prediction")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
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
    p.add_argument("--seed", type=int, default=_DEFAULT.seed, help="seed of splits and training")
    p.add_argument("--device", default=_DEFAULT.device, help="auto, cpu, cuda")
    p.add_argument("--resume", action="store_true", help="continue a killed run from last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
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
    q.set_defaults(func=run_predict)


def run_train_seg(args: argparse.Namespace) -> int:
    """Train, then print the mean +- std over folds."""
    config = SegConfig(
        model=args.model,
        model_kwargs={"dropout": args.dropout} if args.dropout else {},
        loss=args.loss,
        size=args.size,
        crop=args.crop,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        folds=args.folds,
        val_fraction=args.val_fraction,
        n_labelled=args.n_labelled,
        init=args.init,
        init_encoder_only=not args.init_whole,
        encoder_lr_mult=args.encoder_lr_mult,
        freeze_encoder=args.freeze_encoder,
        augment=not args.no_augment,
        postprocess=args.postprocess,
        tta=args.tta,
        target_sensitivity=args.target_sensitivity,
        empty=args.empty,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    summary = train_seg(args.images, args.masks, args.out, config, resume=args.resume)
    if not distributed.is_main():  # under torchrun rank 0 alone reports
        return 0
    over_folds = summary.get("mean_std_over_folds", {})
    if over_folds:
        print(f"{'metric':<12} {'mean ± std over folds':>22}  {'per image [95% CI by patient]'}")
    for name, s in over_folds.items():
        pooled = summary["per_image"][name]
        ci = f"{pooled['mean']:.4f} [{pooled['ci_low']:.4f}, {pooled['ci_high']:.4f}]"
        print(f"{name:<12} {s['mean']:>13.4f} ± {s['std']:.4f}  {ci} n {pooled['n']}")
    if over_folds:
        print(summary["empty_convention"])
    print(f"run folder: {args.out}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Predict a folder; exit 1 when some images could not be read."""
    written, failed = predict(args.checkpoint, args.images, args.out_dir, device=args.device)
    for line in failed:
        print(f"failed: {line}")
    print(f"{len(written)} mask(s) written to {args.out_dir}")
    return 1 if failed else 0
