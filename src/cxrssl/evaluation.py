"""Compare a folder of predicted masks with a folder of reference masks, file by file."""

from __future__ import annotations

import csv
import io
import json
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
    binary_metrics,
    check_empty,
    convention_note,
    summarise,
)
from cxrssl.parallel import pool_context


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
