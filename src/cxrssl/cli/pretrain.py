"""``cxrssl pretrain``: self-supervised pre-training on unlabelled radiographs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cxrssl.errors import CxrsslError
from cxrssl.train import distributed

_METHODS_HELP = (
    "simclr, mask-weighted, mask-pooled, regional, pathology, lung-crop, attention, "
    "attention-lungs, medsass, or lung-crop+NAME"
)


def register(sub: Any) -> None:
    """Add ``pretrain`` to the ``cxrssl`` sub-parsers."""
    from cxrssl.tasks.pretraining import PretrainConfig

    d = PretrainConfig()
    p = sub.add_parser(
        "pretrain",
        help="self-supervised pre-training guided by the rule-based anatomy",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--method", default=d.method, help=_METHODS_HELP)
    p.add_argument(
        "--images",
        type=Path,
        nargs="+",
        required=True,
        metavar="DIR",
        help="folder(s) of unlabelled radiographs, in any layout `cxrssl data` reads",
    )
    p.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder")
    p.add_argument("--encoder", default=d.encoder, help="unet, resnet18, resnet50, densenet121")
    p.add_argument("--size", type=int, default=d.size, help="side of the letterboxed views")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the pool")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--temperature", type=float, default=d.temperature, help="NT-Xent t")
    p.add_argument(
        "--mask-source",
        default=d.mask_source,
        help="lung masks of the pool: rules, otsu, or a folder of 0/255 masks by stem",
    )
    p.add_argument(
        "--method-options",
        default="{}",
        help="JSON of the method's own settings, e.g. '{\"mask_weight\": 0.3}'",
    )
    p.add_argument(
        "--exclude-split",
        type=Path,
        default=None,
        help="split CSV (cxrssl data split): refuse a pool holding its test patients",
    )
    p.add_argument(
        "--exclude-images",
        type=Path,
        default=None,
        help="folder of test images: refuse a pool holding any of them (compared by content)",
    )
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers")
    p.add_argument(
        "--mask-workers", type=int, default=d.mask_workers, help="processes for missing maps"
    )
    p.add_argument("--cache-dir", default=None, help="pool cache folder")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of everything random")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda")
    p.add_argument("--resume", action="store_true", help="continue a killed run from last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _test_patients(split: Path | None) -> list[str]:
    if split is None:
        return []
    from cxrssl.data.splits import read_split_csv

    table = read_split_csv(split)
    side = table.assignment.astype(str)
    return sorted({p for p, s in zip(table.patient_ids, side, strict=True) if p and s == "test"})


def _test_images(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    from cxrssl.io import is_image_file

    if not folder.is_dir():
        raise CxrsslError(f"{folder}: --exclude-images folder not found")
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def run(args: argparse.Namespace) -> int:
    """Pre-train and print where the checkpoint is."""
    from cxrssl.tasks.pretraining import PretrainConfig, pretrain

    try:
        options = json.loads(args.method_options)
    except ValueError as err:
        raise CxrsslError(f"--method-options is not JSON ({err})") from None
    if not isinstance(options, dict):
        raise CxrsslError("--method-options must be a JSON object")
    config = PretrainConfig(
        method=args.method,
        method_kwargs=options,
        encoder=args.encoder,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        mask_source=args.mask_source,
        workers=args.workers,
        mask_workers=args.mask_workers,
        cache_dir=args.cache_dir,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    result = pretrain(
        args.images,
        args.out,
        config,
        exclude_patients=_test_patients(args.exclude_split),
        exclude_files=_test_images(args.exclude_images),
        resume=args.resume,
    )
    if not distributed.is_main():  # under torchrun rank 0 alone reports
        return 1 if result.failures else 0
    last = result.fit.history[-1] if result.fit.history else {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k.startswith("val_"))
    print(
        f"pool {result.pool_images} images ({result.holdout_images} held out, "
        f"{len(result.failures)} failed); last epoch: {shown}"
    )
    print(f"checkpoint: {result.run_dir / 'best.pt'}  (train-seg --init)")
    return 1 if result.failures else 0
