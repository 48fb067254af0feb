"""Lung segmentation on GeneralBlockchain (gb) with and without a v7labs initialisation, and
both models on v7labs patients that neither saw.

v7labs draws the retrocardiac lung, gb does not: a model initialised on v7labs learns the gb
convention while it is fine-tuned on each gb fold. Patients are never shared between parts:

    gb        the 98 gb images whose labels.csv says both lungs are drawn (2 films have one
              lung drawn and the other left as background: has_left/right_lung_mask = 0)
    pool      v7labs images of patients absent from gb, split by patient (seeded) into
    pretrain  half of the pool: the v7labs model is trained on it (all of it, last epoch)
    external  the other half: scored against its v7labs masks (other convention)

Steps (each one a ``cxrssl`` command, printed before it runs; finished steps are skipped):

    pools      OUT/pools/{gb,pretrain,external}/{images,masks,labels.csv} (symbolic links)
    pretrain   cxrssl train-seg --folds 1 --val-fraction 0 on OUT/pools/pretrain
    scratch    cxrssl train-seg on gb, 5 patient folds, from random weights -> OUT/scratch_eE
    init       the same with --init OUT/pretrain/fold_0/best.pt --init-whole -> OUT/init_eE
    external   cxrssl predict (5-fold ensemble) + cxrssl evaluate-masks on OUT/pools/external

    .venv/bin/python benchmarks/lung_transfer.py --out /tmp/lt
    .venv/bin/python benchmarks/lung_transfer.py --out /tmp/lt --steps init external --epochs 40
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
from pathlib import Path

from cxrssl.data.splits import make_split

STEPS = ("pools", "pretrain", "scratch", "init", "external")


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def _link(rows: list[dict[str, str]], source: Path, root: Path) -> int:
    """Link the images and masks of ``rows`` from ``source`` into ``root``, with a
    labels.csv of file names and patient ids."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for r in rows:
            link = root / sub / r["filename"]
            if not link.exists():
                link.symlink_to((source / sub / r["filename"]).resolve())
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["filename", "patient_id"])
        writer.writeheader()
        writer.writerows({"filename": r["filename"], "patient_id": r["patient_id"]} for r in rows)
    return len(rows)


def make_pools(v7: Path, gb: Path, out: Path, seed: int) -> dict[str, int]:
    """Link the parts (module doc) into ``out``; returns the number of images in each."""
    gb_rows = _rows(gb)
    seen = {r["patient_id"] for r in gb_rows}
    rows = [r for r in _rows(v7) if r["patient_id"] not in seen and r["patient_id"]]
    side = make_split([r["patient_id"] for r in rows], val=0.5, test=0.0, seed=seed)
    counts = {
        name: _link([r for r, s in zip(rows, side, strict=True) if s == pick], v7, out / name)
        for name, pick in (("pretrain", "train"), ("external", "val"))
    }
    both = [r for r in gb_rows if r["has_left_lung_mask"] == r["has_right_lung_mask"] == "1"]
    counts["gb"] = _link(both, gb, out / "gb")
    pids = [{r["patient_id"] for r in _rows(out / n)} for n in ("pretrain", "external", "gb")]
    assert not pids[0] & pids[1] and not (pids[0] | pids[1]) & pids[2]
    return counts


def _cxrssl(*args: str) -> None:
    cmd = [sys.executable, "-m", "cxrssl", *args]
    print("$ " + shlex.join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("CXR_DATA_DIR", shared)), help="data"
    )
    parser.add_argument("--out", type=Path, required=True, help="work folder")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=12, help="gb epochs per fold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    gb, v7, out = args.data / "ieee8023_generalblockchain", args.data / "ieee8023_v7labs", args.out
    common = ("--device", args.device, "--seed", str(args.seed), "--no-progress", "--resume")
    pool, ext = out / "pools" / "pretrain", out / "pools" / "external"
    if "pools" in args.steps:
        print(make_pools(v7, gb, out / "pools", args.seed))
    if "pretrain" in args.steps:
        _cxrssl(
            "train-seg",
            *("--images", str(pool / "images"), "--masks", str(pool / "masks")),
            *("--out", str(out / "pretrain"), "--folds", "1", "--val-fraction", "0"),
            *("--epochs", str(args.pretrain_epochs), *common),
        )
    init = ("--init", str(out / "pretrain" / "fold_0" / "best.pt"), "--init-whole")
    runs = {f"{name}_e{args.epochs}": name for name in ("scratch", "init")}
    for run, name in runs.items():
        if name in args.steps:
            _cxrssl(
                "train-seg",
                *(
                    "--images",
                    str(out / "pools" / "gb" / "images"),
                    "--masks",
                    str(out / "pools" / "gb" / "masks"),
                ),
                *("--out", str(out / run), "--epochs", str(args.epochs), *common),
                *(init if name == "init" else ()),
            )
    if "external" in args.steps:
        for run in runs:
            if (out / run / "summary.json").is_file():
                pred = out / "external" / run
                _cxrssl("predict", str(out / run), str(ext / "images"), str(pred))
                _cxrssl("evaluate-masks", str(pred), str(ext / "masks"))


if __name__ == "__main__":
    main()
