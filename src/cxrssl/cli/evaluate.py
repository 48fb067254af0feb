"""``cxrssl evaluate-masks``: compare predicted masks with reference masks; ``cxrssl
compare-runs``: paired per-image differences between two run folders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cxrssl.evaluation import compare_runs, evaluate_mask_folders, write_json, write_rows_csv
from cxrssl.files import write_text_atomic
from cxrssl.metrics import DEFAULT_EMPTY, EMPTY_CONVENTIONS, convention_note, verdict

_LIST_LIMIT = 10


def register(sub: Any) -> None:
    """Add ``evaluate-masks`` to the ``cxrssl`` sub-parsers."""
    p = sub.add_parser(
        "evaluate-masks",
        help="per-image Dice, IoU, sensitivity, specificity, precision, HD95 of two mask folders",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="predicted masks")
    p.add_argument("true_dir", type=Path, metavar="TRUE_DIR", help="reference masks, same stems")
    p.add_argument("--json", type=Path, default=None, help="write summary and rows as JSON")
    p.add_argument("--csv", type=Path, default=None, help="write one row per image as CSV")
    p.add_argument("--workers", type=int, default=1, help="processes for the metrics")
    p.add_argument(
        "--empty",
        choices=sorted(EMPTY_CONVENTIONS),
        default=DEFAULT_EMPTY,
        help="empty-mask convention: 'nan' leaves an image whose metric is undefined (0/0, "
        "e.g. both masks empty) out of the mean and counts it; 'one' scores it 1",
    )
    p.add_argument(
        "--patients",
        type=Path,
        default=None,
        metavar="CSV",
        help="CSV with file and patient id columns (labels.csv, split.csv): 95%% CIs are "
        "then bootstrapped over patients, not images",
    )
    p.set_defaults(func=run)
    c = sub.add_parser(
        "compare-runs",
        help="paired per-image differences RUN - REFERENCE of two train-seg / train-lesion runs "
        "(same folds), with 95%% CIs bootstrapped over patients and a verdict",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c.add_argument("run", type=Path, metavar="RUN")
    c.add_argument("reference", type=Path, metavar="REFERENCE")
    c.add_argument(
        "--metrics", nargs="+", default=["dice"], help="per_image.csv columns to compare"
    )
    c.add_argument("--json", type=Path, default=None, help="write the differences as JSON")
    c.set_defaults(func=run_compare)


def _list(label: str, names: list[str]) -> None:
    if names:
        shown = ", ".join(names[:_LIST_LIMIT])
        more = f" (+{len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else ""
        print(f"{label} ({len(names)}): {shown}{more}")


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table and the unpaired files; exit 1 when any file was unpaired."""
    ev = evaluate_mask_folders(
        args.pred_dir, args.true_dir, args.workers, args.empty, args.patients
    )
    print(f"{'metric':<12} {'mean ± std':>17} {'95% CI':>17} {'n':>5} {'n_nan':>5}")
    for name, s in ev.summary.items():
        ci = f"[{s.ci_low:.3f}, {s.ci_high:.3f}]"
        print(f"{name:<12} {s.mean:>8.3f} ± {s.std:<6.3f} {ci:>17} {s.n:>5} {s.n_nan:>5}")
    print(convention_note(args.empty))
    patients = next(iter(ev.summary.values())).n_patients if ev.summary else 0
    unit = f"{patients} patients" if patients else "images (no --patients)"
    print(
        f"95% CI: percentile bootstrap over {unit}; detected/clear: share of images with/"
        "without a finding that came out right (n counts them)"
    )
    _list("missing predictions", ev.missing)
    _list("predictions without a reference", ev.extra)
    for stem, reason in ev.failed.items():
        print(f"failed: {stem}: {reason}")
    if args.csv:
        write_rows_csv(args.csv, ev.rows)
        print(f"per-image rows: {args.csv}")
    if args.json:
        write_json(args.json, ev)
        print(f"summary: {args.json}")
    return 1 if (ev.missing or ev.extra or ev.failed) else 0


def run_compare(args: argparse.Namespace) -> int:
    """Print (and write) each metric's paired difference from the reference run."""
    diffs = compare_runs(args.run, args.reference, args.metrics)
    print(f"{args.run} - {args.reference}, per image:")
    print(f"{'metric':<12} {'mean diff':>9} {'95% CI':>19} {'n':>5} {'patients':>8}  verdict")
    out = {}
    for name, s in diffs.items():
        reading = verdict(s.ci_low, s.ci_high)
        ci = f"[{s.ci_low:+.3f}, {s.ci_high:+.3f}]"
        print(f"{name:<12} {s.mean:>+9.3f} {ci:>19} {s.n:>5} {s.n_patients:>8}  {reading}")
        out[name] = {**s.as_dict(), "verdict": reading}
    print("95% CI: percentile bootstrap over patients; images undefined in either run left out")
    if args.json:
        write_text_atomic(args.json, json.dumps(out, indent=2))
        print(f"differences: {args.json}")
    return 0
