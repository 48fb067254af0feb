"""Reading CSV tables (labels, splits) with one set of error messages."""

from __future__ import annotations

import csv
from pathlib import Path

from cxrssl.errors import DatasetError


def read_table(path: Path, what: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file (UTF-8, with or without a byte-order mark).

    Args:
        path: the file.
        what: what the table is, for error messages ("labels table", "split file").

    Raises:
        DatasetError: the file is missing or unreadable; the message names it.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read the {what} ({e})") from None
    return header, rows
