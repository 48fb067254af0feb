"""Nodule points: one row per nodule with its image, centre and diameter.

The CSV has a file column (``filename``, ``file`` or ``image``), ``x`` and ``y`` (pixel
centre on the image as stored, 0-based), a diameter as ``diameter_mm`` (with a pixel size)
or ``diameter_px``, and optionally ``z`` (slice, for CT) and ``subtlety`` (JSRT: 1 extremely
subtle ... 5 obvious). Other columns are kept in ``extra``. An image without a row has no
nodule. This is the format of ``jsrt/nodules.csv``, of ``cxrssl simulate-nodules`` and of
``detections.csv`` (with ``score``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cxrssl.data.table import read_table
from cxrssl.errors import DatasetError
from cxrssl.files import atomic_open

FILE_COLUMNS = ("filename", "file", "image")
PIXEL_MM = 0.35  # JSRT at 1024 px (2048 px at 0.175 mm)


@dataclass
class Point:
    """One nodule (or detection): ``diameter_px`` is on the image grid of ``x``/``y``."""

    file: str
    x: float
    y: float
    diameter_px: float
    z: float | None = None
    subtlety: int | None = None
    score: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return Path(self.file).stem

    @property
    def radius_px(self) -> float:
        return self.diameter_px / 2


def _number(path: Path, line: int, column: str, value: str | None) -> float | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        out = float(value)
    except ValueError:
        raise DatasetError(f"{path}: line {line}: {column} is {value!r}, not a number") from None
    if not math.isfinite(out):
        raise DatasetError(f"{path}: line {line}: {column} is {value!r}, not a finite number")
    return out


def read_points(path: str | Path, pixel_mm: float = PIXEL_MM) -> list[Point]:
    """The rows of a points CSV, diameters converted to pixels with ``pixel_mm``.

    Raises:
        DatasetError: a missing file or column, a non-numeric or negative value; the message
            names the file and line.
    """
    path = Path(path)
    if pixel_mm <= 0:
        raise DatasetError(f"{path}: the pixel size must be positive, got {pixel_mm} mm")
    header, rows = read_table(path, "points table")
    lower = {h.lower(): h for h in header}
    file_col = next((lower[c] for c in FILE_COLUMNS if c in lower), None)
    if file_col is None:
        raise DatasetError(f"{path}: no file column; expected one of {list(FILE_COLUMNS)}")
    for need in ("x", "y"):
        if need not in lower:
            raise DatasetError(f"{path}: no {need!r} column (columns: {header})")
    mm, px = lower.get("diameter_mm"), lower.get("diameter_px")
    if mm is None and px is None:
        raise DatasetError(f"{path}: no diameter column; expected diameter_mm or diameter_px")
    known = {file_col, lower["x"], lower["y"], mm, px, *(lower.get(c) for c in ("z", "subtlety"))}
    known.add(lower.get("score"))
    points = []
    for line, row in enumerate(rows, start=2):
        name = (row.get(file_col) or "").strip()
        if not name:
            raise DatasetError(f"{path}: line {line}: empty file name")
        x = _number(path, line, "x", row.get(lower["x"]))
        y = _number(path, line, "y", row.get(lower["y"]))
        if x is None or y is None:
            raise DatasetError(f"{path}: line {line}: x and y are required")
        d_px = _number(path, line, "diameter_px", row.get(px)) if px else None
        d_mm = _number(path, line, "diameter_mm", row.get(mm)) if mm else None
        diameter = d_px if d_px is not None else (d_mm / pixel_mm if d_mm is not None else None)
        if diameter is None or diameter <= 0:
            raise DatasetError(f"{path}: line {line}: the diameter must be a positive number")
        z = _number(path, line, "z", row.get(lower["z"])) if "z" in lower else None
        sub = (
            _number(path, line, "subtlety", row.get(lower["subtlety"]))
            if "subtlety" in lower
            else None
        )
        score = _number(path, line, "score", row.get(lower["score"])) if "score" in lower else None
        extra = {k: v or "" for k, v in row.items() if k not in known}
        points.append(
            Point(name, x, y, diameter, z, None if sub is None else int(sub), score, extra)
        )
    return points


def by_stem(points: Iterable[Point]) -> dict[str, list[Point]]:
    """Points grouped by image stem (images without a nodule are absent)."""
    out: dict[str, list[Point]] = {}
    for p in points:
        out.setdefault(p.stem, []).append(p)
    return out


def write_points(path: str | Path, points: Iterable[Point], pixel_mm: float | None = None) -> None:
    """Write a points CSV (atomically): file, x, y, diameter_px (and diameter_mm with
    ``pixel_mm``), then z, subtlety and score where any point has them, then ``extra``."""
    points = list(points)
    columns = ["filename", "x", "y", "diameter_px"] + (["diameter_mm"] if pixel_mm else [])
    for name in ("z", "subtlety", "score"):
        if any(getattr(p, name) is not None for p in points):
            columns.append(name)
    extras = list(dict.fromkeys(k for p in points for k in p.extra))
    with atomic_open(path, "w") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns + extras)
        for p in points:
            row: dict[str, object] = {
                "filename": p.file,
                "x": f"{p.x:.2f}",
                "y": f"{p.y:.2f}",
                "diameter_px": f"{p.diameter_px:.2f}",
                "diameter_mm": f"{p.diameter_px * pixel_mm:.2f}" if pixel_mm else "",
                "z": "" if p.z is None else f"{p.z:.2f}",
                "subtlety": "" if p.subtlety is None else p.subtlety,
                "score": "" if p.score is None else f"{p.score:.6f}",
            }
            writer.writerow([row[c] for c in columns] + [p.extra.get(k, "") for k in extras])
