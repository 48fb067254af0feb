"""``cxrssl masks KIND IMAGES_DIR OUT_DIR``: rule-based lungs, regions, pathology maps, crops."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cxrssl.anatomy import METHODS
from cxrssl.anatomy.engine import KINDS, run_masks


def register(sub: Any) -> None:
    """Add ``masks`` to the ``cxrssl`` sub-parsers."""
    p = sub.add_parser(
        "masks",
        help="rule-based anatomy for a folder of radiographs (no learning, no labels)",
        description=(
            "lungs: one 0/255 PNG per image (same stem and size); regions: label PNGs 0..6 "
            "(1-3 right upper/middle/lower, 4-6 left); pathology: 0/255 candidate maps inside "
            "the lungs; crop: boxes.csv of lung boxes. Bad files go to OUT_DIR/failures.csv "
            "and the run goes on (exit code 1 when any failed)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("kind", choices=KINDS, help="what to compute")
    p.add_argument("images_dir", type=Path, metavar="IMAGES_DIR")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--method", default="default", choices=sorted(METHODS), help="lung method")
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.add_argument(
        "--overlays",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write contour overlay PNGs here",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute everything (default: reuse results cached by content hash "
        "in $CXRSSL_CACHE_DIR or ~/.cache/cxrssl)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the engine and print what it did."""
    s = run_masks(
        args.images_dir,
        args.out_dir,
        kind=args.kind,
        method=args.method,
        workers=args.workers,
        overlays_dir=args.overlays,
        use_cache=not args.no_cache,
    )
    rate = s.images / s.seconds if s.seconds > 0 else float("inf")
    print(
        f"{s.images} images in {s.seconds:.1f} s ({rate:.0f}/s): {s.written} computed, "
        f"{s.cached} from cache, {s.failed} failed, {s.flagged} flagged low quality, "
        f"{s.skipped} non-image files skipped"
    )
    print(f"output: {s.out_dir}")
    if s.failed:
        print(f"failures: {s.failures_csv}")
        for name, reason in s.failures[:10]:
            print(f"  {name}: {reason}")
    return 1 if s.failed else 0
