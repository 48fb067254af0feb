"""The one training engine, shared by segmentation, pre-training and classification.

The engine knows nothing about the task: a :class:`Task` computes the loss of a batch (and
its named components) and evaluates a model on a loader. The engine owns the rest:
optimiser with per-group learning rates and frozen groups, warm-up + cosine schedule, AMP
on CUDA, gradient clipping, a guard against non-finite losses and gradients, early
stopping, atomic ``best.pt``/``last.pt`` checkpoints, exact resume, ``metrics.csv``,
``config.yaml``, TensorBoard and a progress bar.

Non-finite guard: a batch whose loss, or whose gradient norm, is NaN/inf is skipped: no
optimiser step, no scheduler step, the weights stay exactly as they were, and it counts in
``skipped_batches``; ``max_bad_batches`` such batches in a row stop training with a
:class:`TrainingError`. Under float16 AMP the gradient scaler handles overflowing gradients
itself (it skips the step and lowers its scale, which is normal and not counted); a
non-finite loss is skipped there too, and the scaler still sees its (usually overflowing)
gradients. Both checks share one host synchronisation per step (the float16 scaler adds its
own). A non-finite monitored metric is an error (``best.pt`` could never be chosen by it), raised
after ``last.pt`` and ``metrics.csv`` are written, so ``--resume`` loses no work.

Determinism: every epoch starts from seeds derived from ``(seed, epoch)`` (global torch RNG
inside a forked RNG scope, the augmentation generator, the loader's shuffle), so a run
resumed from its last checkpoint continues with the same numbers as an uninterrupted run
on the same CPU, and the caller's global RNG state is left untouched.

Distributed (under ``torchrun`` with ``WORLD_SIZE > 1``; see :mod:`cxrssl.train.distributed`):
the process group is initialised from the environment, the device is ``cuda:LOCAL_RANK``
(or the CPU), and the model is wrapped in PyTorch's ``DistributedDataParallel`` after the
parameter groups and frozen prefixes are built on the unwrapped model (names without
``module.``). ``DistributedDataParallel`` wraps a small module whose forward is the task's
``training_step`` (called with the unwrapped model), so tasks that call methods of the
model other than ``forward`` synchronise their gradients too. Checkpoints hold the unwrapped
``state_dict`` (the same keys as a single-process run). Each process trains on its shard
of the global batch (the loader's ``DistributedSampler``, reseeded here each epoch from
``(seed, epoch)``), so ``batch_size`` is per process. The augmentation generator and the
global torch RNG are offset by rank (rank 0 draws what a single process draws). The
finite-step flags are all-reduced (minimum), so a NaN on one rank skips the step on every
rank; the epoch's mean losses are averaged over the ranks. Validation runs on rank 0 over
the whole validation loader (modules with a boolean ``gather`` attribute, such as
``NTXentLoss``, are switched to local for it); rank 0's epoch row (hence the improve and
early-stop decisions) is broadcast to every rank. Only rank 0 writes the run folder (config,
checkpoints, CSV, TensorBoard) and shows progress bars; a barrier after each epoch's
writes lets every rank read them (``--resume``: every rank loads ``last.pt``).
``sync_batchnorm`` converts batch norm to ``SyncBatchNorm`` (CUDA only).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from tqdm import tqdm

from cxrssl.files import remove_partial
from cxrssl.train import distributed
from cxrssl.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cxrssl.train.config import TrainConfig, TrainingError
from cxrssl.train.device import resolve_device, to_device
from cxrssl.train.optim import lr_factor, make_optimizer, param_groups
from cxrssl.train.runlog import TensorBoard, write_history_csv, write_yaml

log = logging.getLogger(__name__)

Batch = Any
Callback = Callable[["Trainer", dict[str, float]], None]


@runtime_checkable
class Task(Protocol):
    """What a task supplies to the engine (tensors arrive already on the device).

    Optionally a task also has ``overlays(model, batch) -> {tag: (3, H, W) image in [0, 1]}``,
    written to TensorBoard each epoch from the first validation batch.
    """

    def training_step(
        self, model: nn.Module, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one training batch (scalar) and its named, detached components."""
        ...

    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        """Validation metrics of ``model`` (in eval mode, without gradients)."""
        ...


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns."""

    best: float | None
    best_epoch: int | None
    epochs_run: int
    history: list[dict[str, float]]
    run_dir: Path


def total_grad_norm(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """Global 2-norm of the parameters' gradients (0 without any), without a host sync."""
    grads = [p.grad for p in params if p.grad is not None]
    get_total_norm = getattr(nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        norm: torch.Tensor = get_total_norm(grads)
        return norm
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class _TrainingStep(nn.Module):
    """``forward(batch, generator)`` is ``task.training_step(model, ...)``: what
    ``DistributedDataParallel`` wraps, so any task's step synchronises gradients."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(
        self, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.task.training_step(self.model, batch, generator)


@contextmanager
def _local_losses(model: nn.Module) -> Iterator[None]:
    """Switch off cross-process gathering (``gather`` attributes) while one rank evaluates."""
    switched = [m for m in model.modules() if getattr(m, "gather", None) is True]
    for module in switched:
        setattr(module, "gather", False)  # noqa: B010 (a plain attribute of any module)
    try:
        yield
    finally:
        for module in switched:
            setattr(module, "gather", True)  # noqa: B010


class Trainer:
    """Train ``model`` for ``task`` with ``config``, writing the run folder ``run_dir``.

    Args:
        model: The network (moved to the configured device).
        task: Loss and evaluation of the task.
        config: Training settings.
        run_dir: Run folder: ``config.yaml``, ``metrics.csv``, ``last.pt``, ``best.pt``,
            ``tensorboard/``.
        model_spec: ``{"name": ..., "kwargs": {...}}`` to rebuild the model from a
            checkpoint (plain types only).
        extra: Task data stored in every checkpoint (plain types and tensors).
        run_config: The caller's resolved settings, written to ``config.yaml`` beside the
            engine's.
        callbacks: Called as ``cb(trainer, epoch_row)`` after each epoch's checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        config: TrainConfig,
        run_dir: str | Path,
        model_spec: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        run_config: Mapping[str, Any] | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = config
        self.distributed = distributed.init_from_env()
        self.rank = distributed.rank()
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        if config.sync_batchnorm and self.distributed:
            if self.device.type != "cuda":
                raise TrainingError("sync_batchnorm needs CUDA devices (SyncBatchNorm)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format)  # type: ignore[call-overload]
        self.task = task
        self.run_dir = Path(run_dir)
        self.model_spec = dict(model_spec or {})
        self.extra = dict(extra or {})
        self.run_config = dict(run_config or {})
        self.callbacks = list(callbacks)
        groups = param_groups(model, config.lr, config.lr_mult, config.freeze)
        self.optimizer = make_optimizer(config.optimizer, groups, config.lr, config.weight_decay)
        self.step_module: nn.Module = _TrainingStep(self.model, task)
        if self.distributed:  # after the groups: their names carry no "module." prefix
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module = nn.parallel.DistributedDataParallel(self.step_module, device_ids=ids)
        cuda = self.device.type == "cuda"
        bf16 = cuda and torch.cuda.is_bf16_supported()
        self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        self.use_amp = cuda and config.amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and not bf16)
        self.generator = torch.Generator(self.device)
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.epoch = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, float]] = []
        self.stop = False  # a callback may set it to end training after this epoch

    # ----------------------------------------------------------------- checkpoints
    def _payload(self, full: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model_spec,
            "state_dict": self.model.state_dict(),
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "config": asdict(self.config),
            "extra": self.extra,
            "metrics": self.history[-1] if self.history else {},
        }
        if full:
            assert self.scheduler is not None
            payload |= {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "bad_epochs": self.bad_epochs,
                "history": self.history,
                "stopped": self.stop,
            }
        return payload

    def _restore(self, path: Path) -> bool:
        """Load ``last.pt`` into the model, optimiser, schedule and history.

        Raises:
            CheckpointError: A damaged, truncated or foreign ``last.pt`` (one line naming
                the file; deleting it starts the run again), never a bare traceback.
        """
        hint = f"delete {path} to start the run again from epoch 1"
        try:
            ckpt = load_checkpoint(path, map_location=self.device)
        except CheckpointError as err:
            raise CheckpointError(f"{err}; {hint}") from err
        saved = ckpt.get("config", {})
        ignore = {"progress", "tensorboard", "device", "sync_batchnorm"}
        changed = sorted(
            k for k, v in asdict(self.config).items() if k not in ignore and saved.get(k) != v
        )
        if changed:
            log.warning(
                "resuming %s with changed settings %s: the run is no longer exact", path, changed
            )
        try:
            self.model.load_state_dict(ckpt["state_dict"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            assert self.scheduler is not None
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.epoch = int(ckpt["epoch"])
            self.best, self.best_epoch = ckpt["best"], ckpt["best_epoch"]
            self.bad_epochs = int(ckpt["bad_epochs"])
            self.history = list(ckpt["history"])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            what = f"no {err}" if isinstance(err, KeyError) else str(err).splitlines()[0][:200]
            raise CheckpointError(
                f"{path}: not a last.pt of this run, or damaged ({what}); {hint}"
            ) from err
        self.extra = {**ckpt.get("extra", {}), **self.extra}
        log.info("resumed %s after epoch %d", path, self.epoch)
        return bool(ckpt.get("stopped", False))

    # ----------------------------------------------------------------- training
    def _seed_epoch(self, epoch: int, loader: Iterable[Batch]) -> None:
        seed = (self.config.seed * 1_000_003 + epoch + self.rank * 1_000_000_007) % (2**63)
        torch.manual_seed(seed)  # inside fit's fork_rng: dropout, default loader shuffle
        self.generator.manual_seed(seed)
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            sampler.seed = self.config.seed  # the same order on every rank
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def _autocast(self) -> Any:
        if self.use_amp:
            return torch.autocast(self.device.type, dtype=self.amp_dtype)
        return nullcontext()

    def _clip(self, params: list[nn.Parameter]) -> torch.Tensor | None:
        """Clip the (unscaled) gradients when configured; their total norm before clipping,
        or None where the float16 scaler checks them itself and no clipping is wanted.

        Clipping non-finite gradients only spoils gradients that the step then discards.
        """
        if self.config.grad_clip > 0:
            return nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        if self.scaler.is_enabled():
            return None
        return total_grad_norm(params)

    def _finite(self, loss: torch.Tensor, norm: torch.Tensor | None) -> tuple[bool, bool]:
        """Whether the loss and the gradient norm are finite, in one host sync. Gradients
        count as fine under the float16 scaler, which skips a non-finite step itself."""
        checks = [torch.isfinite(loss.detach()).all()]
        if norm is not None and not self.scaler.is_enabled():
            checks.append(torch.isfinite(norm).to(checks[0].device))
        flags = distributed.all_reduce_flag(torch.stack(checks)).tolist()  # a NaN anywhere
        return bool(flags[0]), bool(flags[1]) if len(flags) > 1 else True

    def train_epoch(self, loader: Iterable[Batch]) -> dict[str, float]:
        """One pass over ``loader``; returns mean loss, mean components and skipped count."""
        if self.scheduler is None:
            raise TrainingError("call setup() (or fit()) before train_epoch()")
        self.model.train()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        sums: dict[str, torch.Tensor] = {}
        steps = skipped = bad_run = 0
        bad_kinds: set[str] = set()  # what was non-finite in the current run of bad batches
        bar = tqdm(
            loader,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            disable=not (self.config.progress and distributed.is_main()),
            leave=False,
            dynamic_ncols=True,
        )
        for step, batch in enumerate(bar):
            batch = to_device(batch, self.device)
            with self._autocast():
                loss, parts = self.step_module(batch, self.generator)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # a no-op without the float16 scaler
            loss_ok, grads_ok = self._finite(loss, self._clip(params))
            if loss_ok and grads_ok:
                bad_run = 0
                bad_kinds.clear()
                self.scaler.step(self.optimizer)  # the fp16 scaler skips inf/NaN gradients
                self.scaler.update()
                self.scheduler.step()
                steps += 1
                for k, v in {"loss": loss.detach(), **parts}.items():
                    sums[k] = sums.get(k, torch.zeros((), device=self.device)) + v.float()
                if self.config.progress and step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                continue
            # Skipped like a bad loss: no optimiser or scheduler step, weights untouched.
            if self.scaler.is_enabled():
                self.scaler.update()  # closes the iteration unscale_() opened
            self.optimizer.zero_grad(set_to_none=True)
            what = "loss" if not loss_ok else "gradient norm"
            bad_kinds.add(what)
            skipped += 1
            bad_run += 1
            log.warning(
                "epoch %d batch %d: non-finite %s, batch skipped", self.epoch + 1, step, what
            )
            if bad_run >= self.config.max_bad_batches:
                subject = " or ".join(sorted(bad_kinds, key=len))
                hint = "check the inputs"
                if "gradient norm" in bad_kinds:
                    hint += " and the loss for infinite slopes (sqrt or log at 0, say)"
                raise TrainingError(
                    f"{subject} was NaN/inf for {bad_run} consecutive batches (epoch "
                    f"{self.epoch + 1}, batch {step}); {hint}, or lower the learning rate "
                    f"(now {self.scheduler.get_last_lr()[0]:.3g})"
                )
        means = {k: v / max(steps, 1) for k, v in sums.items()}
        if self.distributed and means:  # every rank has the same keys and steps
            reduced = distributed.all_reduce_mean(torch.stack(list(means.values())))
            means = dict(zip(means, reduced, strict=True))
        out = {f"train_{k}": v.item() for k, v in means.items()}
        out["skipped_batches"] = float(skipped)
        return out

    @torch.no_grad()
    def validate(self, loader: Iterable[Batch]) -> dict[str, float]:
        """``task.evaluate`` in eval mode, without gradients, under AMP where enabled."""
        self.model.eval()
        batches = (to_device(b, self.device) for b in loader)
        with self._autocast(), _local_losses(self.model):
            return self.task.evaluate(self.model, batches)

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.config.monitor_mode == "max" else value < self.best

    def setup(self, steps_per_epoch: int) -> None:
        """Create the learning-rate schedule for ``steps_per_epoch`` (``fit`` calls it;
        call it yourself only to drive :meth:`train_epoch` directly)."""
        factor = lr_factor(
            self.config.schedule,
            self.config.epochs * steps_per_epoch,
            round(self.config.warmup_epochs * steps_per_epoch),
            self.config.min_lr_ratio,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def fit(
        self,
        train_loader: Iterable[Batch],
        val_loader: Iterable[Batch] | None = None,
        resume: bool = False,
    ) -> FitResult:
        """Train until ``config.epochs`` or early stopping.

        Args:
            train_loader: Re-iterable batches (a ``DataLoader``; shuffling uses the global
                torch RNG, seeded here each epoch, or a sampler's ``set_epoch``).
            val_loader: Validation batches for ``task.evaluate``; without it the monitored
                value is the training loss.
            resume: Continue from ``run_dir/last.pt`` when it exists.

        Raises:
            TrainingError: Persistent non-finite loss or gradients, or a monitored metric
                that is missing or non-finite (raised after that epoch's ``last.pt``).
        """
        main = distributed.is_main()
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.setup(len(train_loader))  # type: ignore[arg-type]
        last = self.run_dir / "last.pt"
        if resume and main:
            for name in ("last.pt", "best.pt"):
                remove_partial(self.run_dir / name)  # left by a run killed mid-write
        if distributed.broadcast_object(resume and main and last.is_file()):
            self.stop = self._restore(last)
        if main:
            write_yaml(
                self.run_dir / "config.yaml",
                {"train": asdict(self.config), "model": self.model_spec, **self.run_config},
            )
        devices = [self.device] if self.device.type == "cuda" else []
        board = None
        if self.config.tensorboard and main:
            board = TensorBoard(self.run_dir / "tensorboard", first_step=self.epoch + 1)
        try:
            with torch.random.fork_rng(devices=devices):
                while self.epoch < self.config.epochs and not self.stop:
                    self._run_epoch(train_loader, val_loader, board)
        finally:
            if board is not None:
                board.close()
        distributed.barrier()  # every rank may read best.pt now
        return FitResult(self.best, self.best_epoch, self.epoch, self.history, self.run_dir)

    def _overlays(self, val_loader: Any) -> dict[str, torch.Tensor]:
        overlays = getattr(self.task, "overlays", None)
        if overlays is None or val_loader is None:
            return {}
        self.model.eval()
        with torch.no_grad():
            out: dict[str, torch.Tensor] = overlays(
                self.model, to_device(next(iter(val_loader)), self.device)
            )
        return out

    def _run_epoch(self, train_loader: Any, val_loader: Any, board: TensorBoard | None) -> None:
        start = time.perf_counter()
        self._seed_epoch(self.epoch, train_loader)
        assert self.scheduler is not None
        lr = float(self.scheduler.get_last_lr()[0])
        row: dict[str, float] = {"epoch": float(self.epoch + 1), "lr": lr}
        row |= self.train_epoch(train_loader)
        main = distributed.is_main()
        if val_loader is not None and main:
            row |= {f"val_{k}": float(v) for k, v in self.validate(val_loader).items()}
        row = distributed.broadcast_object(row)  # rank 0's: the same decisions everywhere
        monitor = self.config.monitor
        key = f"val_{monitor}" if val_loader is not None else f"train_{monitor}"
        if monitor is not None and key not in row:
            raise TrainingError(f"monitored metric {key!r} not among {sorted(row)}")
        self.epoch += 1
        row["seconds"] = time.perf_counter() - start
        self.history.append(row)
        improved = monitor is None or self._improved(row[key])
        if improved:
            self.best, self.best_epoch, self.bad_epochs = row.get(key), self.epoch, 0
        else:
            self.bad_epochs += 1
        if self.config.patience and self.bad_epochs >= self.config.patience:
            log.info("early stop: no better %s for %d epochs", key, self.bad_epochs)
            self.stop = True
        if main:
            if improved:
                save_checkpoint(self.run_dir / "best.pt", self._payload(full=False))
            save_checkpoint(self.run_dir / "last.pt", self._payload(full=True))
            write_history_csv(self.run_dir / "metrics.csv", self.history)
        if board is not None:
            board.log(self.epoch, row, self._overlays(val_loader))
        distributed.barrier()  # the epoch's files are complete for every rank
        if monitor is not None and not math.isfinite(row[key]):
            # After last.pt and metrics.csv: --resume continues once the cause is fixed.
            raise TrainingError(
                f"monitored metric {key!r} is {row[key]} after epoch {self.epoch}, so best.pt "
                "cannot be chosen by it; the metric is likely undefined on this data (an AUC "
                "when validation has no positive or no negative case, a Dice on empty masks): "
                "choose another monitor or more validation data; last.pt is written, "
                "--resume continues from it"
            )
        shown = ", ".join(
            f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("train_loss", "val_"))
        )
        if main:
            log.info(
                "epoch %d/%d: %s (%.1f s)", self.epoch, self.config.epochs, shown, row["seconds"]
            )
        for callback in self.callbacks:
            callback(self, row)
