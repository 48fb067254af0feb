"""How well masks grown from points match the truth: simulated nodules on real films.

Nodules are simulated on real radiographs (:func:`cxrssl.lesions.simulate.simulate_nodules`;
default: the JSRT films and lung masks under ``--data``, ``$CXR_DATA_DIR`` or
``../shared/data``), masks are grown from the simulated points with
:func:`cxrssl.lesions.grow.grow_mask`, and each nodule's Dice against its exact footprint is
reported by size, contrast and site, beside the Dice of the fallback alone (a disc of the given
diameter), and the share that fell back to a disc. Twice: with the exact points, and with the
points perturbed as a reader's would be (``--jitter``: the centre moved up to that share of the
radius, the diameter scaled by up to 1 +- that share, log-uniform). Also reported: how often the
grower falls back on the real JSRT nodules (no truth masks there). Nothing is written into the
repository; the simulated films go to a temporary folder.

    .venv/bin/python benchmarks/grow_accuracy.py --out /tmp/grow_accuracy.json
    .venv/bin/python benchmarks/grow_accuracy.py --images DIR --lungs DIR --pixel-mm 1.4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from cxrssl.io import read_image, read_mask
from cxrssl.lesions.grow import grow_mask
from cxrssl.lesions.points import read_points
from cxrssl.lesions.simulate import simulate_nodules

ROOT = Path(__file__).resolve().parents[1]
SIZE_BINS: tuple[tuple[float, float], ...] = ((5, 10), (10, 15), (15, 20), (20, 30))
CONTRAST_BINS: tuple[tuple[float, float], ...] = ((0.05, 0.10), (0.10, 0.15), (0.15, 0.25))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2 * int((a & b).sum()) / total if total else 1.0


def disc(shape: tuple[int, ...], centre: tuple[float, float], diameter: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= (diameter / 2) ** 2).astype(np.uint8)


def measure(sim: Path, pixel_mm: float, jitter: float, seed: int) -> list[dict[str, Any]]:
    """One row per simulated nodule: its attributes and the Dice figures."""
    rng = np.random.default_rng(seed)
    rows = []
    points = read_points(sim / "points.csv", pixel_mm)
    by_file: dict[str, list[Any]] = {}
    for p in points:
        by_file.setdefault(p.file, []).append(p)
    for name, pts in sorted(by_file.items()):
        image = read_image(sim / "images" / name)
        labels, _ = ndimage.label(read_mask(sim / "masks" / name, image.shape))
        for p in pts:
            nominal = disc(image.shape, (p.y, p.x), p.diameter_px)
            hit = np.bincount(labels[nominal > 0])
            hit[0] = 0
            truth = (labels == int(hit.argmax())).astype(np.uint8)
            row: dict[str, Any] = {
                "file": name,
                "diameter_mm": p.diameter_px * pixel_mm,
                "contrast": float(p.extra["contrast"]),
                "site": p.extra["site"],
                "shape": p.extra["shape"],
            }
            turn, reach = (
                rng.uniform(0, 2 * math.pi),
                jitter * p.radius_px * math.sqrt(rng.random()),
            )
            scale = math.exp(rng.uniform(-math.log1p(jitter), math.log1p(jitter)))
            cases = {
                "exact": ((p.y, p.x), p.diameter_px),
                "jitter": (
                    (p.y + reach * math.sin(turn), p.x + reach * math.cos(turn)),
                    p.diameter_px * scale,
                ),
            }
            for case, (centre, diameter) in cases.items():
                g = grow_mask(image, centre, diameter)
                row[f"{case}_grown"] = dice(g.mask, truth)
                row[f"{case}_disc"] = dice(disc(image.shape, centre, diameter), truth)
                row[f"{case}_fallback"] = g.method != "grown"
                row[f"{case}_reason"] = g.reason
            rows.append(row)
    return rows


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {"all": rows}
    for lo, hi in SIZE_BINS:  # the last bin holds its upper end
        top = hi + 1e-6 if hi == SIZE_BINS[-1][1] else hi
        groups[f"size {lo:g}-{hi:g} mm"] = [r for r in rows if lo <= r["diameter_mm"] < top]
    for lo, hi in CONTRAST_BINS:
        top = hi + 1e-6 if hi == CONTRAST_BINS[-1][1] else hi
        groups[f"contrast {lo:.2f}-{hi:.2f}"] = [r for r in rows if lo <= r["contrast"] < top]
    for site in sorted({r["site"] for r in rows}):
        groups[f"site {site}"] = [r for r in rows if r["site"] == site]
    for shape in sorted({r["shape"] for r in rows}):
        groups[f"shape {shape}"] = [r for r in rows if r["shape"] == shape]
    out: dict[str, Any] = {}
    for name, rs in groups.items():
        entry: dict[str, Any] = {"n": len(rs)}
        for case in ("exact", "jitter"):
            if rs:
                grew = [r for r in rs if not r[f"{case}_fallback"]]
                entry[case] = {
                    "dice_grown": float(np.mean([r[f"{case}_grown"] for r in rs])),
                    "dice_disc": float(np.mean([r[f"{case}_disc"] for r in rs])),
                    "fallback_share": float(np.mean([r[f"{case}_fallback"] for r in rs])),
                    # the nodules that were grown: grown mask against the disc
                    "dice_grown_where_grown": _mean([r[f"{case}_grown"] for r in grew]),
                    "dice_disc_where_grown": _mean([r[f"{case}_disc"] for r in grew]),
                }
        out[name] = entry
    for case in ("exact", "jitter"):
        out["all"][f"{case}_reasons"] = dict(Counter(r[f"{case}_reason"] or "grown" for r in rows))
    return out


def real_fallbacks(data: Path, pixel_mm: float) -> dict[str, Any]:
    """How the grower fares on the real JSRT nodules (no truth: method and reasons only)."""
    points = read_points(data / "jsrt" / "nodules.csv", pixel_mm)
    reasons: Counter[str] = Counter()
    for p in points:
        g = grow_mask(read_image(data / "jsrt" / "images" / p.file), (p.y, p.x), p.diameter_px)
        reasons[g.reason or "grown"] += 1
    return {
        "n": len(points),
        "reasons": dict(reasons),
        "grown_share": reasons["grown"] / len(points),
    }


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| group | n | Dice grown | Dice disc | fallback "
        "| Dice grown (jitter) | Dice disc (jitter) | fallback (jitter) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in summary.items():
        if not e["n"]:
            lines.append(f"| {name} | 0 | | | | | | |")
            continue
        x, j = e["exact"], e["jitter"]
        lines.append(
            f"| {name} | {e['n']} | {x['dice_grown']:.3f} | {x['dice_disc']:.3f} | "
            f"{x['fallback_share']:.0%} | {j['dice_grown']:.3f} | {j['dice_disc']:.3f} | "
            f"{j['fallback_share']:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    default_data = Path(os.environ.get("CXR_DATA_DIR", ROOT.parent / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--images", type=Path, help="films (default: DATA/jsrt/images)")
    parser.add_argument("--lungs", type=Path, help="their lung masks (default: DATA/jsrt/masks)")
    parser.add_argument("--pixel-mm", type=float, default=0.35)
    parser.add_argument("--per-image", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jitter", type=float, default=0.2)
    parser.add_argument("--no-real", action="store_true", help="skip the real JSRT nodules")
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args()
    images = args.images or args.data / "jsrt" / "images"
    lungs = args.lungs or args.data / "jsrt" / "masks"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        s = simulate_nodules(
            images,
            lungs,
            Path(tmp),
            per_image=args.per_image,
            seed=args.seed,
            pixel_mm=args.pixel_mm,
        )
        rows = measure(Path(tmp), args.pixel_mm, args.jitter, args.seed)
    summary = summarise(rows)
    results: dict[str, Any] = {
        "films": s.images,
        "nodules": s.nodules,
        "settings": vars(args) | {"images": str(images), "lungs": str(lungs)},
        "summary": summary,
    }
    if not args.no_real and args.images is None:
        results["jsrt_real"] = real_fallbacks(args.data, args.pixel_mm)
    results["seconds"] = time.perf_counter() - start
    print(f"{s.images} films, {s.nodules} simulated nodules, {results['seconds']:.0f} s")
    print(table(summary))
    for case in ("exact", "jitter"):
        e = summary["all"][case]
        print(
            f"{case} points, the nodules grown: Dice grown {e['dice_grown_where_grown']:.3f}, "
            f"disc {e['dice_disc_where_grown']:.3f}"
        )
    print("reasons (exact points):", summary["all"]["exact_reasons"])
    print("reasons (jittered points):", summary["all"]["jitter_reasons"])
    if "jsrt_real" in results:
        print("real JSRT nodules:", results["jsrt_real"])
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
