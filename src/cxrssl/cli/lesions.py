"""``cxrssl grow-masks`` and ``cxrssl simulate-nodules``: nodule masks from points, and
simulated nodules with exact truth on real radiographs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cxrssl.lesions.points import PIXEL_MM


def register(sub: Any) -> None:
    """Add ``grow-masks`` and ``simulate-nodules`` to the ``cxrssl`` sub-parsers."""
    g = sub.add_parser(
        "grow-masks",
        help="nodule masks grown from centre points and diameters",
        description=(
            "One 0/255 mask PNG per image of IMAGES_DIR (same stem and size; empty without a "
            "nodule) and OUT_DIR/grown.csv (file, x, y, diameter_px, method, area_px, reason). "
            "A nodule whose region cannot be grown plausibly gets a disc of its diameter. "
            "Points naming no image of the folder are left out with a warning."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g.add_argument("images_dir", type=Path, metavar="IMAGES_DIR")
    g.add_argument("points", type=Path, metavar="POINTS.csv", help="filename, x, y, diameter")
    g.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    g.add_argument("--pixel-mm", type=float, default=PIXEL_MM, help="for a diameter_mm column")
    g.set_defaults(func=run_grow)

    s = sub.add_parser(
        "simulate-nodules",
        help="simulated nodules with exact masks on real radiographs",
        description=(
            "Insert nodules (projected spheres and ellipsoids, 5-30 mm, soft edges) inside "
            "the lungs of each film with a lung mask (matched by stem) and write OUT_DIR/"
            "images, masks (exact), priors (the nodules blurred and shifted, as a follow-up "
            "view) and points.csv."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("images_dir", type=Path, metavar="IMAGES_DIR")
    s.add_argument("lungs_dir", type=Path, metavar="LUNG_MASKS_DIR")
    s.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    s.add_argument("--per-image", type=int, default=1, help="nodules per film")
    s.add_argument("--negatives", type=float, default=0.0, help="share of films left without")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--pixel-mm", type=float, default=PIXEL_MM, help="pixel size of the films")
    s.add_argument("--prior-shift-mm", type=float, default=0.0, help="largest prior displacement")
    s.add_argument("--prior-blur-mm", type=float, default=2.0, help="prior blur (sigma)")
    s.set_defaults(func=run_simulate)


def run_grow(args: argparse.Namespace) -> int:
    """Grow the masks and print what was done."""
    from cxrssl.lesions.grow import grow_masks

    s = grow_masks(args.images_dir, args.points, args.out_dir, pixel_mm=args.pixel_mm)
    print(
        f"{s.images} images ({s.negatives} without a nodule), {s.nodules} nodules: "
        f"{s.grown} grown, {s.discs} discs; output: {s.out_dir}"
    )
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    """Simulate the nodules and print what was done."""
    from cxrssl.lesions.simulate import simulate_nodules

    s = simulate_nodules(
        args.images_dir,
        args.lungs_dir,
        args.out_dir,
        per_image=args.per_image,
        seed=args.seed,
        pixel_mm=args.pixel_mm,
        prior_shift_mm=args.prior_shift_mm,
        prior_blur_mm=args.prior_blur_mm,
        negatives=args.negatives,
    )
    sites = ", ".join(f"{k} {v}" for k, v in sorted(s.sites.items()))
    print(
        f"{s.images} films, {s.nodules} nodules ({sites or 'none'}), {s.negatives} films "
        f"without, {len(s.skipped)} skipped (no lung mask); output: {s.out_dir}"
    )
    return 0
