"""The one exception family a user can cause, each naming what went wrong and where."""

from __future__ import annotations

from pathlib import Path


class CxrsslError(Exception):
    """Base class of every error a user can cause; the CLI prints its message, exit code 2."""

    exit_code = 2


class ImageReadError(CxrsslError):
    """An image or mask file that cannot be read; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DatasetError(CxrsslError):
    """A data set folder, labels table or split that is inconsistent."""


class SplitLeakError(DatasetError):
    """A patient appears on two sides of a split."""
