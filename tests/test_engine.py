"""The training engine on a toy regression task: determinism, exact resume, NaN guard,
atomic checkpoints, frozen groups, early stopping."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cxrssl.train import (
    CheckpointError,
    TrainConfig,
    Trainer,
    TrainingError,
    load_checkpoint,
    save_checkpoint,
)


class ToyTask:
    """MSE regression with input noise drawn from the engine's generator."""

    def training_step(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        x = x + 0.01 * torch.randn(x.shape, generator=generator)
        mse = nn.functional.mse_loss(model(x), y)
        l1 = nn.functional.l1_loss(model(x), y)
        return mse + 0.1 * l1, {"mse": mse.detach(), "l1": l1.detach()}

    def evaluate(
        self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]
    ) -> dict[str, float]:
        errs = [nn.functional.mse_loss(model(x), y, reduction="sum") for x, y in batches]
        return {"loss": float(sum(errs))}


def toy_model() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def toy_data(n: int = 40) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


def config(**kw: object) -> TrainConfig:
    base = dict(epochs=3, lr=1e-2, device="cpu", progress=False, tensorboard=False, seed=3)
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def fit(run: Path, cfg: TrainConfig, resume: bool = False, callbacks: tuple = ()) -> Trainer:
    trainer = Trainer(toy_model(), ToyTask(), cfg, run, callbacks=callbacks)
    train = DataLoader(toy_data(), batch_size=8, shuffle=True)
    val = DataLoader(toy_data(16), batch_size=8)
    trainer.fit(train, val, resume=resume)
    return trainer


def strip(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_same_seed_same_numbers_and_global_rng_untouched(tmp_path: Path) -> None:
    a = Trainer(toy_model(), ToyTask(), config(), tmp_path / "a")
    before = torch.get_rng_state()
    a.fit(
        DataLoader(toy_data(), batch_size=8, shuffle=True), DataLoader(toy_data(16), batch_size=8)
    )
    assert torch.equal(torch.get_rng_state(), before)
    b = fit(tmp_path / "b", config())
    c = fit(tmp_path / "c", config(seed=4))
    assert strip(a.history) == strip(b.history)
    assert strip(a.history) != strip(c.history)
    assert {"train_loss", "train_mse", "train_l1", "val_loss", "lr"} <= a.history[0].keys()
    assert (tmp_path / "a" / "metrics.csv").read_text().count("\n") == 4
    assert "epochs: 3" in (tmp_path / "a" / "config.yaml").read_text()


class Killed(Exception):
    pass


def kill_after(epoch: int):  # type: ignore[no-untyped-def]
    def callback(trainer: Trainer, row: dict[str, float]) -> None:
        if trainer.epoch == epoch:
            raise Killed

    return callback


def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    full = fit(tmp_path / "full", config(epochs=4))
    with pytest.raises(Killed):
        fit(tmp_path / "part", config(epochs=4), callbacks=(kill_after(2),))
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 2
    resumed = fit(tmp_path / "part", config(epochs=4), resume=True)
    assert strip(resumed.history) == strip(full.history)
    for (name, p), q in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    assert (tmp_path / "part" / "metrics.csv").read_text().count("\n") == 5


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    t = fit(tmp_path / "r", config(epochs=1), resume=True)
    assert t.epoch == 1


class NanLoader:
    """Batches of the toy data, NaN inputs at the given batch indices."""

    def __init__(self, nan_at: set[int]) -> None:
        self.base = DataLoader(toy_data(), batch_size=8)
        self.nan_at = nan_at

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for i, (x, y) in enumerate(self.base):
            yield (torch.full_like(x, float("nan")) if i in self.nan_at else x), y


def test_nan_batch_is_skipped(tmp_path: Path) -> None:
    trainer = Trainer(toy_model(), ToyTask(), config(epochs=2), tmp_path)
    trainer.fit(NanLoader({1}), DataLoader(toy_data(16), batch_size=8))
    assert [row["skipped_batches"] for row in trainer.history] == [1.0, 1.0]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_persistent_nan_stops_with_a_clear_error(tmp_path: Path) -> None:
    trainer = Trainer(toy_model(), ToyTask(), config(max_bad_batches=3), tmp_path)
    with pytest.raises(
        TrainingError, match=r"NaN/inf for 3 consecutive batches \(epoch 1, batch 3\)"
    ):
        trainer.fit(NanLoader({1, 2, 3, 4}), None)


def test_frozen_groups_stay_and_lr_multipliers_apply(tmp_path: Path) -> None:
    model = toy_model()
    first = model[0].weight.detach().clone()
    cfg = config(
        epochs=1, freeze=("0.",), lr_mult={"3.": 0.1}, schedule="constant", warmup_epochs=0
    )
    trainer = Trainer(model, ToyTask(), cfg, tmp_path)
    trainer.fit(DataLoader(toy_data(), batch_size=8), None)
    assert torch.equal(model[0].weight, first)
    assert sorted(g["lr"] for g in trainer.optimizer.param_groups) == pytest.approx([1e-3])


def test_early_stopping_with_patience(tmp_path: Path) -> None:
    # lr 0 means the validation loss never improves after the first epoch.
    cfg = config(epochs=10, lr=1e-12, patience=2)
    trainer = fit(tmp_path, cfg)
    assert trainer.epoch == 3
    assert trainer.best_epoch == 1
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    # A resumed early-stopped run does not train again.
    assert fit(tmp_path, cfg, resume=True).epoch == 3


def test_unknown_monitor_metric_is_named(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"monitored metric 'val_dice' not among"):
        fit(tmp_path, config(monitor="dice"))


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(2)})

    def broken_save(obj: object, f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_load_checkpoint_rejects_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "obj": Killed()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: cannot read checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_no_monitor_keeps_the_last_epoch(tmp_path: Path) -> None:
    trainer = Trainer(toy_model(), ToyTask(), config(monitor=None, epochs=3), tmp_path)
    trainer.fit(DataLoader(toy_data(), batch_size=8, shuffle=True))
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["epoch"] == last["epoch"] == 3 and trainer.best_epoch == 3
    assert all(torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items())


class PoisonGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``value`` (NaN or inf)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, value: float) -> torch.Tensor:
        ctx.value = value
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.value, None


class PoisonGradTask(ToyTask):
    """Finite loss, but NaN/inf parameter gradients on the chosen calls; snapshots the
    weights at every call (the weights after step k are the snapshot of call k + 1)."""

    def __init__(self, poison_at: set[int], value: float) -> None:
        self.poison_at, self.value, self.calls = poison_at, value, 0
        self.snapshots: list[list[torch.Tensor]] = []

    def training_step(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.snapshots.append([p.detach().clone() for p in model.parameters()])
        x, y = batch
        out = model(x)
        if self.calls in self.poison_at:
            out = PoisonGrad.apply(out, self.value)
        self.calls += 1
        return nn.functional.mse_loss(out, y), {}


@pytest.mark.parametrize(("value", "grad_clip"), [(float("nan"), 1.0), (float("inf"), 0.0)])
def test_non_finite_gradient_skips_the_step_and_keeps_the_weights(
    tmp_path: Path, value: float, grad_clip: float, caplog: pytest.LogCaptureFixture
) -> None:
    task = PoisonGradTask({2}, value)
    trainer = Trainer(toy_model(), task, config(epochs=1, grad_clip=grad_clip), tmp_path)
    trainer.fit(DataLoader(toy_data(), batch_size=8), None)  # 5 batches
    before, after, later = task.snapshots[2], task.snapshots[3], task.snapshots[4]
    assert all(torch.equal(p, q) for p, q in zip(before, after, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(after, later, strict=True))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer.history[0]["skipped_batches"] == 1.0
    assert "batch 2: non-finite gradient norm, batch skipped" in caplog.text
    # Like a skipped loss, a skipped step advances neither the optimiser nor the schedule.
    assert trainer.scheduler is not None and trainer.scheduler.last_epoch == 4
    state = trainer.optimizer.state[next(trainer.model.parameters())]
    assert int(state["step"]) == 4


def test_persistent_non_finite_gradient_stops_with_a_clear_error(tmp_path: Path) -> None:
    task = PoisonGradTask({1, 2, 3}, float("nan"))
    trainer = Trainer(toy_model(), task, config(max_bad_batches=3), tmp_path)
    with pytest.raises(
        TrainingError,
        match=r"gradient norm was NaN/inf for 3 consecutive batches \(epoch 1, batch 3\)",
    ):
        trainer.fit(DataLoader(toy_data(), batch_size=8), None)


class NanMetricTask(ToyTask):
    """A validation metric that is undefined (an AUC without positive cases, say)."""

    def evaluate(
        self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]
    ) -> dict[str, float]:
        return {"loss": 1.0, "dice": float("nan")}


def test_non_finite_monitor_is_an_error_after_last_checkpoint(tmp_path: Path) -> None:
    cfg = config(monitor="dice", monitor_mode="max")
    trainer = Trainer(toy_model(), NanMetricTask(), cfg, tmp_path)
    with pytest.raises(TrainingError, match=r"'val_dice' is nan after epoch 1.*another monitor"):
        trainer.fit(DataLoader(toy_data(), batch_size=8), DataLoader(toy_data(16), batch_size=8))
    assert not (tmp_path / "best.pt").exists()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 2


def test_fp16_scaler_skips_overflows_itself_and_survives_a_nan_loss(tmp_path: Path) -> None:
    # The float16 path (a CUDA GradScaler) run on CPU: overflowing gradients are the
    # scaler's to skip (lowering its scale, not counted as bad); a NaN loss is skipped as
    # usual, and the scaler keeps working after it.
    task = PoisonGradTask({1, 3}, float("nan"))
    trainer = Trainer(toy_model(), task, config(epochs=1, max_bad_batches=2), tmp_path)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trainer.fit(NanLoader({2}), None)
    assert trainer.history[0]["skipped_batches"] == 1.0  # the NaN loss only
    assert trainer.scaler.get_scale() == 2.0**7  # halved at batches 1, 2 and 3
    unchanged = [
        all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
        for a, b in itertools.pairwise(task.snapshots)
    ]
    assert unchanged == [False, True, True, True]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
