"""The training engine (one :class:`Trainer` for every task) and checkpoints."""

from cxrssl.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_init,
    save_checkpoint,
)
from cxrssl.train.config import TrainConfig, TrainingError
from cxrssl.train.device import resolve_device, to_device
from cxrssl.train.engine import FitResult, Task, Trainer

__all__ = [
    "CheckpointError",
    "FitResult",
    "Task",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "load_checkpoint",
    "load_init",
    "resolve_device",
    "save_checkpoint",
    "to_device",
]
