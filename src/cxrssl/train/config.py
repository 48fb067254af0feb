"""Settings of the training engine and its error type."""

from __future__ import annotations

from dataclasses import dataclass, field

from cxrssl.errors import CxrsslError


class TrainingError(CxrsslError):
    """Training cannot go on (persistent non-finite loss or gradients, unusable monitor, bad
    configuration)."""


@dataclass
class TrainConfig:
    """Everything the engine needs to know; stored in checkpoints and ``config.yaml``.

    Attributes:
        epochs: Number of epochs.
        lr: Base learning rate.
        weight_decay: Decoupled (AdamW) or L2 (Adam) weight decay.
        optimizer: ``"adamw"`` or ``"adam"``.
        schedule: ``"cosine"`` (per step, after a linear warm-up) or ``"constant"``.
        warmup_epochs: Linear warm-up length in epochs.
        min_lr_ratio: Final learning rate of the cosine, relative to ``lr``.
        grad_clip: Maximum global gradient norm; 0 disables clipping.
        amp: Mixed precision on CUDA (bfloat16 where supported, else float16 with a
            gradient scaler); ignored on CPU.
        patience: Stop after this many validations without improvement; 0 never stops.
        monitor: Validation metric choosing ``best.pt`` and early stopping; None keeps the
            last epoch as ``best.pt`` (no choice on held-out data, no early stopping). A
            NaN/inf value of it is an error.
        monitor_mode: ``"max"`` or ``"min"``.
        max_bad_batches: Consecutive batches with a non-finite loss or gradient norm
            tolerated (each skipped, weights untouched) before training stops with an error.
        seed: Seed of all training randomness.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        progress: Show a progress bar.
        tensorboard: Write TensorBoard scalars and images (when tensorboard is installed).
        lr_mult: Parameter-name prefix -> learning-rate multiplier (longest prefix wins).
        freeze: Parameter-name prefixes that are not trained.
        channels_last: Keep 4-D weights in channels-last memory order (about 30 % faster
            convolutions on CPU; usual for cuDNN too). Numbers change only by rounding.
        sync_batchnorm: Under ``torchrun`` with several processes, batch-norm statistics
            over the global batch (``SyncBatchNorm``; CUDA only); ignored in one process.
    """

    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_epochs: float = 2.0
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    amp: bool = True
    patience: int = 0
    monitor: str | None = "loss"
    monitor_mode: str = "min"
    max_bad_batches: int = 3
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    tensorboard: bool = True
    lr_mult: dict[str, float] = field(default_factory=dict)
    freeze: tuple[str, ...] = ()
    channels_last: bool = True
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "schedule": self.schedule in ("cosine", "constant"),
            "monitor_mode": self.monitor_mode in ("max", "min"),
            "max_bad_batches": self.max_bad_batches >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise TrainingError(f"invalid training setting {name}={getattr(self, name)!r}")
