"""Shared fixtures: the real data beside the repository (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_dir() -> Path:
    """``$CXR_DATA_DIR`` or ``../shared/data`` from the project root."""
    return Path(os.environ.get("CXR_DATA_DIR", _DEFAULT))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder; tests that use it skip with the reason when it is absent."""
    root = shared_data_dir()
    if not (root / "README.md").is_file():
        pytest.skip(f"real data not found at {root} (set CXR_DATA_DIR to run these tests)")
    return root
