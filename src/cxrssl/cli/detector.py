"""``cxrssl train-detector`` and ``cxrssl detect-nodules``: the classical nodule detector
(rule-based candidates scored by a linear classifier)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from cxrssl.lesions.candidates import N_CANDIDATES
from cxrssl.lesions.froc import FP_RATES
from cxrssl.lesions.points import PIXEL_MM
from cxrssl.lesions.priors import SEARCH_MM

LUNGS_HELP = "lung masks by stem to search in (default: the rule-based lungs)"
PRIORS_HELP = (
    "a prior of where the nodules are: a folder of maps by stem, or heatmap (drawn from "
    "--points); candidates are searched near it and the best one at each place is grown "
    "into a mask"
)
SHIFT_HELP = "largest displacement of each heatmap point (mm), seeded by --seed"


def register(sub: Any) -> None:
    """Add ``train-detector`` and ``detect-nodules`` to the ``cxrssl`` sub-parsers."""
    p = sub.add_parser(
        "train-detector",
        help="train the classical nodule detector (candidates + classifier), patient k-fold CV",
        description=(
            "Bright blobs of nodule size inside the rule-based lungs are the candidates; a "
            "logistic regression over their features (blob response, Hessian, contrast, "
            "gradient convergence, position) learns from the nodule points which are nodules. "
            "Writes RUN/detector.json, RUN/detections.csv (out-of-fold scores for "
            "cxrssl evaluate-detections), RUN/folds.csv and RUN/summary.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="radiographs")
    p.add_argument("--points", type=Path, required=True, metavar="CSV", help="nodule points")
    p.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder")
    p.add_argument("--folds", type=int, default=5, help="patient-level folds (0: no CV)")
    p.add_argument("--pixel-mm", type=float, default=PIXEL_MM, help="pixel size of the images")
    p.add_argument("--candidates", type=int, default=N_CANDIDATES, help="candidates per image")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds")
    p.add_argument("--workers", type=int, default=2, help="processes finding candidates")
    p.add_argument("--lungs", type=Path, default=None, metavar="DIR", help=LUNGS_HELP)
    p.add_argument("--priors", default=None, metavar="DIR|heatmap", help=PRIORS_HELP)
    p.add_argument("--prior-shift-mm", type=float, default=0.0, help=SHIFT_HELP)
    p.add_argument(
        "--search-mm",
        type=float,
        default=SEARCH_MM,
        help="with --priors: search this far from where the prior marks (its expected error)",
    )
    p.add_argument(
        "--masks",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --priors: truth masks by stem to score the masks against (default: grown "
        "from --points)",
    )
    p.set_defaults(func=run_train)

    q = sub.add_parser(
        "detect-nodules",
        help="run a trained nodule detector on a folder: OUT_DIR/detections.csv",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    q.add_argument("detector", type=Path, metavar="RUN", help="run folder or its detector.json")
    q.add_argument("images", type=Path, metavar="IMAGES", help="radiographs")
    q.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="where detections.csv goes")
    q.add_argument(
        "--pixel-mm", type=float, default=None, help="pixel size (default: the training one)"
    )
    q.add_argument(
        "--fp-per-image",
        type=float,
        default=None,
        choices=list(FP_RATES),
        help="keep the detections above the cross-validated threshold of this operating "
        "point (default: every candidate, scored)",
    )
    q.add_argument("--workers", type=int, default=2, help="processes finding candidates")
    q.add_argument("--lungs", type=Path, default=None, metavar="DIR", help=LUNGS_HELP)
    q.add_argument(
        "--priors",
        default=None,
        metavar="DIR|heatmap",
        help="the prior, for a detector trained with one: writes OUT_DIR/masks too, the best "
        "candidate at each place the prior marks, whatever --fp-per-image",
    )
    q.add_argument("--points", type=Path, default=None, metavar="CSV", help="heatmap points")
    q.add_argument("--prior-shift-mm", type=float, default=0.0, help=SHIFT_HELP)
    q.add_argument("--seed", type=int, default=0, help="seed of the heatmap's displacements")
    q.set_defaults(func=run_detect)


def run_train(args: argparse.Namespace) -> int:
    """Train; print the out-of-fold FROC."""
    from cxrssl.tasks.nodule_detection import train_detector

    s = train_detector(
        args.images,
        args.points,
        args.out,
        args.folds,
        args.pixel_mm,
        args.candidates,
        args.seed,
        args.workers,
        command=shlex.join(["cxrssl", *args.argv]),
        lungs=args.lungs,
        priors=args.priors,
        prior_shift_mm=args.prior_shift_mm,
        search_mm=args.search_mm,
        masks=args.masks,
    )
    print(
        f"{s['images']} images, {s['nodules']} nodules, {s['nodules_hit_by_a_candidate']} "
        f"hit by one of {s['candidates_per_image']} candidates per image"
    )
    if "froc" in s:
        f = s["froc"]
        cells = "  ".join(
            f"{r:g}: {v:.3f}" for r, v in zip(f["rates"], f["sensitivity"], strict=True)
        )
        print(f"out-of-fold sensitivity at FPs/image  {cells}  CPM {f['cpm']:.3f}")
    if "segmentation" in s:
        g = s["segmentation"]
        cells = "  ".join(
            f"{k} {g[k]['mean']:.3f} +- {g[k]['std']:.3f}"
            for k in ("dice", "precision", "sensitivity")
        )
        print(f"out-of-fold masks ({g['images_with_nodules']} films with a nodule): {cells}")
    print(f"detector: {args.out / 'detector.json'}")
    return 1 if s["failed"] else 0


def run_detect(args: argparse.Namespace) -> int:
    """Detect; exit 1 when some images could not be read."""
    from cxrssl.tasks.nodule_detection import detect_nodules

    path, n, failed = detect_nodules(
        args.detector,
        args.images,
        args.out_dir,
        args.pixel_mm,
        args.fp_per_image,
        args.workers,
        args.lungs,
        args.priors,
        args.points,
        args.prior_shift_mm,
        args.seed,
    )
    for name, why in failed:
        print(f"failed: {name}: {why}")
    print(f"{n} detection(s) written to {path}")
    return 1 if failed else 0
