"""Process pools that are safe beside PyTorch.

Forking a process whose OpenMP or BLAS threads have already run (any torch, MONAI or
OpenCV work) can deadlock the child. Pools here start their workers from a clean
``forkserver`` process instead, which costs a little start-up and never hangs.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext


def pool_context() -> BaseContext:
    """The multiprocessing context every cxrssl process pool uses."""
    return multiprocessing.get_context("forkserver")
