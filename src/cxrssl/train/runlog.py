"""The run folder's text outputs: ``config.yaml``, ``metrics.csv`` and TensorBoard."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from cxrssl.files import write_text_atomic

log = logging.getLogger(__name__)


def write_yaml(path: Path, data: Mapping[str, Any]) -> None:
    """Write plain-type ``data`` as YAML (keys in the given order), atomically."""
    write_text_atomic(path, yaml.safe_dump(dict(data), sort_keys=False))


def write_history_csv(path: Path, history: Sequence[Mapping[str, float]]) -> None:
    """One row per epoch (columns: union of keys in first-seen order), written atomically."""
    columns = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buf.getvalue())


class TensorBoard:
    """Scalars and images to ``folder`` when tensorboard is installed (an optional extra);
    otherwise a warning and nothing."""

    def __init__(self, folder: Path, first_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard not installed: no TensorBoard logs (cxrssl[report])")
            self.writer = None
            return
        # purge_step drops events a killed run wrote after its last checkpoint.
        self.writer = SummaryWriter(str(folder), purge_step=first_step)

    def log(self, step: int, row: Mapping[str, float], images: Mapping[str, torch.Tensor]) -> None:
        """``train_loss`` -> tag ``train/loss``; images are (3, H, W) in [0, 1]."""
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(key.replace("_", "/", 1), value, step)
        for tag, image in images.items():
            self.writer.add_image(tag, image.float().cpu(), step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
