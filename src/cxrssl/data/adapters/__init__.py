"""Readers for the layouts public chest X-ray datasets ship in; each returns a FolderDataset.

``load("nih", root)`` picks a reader by name; the modules hold the dataset-specific options
and notes (citation, layout, patient ids, mask conventions).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxrssl.data.adapters import covid_collection, jsrt, montgomery, nih, shenzhen
from cxrssl.data.datasets import FolderDataset
from cxrssl.errors import DatasetError

__all__ = ["LOADERS", "covid_collection", "jsrt", "load", "montgomery", "nih", "shenzhen"]

LOADERS: dict[str, Callable[..., FolderDataset]] = {
    "folder": FolderDataset.from_folder,
    "nih": nih.load,
    "ieee8023": covid_collection.load,
    "montgomery": montgomery.load,
    "shenzhen": shenzhen.load,
    "jsrt": jsrt.load,
}
"""Layout name -> reader taking the dataset folder first."""


def load(layout: str, root: str | Path, **options: Any) -> FolderDataset:
    """Read ``root`` with the reader of ``layout`` (a key of ``LOADERS``).

    Raises:
        DatasetError: unknown layout (the message lists the known ones), or the reader's own.
    """
    try:
        reader = LOADERS[layout]
    except KeyError:
        raise DatasetError(f"unknown dataset layout {layout!r}; known: {sorted(LOADERS)}") from None
    return reader(root, **options)
