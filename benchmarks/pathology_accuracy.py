"""Accuracy of the pathology candidate map against expert lesion masks, labels and nodules.

Reads the real data at run time (``--data``, ``$CXR_DATA_DIR`` or ``../shared/data``); writes
nothing unless ``--json`` is given. The map is always computed on the rule-based lungs
(``cxrssl.anatomy.lung_masks``), as the product uses it. Three measurements:

- ``gb`` (ieee8023_generalblockchain): pixel-level ROC AUC of the map, lesion against
  non-lesion pixels inside the *expert* lung mask (``masks``), for ``masks_lesion``,
  ``masks_ggo`` and ``masks_consolidation``: pooled over the images that have that lesion,
  and the mean of the per-image AUCs; plus the Dice of the binary map
  (``pathology.candidates``) against the lesion mask.
- ``kermany`` (kermany_pneumonia): image-level ROC AUC, pneumonia against normal, of a
  per-image score of the map inside the rule lungs (its mean, and the mean of its top tenth).
- ``jsrt``: nodule hit rate, the share of nodules whose centre lies in the top
  ``--top`` (5 %) of that image's map values inside the rule lungs (ties count half); chance
  is about ``--top`` times the share of centres inside the rule lungs.

    .venv/bin/python benchmarks/pathology_accuracy.py
    .venv/bin/python benchmarks/pathology_accuracy.py --parts kermany --kermany-limit 600
    .venv/bin/python benchmarks/pathology_accuracy.py --map seed   # seed option 3 in lungs
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cxrssl.anatomy import LungMasks, lung_masks
from cxrssl.anatomy.baselines import seed_pathology
from cxrssl.anatomy.pathology import candidates, pathology_map
from cxrssl.io import read_gray8, read_mask

ROOT = Path(__file__).resolve().parents[1]
LESIONS = ("masks_lesion", "masks_ggo", "masks_consolidation")
PARTS = ("gb", "kermany", "jsrt")


def _seed_map(image: np.ndarray, lungs: LungMasks) -> np.ndarray:
    return (seed_pathology(image) & lungs.both) * np.uint8(255)


MAPS: dict[str, Callable[[np.ndarray, LungMasks], np.ndarray]] = {
    "default": pathology_map,
    "seed": _seed_map,
}


def _as_levels(soft: np.ndarray) -> np.ndarray:
    """The map as uint8 levels 0..255 (float maps in [0, 1] are scaled)."""
    if soft.dtype == np.uint8:
        return soft
    return np.clip(np.rint(soft.astype(np.float32) * 255), 0, 255).astype(np.uint8)


def auc_from_hist(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties count half) from two histograms over the same levels."""
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negatives strictly below each level
    return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


def auc(scores: Iterable[float], labels: Iterable[int]) -> float:
    """ROC AUC of scores for labels in {0, 1} (ties count half)."""
    s, y = np.asarray(list(scores), float), np.asarray(list(labels), int)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size)
    sorted_s = s[order]
    i = 0
    while i < s.size:  # mid-ranks of tied runs
        j = i
        while j + 1 < s.size and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _gb_one(job: tuple[str, Path, Path]) -> dict[str, Any]:
    kind, folder, image_path = job
    img = read_gray8(image_path)
    lungs = lung_masks(img)
    start = time.perf_counter()
    levels = _as_levels(MAPS[kind](img, lungs))
    seconds = time.perf_counter() - start
    binary = candidates(levels)
    expert = read_mask(folder / "masks" / image_path.name, img.shape) > 0
    out: dict[str, Any] = {"name": image_path.name, "seconds": seconds}
    for name in LESIONS:
        path = folder / name / image_path.name
        truth = read_mask(path, img.shape) > 0 if path.is_file() else np.zeros_like(expert)
        inside = levels[expert]
        lesion = truth[expert]
        out[name] = {
            "pos": np.bincount(inside[lesion], minlength=256),
            "neg": np.bincount(inside[~lesion], minlength=256),
            "inter": int(np.count_nonzero(binary & truth)),
            "total": int(np.count_nonzero(binary)) + int(np.count_nonzero(truth)),
        }
    return out


def gb_table(pool: ProcessPoolExecutor, data: Path, kind: str) -> dict[str, Any]:
    """Pixel AUC and Dice against the GeneralBlockchain lesion masks."""
    folder = data / "ieee8023_generalblockchain"
    jobs = [(kind, folder, p) for p in sorted((folder / "images").glob("*.png"))]
    rows = list(pool.map(_gb_one, jobs, chunksize=4))
    result: dict[str, Any] = {}
    print(f"gb: {len(rows)} images, {1000 * np.mean([r['seconds'] for r in rows]):.1f} ms a map")
    print(f"  {'lesion':20} {'n':>3} {'pooled AUC':>10} {'mean AUC':>9} {'Dice':>6} {'mDice':>6}")
    for name in LESIONS:
        have = [r[name] for r in rows if r[name]["pos"].sum() > 0]
        pooled = auc_from_hist(sum(h["pos"] for h in have), sum(h["neg"] for h in have))
        per_image = [auc_from_hist(h["pos"], h["neg"]) for h in have]
        per_image = [a for a in per_image if a == a]
        inter, total = sum(h["inter"] for h in have), sum(h["total"] for h in have)
        dice = 2 * inter / total if total else float("nan")
        mean_dice = float(np.mean([2 * h["inter"] / h["total"] for h in have if h["total"]]))
        result[name] = {
            "images": len(have),
            "pooled_auc": pooled,
            "mean_auc": float(np.mean(per_image)),
            "dice_pooled": dice,
            "dice_mean": mean_dice,
        }
        print(
            f"  {name:20} {len(have):3d} {pooled:10.3f} {np.mean(per_image):9.3f} "
            f"{dice:6.3f} {mean_dice:6.3f}"
        )
    return result


def _scores(levels: np.ndarray, lungs: np.ndarray) -> tuple[float, float]:
    """Mean of the map inside the lungs, and the mean of its top tenth."""
    inside = levels[lungs > 0].astype(np.float64)
    if inside.size == 0:
        return 0.0, 0.0
    top = np.sort(inside)[-max(1, inside.size // 10) :]
    return float(inside.mean()) / 255, float(top.mean()) / 255


def _kermany_one(job: tuple[str, Path]) -> tuple[float, float]:
    kind, path = job
    img = read_gray8(path)
    lungs = lung_masks(img)
    return _scores(_as_levels(MAPS[kind](img, lungs)), lungs.both)


def kermany_table(pool: ProcessPoolExecutor, data: Path, kind: str, limit: int) -> dict[str, Any]:
    """Image-level AUC, pneumonia against normal, of the map's per-image scores."""
    folder = data / "kermany_pneumonia"
    with open(folder / "labels.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["filename"])
    if limit:
        rows = rows[:: max(1, len(rows) // limit)][:limit]
    labels = [int(r["pneumonia"]) for r in rows]
    jobs = [(kind, folder / "images" / r["filename"]) for r in rows]
    scores = np.array(list(pool.map(_kermany_one, jobs, chunksize=8)))
    result = {
        "images": len(rows),
        "pneumonia": int(sum(labels)),
        "auc_mean": auc(scores[:, 0], labels),
        "auc_top10": auc(scores[:, 1], labels),
    }
    print(
        f"kermany: {len(rows)} images ({sum(labels)} pneumonia): AUC of the mean "
        f"{result['auc_mean']:.3f}, of the top-10 % mean {result['auc_top10']:.3f}"
    )
    return result


def _jsrt_one(job: tuple[str, Path, list[tuple[float, float]], float]) -> list[tuple[int, float]]:
    kind, path, centres, top = job
    img = read_gray8(path)
    lungs = lung_masks(img)
    levels = _as_levels(MAPS[kind](img, lungs))
    inside = levels[lungs.both > 0]
    hist = np.bincount(inside, minlength=256).astype(np.float64)
    above = hist[::-1].cumsum()[::-1] - hist  # pixels strictly above each level
    out = []
    for x, y in centres:
        r, c = min(max(round(y), 0), img.shape[0] - 1), min(max(round(x), 0), img.shape[1] - 1)
        if not lungs.both[r, c] or inside.size == 0:
            out.append((0, 1.0))
            continue
        v = int(levels[r, c])
        share = (above[v] + 0.5 * hist[v]) / inside.size
        out.append((int(share < top), float(share)))
    return out


def jsrt_table(pool: ProcessPoolExecutor, data: Path, kind: str, top: float) -> dict[str, Any]:
    """Share of nodule centres in the top ``top`` of their image's map inside the lungs."""
    folder = data / "jsrt"
    nodules: dict[str, list[tuple[float, float]]] = {}
    with open(folder / "nodules.csv", newline="") as f:
        for row in csv.DictReader(f):
            nodules.setdefault(row["filename"], []).append((float(row["x"]), float(row["y"])))
    jobs = [(kind, folder / "images" / n, c, top) for n, c in sorted(nodules.items())]
    hits = [h for rows in pool.map(_jsrt_one, jobs, chunksize=2) for h in rows]
    inside = sum(s < 1.0 for _, s in hits)
    rate = sum(h for h, _ in hits) / len(hits)
    result = {
        "nodules": len(hits),
        "centre_in_rule_lungs": inside,
        "hit_rate": rate,
        "chance": top * inside / len(hits),
        "median_rank_share": float(np.median([s for _, s in hits])),
    }
    print(
        f"jsrt: {len(hits)} nodules ({inside} centres inside the rule lungs): hit rate "
        f"{rate:.3f} in the top {100 * top:.0f} % (chance {result['chance']:.3f}); median "
        f"share above the centre {result['median_rank_share']:.3f}"
    )
    return result


def main() -> None:
    """Parse arguments, run the chosen measurements, print them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = Path(os.environ.get("CXR_DATA_DIR", ROOT.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--map", default="default", choices=list(MAPS), help="map to score")
    parser.add_argument("--kermany-limit", type=int, default=600, help="0: all 5,216")
    parser.add_argument("--top", type=float, default=0.05, help="JSRT: top share of the map")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    results: dict[str, Any] = {"map": args.map}
    with ProcessPoolExecutor(args.workers) as pool:
        if "gb" in args.parts:
            results["gb"] = gb_table(pool, args.data, args.map)
        if "kermany" in args.parts:
            results["kermany"] = kermany_table(pool, args.data, args.map, args.kermany_limit)
        if "jsrt" in args.parts:
            results["jsrt"] = jsrt_table(pool, args.data, args.map, args.top)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
