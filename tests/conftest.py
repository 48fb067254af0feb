"""Shared fixtures: the real data beside the repository (skipped when absent), and one
compute thread per xdist worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist (``-n N`` workers, one per core), one torch and OpenCV thread per worker:
    several workers each spinning several OpenMP threads on the same cores run many times
    slower than one thread each. The variable carries it to the commands tests start, whose
    numbers must match the in-process ones exactly (same thread count)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import cv2
        import torch

        torch.set_num_threads(1)
        cv2.setNumThreads(1)


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
