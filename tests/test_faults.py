"""Runs that survive: a ``kill -9`` of ``cxrssl pretrain`` and ``cxrssl train-cls`` resumes
to the numbers of an uninterrupted run, a full disk while writing a checkpoint keeps the
previous one, and a damaged ``last.pt`` is a clear error, never a traceback."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cxrssl.cli.main import main
from cxrssl.data.datasets import sample
from cxrssl.train import CheckpointError, TrainConfig, Trainer, checkpoint, load_checkpoint
from killing import run_and_kill

EPOCHS = 4


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRSSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten sample radiographs in ``images/`` with their lung masks in ``masks/``."""
    root = tmp_path_factory.mktemp("pool")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for r in sample().records[:10]:
        shutil.copy(r.image, root / "images" / r.image.name)
        shutil.copy(r.masks["masks"], root / "masks" / r.image.name)
    return root


def chest(seed: int, sick: bool, size: int = 64) -> np.ndarray:
    """Two dark lung ovals in a bright body; a sick film has a bright blob in one lung
    (the generator of ``tests/test_classification.py``, smaller)."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size), 30, np.uint8)
    c = size // 2
    cv2.ellipse(image, (c, c), (c - 3, c - 2), 0, 0, 360, 200, -1)
    for side in (-1, 1):
        cv2.ellipse(image, (c + side * size // 5, c), (size // 8, size // 4), 0, 0, 360, 70, -1)
    if sick:
        side = 1 if rng.random() < 0.5 else -1
        cv2.circle(image, (c + side * size // 5, c + int(rng.integers(-5, 6))), 5, 190, -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.5)
    noise = rng.integers(-6, 7, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_chests(root: Path, n: int) -> Path:
    """``root/images/c<i>.png`` and ``root/labels.csv`` (two films per patient)."""
    (root / "images").mkdir(parents=True)
    lines = ["filename,patient_id,sick"]
    for i in range(n):
        sick = (i // 2) % 2 == 1
        cv2.imwrite(str(root / "images" / f"c{i}.png"), chest(i, sick))
        lines.append(f"c{i}.png,P{i // 2},{int(sick)}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def chests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chests(tmp_path_factory.mktemp("cls") / "chests", n=32)


# ------------------------------------------------------------------------- kill -9
def kill_after_epoch_1(argv: list[str], last: Path, log: Path) -> bool:
    """``run_and_kill`` as soon as ``last`` exists (epoch 1 is done)."""
    mid_run = run_and_kill(argv, last.is_file, log)
    assert last.is_file(), f"no {last} written; log:\n{log.read_text()}"
    return mid_run


def rows(metrics: Path) -> list[dict[str, str]]:
    """``metrics.csv`` without its wall-clock column."""
    with metrics.open() as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


def no_partial_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


def test_kill_9_during_pretrain_then_resume_matches_an_uninterrupted_run(
    pool: Path, tmp_path: Path
) -> None:
    def argv(out: Path) -> list[str]:
        return [
            "pretrain", "--method", "simclr", "--images", str(pool / "images"), "--out", str(out),
            "--size", "64", "--epochs", str(EPOCHS), "--batch-size", "4", "--device", "cpu",
            "--no-progress", "--method-options", '{"hidden_dim": 16, "proj_dim": 8}',
        ]  # fmt: skip

    assert main(argv(tmp_path / "straight")) == 0  # also fills the pool cache
    killed = tmp_path / "killed"
    mid_run = kill_after_epoch_1(argv(killed), killed / "last.pt", tmp_path / "killed.log")
    print(f"pretrain: the kill landed mid-run: {mid_run}")
    if mid_run:
        assert load_checkpoint(killed / "last.pt")["epoch"] < EPOCHS
    assert main([*argv(killed), "--resume"]) == 0
    assert len(rows(killed / "metrics.csv")) == EPOCHS
    assert rows(killed / "metrics.csv") == rows(tmp_path / "straight" / "metrics.csv")
    assert_same_weights(killed / "last.pt", tmp_path / "straight" / "last.pt")
    assert_same_weights(killed / "best.pt", tmp_path / "straight" / "best.pt")
    assert no_partial_files(killed) == []


def test_kill_9_during_train_cls_then_resume_matches_an_uninterrupted_run(
    chests: Path, tmp_path: Path
) -> None:
    def argv(out: Path) -> list[str]:
        return [
            "train-cls", "--images", str(chests), "--label-columns", "sick", "--out", str(out),
            "--size", "32", "--epochs", str(EPOCHS), "--epoch-steps", "4", "--batch-size", "4",
            "--val-fraction", "0.4", "--device", "cpu", "--no-progress", "--no-explain",
        ]  # fmt: skip

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(argv(straight)) == 0
    last = killed / "fold_0" / "last.pt"
    mid_run = kill_after_epoch_1(argv(killed), last, tmp_path / "killed.log")
    print(f"train-cls: the kill landed mid-run: {mid_run}")
    if mid_run:
        assert not (killed / "summary.json").exists()
    assert main([*argv(killed), "--resume"]) == 0
    assert rows(killed / "fold_0" / "metrics.csv") == rows(straight / "fold_0" / "metrics.csv")
    assert_same_weights(killed / "fold_0" / "best.pt", straight / "fold_0" / "best.pt")
    a, b = (json.loads((d / "summary.json").read_text()) for d in (straight, killed))
    for key in ("mean_auc", "per_label", "folds", "calibration"):
        assert a[key] == b[key], key
    assert no_partial_files(killed) == []


# ------------------------------------------------------------------------- toy trainer
class ToyTask:
    """MSE regression; the validation loss is what ``best.pt`` is chosen by."""

    def training_step(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        return nn.functional.mse_loss(model(x), y), {}

    def evaluate(
        self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]
    ) -> dict[str, float]:
        return {"loss": float(sum(nn.functional.mse_loss(model(x), y) for x, y in batches))}


def toy_fit(run: Path, epochs: int = 3, resume: bool = False) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    cfg = TrainConfig(epochs=epochs, lr=1e-2, device="cpu", progress=False, tensorboard=False)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(x, x.sum(1, keepdim=True))
    trainer = Trainer(model, ToyTask(), cfg, run)
    trainer.fit(
        DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=16), resume
    )
    return trainer


# ------------------------------------------------------------------------- full disk
class FullDisk(io.RawIOBase):
    """A file on a full disk: each write gets half its bytes out, then fails with ENOSPC."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        if not self.f.closed:
            self.f.flush()


def fill_disk_after(monkeypatch: pytest.MonkeyPatch, saves: int) -> None:
    """Make every checkpoint write after the first ``saves`` fail as on a full disk."""
    real = checkpoint.atomic_open
    count = {"n": 0}

    @contextlib.contextmanager
    def full_open(path: Path, mode: str = "w", fsync: bool = False) -> Iterator[IO[Any]]:
        count["n"] += 1
        with real(path, mode, fsync=fsync) as f:
            yield FullDisk(f) if count["n"] > saves else f  # type: ignore[misc]

    monkeypatch.setattr(checkpoint, "atomic_open", full_open)


def test_full_disk_keeps_the_previous_checkpoints_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = toy_fit(tmp_path / "straight")
    run = tmp_path / "run"
    fill_disk_after(monkeypatch, saves=2)  # epoch 1 writes best.pt and last.pt
    with pytest.raises(CheckpointError, match=r"(best|last)\.pt: .*no space left on device"):
        toy_fit(run)
    monkeypatch.undo()
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert load_checkpoint(run / "best.pt")["epoch"] == 1
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".tmp") == []
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []
    # Space freed: --resume continues from the last good checkpoint to the same numbers.
    resumed = toy_fit(run, resume=True)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in straight.history]


def test_write_error_is_also_an_os_error_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "x.pt").mkdir()  # a folder where the file should go: the rename fails
    with pytest.raises(OSError, match=r"x\.pt: cannot write checkpoint"):
        checkpoint.save_checkpoint(folder / "x.pt", {"epoch": 1})
    assert [p.name for p in folder.iterdir()] == ["x.pt"]


# ------------------------------------------------------------------------- damaged last.pt
def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "random":
        path.write_bytes(os.urandom(len(data)))
    elif how == "empty":
        path.write_bytes(b"")
    else:  # "best": a best.pt copied over last.pt (no optimiser state)
        shutil.copy(path.with_name("best.pt"), path)


@pytest.mark.parametrize("how", ["truncated", "random", "empty", "best"])
def test_damaged_last_pt_is_a_clear_error(tmp_path: Path, how: str) -> None:
    toy_fit(tmp_path, epochs=1)
    damage(tmp_path / "last.pt", how)
    with pytest.raises(CheckpointError) as info:
        toy_fit(tmp_path, epochs=2, resume=True)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'last.pt'}: ")
    assert "damaged" in message and "delete" in message and "\n" not in message
    (tmp_path / "last.pt").unlink()  # what the message says: the run starts again
    assert toy_fit(tmp_path, epochs=2, resume=True).epoch == 2


def test_stale_temporary_files_of_a_killed_write_are_removed_on_resume(tmp_path: Path) -> None:
    toy_fit(tmp_path, epochs=1)
    stale = tmp_path / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".metrics.csv.abc123.tmp"  # not a checkpoint: left alone
    other.write_bytes(b"x")
    assert toy_fit(tmp_path, epochs=2, resume=True).epoch == 2
    assert not stale.exists() and other.exists()


def test_cli_resume_from_a_truncated_last_pt_exits_2_with_one_line(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "train-seg", "--images", str(pool / "images"), "--masks", str(pool / "masks"),
        "--out", str(tmp_path / "seg"), "--size", "32", "--epochs", "1", "--folds", "1",
        "--batch-size", "4", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    last = next((tmp_path / "seg").rglob("last.pt"))
    damage(last, "truncated")
    capsys.readouterr()
    assert main([*argv, "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("cxrssl: error:"))
    assert str(last) in line and "damaged" in line and "delete" in line
