"""``cxrssl evaluate-detections DETECTIONS.csv TRUTH.csv``: FROC of nodule detections."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

from cxrssl.data.datasets import DatasetWarning, index_files
from cxrssl.errors import DatasetError
from cxrssl.files import write_text_atomic
from cxrssl.lesions.froc import (
    CONTRAST_GROUPS,
    FP_RATES,
    SIZE_GROUPS,
    SUBTLETY_GROUPS,
    Froc,
    by_group,
    contrast_group,
    froc,
    plot_froc,
    size_group,
    subtlety_group,
)
from cxrssl.lesions.points import PIXEL_MM, read_points


def register(sub: Any) -> None:
    """Add ``evaluate-detections`` to the ``cxrssl`` sub-parsers."""
    p = sub.add_parser(
        "evaluate-detections",
        help="FROC of nodule detections against truth points (sensitivity at FPs per image)",
        description=(
            "A detection hits a nodule when its centre lies within the nodule's radius; each "
            "nodule counts once (its highest-scoring hit), further hits on it are neither true "
            "nor false positives (LUNA16); other detections are false positives. Breakdowns by "
            "size, subtlety (JSRT) and contrast (cxrssl simulate-nodules) keep the false "
            "positives of all images."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("detections", type=Path, metavar="DETECTIONS.csv", help="with a score")
    p.add_argument("truth", type=Path, metavar="TRUTH_POINTS.csv", help="nodule points")
    count = p.add_mutually_exclusive_group()
    count.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="DIR",
        help="the images the detector ran on (their number is the 'per image' denominator; "
        "truth on other images is left out)",
    )
    count.add_argument("--n-images", type=int, default=None, metavar="N", help="that number")
    p.add_argument("--pixel-mm", type=float, default=PIXEL_MM, help="pixel size for mm columns")
    p.add_argument(
        "--rates", type=float, nargs="+", default=list(FP_RATES), help="FPs per image to report"
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (0: no CI)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--plot", type=Path, default=None, metavar="FROC.png", help="write the curve")
    p.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write results")
    p.set_defaults(func=run)


def _row(name: str, r: Froc) -> str:
    cells = " ".join(f"{s:>6.3f}" for s in r.sensitivity)
    return f"{name:<18} {cells} {r.cpm:>6.3f} {r.n_nodules:>5}"


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the table; write the plot and JSON when asked."""
    detections = read_points(args.detections, args.pixel_mm)
    truth = read_points(args.truth, args.pixel_mm)
    unscored = [d for d in detections if d.score is None]
    if unscored:
        d = unscored[0]
        raise DatasetError(
            f"{args.detections}: {len(unscored)} detections without a score, e.g. {d.file} at "
            f"({d.x:g}, {d.y:g}); FROC needs a score column (1 for binary detections)"
        )
    if args.images is not None:
        stems = set(index_files(args.images))
        outside = sorted({d.stem for d in detections} - stems)
        if outside:
            raise DatasetError(
                f"{args.detections}: {len(outside)} image(s) not in {args.images}, e.g. "
                f"{', '.join(outside[:5])}"
            )
        left_out = [p for p in truth if p.stem not in stems]
        if left_out:
            print(f"{len(left_out)} truth nodules on images outside {args.images} left out")
        truth = [p for p in truth if p.stem in stems]
        n_images = len(stems)
    elif args.n_images is not None:
        n_images = args.n_images
    else:
        n_images = len({p.stem for p in detections} | {p.stem for p in truth})
        warnings.warn(
            f"counting the {n_images} images named in {args.detections} or {args.truth}; "
            "images without any row are not counted (give --images or --n-images)",
            DatasetWarning,
            stacklevel=1,
        )
    options = {"fps_per_image": args.rates, "n_boot": args.n_boot, "seed": args.seed}
    overall = froc(detections, truth, n_images, **options)
    sizes = by_group(
        detections, truth, n_images, size_group(args.pixel_mm), order=SIZE_GROUPS, **options
    )
    subtlety = by_group(
        detections, truth, n_images, subtlety_group, order=SUBTLETY_GROUPS, **options
    )
    contrast = by_group(
        detections, truth, n_images, contrast_group, order=CONTRAST_GROUPS, **options
    )
    print(
        f"{overall.n_images} images, {overall.n_nodules} nodules ({overall.n_found} ever hit), "
        f"{overall.n_detections} detections: {overall.n_false_positives} false positives, "
        f"{overall.n_duplicates} duplicate hits ignored"
    )
    print(f"{'FPs/image':>9} {'sensitivity':>11} {'95% CI':>16} {'threshold':>9}")
    for rate, s, lo, hi, t in zip(
        overall.rates,
        overall.sensitivity,
        overall.ci_low,
        overall.ci_high,
        overall.thresholds,
        strict=True,
    ):
        band = f"[{lo:.3f}, {hi:.3f}]" if args.n_boot else "-"
        print(f"{rate:>9g} {s:>11.3f} {band:>16} {t:>9.4g}")
    head = " ".join(f"{r:>6g}" for r in overall.rates)
    for title, groups in (("size", sizes), ("subtlety", subtlety), ("contrast", contrast)):
        if groups:
            print(f"\nby {title} (FPs over all images)\n{'':<18} {head} {'CPM':>6} {'n':>5}")
            for name, r in groups.items():
                print(_row(name, r))
    ci = f" [{overall.cpm_low:.3f}, {overall.cpm_high:.3f}]" if args.n_boot else ""
    print(
        f"\nCPM (mean sensitivity at {', '.join(f'{r:g}' for r in overall.rates)}): "
        f"{overall.cpm:.3f}{ci}"
    )
    if args.n_boot:
        print(f"95% CI: percentile bootstrap over images ({args.n_boot} resamples)")
    if args.plot:
        plot_froc(overall, args.plot, sizes)
        print(f"plot: {args.plot}")
    if args.json:
        payload = {
            "detections": str(args.detections),
            "truth": str(args.truth),
            "pixel_mm": args.pixel_mm,
            "overall": overall.as_dict(),
            "by_size": {k: v.as_dict() for k, v in sizes.items()},
            "by_subtlety": {k: v.as_dict() for k, v in subtlety.items()},
            "by_contrast": {k: v.as_dict() for k, v in contrast.items()},
        }
        write_text_atomic(args.json, json.dumps(payload, indent=2))
        print(f"results: {args.json}")
    return 0
