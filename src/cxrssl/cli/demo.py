"""``cxrssl demo`` and ``cxrssl study``: the main job, from radiographs to a measured report.

Both run :func:`cxrssl.study.pipeline.run_study`: ``demo`` with the defaults sized for the
built-in sample, ``study`` with a config of methods x K x seeds (examples in ``configs/``).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from cxrssl.study.config import load_config


def register(sub: Any) -> None:
    """Add ``demo`` and ``study`` to the ``cxrssl`` sub-parsers."""
    demo = sub.add_parser(
        "demo",
        help="rule-based anatomy, pre-training, few-label fine-tuning beside scratch, report "
        "(built-in sample by default)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    study = sub.add_parser(
        "study",
        help="the demo's pipeline with a config's methods x K x seeds, on your data",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for p, out in ((demo, "cxrssl-demo"), (study, "cxrssl-study")):
        p.add_argument(
            "--data",
            type=Path,
            default=None,
            help="your folder (images/ with masks/ and labels.csv, or any layout `cxrssl data` "
            "reads): the labelled set unless the config names one, and the root of the "
            "config's relative paths (default: the built-in sample)",
        )
        p.add_argument("--out", type=Path, default=Path(out), help="output folder")
        p.add_argument("--device", default=None, help="auto, cpu or cuda (overrides the config)")
    demo.add_argument("--config", type=Path, default=None, help="YAML/JSON overriding settings")
    study.add_argument("--config", type=Path, required=True, help="YAML/JSON of the settings")
    demo.set_defaults(func=run)
    study.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the study, say how long it may take, and print where the report is."""
    from cxrssl.study.pipeline import run_study

    config = load_config(args.config)
    if args.device:
        config.device = args.device
    command = " ".join(["cxrssl", *(shlex.quote(a) for a in args.argv)])
    paths = run_study(config, args.out, args.data, command=command)
    print(f"report: {paths['html'].resolve()}")
    return 0
