"""Compare a folder of predicted masks with a folder of reference masks, file by file."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cxrssl.data.datasets import index_files
from cxrssl.errors import CxrsslError, DatasetError
from cxrssl.files import write_text_atomic
from cxrssl.io import IMAGE_SUFFIXES, read_mask
from cxrssl.metrics import Summary, binary_metrics, summarise
from cxrssl.parallel import pool_context


@dataclass
class MaskEvaluation:
    """Per-image metric rows, their summary, and the files that could not be paired."""

    rows: list[dict[str, float | str]]
    summary: dict[str, Summary]
    missing: list[str] = field(default_factory=list)  # reference masks with no prediction
    extra: list[str] = field(default_factory=list)  # predictions with no reference mask
    failed: dict[str, str] = field(default_factory=dict)  # stem -> reason


def _pair_metrics(pair: tuple[Path, Path]) -> dict[str, float] | str:
    """Metrics of one (reference, prediction) pair, or the reason it failed."""
    true_path, pred_path = pair
    try:
        y = read_mask(true_path)
        return binary_metrics(read_mask(pred_path, shape=y.shape), y)
    except CxrsslError as err:
        return str(err)


def evaluate_mask_folders(pred_dir: Path, true_dir: Path, workers: int = 1) -> MaskEvaluation:
    """Pair masks by file stem and compute every metric per image.

    Args:
        pred_dir: predicted masks (any image format, binary).
        true_dir: reference masks, same stems.
        workers: processes used for the per-image metrics.

    Raises:
        DatasetError: a folder is missing, or no stem appears in both.
    """
    preds = index_files(Path(pred_dir), IMAGE_SUFFIXES)
    trues = index_files(Path(true_dir), IMAGE_SUFFIXES)
    stems = sorted(set(preds) & set(trues))
    if not stems:
        raise DatasetError(f"{pred_dir} and {true_dir} share no mask file stem")
    pairs = [(trues[s], preds[s]) for s in stems]
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
            results = list(pool.map(_pair_metrics, pairs, chunksize=16))
    else:
        results = [_pair_metrics(p) for p in pairs]
    rows: list[dict[str, float | str]] = []
    failed: dict[str, str] = {}
    for stem, result in zip(stems, results, strict=True):
        if isinstance(result, str):
            failed[stem] = result
        else:
            rows.append({"file": stem, **result})
    numeric = [{k: float(v) for k, v in r.items() if k != "file"} for r in rows]
    return MaskEvaluation(
        rows=rows,
        summary=summarise(numeric) if numeric else {},
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
        "summary": {k: v.as_dict() for k, v in evaluation.summary.items()},
        "rows": evaluation.rows,
        "missing": evaluation.missing,
        "extra": evaluation.extra,
        "failed": evaluation.failed,
    }
    write_text_atomic(Path(path), json.dumps(payload, indent=2))
