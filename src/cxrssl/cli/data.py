"""``cxrssl data info|split``: what a data set folder holds, and its patient-level split."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from cxrssl.data import adapters, check_no_leak, kfold, make_split, write_split_csv
from cxrssl.data.datasets import FolderDataset


def register(sub: Any) -> None:
    """Add ``data info`` and ``data split`` to the ``cxrssl`` sub-parsers."""
    p = sub.add_parser("data", help="inspect a data set folder and make patient-level splits")
    verbs = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("root", type=Path, metavar="DIR", help="the data set folder")
        q.add_argument(
            "--layout", default="folder", choices=sorted(adapters.LOADERS), help="the folder layout"
        )
        q.add_argument(
            "--metadata-only",
            action="store_true",
            help="NIH: keep table rows whose image file is absent",
        )

    info = verbs.add_parser(
        "info", help="images, patients, masks and label counts", formatter_class=fmt
    )
    common(info)
    info.set_defaults(func=run_info)
    split = verbs.add_parser("split", help="write a patient-level split CSV", formatter_class=fmt)
    common(split)
    split.add_argument("--out", type=Path, required=True, help="split CSV to write")
    split.add_argument("--folds", type=int, default=0, help="k-fold CV instead of train/val/test")
    split.add_argument("--val", type=float, default=0.1, help="fraction of patients for val")
    split.add_argument("--test", type=float, default=0.2, help="fraction of patients for test")
    split.add_argument("--seed", type=int, default=0, help="random seed")
    split.set_defaults(func=run_split)


def _load(args: argparse.Namespace) -> FolderDataset:
    options = {"require_images": False} if args.metadata_only else {}
    return adapters.load(args.layout, args.root, **options)


def run_info(args: argparse.Namespace) -> int:
    """Print what the folder holds."""
    ds = _load(args)
    patients = {p for p in ds.patient_ids() if p}
    print(f"{ds.name or args.root}: {len(ds)} images, {len(patients)} patients")
    for name in ds.mask_names:
        n = sum(name in r.masks for r in ds.records)
        print(f"  masks {name}: {n} of {len(ds)} images")
    counts = adapters.nih.finding_counts(ds) if args.layout == "nih" else ds.label_counts()
    for label, count in counts.items():
        print(f"  {label:<20} {count:>8,}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    """Split by patient (stratified where labels exist), check for leaks and write the CSV."""
    ds = _load(args)
    ids = ds.patient_ids()
    labels = ds.labels() if ds.label_names else None
    assignment: np.ndarray
    if args.folds:
        assignment = kfold(ids, k=args.folds, labels=labels, seed=args.seed)
    else:
        assignment = make_split(ids, labels, val=args.val, test=args.test, seed=args.seed)
    check_no_leak(ids, assignment, files=ds.files())
    write_split_csv(args.out, ds.files(), ids, assignment)
    for side in np.unique(assignment):
        on_side = assignment == side
        n_pat = len({p for p, s in zip(ids, on_side, strict=True) if s})
        print(f"  {side!s:<6} {int(on_side.sum()):>8,} images {n_pat:>8,} patients")
    print(f"patients on two sides: 0; split written to {args.out}")
    return 0
