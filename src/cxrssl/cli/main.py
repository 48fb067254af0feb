"""Entry point of the ``cxrssl`` command.

Each verb module under ``cxrssl.cli`` exposes ``register(subparsers)``, which adds its
sub-command(s) with ``set_defaults(func=...)``; ``func(args) -> int`` returns the exit code.
Exit codes: 0 success, 1 the job ran but some inputs failed, 2 a user error (``CxrsslError``),
130 interrupted, 141 output closed by its reader (``| head``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from cxrssl import __version__
from cxrssl.errors import CxrsslError

# Verb -> the module registering it, in the order of the data path. Only the module of the
# verb given is imported, so ``cxrssl masks`` starts without loading torch.
VERBS = {
    "data": "data",
    "masks": "masks",
    "grow-masks": "lesions",
    "simulate-nodules": "lesions",
    "drr": "volume",
    "ct-stacks": "volume",
    "pretrain": "pretrain",
    "train-seg": "train",
    "train-lesion": "train",
    "predict": "train",
    "train-cls": "classify",
    "predict-cls": "classify",
    "evaluate-masks": "evaluate",
    "train-detector": "detector",
    "detect-nodules": "detector",
    "evaluate-detections": "detections",
    "compare-runs": "evaluate",
    "study": "demo",
    "demo": "demo",
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: with ``verb``, only that verb's module; else every verb."""
    parser = argparse.ArgumentParser(
        prog="cxrssl",
        description="Label-efficient chest X-ray analysis.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cxrssl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    names = [VERBS[verb]] if verb in VERBS else list(dict.fromkeys(VERBS.values()))
    for name in names:
        importlib.import_module(f"cxrssl.cli.{name}").register(sub)
    return parser


def _format_warning(
    message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any
) -> str:
    """cxrssl's own warnings on one line (a data problem, not a code location)."""
    if category.__module__.startswith("cxrssl"):
        return f"cxrssl: warning: {message}\n"
    return _default_format(message, category, *args, **kwargs)


_default_format = warnings.formatwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cxrssl``; returns the exit code (also used as the console-script entry)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    args.argv = argv  # the command line, for reports that say how to reproduce them
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.formatwarning = _format_warning
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
        return code
    except CxrsslError as err:
        if args.debug:
            raise
        print(f"cxrssl: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("cxrssl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cxrssl ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
