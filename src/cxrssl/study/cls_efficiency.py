"""The classification label-efficiency study: does pre-training (or the lung-box crop) raise
AUC at 1 %, 10 % and 100 % of the training labels, against training from scratch?

Protocol (the README runs it on ``kermany_pneumonia``):

1. One patient-level split (``split_seed``) for every unit: test patients score, validation
   patients choose epoch, temperature and thresholds (``cxrssl.tasks.classification``).
2. Per seed, a stratified draw of the training patients at each fraction, shared by every
   method, so differences are paired.
3. Pre-training units (one per method, seed ``pretrain_seed``) read the images of the
   non-test patients only, labels unused (at most ``pool_limit``, a seeded draw).
4. Methods: ``scratch``; ``lung-box`` (scratch with the seed's option-4 crop); any
   ``cxrssl.ssl`` method (its encoder initialises the classifier; a ``lung-crop`` method's
   crop follows its checkpoint).
5. Each method's AUC difference from scratch at each fraction, averaged over seeds, gets a
   95 % CI from a bootstrap over test patients and a verdict: "helps", "no measurable
   difference" or "hurts".

Every unit is cached by fingerprint (settings, data content, code: ``cxrssl.study.runner``);
a killed study continues where it stopped. Outputs: ``cls_efficiency.json``, ``.md``, ``.png``.
"""

from __future__ import annotations

import csv
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_auc_score

from cxrssl.files import write_text_atomic
from cxrssl.metrics import verdict
from cxrssl.study.pretrain_units import pretrain_checkpoints
from cxrssl.study.runner import Unit, run_units, write_json_atomic
from cxrssl.tasks.classification import ClsConfig, assign, train_cls
from cxrssl.tasks.cls_data import build_data, open_labelled, select_labels
from cxrssl.train import resolve_device

log = logging.getLogger(__name__)

SCRATCH = "scratch"
CROP_ONLY = "lung-box"  # scratch with the lung-box crop
CLS_CODE = ("cxrssl.tasks.classification",)


@dataclass
class ClsStudyConfig:
    """A classification label-efficiency study (YAML/JSON keys).

    Attributes:
        labelled: Folder of the labelled set (any layout ``cxrssl data`` reads).
        label_columns: Labels to learn.
        methods: ``lung-box`` and ``cxrssl.ssl`` method names; ``scratch`` always runs.
        fractions: Shares of the training patients' labels.
        seeds: Seeds of the label draw and the training.
        size: Input side (pool canvas), the same for pre-training and fine-tuning.
        model: Encoder of every classifier (``unet`` loads MedSASS).
        classify: Other ``ClsConfig`` keys of every fine-tuning unit.
        pretrain: ``PretrainConfig`` keys of every pre-training unit.
        pretrain_seed: Seed of the pre-training units.
        pool_limit: Pre-train on at most this many non-test images.
        split_seed: Seed of the patient split.
        n_boot: Bootstrap resamples of the paired differences.
        mask_workers: Processes computing the pool's rule-based maps.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    labelled: str = ""
    label_columns: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: [CROP_ONLY, "lung-crop", "medsass"])
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    size: int = 64
    model: str = "unet"
    classify: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=dict)
    pretrain_seed: int = 0
    pool_limit: int | None = None
    split_seed: int = 0
    n_boot: int = 500
    mask_workers: int = 1
    device: str = "auto"


def _cls_config(config: ClsStudyConfig, device: str) -> ClsConfig:
    keys = {"progress": False, "tensorboard": False, "n_boot": 200, **config.classify}
    return ClsConfig(
        **{**keys, "model": config.model, "size": config.size, "split_seed": config.split_seed},
        mask_workers=config.mask_workers,
        device=device,
    )


def paired_auc(
    mine: list[np.ndarray],
    ref: list[np.ndarray],
    labels: np.ndarray,
    patients: list[str],
    n_boot: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean over seeds of AUC(mine) - AUC(ref) on the same images, with a percentile CI from
    resampling patients (every seed's pair on the same resample).

    Args:
        mine: per seed, the scores (N,) of the method.
        ref: per seed, the scores (N,) of the reference, rows aligned with ``mine``.
        labels: (N,) 0/1.
        patients: (N,) patient ids.
    """
    y = np.asarray(labels, np.float64)

    def diff(rows: np.ndarray) -> float:
        if not 0 < y[rows].sum() < rows.size:
            return float("nan")
        return float(
            np.mean(
                [
                    roc_auc_score(y[rows], m[rows]) - roc_auc_score(y[rows], r[rows])
                    for m, r in zip(mine, ref, strict=True)
                ]
            )
        )

    _, cluster = np.unique(np.asarray(patients), return_inverse=True)
    members = [np.flatnonzero(cluster == c) for c in range(cluster.max() + 1)]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(members), len(members))
        boots.append(diff(np.concatenate([members[c] for c in drawn])))
    finite = np.array([b for b in boots if np.isfinite(b)])
    low, high = np.quantile(finite, [0.025, 0.975]) if finite.size else (np.nan, np.nan)
    return {
        "mean": diff(np.arange(y.size)),
        "ci_low": float(low),
        "ci_high": float(high),
        "n_patients": len(members),
        "verdict": verdict(float(low), float(high)),
    }


def _read_scores(run: Path, label: str) -> dict[str, tuple[float, float, str]]:
    """file -> (label, calibrated probability, patient) of a run's scored images."""
    with (run / "predictions.csv").open() as f:
        return {
            r["file"]: (float(r[f"label_{label}"]), float(r[f"prob_{label}"]), r["patient_id"])
            for r in csv.DictReader(f)
        }


def _plot(points: list[dict[str, Any]], path: Path, fractions: list[float]) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in dict.fromkeys(p["method"] for p in points):
        mine = {p["fraction"]: p for p in points if p["method"] == method}
        xs = [f for f in fractions if f in mine]
        ax.errorbar(
            [100 * f for f in xs],
            [mine[f]["mean"] for f in xs],
            yerr=[mine[f]["std"] for f in xs],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.set_xscale("log")
    ax.set_xticks([100 * f for f in fractions], [f"{100 * f:g} %" for f in fractions])
    ax.set_xlabel("training labels used")
    ax.set_ylabel("test ROC AUC (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(summary: dict[str, Any], fractions: list[float]) -> str:
    head = "| method | " + " | ".join(f"{100 * f:g} % labels" for f in fractions) + " |"
    lines = [head, "|---" * (len(fractions) + 1) + "|"]
    for method in dict.fromkeys(p["method"] for p in summary["points"]):
        cells = []
        for f in fractions:
            p = next(
                (q for q in summary["points"] if q["method"] == method and q["fraction"] == f),
                None,
            )
            d = next(
                (q for q in summary["differences"] if q["method"] == method and q["fraction"] == f),
                None,
            )
            text = f"{p['mean']:.3f} ± {p['std']:.3f}" if p else "–"
            if d:
                text += (
                    f" ({d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], {d['verdict']})"
                )
            cells.append(text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Test ROC AUC, mean ± std over seeds; in brackets the paired difference from scratch "
        "(mean over seeds, 95 % CI bootstrapped over test patients) and its verdict."
    )
    return "\n".join(lines) + "\n"


def run_cls_efficiency(config: ClsStudyConfig, out: str | Path) -> dict[str, Any]:
    """Run (or finish) the study in ``out``; returns the summary written to JSON."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device(config.device))
    base = _cls_config(config, device)
    dataset, labels = select_labels(
        open_labelled(config.labelled, label_columns=config.label_columns),
        config.label_columns,
        base.multiclass,
    )
    data = build_data(dataset, labels, config.size, workers=config.mask_workers, progress=True)
    side = assign(data, base)
    files = [str(p) for p in data.pool.files]
    timings = {"data": time.perf_counter() - t0}

    t = time.perf_counter()
    pre_methods = [m for m in config.methods if m not in (SCRATCH, CROP_ONLY)]
    checkpoints: dict[str, str] = {}
    if pre_methods:
        keep = np.flatnonzero(side != 0)
        if config.pool_limit is not None and keep.size > config.pool_limit:
            rng = np.random.default_rng(config.pretrain_seed)
            keep = np.sort(rng.choice(keep, config.pool_limit, replace=False))
        pool = data.pool.subset(keep)
        test_patients = {data.patient_ids[i] for i in np.flatnonzero(side == 0)}
        assert not test_patients & {data.patient_ids[i] for i in keep}

        pretrained = pretrain_checkpoints(
            pool,
            pre_methods,
            out / "pretrain",
            config.pretrain,
            size=config.size,
            seed=config.pretrain_seed,
            device=device,
            stamp={"limit": config.pool_limit},
        )
        checkpoints = {m: r["checkpoint"] for m, r in pretrained.items()}
    timings["pre-training"] = time.perf_counter() - t

    t = time.perf_counter()
    methods = [SCRATCH, *[m for m in config.methods if m != SCRATCH]]
    runs: dict[tuple[str, float, int], Path] = {}
    for method in methods:
        init = checkpoints.get(method)
        crop = "lung-box" if method == CROP_ONLY else ("none" if init is None else None)

        def fine(unit: Unit, init: str | None = init, crop: str | None = crop) -> dict[str, Any]:
            run = out / "runs" / unit.key
            shutil.rmtree(run, ignore_errors=True)  # a stale or half-finished run
            cc = replace(
                base, init=init, crop=crop, label_fraction=unit.fraction or 1.0, seed=unit.seed
            )
            s = train_cls(config.labelled, run, cc, label_columns=config.label_columns)
            return {
                "run": str(run),
                "mean_auc": s["mean_auc"],
                "per_label": s["per_label"],
                "calibration": s["calibration"],
                "lung_focus": s.get("lung_focus"),
                "n_train": s["folds"][0]["n_train"],
                "crop": s["config"]["crop"],
            }

        units = [Unit(method, None, s, fraction=f) for f in config.fractions for s in config.seeds]
        settings = {"classify": asdict(base), "method": method}
        data_files = files + ([init] if init else [])
        results = run_units(
            units, fine, out, settings, data=data_files, device=device, code=CLS_CODE
        )
        for u in units:
            runs[(method, float(u.fraction or 1.0), u.seed)] = Path(results[u.key]["run"])
    timings["fine-tuning"] = time.perf_counter() - t

    label = labels.names[0]
    points, differences = [], []
    for method in methods:
        for f in config.fractions:
            scores = [_read_scores(runs[(method, f, s)], label) for s in config.seeds]
            aucs = []
            for sc in scores:
                y = np.array([v[0] for v in sc.values()])
                p = np.array([v[1] for v in sc.values()])
                aucs.append(float(roc_auc_score(y, p)))
            points.append(
                {
                    "method": method,
                    "fraction": f,
                    "mean": float(np.mean(aucs)),
                    "std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0,
                    "values": aucs,
                }
            )
            if method == SCRATCH:
                continue
            ref = [_read_scores(runs[(SCRATCH, f, s)], label) for s in config.seeds]
            order = sorted(ref[0])
            differences.append(
                {
                    "method": method,
                    "fraction": f,
                    **paired_auc(
                        [np.array([sc[k][1] for k in order]) for sc in scores],
                        [np.array([sc[k][1] for k in order]) for sc in ref],
                        np.array([ref[0][k][0] for k in order]),
                        [ref[0][k][2] for k in order],
                        config.n_boot,
                    ),
                }
            )
    summary = {
        "label": label,
        "points": points,
        "differences": differences,
        "data": {"images": len(data), "test": int((side == 0).sum())},
        "config": asdict(config),
        "device": device,
        "timings": {**timings, "total": time.perf_counter() - t0},
    }
    write_json_atomic(out / "cls_efficiency.json", summary)
    write_text_atomic(out / "cls_efficiency.md", _markdown(summary, config.fractions))
    _plot(points, out / "cls_efficiency.png", config.fractions)
    return summary


__all__ = ["ClsStudyConfig", "paired_auc", "run_cls_efficiency"]
