"""Accuracy of the rule-based lung methods against expert lung masks, per data set.

Reads the real data at run time (``--data``, ``$CXR_DATA_DIR`` or ``../shared/data``) and the
built-in sample; writes nothing unless ``--json`` is given. Prints, per data set and method,
the mean Dice per image, its spread, the count below 0.8, the worst image and the time per
image; then the same per view (PA / AP, from labels.csv) and per age group where labels.csv
has them; then how well the mask quality (``LungMasks.quality``, the value the engine and
the pool store) predicts failure: its Spearman rank correlation with Dice, and how many of
the failures (Dice < 0.8) are among the lowest-5 %-quality images.

    .venv/bin/python benchmarks/rules_accuracy.py --workers 1
    .venv/bin/python benchmarks/rules_accuracy.py --datasets gb --methods default --worst 5
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from cxrssl.anatomy import METHODS, lung_masks
from cxrssl.anatomy.baselines import seed_pathology
from cxrssl.anatomy.pathology import pathology_map
from cxrssl.io import read_gray8, read_mask

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {
    "jsrt": ("jsrt", "digitised PA film, heart and the lung behind it excluded (SCR)"),
    "gb": ("ieee8023_generalblockchain", "retrocardiac lung excluded"),
    "v7labs": ("ieee8023_v7labs", "retrocardiac lung included"),
    "sample": ("", "built-in sample, retrocardiac lung included"),
}


def _read(path: Path) -> np.ndarray:
    return read_gray8(path)


def _folder(name: str, data: Path) -> Path:
    if name == "sample":
        return ROOT / "src" / "cxrssl" / "data" / "sample"
    return data / DATASETS[name][0]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two {0,1} masks (1.0 when both are empty)."""
    inter = int(np.count_nonzero(pred & truth))
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    return 1.0 if total == 0 else 2.0 * inter / total


FAIL = 0.8  # an image below this Dice counts as a failure
LOW_SHARE = 0.05  # share of lowest-quality images checked for failures
AGE_GROUPS = ((0, 18, "<18"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 200, "60+"))


def _score(job: tuple[str, Path, Path]) -> tuple[str, float, float, float]:
    method, image_path, mask_path = job
    img = _read(image_path)
    truth = read_mask(mask_path, img.shape)
    start = time.perf_counter()
    masks = lung_masks(img, method)
    elapsed = time.perf_counter() - start
    return image_path.name, dice(masks.both, truth), elapsed, masks.quality


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either is constant."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for value in np.unique(x):  # ties share their mean rank
            tie = x == value
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _groups(folder: Path) -> dict[str, dict[str, str]]:
    """File name -> {"view": PA/AP/other, "age": group} from labels.csv, where present."""
    table = folder / "labels.csv"
    out: dict[str, dict[str, str]] = {}
    if not table.is_file():
        return out
    with table.open(newline="") as f:
        for row in csv.DictReader(f):
            groups = {}
            view = (row.get("view") or "").strip().upper()
            if view:
                groups["view"] = (
                    "AP" if view.startswith("AP") else view if view == "PA" else "other"
                )
            age = (row.get("age") or "").strip()
            if age.replace(".", "", 1).isdigit():
                groups["age"] = next(g for lo, hi, g in AGE_GROUPS if lo <= float(age) < hi)
            out[row["filename"]] = groups
    return out


def _line(label: str, scores: np.ndarray) -> str:
    return (
        f"  {label:14} n={len(scores):4d} mean {scores.mean():.3f} min {scores.min():.3f} "
        f"<{FAIL} {int((scores < FAIL).sum()):3d}"
    )


def _report(folder: Path, rows: list[tuple[str, float, float, float]]) -> None:
    """Per view / age group Dice, and how well quality predicts failure."""
    names = [r[0] for r in rows]
    scores = np.array([r[1] for r in rows])
    quality = np.array([r[3] for r in rows])
    labels = _groups(folder)
    for key in ("view", "age"):
        values = [labels.get(n, {}).get(key, "unknown") for n in names]
        if all(v == "unknown" for v in values):
            continue
        order = [g for _, _, g in AGE_GROUPS] + ["AP", "PA", "other", "unknown"]
        for value in sorted(set(values), key=order.index):
            print(_line(f"{key} {value}", scores[np.array(values) == value]))
    low = np.argsort(quality, kind="stable")[: max(1, round(LOW_SHARE * len(rows)))]
    failures = int((scores < FAIL).sum())
    print(
        f"  quality: Spearman with Dice {spearman(quality, scores):.3f}; lowest "
        f"{100 * LOW_SHARE:.0f} % ({len(low)} images) hold {int((scores[low] < FAIL).sum())} "
        f"of the {failures} failures (Dice < {FAIL}); mean Dice without them "
        f"{np.delete(scores, low).mean():.3f}"
    )


PATHOLOGY = ("seed", "seed_in_lungs", "default", "whole_lung")


def _score_pathology(paths: tuple[Path, Path]) -> list[float]:
    image_path, lesion_path = paths
    img = _read(image_path)
    truth = read_mask(lesion_path, img.shape)
    lungs = lung_masks(img)
    seed = seed_pathology(img)
    preds = (seed, seed & lungs.both, pathology_map(img, lungs), lungs.both)
    return [dice(p, truth) for p in preds]


def pathology_table(folder: Path, workers: int) -> None:
    """Dice of pathology candidates against the gb lesion masks (GGO + consolidation + ...)."""
    images = sorted((folder / "images").glob("*.png"))
    jobs = [(p, folder / "masks_lesion" / p.name) for p in images]
    jobs = [j for j in jobs if read_mask(j[1]).any()]
    with ProcessPoolExecutor(workers) as pool:
        scores = np.array(list(pool.map(_score_pathology, jobs, chunksize=4)))
    print(f"pathology candidates vs gb lesion masks ({len(jobs)} images with a lesion)")
    for name, column in zip(PATHOLOGY, scores.T, strict=True):
        print(f"  {name:14} mean Dice {column.mean():.3f}  median {np.median(column):.3f}")


def _jobs(method: str, folder: Path, limit: int) -> Iterator[tuple[str, Path, Path]]:
    images = sorted((folder / "images").glob("*.png"))
    if limit:
        images = images[:: max(1, len(images) // limit)][:limit]
    for path in images:
        yield method, path, folder / "masks" / path.name


def main() -> None:
    """Parse arguments, score every method on every data set, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = Path(os.environ.get("CXR_DATA_DIR", ROOT.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--limit", type=int, default=0, help="images per data set (0: all)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--worst", type=int, default=0, help="list the N worst images")
    parser.add_argument("--json", type=Path, help="also write per-image Dice here")
    parser.add_argument(
        "--no-details", dest="details", action="store_false", help="skip view/age/quality"
    )
    parser.add_argument("--pathology", action="store_true", help="only the pathology table")
    args = parser.parse_args()
    if args.pathology:
        pathology_table(_folder("gb", args.data), args.workers)
        return

    results: dict[str, dict[str, dict[str, float]]] = {}
    print(
        f"{'dataset':8} {'method':10} {'n':>4} {'mean':>6} {'std':>6} {'min':>6} {'<0.5':>4} "
        f"{'<0.8':>4} {'ms':>6}"
    )
    with ProcessPoolExecutor(args.workers) as pool:
        for name in args.datasets:
            folder = _folder(name, args.data)
            for method in args.methods:
                rows = list(pool.map(_score, _jobs(method, folder, args.limit), chunksize=4))
                scores = np.array([r[1] for r in rows])
                ms = 1000 * float(np.mean([r[2] for r in rows]))
                results.setdefault(name, {})[method] = {r[0]: r[1] for r in rows}
                results[name][method + "_quality"] = {r[0]: r[3] for r in rows}
                print(
                    f"{name:8} {method:10} {len(rows):4d} {scores.mean():6.3f} "
                    f"{scores.std():6.3f} {scores.min():6.3f} {int((scores < 0.5).sum()):4d} "
                    f"{int((scores < 0.8).sum()):4d} {ms:6.2f}",
                    flush=True,
                )
                worst = min(rows, key=lambda r: r[1])
                print(f"  worst {worst[1]:.3f} {worst[0]}")
                for fname, score, _, quality in sorted(rows, key=lambda r: r[1])[: args.worst]:
                    print(f"    {score:.3f} quality {quality:.2f} {fname}")
                if args.details:
                    _report(folder, rows)
        for name in args.datasets:
            print(f"# {name}: {DATASETS[name][1]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
