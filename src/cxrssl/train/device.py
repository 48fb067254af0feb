"""Device choice and moving batches to it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from cxrssl.train.config import TrainingError
from cxrssl.train.distributed import world


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other names as given.

    Under ``torchrun`` with more than one process, ``"auto"`` and ``"cuda"`` (no index)
    mean ``cuda:LOCAL_RANK``, one device per process.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise TrainingError(f"unknown device {name!r}") from err
    _, local_rank, size = world()
    if device.type == "cuda" and device.index is None and size > 1:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} requested but CUDA is not available")
    return device


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside tuples, lists and dicts to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
