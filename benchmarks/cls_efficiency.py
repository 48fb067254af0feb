"""The classification label-efficiency study on the real data beside the repository.

    python benchmarks/cls_efficiency.py --config benchmarks/configs/cls_kermany_cpu.yaml \
        --out runs/cls-kermany-cpu

``labelled`` in the config is relative to ``--data`` (default ``../shared/data`` or
``$CXR_DATA_DIR``). Finished units are reused: a killed run continues where it stopped.
Writes ``cls_efficiency.{json,md,png}`` in ``--out`` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from cxrssl.study.cls_efficiency import ClsStudyConfig, run_cls_efficiency
from cxrssl.study.config import load_settings

DATA = Path(os.environ.get("CXR_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    config = load_settings(args.config, ClsStudyConfig)
    config.labelled = str(args.data / config.labelled)
    if args.device:
        config.device = args.device
    run_cls_efficiency(config, args.out)
    print((args.out / "cls_efficiency.md").read_text())


if __name__ == "__main__":
    main()
