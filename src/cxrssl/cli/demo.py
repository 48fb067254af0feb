"""``cxrssl demo``: the main job, from radiographs to a measured HTML report."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from cxrssl.study.config import load_config


def register(sub: Any) -> None:
    """Add ``demo`` to the ``cxrssl`` sub-parsers."""
    p = sub.add_parser(
        "demo",
        help="rule-based masks, label-efficiency curve and report (built-in sample by default)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a folder with images/ and optional masks/ and labels.csv "
        "(default: the built-in sample)",
    )
    p.add_argument("--out", type=Path, default=Path("cxrssl-demo"), help="output folder")
    p.add_argument("--config", type=Path, default=None, help="YAML/JSON overriding settings")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (overrides the config)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the study and print where the report is."""
    from cxrssl.study.demo import run_demo

    config = load_config(args.config)
    if args.device:
        config.device = args.device
    command = " ".join(["cxrssl", *(shlex.quote(a) for a in args.argv)])
    paths = run_demo(config, args.out, args.data, command=command)
    print(f"report: {paths['html'].resolve()}")
    return 0
