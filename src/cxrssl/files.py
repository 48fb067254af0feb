"""Atomic file writes: a temporary file beside the target, renamed over it when complete.

A killed run never leaves a half-written mask, CSV, report or checkpoint behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_SUFFIX = ".tmp"


def _prefix(path: Path) -> str:
    return f".{path.name}."


def remove_partial(path: str | Path) -> int:
    """Remove the temporary siblings of ``path`` that a writer killed mid-write left
    behind (``.NAME.*.tmp``); returns how many. Call it only when nothing writes ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    stale = list(path.parent.glob(f"{glob.escape(_prefix(path))}*{_SUFFIX}"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", fsync: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    Args:
        path: the file to write (parent folders are created).
        mode: ``"w"`` (text, UTF-8, no newline translation) or ``"wb"``.
        fsync: flush to disk before the rename (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=_SUFFIX)
    try:
        binary = "b" in mode
        encoding, newline = (None, None) if binary else ("utf-8", "")
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)
