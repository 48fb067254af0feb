"""The figures of a label-efficiency study: which method, at which K labelled images, beats
training from scratch, in domain and on a source no model trained on.

Per image and seed, a method's Dice is paired with scratch's on the same image, the same K
draw and the same seed; the mean difference gets a 95 % CI bootstrapped over patients and a
verdict. ``epochs_to_reach`` counts the epochs a method needs to reach scratch's best
validation Dice (seed 000 promises 20 % fewer). :mod:`cxrssl.study.pipeline` runs the units.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from cxrssl.metrics import aggregate, nanmean, verdict
from cxrssl.ssl import parse_method
from cxrssl.tasks.seg_data import SegCache

log = logging.getLogger(__name__)

SCRATCH = "scratch"
WHOLE = "-whole"  # suffix: fine-tune the whole pre-trained U-Net (MedSASS end to end)
MASK = "masks"


def base_method(name: str) -> tuple[str, bool]:
    """``"medsass-whole"`` -> (``"medsass"``, True); others -> (name, False)."""
    return (name[: -len(WHOLE)], True) if name.endswith(WHOLE) else (name, False)


def crop_of(method: str) -> str:
    """The input crop a method fine-tunes with: a lung-box crop for `lung-crop` methods."""
    if method == SCRATCH:
        return "none"
    return "lung-box" if parse_method(base_method(method)[0])[1] else "none"


def _paired(
    rows: list[dict[str, Any]], method: str, k: str, test: str, patients: dict[str, str]
) -> dict[str, Any]:
    """Per-image difference from scratch (same K draw and seed), averaged over seeds, with a
    CI bootstrapped over patients and a verdict."""
    mine = {(r["seed"], r["file"]): r["dice"] for r in rows if r["method"] == method}
    ref = {(r["seed"], r["file"]): r["dice"] for r in rows if r["method"] == SCRATCH}
    per_file: dict[str, list[float]] = {}
    for key, value in mine.items():
        if key in ref:
            per_file.setdefault(key[1], []).append(value - ref[key])
    files = sorted(per_file)
    diffs = [float(np.nanmean(per_file[f])) for f in files]
    s = aggregate(diffs, groups=[patients.get(f, f) for f in files])
    reading = verdict(s.ci_low, s.ci_high)
    return {"method": method, "k": k, "test": test, **s.as_dict(), "verdict": reading}


def summarise_units(rows: list[dict[str, Any]], patients: dict[str, str]) -> dict[str, Any]:
    """Mean ± std over seeds of each (method, K, test set), and paired differences."""
    points = []
    diffs = []
    keys = sorted({(r["method"], r["k"], r["test"]) for r in rows}, key=str)
    for method, k, test in keys:
        mine = [r for r in rows if (r["method"], r["k"], r["test"]) == (method, k, test)]
        seeds = sorted({r["seed"] for r in mine})
        per_seed = [nanmean([r["dice"] for r in mine if r["seed"] == s]) for s in seeds]
        std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
        points.append(
            {
                "method": method,
                "k": k,
                "test": test,
                "mean": float(np.mean(per_seed)),
                "std": std,
                "n_seeds": len(seeds),
                "values": per_seed,
            }
        )
        if method != SCRATCH:
            same = [r for r in rows if r["k"] == k and r["test"] == test]
            diffs.append(_paired(same, method, k, test, patients))
    return {"points": points, "differences": diffs}


def plot(summary: dict[str, Any], k_order: list[str]) -> bytes:
    """Mean ± std over seeds against K, one line per method, one panel per test set (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = sorted({p["test"] for p in summary["points"]})
    fig, axes = plt.subplots(1, len(tests), figsize=(5.2 * len(tests), 4), squeeze=False)
    for ax, test in zip(axes[0], tests, strict=True):
        methods = sorted({p["method"] for p in summary["points"] if p["test"] == test})
        for j, method in enumerate(methods):
            pts = [p for p in summary["points"] if p["test"] == test and p["method"] == method]
            pts.sort(key=lambda p: k_order.index(p["k"]))
            x = np.array([k_order.index(p["k"]) for p in pts]) + (j - len(methods) / 2) * 0.04
            ax.errorbar(
                x,
                [p["mean"] for p in pts],
                yerr=[p["std"] for p in pts],
                marker="o",
                capsize=3,
                label=method,
                linestyle="--" if method == SCRATCH else "-",
            )
        if test in summary.get("rules", {}):
            ax.axhline(summary["rules"][test], color="grey", linestyle=":", label="rule-based")
        ax.set_xticks(range(len(k_order)), k_order)
        ax.set_xlabel("labelled images K")
        ax.set_ylabel("Dice (mean ± std over seeds)")
        ax.set_title(test)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def markdown(summary: dict[str, Any], k_order: list[str], rules: dict[str, float]) -> str:
    lines = []
    for test in sorted({p["test"] for p in summary["points"]}):
        lines += [f"### {test}", ""]
        if test in rules:
            lines += [f"Rule-based lungs (no learning): Dice {rules[test]:.3f}", ""]
        lines.append("| method | " + " | ".join(f"K = {k}" for k in k_order) + " |")
        lines.append("|---" * (len(k_order) + 1) + "|")
        methods = sorted(
            {p["method"] for p in summary["points"] if p["test"] == test},
            key=lambda m: (m != SCRATCH, m),
        )
        for method in methods:
            cells = []
            for k in k_order:
                p = next(
                    (
                        p
                        for p in summary["points"]
                        if (p["test"], p["method"], p["k"]) == (test, method, k)
                    ),
                    None,
                )
                d = next(
                    (
                        d
                        for d in summary["differences"]
                        if (d["test"], d["method"], d["k"]) == (test, method, k)
                    ),
                    None,
                )
                cell = "" if p is None else f"{p['mean']:.3f} ± {p['std']:.3f}"
                if d is not None and np.isfinite(d["mean"]):
                    cell += (
                        f"<br>{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] "
                        f"{d['verdict']}"
                    )
                cells.append(cell)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def rules_dice(caches: dict[str, SegCache]) -> dict[str, float]:
    """Mean Dice of the default rule-based lungs against the expert masks, per test set."""
    from cxrssl.anatomy import lung_mask
    from cxrssl.io import read_image, read_mask
    from cxrssl.metrics import binary_metrics

    out = {}
    for name, cache in caches.items():
        values = []
        for image_path, mask_path in zip(cache.paths, cache.mask_paths, strict=True):
            image = read_image(image_path)
            values.append(
                binary_metrics(lung_mask(image), read_mask(mask_path, image.shape))["dice"]
            )
        out[name] = nanmean(values)
    return out


def epochs_to_reach(curves: dict[tuple[str, str, int], list[float]]) -> list[dict[str, Any]]:
    """Epochs each method needs to reach scratch's best validation Dice, per K.

    Args:
        curves: (method, K, seed) -> validation Dice per epoch.

    Returns:
        One row per (method, K): seeds compared, seeds that reached scratch's best, the mean
        epochs to it (over the seeds that reached it) and scratch's mean epochs to its best.
    """
    out = []
    for method, k in dict.fromkeys((m, k) for m, k, _ in curves if m != SCRATCH):
        mine, ref = [], []
        n = 0
        for (m, kk, seed), curve in curves.items():
            base = curves.get((SCRATCH, kk, seed))
            if (m, kk) != (method, k) or not base or not curve:
                continue
            n += 1
            target = max(base)
            hit = next((i + 1 for i, v in enumerate(curve) if v >= target), None)
            if hit is not None:
                mine.append(hit)
                ref.append(int(np.argmax(base)) + 1)
        out.append(
            {
                "method": method,
                "k": k,
                "seeds": n,
                "reached": len(mine),
                "epochs": float(np.mean(mine)) if mine else None,
                "scratch_epochs": float(np.mean(ref)) if ref else None,
                "epochs_run": len(
                    next(c for (m, kk, _), c in curves.items() if (m, kk) == (method, k))
                ),
            }
        )
    return out
