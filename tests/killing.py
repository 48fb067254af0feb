"""``kill -9`` of a ``python -m cxrssl`` run at a chosen moment (the fault tests' helper)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

KILL_TIMEOUT_S = 120.0


def run_and_kill(argv: list[str], ready: Callable[[], bool], log: Path) -> bool:
    """Start ``python -m cxrssl ARGV`` and SIGKILL it as soon as ``ready()`` holds (polled
    every 5 ms). Returns whether the kill landed before the run ended on its own."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxrssl", *argv], stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while proc.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        code = proc.wait()
    return code == -signal.SIGKILL
