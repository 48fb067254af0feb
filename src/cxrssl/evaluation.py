"""Compare a folder of predicted masks with a folder of reference masks, file by file."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from cxrssl.data.datasets import index_files, read_patient_ids
from cxrssl.errors import CxrsslError, DatasetError
from cxrssl.files import write_text_atomic
from cxrssl.io import IMAGE_SUFFIXES, read_mask
from cxrssl.metrics import (
    DEFAULT_EMPTY,
    Summary,
    aggregate,
    binary_metrics,
    check_empty,
    convention_note,
    summarise,
)
from cxrssl.parallel import pool_context

log = logging.getLogger(__name__)


@dataclass
class MaskEvaluation:
    """Per-image metric rows, their summary (under the empty-mask convention ``empty``;
    CIs over patients when ids were given), and the files that could not be paired."""

    rows: list[dict[str, float | str]]
    summary: dict[str, Summary]
    empty: str = DEFAULT_EMPTY
    missing: list[str] = field(default_factory=list)  # reference masks with no prediction
    extra: list[str] = field(default_factory=list)  # predictions with no reference mask
    failed: dict[str, str] = field(default_factory=dict)  # stem -> reason


def _pair_metrics(pair: tuple[Path, Path], empty: str) -> dict[str, float] | str:
    """Metrics of one (reference, prediction) pair, or the reason it failed."""
    true_path, pred_path = pair
    try:
        y = read_mask(true_path)
        return binary_metrics(read_mask(pred_path, shape=y.shape), y, empty=empty)
    except CxrsslError as err:
        return str(err)


def evaluate_mask_folders(
    pred_dir: Path,
    true_dir: Path,
    workers: int = 1,
    empty: str = DEFAULT_EMPTY,
    patients: Path | None = None,
) -> MaskEvaluation:
    """Pair masks by file stem and compute every metric per image.

    Args:
        pred_dir: predicted masks (any image format, binary).
        true_dir: reference masks, same stems.
        workers: processes used for the per-image metrics.
        empty: empty-mask convention (``cxrssl.metrics``): ``"nan"`` leaves an undefined
            value (both masks empty, say) out of the mean and counts it in ``n_nan``.
        patients: a CSV with file and patient id columns (a labels or split CSV): the CIs
            are then bootstrapped over patients.

    Raises:
        DatasetError: a folder is missing, no stem appears in both, or a bad patients CSV.
    """
    check_empty(empty)
    preds = index_files(Path(pred_dir), IMAGE_SUFFIXES)
    trues = index_files(Path(true_dir), IMAGE_SUFFIXES)
    stems = sorted(set(preds) & set(trues))
    if not stems:
        raise DatasetError(f"{pred_dir} and {true_dir} share no mask file stem")
    pairs = [(trues[s], preds[s]) for s in stems]
    score = partial(_pair_metrics, empty=empty)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
            results = list(pool.map(score, pairs, chunksize=16))
    else:
        results = [score(p) for p in pairs]
    ids = read_patient_ids(patients, {s: trues[s] for s in stems}) if patients else {}
    rows: list[dict[str, float | str]] = []
    failed: dict[str, str] = {}
    for stem, result in zip(stems, results, strict=True):
        if isinstance(result, str):
            failed[stem] = result
        else:
            rows.append(
                {"file": stem, **({"patient_id": ids[stem] or ""} if ids else {}), **result}
            )
    numeric = [{k: float(v) for k, v in r.items() if k not in ("file", "patient_id")} for r in rows]
    groups = [r["patient_id"] for r in rows] if ids else None
    return MaskEvaluation(
        rows=rows,
        summary=summarise(numeric, groups=groups) if numeric else {},
        empty=empty,
        missing=sorted(set(trues) - set(preds)),
        extra=sorted(set(preds) - set(trues)),
        failed=failed,
    )


def write_rows_csv(path: Path, rows: Iterable[dict[str, float | str]]) -> None:
    """Per-image rows as CSV (atomic)."""
    rows = list(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["file"])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(Path(path), buf.getvalue())


def write_json(path: Path, evaluation: MaskEvaluation) -> None:
    """Summary, per-image rows and unpaired files as JSON (atomic)."""
    payload = {
        "empty_convention": convention_note(evaluation.empty),
        "summary": {k: v.as_dict() for k, v in evaluation.summary.items()},
        "rows": evaluation.rows,
        "missing": evaluation.missing,
        "extra": evaluation.extra,
        "failed": evaluation.failed,
    }
    write_text_atomic(Path(path), json.dumps(payload, indent=2))


PER_IMAGE = "per_image.csv"


def _per_image(run: Path) -> dict[str, dict[str, str]]:
    """A run folder's ``per_image.csv`` rows by file."""
    path = Path(run) / PER_IMAGE
    if not path.is_file():
        raise DatasetError(f"{run}: no {PER_IMAGE} (a train-seg or train-lesion run folder?)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file" not in rows[0]:
        raise DatasetError(f"{path}: no per-image rows with a 'file' column")
    summary = Path(run) / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("complete") is False:
        log.warning("%s is not complete: only the folds it has scored are compared", run)
    return {r["file"]: r for r in rows}


def compare_runs(
    run: Path, reference: Path, metrics: Iterable[str] = ("dice",), seed: int = 0
) -> dict[str, Summary]:
    """Paired per-image differences ``run - reference`` of each metric, over the images both
    runs scored, with 95 % CIs bootstrapped over patients (``patient_id``; an image without
    one is its own patient). Images an image-level NaN leaves undefined in either run are left
    out and counted in ``n_nan``.

    Raises:
        DatasetError: a folder without ``per_image.csv``, no image in common, a metric not
            in both runs, or an image the two runs scored in different folds (their folds
            are not the same split: train both with the same ``--seed`` and ``--folds``).
    """
    mine, ref = _per_image(run), _per_image(reference)
    files = sorted(set(mine) & set(ref))
    if not files:
        raise DatasetError(f"{run} and {reference} scored no image in common")
    moved = [f for f in files if mine[f].get("fold") != ref[f].get("fold")]
    if moved:
        raise DatasetError(
            f"{len(moved)} image(s) were scored in different folds ({moved[0]}: fold "
            f"{mine[moved[0]].get('fold')} against {ref[moved[0]].get('fold')}): the runs did "
            "not share their folds; train both with the same --seed and --folds"
        )
    groups = [mine[f].get("patient_id") or f for f in files]
    out: dict[str, Summary] = {}
    for name in metrics:
        if name not in mine[files[0]] or name not in ref[files[0]]:
            raise DatasetError(f"metric {name!r} is not in both runs' {PER_IMAGE}")
        diffs = [float(mine[f][name] or "nan") - float(ref[f][name] or "nan") for f in files]
        out[name] = aggregate(diffs, seed=seed, groups=groups)
    return out
