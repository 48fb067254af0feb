"""``cxrssl drr VOLUME OUT.png`` and ``cxrssl ct-stacks VOLUME POINTS.csv OUT_DIR``: CT inputs."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cxrssl.errors import CxrsslError
from cxrssl.files import atomic_open, write_bytes_atomic


def register(sub: Any) -> None:
    """Add ``drr`` and ``ct-stacks`` to the ``cxrssl`` sub-parsers."""
    p = sub.add_parser(
        "drr",
        help="project a CT volume into a radiograph-like image (DRR)",
        description=(
            "VOLUME: a .nii/.nii.gz file or a DICOM series folder (HU). OUT.png: a 16-bit PNG, "
            "dense bright, head at the top, the patient's left on the image right."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("volume", type=Path, metavar="VOLUME")
    p.add_argument("out", type=Path, metavar="OUT.png")
    p.add_argument(
        "--pixel-mm",
        type=float,
        default=None,
        help="pixel size in mm at the patient (default: the CT's x spacing, or fitted to --size)",
    )
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="output size; the CT's field of view is centred in it (default: the field)",
    )
    p.set_defaults(func=run_drr)
    q = sub.add_parser(
        "ct-stacks",
        help="2.5D slice stacks and nodule masks grown from CT centre points",
        description=(
            "POINTS.csv: file, x, y, z (voxel indices in the standard orientation: z from the "
            "top slice, y front to back, x patient right to left) and diameter_px or "
            "diameter_mm. Writes NAME_zZZZZ.npy (k x Y x X float32, windowed to [0, 1]), "
            "NAME_zZZZZ_mask.png and slices.csv, for the slices holding a nodule (or all), "
            "and nodules.csv: how each mask was made (grown, or a ball of the diameter)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    q.add_argument("volume", type=Path, metavar="VOLUME")
    q.add_argument("points", type=Path, metavar="POINTS.csv")
    q.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    q.add_argument("--k", type=int, default=3, help="slices per stack (odd)")
    q.add_argument("--level", type=float, default=-600.0, help="HU window level")
    q.add_argument("--width", type=float, default=1500.0, help="HU window width")
    q.add_argument("--all", action="store_true", help="write every slice, not only nodules")
    q.set_defaults(func=run_stacks)


def volume_name(path: Path) -> str:
    """A volume's name: the file name without ``.nii``/``.nii.gz``, or the folder name."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def run_drr(args: argparse.Namespace) -> int:
    """Write the DRR of one volume."""
    from cxrssl.lesions.drr import drr
    from cxrssl.lesions.volume import read_volume

    if args.out.suffix.lower() != ".png":
        raise CxrsslError(f"{args.out}: the DRR is written as PNG; use a .png file name")
    volume = read_volume(args.volume)
    image = drr(volume, args.pixel_mm, tuple(args.size) if args.size else None)
    ok, buf = cv2.imencode(".png", np.rint(image * 65535).astype(np.uint16))
    if not ok:
        raise CxrsslError(f"{args.out}: OpenCV could not encode the DRR")
    write_bytes_atomic(args.out, buf.tobytes())
    print(f"{volume!r} -> {args.out} ({image.shape[0]} x {image.shape[1]})")
    return 0


def run_stacks(args: argparse.Namespace) -> int:
    """Write the 2.5D stacks and masks of one volume."""
    from cxrssl.io import write_mask
    from cxrssl.lesions.points import read_points
    from cxrssl.lesions.volume import grow_nodule, read_volume, stack_25d, window

    if args.k < 1 or args.k % 2 == 0:
        raise CxrsslError(f"--k must be an odd number of slices, got {args.k}")
    volume = read_volume(args.volume)
    name = volume_name(volume.path)
    every = read_points(args.points, pixel_mm=volume.spacing[2])
    points = [p for p in every if volume_name(Path(p.file)) == name]
    masks = np.zeros(volume.shape, np.uint8)
    nodules = []
    for point in points:
        grown = grow_nodule(volume, point)
        masks |= grown.mask
        where = [f"{v:.2f}" for v in (point.x, point.y, point.z or 0, point.diameter_px)]
        nodules.append([point.file, *where, grown.method, int(grown.mask.sum()), grown.reason])
    with atomic_open(args.out_dir / "nodules.csv") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "x", "y", "z", "diameter_px", "method", "voxels", "reason"])
        writer.writerows(nodules)
    windowed = window(volume.array, args.level, args.width)
    rows = []
    for z in range(volume.shape[0]):
        voxels = int(masks[z].sum())
        if not (voxels or args.all):
            continue
        stem = f"{name}_z{z:04d}"
        buf = io.BytesIO()
        np.save(buf, stack_25d(windowed, args.k, [z])[0])
        write_bytes_atomic(args.out_dir / f"{stem}.npy", buf.getvalue())
        write_mask(args.out_dir / f"{stem}_mask.png", masks[z])
        rows.append((f"{stem}.npy", f"{stem}_mask.png", z, voxels))
    with atomic_open(args.out_dir / "slices.csv") as f:
        writer = csv.writer(f)
        writer.writerow(["stack", "mask", "z", "nodule_voxels"])
        writer.writerows(rows)
    balls = sum(row[5] != "grown" for row in nodules)
    print(f"{volume!r}: {len(points)} nodules ({balls} as balls), {len(rows)} slices")
    if len(every) > len(points):
        print(f"{len(every) - len(points)} points of other volumes (not named {name!r}) left out")
    print(f"output: {args.out_dir}")
    return 0
