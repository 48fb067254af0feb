"""The label-efficiency study of pre-training on the real data beside the repository.

    python benchmarks/label_efficiency.py --config benchmarks/configs/efficiency_cpu.yaml \
        --out runs/efficiency-cpu

Paths in the config (``labelled``, ``pool``, ``tests``) are relative to ``--data``
(default ``../shared/data`` or ``$CXR_DATA_DIR``). Finished units are reused: a killed run
continues where it stopped. Writes ``efficiency.{csv,json,md,png}`` in ``--out`` and prints
the Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from cxrssl.study.config import load_settings
from cxrssl.study.efficiency import EfficiencyConfig, run_efficiency

DATA = Path(os.environ.get("CXR_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    config = load_settings(args.config, EfficiencyConfig)
    config.labelled = str(args.data / config.labelled)
    config.pool = [str(args.data / p) for p in config.pool]
    config.tests = {name: str(args.data / p) for name, p in config.tests.items()}
    if args.device:
        config.device = args.device
    run_efficiency(config, args.out)
    print((args.out / "efficiency.md").read_text())


if __name__ == "__main__":
    main()
