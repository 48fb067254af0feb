"""The label-efficiency study of pre-training: which method, at which K labelled images, beats
training from scratch, in domain and on a source no model trained on.

Protocol (the README runs it on ``../shared/data``):

1. The labelled set is split by patient into train / val / test. K images are drawn from the
   training patients per seed (each seed its own draw, shared by every method, so differences
   are paired); validation chooses the epoch and threshold; test patients score.
2. The pool is every radiograph of the pool folders, less every image of a labelled test
   patient (dropped deliberately, then guarded: ``build_pool`` refuses test patients and
   copies of test images by content). Masks of the pool are never read.
3. A pre-training unit per method (seed ``pretrain_seed``) writes a checkpoint; fine-tuning
   units (method, K, seed) start from it (the encoder, or the whole U-Net for
   ``medsass-whole``) and are scored on the labelled test patients and on every other test set
   (e.g. ``jsrt``). ``scratch`` is the reference.
4. Every unit is cached by fingerprint (``cxrssl.study.runner``): settings, data content, code.
   A fine-tuning unit's data includes its checkpoint, so a re-run pre-training recomputes
   the fine-tunes that used it and nothing else.

Outputs in the study folder: ``efficiency.csv`` (one row per unit and test set),
``efficiency.json`` (means, std over seeds, paired differences with CIs, verdicts),
``efficiency.md`` and ``efficiency.png``.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from cxrssl.data.datasets import FolderDataset
from cxrssl.data.pool import Pool, build_pool, drop_patients, open_sources
from cxrssl.data.splits import make_split, resolve_patient_ids, write_split_csv
from cxrssl.files import atomic_open, write_bytes_atomic, write_text_atomic
from cxrssl.metrics import aggregate, nanmean
from cxrssl.ssl import parse_method
from cxrssl.study.config import StudyConfig
from cxrssl.study.pretrain_units import pretrain_checkpoints
from cxrssl.study.runner import Unit, run_units, write_json_atomic
from cxrssl.tasks.seg_data import SegCache, load_cache
from cxrssl.train import resolve_device

log = logging.getLogger(__name__)

SCRATCH = "scratch"
WHOLE = "-whole"  # suffix: fine-tune the whole pre-trained U-Net (MedSASS end to end)
MASK = "masks"


@dataclass
class EfficiencyConfig(StudyConfig):
    """A label-efficiency study (YAML/JSON keys; the fine-tuning keys are ``StudyConfig``'s).

    Attributes:
        labelled: Folder of the labelled set (``images/``, ``masks/``, ``labels.csv``).
        pool: Folders of unlabelled radiographs for pre-training.
        tests: Other test sets, name -> folder with ``images/`` and ``masks/``.
        methods: Pre-training methods (``cxrssl.ssl`` names; ``medsass-whole`` fine-tunes the
            whole MedSASS U-Net); ``scratch`` is always run.
        pretrain: ``PretrainConfig`` keys for every pre-training unit (size comes from
            ``size``).
        pretrain_seed: Seed of the pre-training units.
        pool_limit: Use at most this many pool images (a seeded draw); None: all.
        mask_workers: Processes computing the pool's rule-based maps.
    """

    labelled: str = ""
    pool: list[str] = field(default_factory=list)
    tests: dict[str, str] = field(default_factory=dict)
    methods: list[str] = field(default_factory=lambda: ["simclr", "lung-crop", "medsass"])
    pretrain: dict[str, Any] = field(default_factory=dict)
    pretrain_seed: int = 0
    pool_limit: int | None = None
    mask_workers: int = 1

    def training_settings(self) -> dict[str, Any]:
        """The fine-tuning settings only, so adding a method recomputes no finished unit (a
        unit's checkpoint and data files are in its stamp)."""
        own = {f.name for f in fields(EfficiencyConfig)} - {f.name for f in fields(StudyConfig)}
        return {k: v for k, v in super().training_settings().items() if k not in own}


def base_method(name: str) -> tuple[str, bool]:
    """``"medsass-whole"`` -> (``"medsass"``, True); others -> (name, False)."""
    return (name[: -len(WHOLE)], True) if name.endswith(WHOLE) else (name, False)


def _crop(method: str) -> str:
    if method == SCRATCH:
        return "none"
    return "lung-box" if parse_method(base_method(method)[0])[1] else "none"


def _pool(config: EfficiencyConfig, labelled: FolderDataset, side: np.ndarray) -> Pool:
    test_rows = np.flatnonzero(side == "test")
    ids = resolve_patient_ids(labelled.patient_ids())
    test_patients = sorted({ids[i] for i in test_rows if labelled.patient_ids()[i] is not None})
    test_files = [labelled.records[i].image for i in test_rows]
    dataset = drop_patients(open_sources(config.pool), test_patients)
    if config.pool_limit is not None and len(dataset) > config.pool_limit:
        keep = np.random.default_rng(config.pretrain_seed).permutation(len(dataset))
        dataset = dataset.subset(np.sort(keep[: config.pool_limit]))
    return build_pool(
        dataset,
        config.size,
        mask_source=config.pretrain.get("mask_source", "rules"),
        workers=config.mask_workers,
        exclude_patients=test_patients,
        exclude_files=test_files,
    )


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
    if not np.isfinite(s.ci_low):
        verdict = "not measured"
    elif s.ci_low > 0:
        verdict = "helps"
    elif s.ci_high < 0:
        verdict = "hurts"
    else:
        verdict = "no measurable difference"
    return {"method": method, "k": k, "test": test, **s.as_dict(), "verdict": verdict}


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


def _plot(summary: dict[str, Any], path: Path, k_order: list[str]) -> None:
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
    write_bytes_atomic(path, buf.getvalue())


def _markdown(summary: dict[str, Any], k_order: list[str], rules: dict[str, float]) -> str:
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


def _rules_dice(caches: dict[str, SegCache]) -> dict[str, float]:
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


def run_efficiency(config: EfficiencyConfig, out: str | Path) -> dict[str, Any]:
    """Run (or finish) the study in ``out``; returns the summary written to JSON."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device(config.device))
    labelled = FolderDataset.from_folder(config.labelled, masks=[MASK])
    ids = resolve_patient_ids(labelled.patient_ids(), labelled.files())
    side = make_split(ids, val=config.val, test=config.test, seed=config.split_seed)
    write_split_csv(out / "split.csv", labelled.files(), labelled.patient_ids(), side)
    methods = [SCRATCH, *config.methods]
    crops = {_crop(m) for m in methods}
    caches = {c: load_cache(labelled, config.size, mask=MASK, crop=c) for c in crops}
    for c in caches.values():
        c.patient_ids = list(ids)
    other = {
        name: FolderDataset.from_folder(folder, masks=[MASK])
        for name, folder in config.tests.items()
    }
    other_caches = {
        c: {n: load_cache(ds, config.size, mask=MASK, crop=c) for n, ds in other.items()}
        for c in crops
    }
    timings: dict[str, float] = {"data": time.perf_counter() - t0}

    # Pre-training units, one per base method.
    t = time.perf_counter()
    bases = sorted({base_method(m)[0] for m in config.methods})
    checkpoints: dict[str, str] = {}
    if bases:
        pool = _pool(config, labelled, side)
        log.info("pool: %d images (%d failed)", len(pool), len(pool.failures))

        checkpoints = pretrain_checkpoints(
            pool,
            bases,
            out / "pretrain",
            config.pretrain,
            size=config.size,
            seed=config.pretrain_seed,
            device=device,
            stamp={"limit": config.pool_limit},
        )
    timings["pre-training"] = time.perf_counter() - t

    # Fine-tuning units.
    t = time.perf_counter()
    from cxrssl.study.units import segmentation_unit

    data_files = [p for r in labelled.records for p in (r.image, r.masks[MASK])]
    data_files += [p for ds in other.values() for r in ds.records for p in (r.image, r.masks[MASK])]
    rows: list[dict[str, Any]] = []
    for method in methods:
        base, whole = base_method(method)
        init = checkpoints.get(base)
        crop = _crop(method)
        units = [Unit(method, k, s) for k in config.k_values for s in config.seeds]

        fine = partial(
            segmentation_unit,
            caches[crop],
            side,
            config=config,
            out=out,
            save_predictions=False,
            init=init,
            init_whole=whole,
            tests=other_caches[crop],
        )
        settings = {**config.training_settings(), "split": side.tolist(), "crop": crop}
        data = data_files + ([init] if init else [])
        results = run_units(units, fine, out, settings, data=data, device=device)
        for unit in units:
            res = results[unit.key]
            k = "all" if unit.n_labelled is None else str(unit.n_labelled)
            tests = {"in domain": res["rows"], **res.get("tests", {})}
            for test, test_rows in tests.items():
                rows += [
                    {
                        "method": method,
                        "k": k,
                        "seed": unit.seed,
                        "test": test,
                        "file": r["file"],
                        "dice": r["dice"],
                    }
                    for r in test_rows
                ]
    timings["fine-tuning"] = time.perf_counter() - t

    patients = {r.name: pid for r, pid in zip(labelled.records, ids, strict=True)}
    summary = summarise_units(rows, patients)
    k_order = ["all" if k is None else str(k) for k in config.k_values]
    summary["rules"] = _rules_dice(
        {"in domain": caches["none"].subset(np.flatnonzero(side == "test")), **other_caches["none"]}
    )
    summary["config"] = asdict(config)
    summary["timings"] = {**timings, "total": time.perf_counter() - t0}
    summary["device"] = device
    with atomic_open(out / "efficiency.csv", "w") as fh:
        writer = csv.DictWriter(fh, ["method", "k", "seed", "test", "file", "dice"])
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomic(out / "efficiency.json", summary)
    write_text_atomic(out / "efficiency.md", _markdown(summary, k_order, summary["rules"]))
    _plot(summary, out / "efficiency.png", k_order)
    return summary
