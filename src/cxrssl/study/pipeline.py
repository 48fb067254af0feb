"""The study that ``cxrssl demo`` and ``cxrssl study`` run: rule-based anatomy, pre-training,
few-label fine-tuning beside scratch, and the report.

Protocol:

1. The labelled set is split by patient into train / val / test. K images are drawn from the
   training patients per seed (each seed its own draw, shared by every method, so differences
   are paired); validation chooses the epoch and threshold; test patients score.
2. The rule-based lungs of every image are scored against the expert masks (no training).
3. The pool (``pool`` folders, or the labelled set's images outside the test patients) never
   holds a test patient: they are dropped, then ``build_pool`` refuses test patients and
   copies of test images by content. No pool mask is read.
4. One pre-training unit per method writes a checkpoint; fine-tuning units (method, K, seed)
   start from it (the encoder, or the whole U-Net for ``medsass-whole``) and are scored on the
   labelled test patients and on every other test set. ``scratch`` is the reference.
5. Every unit is cached by fingerprint (``cxrssl.study.runner``): settings, data content,
   code. A fine-tuning unit's data includes its checkpoint, so a re-run pre-training
   recomputes the fine-tunes that used it and nothing else.

Outputs: ``report.html`` (with ``report.json`` and ``summary.md``), ``efficiency.csv`` (one
row per unit, test set and image), ``efficiency.json``, ``efficiency.md``, ``efficiency.png``,
``split.csv``, ``units/``, ``pretrain/<method>/`` and ``predictions/`` of the gallery units.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cxrssl.data.datasets import FolderDataset, sample
from cxrssl.data.pool import Pool, build_pool, drop_patients, open_sources
from cxrssl.data.splits import make_split, resolve_patient_ids, write_split_csv
from cxrssl.files import atomic_open, write_bytes_atomic, write_text_atomic
from cxrssl.metrics import convention_note
from cxrssl.study import efficiency as eff
from cxrssl.study.config import StudyConfig
from cxrssl.study.pretrain_units import pretrain_checkpoints
from cxrssl.study.report import write_report
from cxrssl.study.runner import Unit, run_units, write_json_atomic
from cxrssl.study.sections import (
    MASK,
    data_summary,
    environment,
    prediction_gallery,
    rules_section,
)
from cxrssl.tasks.seg_data import load_cache
from cxrssl.train import resolve_device

log = logging.getLogger(__name__)
SAMPLE = "built-in CC BY sample"


def resolve_paths(config: StudyConfig, data: Path | None) -> StudyConfig:
    """``labelled``, ``pool`` and ``tests`` made absolute against ``data`` (default: the
    current folder); an empty ``labelled`` becomes ``data`` (or stays empty: the sample)."""
    base = Path.cwd() if data is None else Path(data)

    def at(path: str) -> str:
        return str(base / path)

    labelled = at(config.labelled) if config.labelled else ("" if data is None else str(data))
    return dataclasses.replace(
        config,
        labelled=labelled,
        pool=[at(p) for p in config.pool],
        tests={name: at(p) for name, p in config.tests.items()},
    )


def _pool(config: StudyConfig, labelled: FolderDataset, ids: list[str], side: np.ndarray) -> Pool:
    test_rows = np.flatnonzero(side == "test")
    test_patients = sorted({ids[i] for i in test_rows})
    test_files = [labelled.records[i].image for i in test_rows]
    if config.pool:
        dataset = drop_patients(open_sources(config.pool), test_patients)
    else:
        dataset = labelled.subset(np.flatnonzero(side != "test"))
    if config.pool_limit is not None and len(dataset) > config.pool_limit:
        keep = np.random.default_rng(config.pretrain_seed).permutation(len(dataset))
        dataset = dataset.subset(np.sort(keep[: config.pool_limit]))
    return build_pool(
        dataset,
        config.size,
        mask_source=config.pretrain.get("mask_source", "rules"),
        workers=config.mask_workers,
        progress=config.progress,
        exclude_patients=test_patients,
        exclude_files=test_files,
    )


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """While the progress bar runs: cxrssl's per-epoch lines off (warnings still show)."""
    logger = logging.getLogger("cxrssl")
    level = logger.level
    if enabled:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _pretrain_budget(config: StudyConfig) -> str:
    from cxrssl.tasks.pretraining import PretrainConfig

    defaults = PretrainConfig()
    epochs = config.pretrain.get("epochs", defaults.epochs)
    batch = config.pretrain.get("batch_size", defaults.batch_size)
    return f"{epochs} epochs of batch {batch}"


def _k(n: int | None) -> str:
    return "all" if n is None else str(n)


def _rules_lines(
    rules: dict[str, Any], masked: FolderDataset, side: np.ndarray, other: dict[str, Any]
) -> dict[str, float]:
    """Mean Dice of the default rule-based lungs on each test set (the plot's grey line)."""
    out: dict[str, float] = {}
    per_image = rules.get("per_image", {}).get("default")
    if per_image:
        test = {r.name for r, s in zip(masked.records, side, strict=True) if s == "test"}
        mine = [d for f, d in zip(rules["files"], per_image, strict=True) if f in test]
        out["in domain"] = float(np.nanmean(mine)) if mine else float("nan")
    if other.get("none"):
        out |= eff.rules_dice(other["none"])
    return out


def curves_by_key(curves: dict[tuple[str, str, int], dict[str, list[float]]]) -> dict[str, Any]:
    """Fine-tuning curves keyed ``method__kK__seedS`` (JSON keys)."""
    return {f"{m}__k{k}__seed{s}": c for (m, k, s), c in curves.items()}


def _fine_tune(
    config: StudyConfig,
    methods: list[str],
    pretrained: dict[str, dict[str, Any]],
    caches: dict[str, Any],
    other_caches: dict[str, dict[str, Any]],
    side: np.ndarray,
    masked: FolderDataset,
    other: dict[str, FolderDataset],
    out: Path,
    device: str,
    bar: Any,
) -> tuple[
    list[dict[str, Any]], dict[tuple[str, str, int], dict[str, list[float]]], dict[str, Any]
]:
    """Every fine-tuning unit; returns the per-image rows, the curves and, per method, the
    best / median / worst overlays of its smallest-K, first-seed unit."""
    from cxrssl.study.units import segmentation_unit

    data_files = [p for r in masked.records for p in (r.image, r.masks[MASK])]
    data_files += [p for ds in other.values() for r in ds.records for p in (r.image, r.masks[MASK])]
    gallery_k, gallery_seed = config.k_values[0], config.seeds[0]
    rows: list[dict[str, Any]] = []
    curves: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    galleries: dict[str, Any] = {}
    for method in methods:
        base, whole = eff.base_method(method)
        init = pretrained[base]["checkpoint"] if base in pretrained else None
        crop = eff.crop_of(method)
        units = [Unit(method, k, s) for k in config.k_values for s in config.seeds]

        def compute(
            unit: Unit, init: str | None = init, whole: bool = whole, crop: str = crop
        ) -> dict[str, Any]:
            return segmentation_unit(
                caches[crop],
                side,
                unit,
                config,
                out,
                (unit.n_labelled, unit.seed) == (gallery_k, gallery_seed),
                init=init,
                init_whole=whole,
                tests=other_caches[crop],
            )

        settings = {**config.training_settings(), "split": side.tolist(), "crop": crop}
        data = data_files + ([init] if init else [])
        results = run_units(units, compute, out, settings, data=data, device=device, bar=bar)
        for unit in units:
            res = results[unit.key]
            k = _k(unit.n_labelled)
            curves[(method, k, unit.seed)] = res["curves"]
            for test, test_rows in {"in domain": res["rows"], **res.get("tests", {})}.items():
                rows += [
                    {"method": method, "k": k, "seed": unit.seed, "test": test,
                     "file": r["file"], "dice": r["dice"]}
                    for r in test_rows
                ]  # fmt: skip
            if (unit.n_labelled, unit.seed) == (gallery_k, gallery_seed):
                label = f"{method}, K = {k}"
                galleries[method] = {
                    "unit": unit.key,
                    "items": prediction_gallery(
                        masked, res["rows"], out / "predictions" / unit.key, config.gallery, label
                    ),
                }
    return rows, curves, galleries


def run_study(
    config: StudyConfig,
    out: str | Path,
    data: Path | None = None,
    command: str = "cxrssl study",
) -> dict[str, Path]:
    """Run (or finish) the study in ``out`` and write its report.

    Args:
        config: The settings (paths relative to ``data``).
        out: The study folder; finished units in it are reused.
        data: The user's folder (the labelled set when ``labelled`` is empty), and the root
            of relative paths; None: the built-in sample.
        command: The command line, printed in the report to reproduce it.

    Returns:
        Paths of ``report.html``, ``report.json`` and ``summary.md``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = resolve_paths(config, data)
    labelled = sample() if not config.labelled else FolderDataset.from_folder(config.labelled)
    name = SAMPLE if not config.labelled else config.labelled
    ids = resolve_patient_ids(labelled.patient_ids(), labelled.files())
    side = make_split(ids, val=config.val, test=config.test, seed=config.split_seed)
    write_split_csv(out / "split.csv", labelled.files(), labelled.patient_ids(), side)
    device = str(resolve_device(config.device))
    study: dict[str, Any] = {
        "title": f"cxrssl study: {name}",
        "command": command,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(device),
        "data": data_summary(labelled, ids, side, name),
        "config": dataclasses.asdict(config),
        "skipped": [],
    }
    timings = {"read and split": time.perf_counter() - t0}

    t = time.perf_counter()
    log.info("rule-based masks for %d images (%s)", len(labelled), ", ".join(config.rules))
    study["rules"], skipped, study["anatomy"] = rules_section(
        labelled, config.rules, config.gallery
    )
    study["skipped"] += skipped
    timings["rule-based masks"] = time.perf_counter() - t
    with_mask = [i for i, r in enumerate(labelled.records) if MASK in r.masks]
    if not with_mask:
        study["skipped"].append(
            "pre-training and the label-efficiency study: no masks/ folder of expert lung "
            "masks beside images/ (fine-tuning needs labels to train and score)"
        )
        study["timings"] = {**timings, "total": time.perf_counter() - t0}
        return write_report(study, out)

    masked = labelled.subset(with_mask)
    mids, mside = [ids[i] for i in with_mask], side[with_mask]
    methods = [eff.SCRATCH, *config.methods]
    bases = sorted({eff.base_method(m)[0] for m in config.methods})
    crops = {eff.crop_of(m) for m in methods}
    caches = {c: load_cache(masked, config.size, mask=MASK, crop=c) for c in crops}
    for c in caches.values():
        c.patient_ids = list(mids)
    other = {n: FolderDataset.from_folder(f, masks=[MASK]) for n, f in config.tests.items()}
    other_caches = {
        c: {n: load_cache(ds, config.size, mask=MASK, crop=c) for n, ds in other.items()}
        for c in crops
    }
    timings["caches"] = time.perf_counter() - t
    n_fine = len(methods) * len(config.k_values) * len(config.seeds)
    n_units = len(bases) + n_fine
    log.info(
        "plan: %d pre-training unit(s) (%s; %s), %d fine-tuning units (%s x K %s x seeds %s, "
        "%d steps of %d) at %d px on %s; finished units in %s are reused",
        len(bases), ", ".join(bases) or "none", _pretrain_budget(config), n_fine,
        ", ".join(methods), [_k(k) for k in config.k_values], config.seeds, config.steps,
        config.batch_size, config.size, device, out / "units",
    )  # fmt: skip
    bar = tqdm(total=n_units, desc="study", unit="unit", disable=not config.progress)
    with bar, _quiet(config.progress):
        t = time.perf_counter()
        pretrained: dict[str, dict[str, Any]] = {}
        if bases:
            pool = _pool(config, labelled, ids, side)
            bar.write(f"pool: {len(pool)} images ({len(pool.failures)} failed)")
            pretrained = pretrain_checkpoints(
                pool,
                bases,
                out / "pretrain",
                config.pretrain,
                size=config.size,
                seed=config.pretrain_seed,
                device=device,
                stamp={"limit": config.pool_limit},
                bar=bar,
            )
        timings["pre-training"] = time.perf_counter() - t
        t = time.perf_counter()
        rows, curves, galleries = _fine_tune(
            config,
            methods,
            pretrained,
            caches,
            other_caches,
            mside,
            masked,
            other,
            out,
            device,
            bar,
        )
        timings["fine-tuning"] = time.perf_counter() - t

    patients = {r.name: pid for r, pid in zip(masked.records, mids, strict=True)}
    summary = eff.summarise_units(rows, patients)
    k_order = [_k(k) for k in config.k_values]
    summary["rules"] = _rules_lines(study["rules"], masked, mside, other_caches)
    summary["epochs"] = eff.epochs_to_reach({key: c["val_dice"] for key, c in curves.items()})
    summary["k_order"] = k_order
    summary["note"] = (
        "Dice on the held-out test patients' images at each image's original size (and on "
        "each other test set); mean ± std over seeds (each seed draws its own K images, "
        "shared by every method). Differences are paired with scratch (same image, K draw "
        "and seed), averaged over seeds, with a 95 % CI bootstrapped over patients: it "
        "reflects these images for these draws, the std the spread between draws. "
        + convention_note()
    )
    with atomic_open(out / "efficiency.csv", "w") as fh:
        writer = csv.DictWriter(fh, ["method", "k", "seed", "test", "file", "dice"])
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomic(out / "efficiency.json", {**summary, "config": study["config"]})
    write_text_atomic(out / "efficiency.md", eff.markdown(summary, k_order, summary["rules"]))
    png = eff.plot(summary, k_order)
    write_bytes_atomic(out / "efficiency.png", png)
    study["efficiency"] = {**summary, "png": png}
    study["pretraining"] = {
        m: {
            "history": r["history"],
            "pool": r["pool"],
            "views": Path(r["views"]).read_bytes() if Path(r["views"]).is_file() else b"",
        }
        for m, r in pretrained.items()
    }
    study["curves"] = curves_by_key(curves)
    study["predictions"] = galleries
    study["timings"] = {**timings, "total": time.perf_counter() - t0}
    return write_report(study, out)
