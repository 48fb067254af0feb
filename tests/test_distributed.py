"""The engine under DistributedDataParallel: 2 CPU processes on gloo against one process
with the same global batch, a NaN on one rank, rank-0-only writing, and ``torchrun``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

import cxrssl
from cxrssl.augment import AugmentConfig
from cxrssl.geometry import Letterbox
from cxrssl.losses import get_loss
from cxrssl.nets import create_net
from cxrssl.ssl import create_method
from cxrssl.tasks.pretraining import PretrainTask
from cxrssl.tasks.seg_data import SegCache, loader
from cxrssl.tasks.seg_task import SegmentationTask
from cxrssl.train import TrainConfig, Trainer, TrainingError, distributed, load_checkpoint

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch without gloo"
)

WORLD, B = 2, 2  # processes, per-process batch
TIMEOUT = 120.0  # seconds before a hanging job counts as a failure
SAMPLE = Path(cxrssl.__file__).parent / "data" / "sample"


# ----------------------------------------------------------------------------- tasks
class RegressionTask:
    """MSE of a float64 regression; NaN on rank ``nan_rank`` at its step ``nan_step``."""

    def __init__(self, nan_rank: int = -1, nan_step: int = -1) -> None:
        self.nan_rank, self.nan_step, self.calls = nan_rank, nan_step, 0

    def training_step(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        loss = nn.functional.mse_loss(model(x), y)
        if self.calls == self.nan_step and distributed.rank() == self.nan_rank:
            loss = loss * float("nan")
        self.calls += 1
        return loss, {"mse": loss.detach()}

    def evaluate(
        self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]
    ) -> dict[str, float]:
        errs = [nn.functional.mse_loss(model(x), y, reduction="sum") for x, y in batches]
        return {"loss": float(sum(errs))}


def regression_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def regression_data(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return TensorDataset(x, x.sum(1, keepdim=True).sin())


def settings(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        epochs=2,
        lr=1e-2,
        device="cpu",
        progress=False,
        tensorboard=False,
        seed=3,
        channels_last=False,
        lr_mult={"2.": 0.5},
        freeze=("0.bias",),
    )
    return TrainConfig(**{**base, **kw})


def global_loader(data: Dataset[Any], batch: int) -> DataLoader[Any]:
    """One process, batch ``batch``: the same global batches as ``WORLD`` shards."""
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, drop_last=True)
    return DataLoader(data, batch_size=batch, sampler=sampler)


def sharded_loader(data: Dataset[Any], batch: int) -> DataLoader[Any]:
    sampler = distributed.train_sampler(data)
    assert sampler is not None
    return DataLoader(data, batch_size=batch, sampler=sampler)


# ----------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _worker(rank: int, port: int, job: Callable[[int, Path], None], out: str) -> None:
    torch.set_num_threads(1)
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": WORLD}
    os.environ.update({k: str(v) for k, v in env.items()})
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    assert distributed.init_from_env()
    try:
        job(rank, Path(out))
    finally:
        dist.destroy_process_group()


def run_ranks(job: Callable[[int, Path], None], out: Path) -> None:
    """Run ``job(rank, out)`` in ``WORLD`` gloo processes; fail after ``TIMEOUT`` seconds."""
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.start_processes(
        _worker, args=(_free_port(), job, str(out)), nprocs=WORLD, start_method=method, join=False
    )
    deadline = time.monotonic() + TIMEOUT
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"the {WORLD} processes hang (more than {TIMEOUT:.0f} s)")


def close(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-5, atol: float = 1e-7
) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=key)


def losses(history: list[dict[str, float]], *keys: str) -> list[float]:
    return [row[k] for row in history for k in keys]


# ----------------------------------------------------------------------------- (a) toy
class Stop(Exception):
    pass


def _stop_after_two(trainer: Trainer, row: dict[str, float]) -> None:
    if trainer.epoch == 2:
        raise Stop


def _regression_job(rank: int, out: Path) -> None:
    data, val = regression_data(), regression_data(6)
    make = lambda cb: Trainer(  # noqa: E731
        regression_model(), RegressionTask(), settings(epochs=3), out / "run", callbacks=cb
    )
    with pytest.raises(Stop):  # killed after epoch 2, then resumed: every rank loads last.pt
        make([_stop_after_two]).fit(sharded_loader(data, B), DataLoader(val, batch_size=4))
    trainer = make([])
    trainer.fit(sharded_loader(data, B), DataLoader(val, batch_size=4), resume=True)
    torch.save(
        {"state_dict": trainer.model.state_dict(), "history": trainer.history},
        out / f"rank{rank}.pt",
    )


def test_two_processes_match_one_process_with_the_global_batch_and_resume(tmp_path: Path) -> None:
    run_ranks(_regression_job, tmp_path)
    one = Trainer(regression_model(), RegressionTask(), settings(epochs=3), tmp_path / "one")
    one.fit(global_loader(regression_data(), WORLD * B), DataLoader(regression_data(6), 4))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    keys = ("train_loss", "train_mse", "val_loss", "skipped_batches", "lr")
    for got in ranks:
        assert losses(got["history"], *keys) == pytest.approx(losses(one.history, *keys), 1e-5)
        close(got["state_dict"], one.model.state_dict())
    close(ranks[0]["state_dict"], ranks[1]["state_dict"], rtol=0)
    # the checkpoint holds the unwrapped weights (no "module." prefix), frozen ones untouched
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    close(last["state_dict"], one.model.state_dict())
    assert torch.equal(last["state_dict"]["0.bias"], regression_model().state_dict()["0.bias"])
    assert last["epoch"] == 3 and len(last["history"]) == 3


# ----------------------------------------------------------------------------- (a) seg
def seg_cache(n: int = 8, size: int = 16) -> SegCache:
    g = torch.Generator().manual_seed(2)
    masks = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    masks[:, :, 4:12, 3:13] = 1
    noise = torch.randint(0, 60, (n, 1, size, size), generator=g, dtype=torch.uint8)
    images = 60 + 120 * masks + noise
    boxes = [Letterbox(size, size, size, 0, 0, size, size) for _ in range(n)]
    paths = [Path(f"img{i}.png") for i in range(n)]
    return SegCache(images, masks, boxes, paths, paths, [None] * n)


def seg_model() -> nn.Module:
    torch.manual_seed(0)  # instance norm: a sample's output does not depend on its batch
    return create_net("unet", features=(4, 8), norm="instance")


def seg_trainer(run: Path) -> Trainer:
    task = SegmentationTask(get_loss("bce_dice"), augmentation=None)
    config = settings(lr_mult={"encoder.": 0.5}, freeze=(), lr=1e-3)
    return Trainer(seg_model(), task, config, run)


def _seg_job(rank: int, out: Path) -> None:
    cache = seg_cache()
    trainer = seg_trainer(out / "run")
    trainer.fit(loader(cache, B, train=True), loader(cache, 4, train=False))
    torch.save({"history": trainer.history}, out / f"rank{rank}.pt")


def test_segmentation_two_processes_match_one_process(tmp_path: Path) -> None:
    run_ranks(_seg_job, tmp_path)
    cache = seg_cache()
    one = seg_trainer(tmp_path / "one")
    data = TensorDataset(cache.images, cache.masks)
    one.fit(global_loader(data, WORLD * B), loader(cache, 4, train=False))
    keys = ("train_loss", "val_loss", "val_dice")
    for r in range(WORLD):
        history = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["history"]
        assert losses(history, *keys) == pytest.approx(losses(one.history, *keys), 1e-5)
    # float32 rounding (about 4e-7 on weights of about 0.1), not a different step
    weights = load_checkpoint(tmp_path / "run" / "last.pt")["state_dict"]
    close(weights, one.model.state_dict(), atol=2e-6)


# ----------------------------------------------------------------------------- (a) pretrain
IDENTITY = AugmentConfig(rotation=0, scale=0, translate=0, brightness=0, contrast=0, noise=0)


class Images(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 8, size: int = 16) -> None:
        g = torch.Generator().manual_seed(4)
        self.images = torch.randint(0, 255, (n, 1, size, size), generator=g, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i]}


def pretrain_trainer(run: Path) -> Trainer:
    torch.manual_seed(0)
    kwargs = {"features": (4, 8), "norm": "instance"}
    method = create_method(
        "simclr", encoder_kwargs=kwargs, proj_dim=8, hidden_dim=16, temperature=0.5, gather=True
    )
    # Batch statistics are per process without SyncBatchNorm (CUDA only): none here.
    for module in list(method.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm1d):
                setattr(module, name, nn.Identity())
    return Trainer(method, PretrainTask(IDENTITY), settings(freeze=(), lr_mult={}, lr=1e-3), run)


def _pretrain_job(rank: int, out: Path) -> None:
    trainer = pretrain_trainer(out / "run")
    trainer.fit(sharded_loader(Images(), B), DataLoader(Images(4), batch_size=4))
    torch.save({"history": trainer.history}, out / f"rank{rank}.pt")


def test_pretraining_two_processes_gather_negatives_like_one_process(tmp_path: Path) -> None:
    run_ranks(_pretrain_job, tmp_path)
    one = pretrain_trainer(tmp_path / "one")
    one.fit(global_loader(Images(), WORLD * B), DataLoader(Images(4), batch_size=4))
    keys = ("train_loss", "val_loss", "val_retrieval")
    for r in range(WORLD):
        history = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["history"]
        assert losses(history, *keys) == pytest.approx(losses(one.history, *keys), 1e-5)
    close(load_checkpoint(tmp_path / "run" / "last.pt")["state_dict"], one.model.state_dict())


# ----------------------------------------------------------------------------- (b) NaN
def _nan_job(rank: int, out: Path) -> None:
    trainer = Trainer(
        regression_model(), RegressionTask(nan_rank=1, nan_step=1), settings(epochs=1), out / "r"
    )
    trainer.fit(sharded_loader(regression_data(), B))
    torch.save(
        {"state_dict": trainer.model.state_dict(), "history": trainer.history},
        out / f"rank{rank}.pt",
    )


def test_a_nan_on_one_rank_skips_the_step_on_every_rank(tmp_path: Path) -> None:
    run_ranks(_nan_job, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for got in ranks:
        assert got["history"][0]["skipped_batches"] == 1
    close(ranks[0]["state_dict"], ranks[1]["state_dict"], rtol=0)
    # the same as one process whose second global batch is skipped
    one = Trainer(regression_model(), RegressionTask(0, 1), settings(epochs=1), tmp_path / "one")
    one.fit(global_loader(regression_data(), WORLD * B))
    assert one.history[0]["skipped_batches"] == 1
    close(ranks[0]["state_dict"], one.model.state_dict())
    assert ranks[0]["history"][0]["train_loss"] == pytest.approx(one.history[0]["train_loss"])


# ----------------------------------------------------------------------------- (c) writes
def _writes_job(rank: int, out: Path) -> None:
    here = out / f"cwd{rank}"
    here.mkdir()
    os.chdir(here)  # a relative run folder: whatever rank 1 writes would land in cwd1
    trainer = Trainer(regression_model(), RegressionTask(), settings(tensorboard=True), "run")
    trainer.fit(sharded_loader(regression_data(), B), DataLoader(regression_data(6), 4))


def test_only_rank_zero_writes(tmp_path: Path) -> None:
    run_ranks(_writes_job, tmp_path)
    written = {p.name for p in (tmp_path / "cwd0" / "run").iterdir()}
    assert written >= {"config.yaml", "metrics.csv", "best.pt", "last.pt", "tensorboard"}
    assert list((tmp_path / "cwd1").iterdir()) == []


def test_helpers_are_no_ops_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == (0, 0, 1)
    assert not distributed.init_from_env() and distributed.is_main()
    distributed.barrier()
    flags = torch.tensor([True, False])
    assert distributed.all_reduce_flag(flags) is flags
    rows = torch.arange(6).reshape(3, 2)
    assert distributed.gather_rows(rows) is rows
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.train_sampler(regression_data()) is None
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(TrainingError, match="WORLD_SIZE='two'"):
        distributed.world()


def _gather_job(rank: int, out: Path) -> None:
    rows = torch.full((rank + 1, 2), float(rank))  # 1 row on rank 0, 2 on rank 1
    got = distributed.gather_rows(rows)
    assert got.tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    assert distributed.broadcast_object(f"rank {rank}") == "rank 0"
    flags = torch.tensor([True, rank == 0])
    assert distributed.all_reduce_flag(flags).tolist() == [True, False]
    (out / f"ok{rank}").write_text("ok")


def test_helpers_across_two_processes(tmp_path: Path) -> None:
    run_ranks(_gather_job, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"ok0", "ok1"}


# ----------------------------------------------------------------------------- (d) torchrun
def _chests(root: Path, n: int = 16) -> Path:
    """``root/images/c<i>.png`` (the sample's films, resized) and ``root/labels.csv`` with a
    binary label, two films per patient."""
    (root / "images").mkdir(parents=True)
    films = sorted((SAMPLE / "images").iterdir())
    lines = ["filename,patient_id,sick"]
    for i in range(n):
        image = cv2.imread(str(films[i % len(films)]), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(root / "images" / f"c{i}.png"), cv2.resize(image, (64, 64)))
        lines.append(f"c{i}.png,P{i // 2},{(i // 2) % 2}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


SMALL = ["--size", "32", "--epochs", "1", "--batch-size", "2", "--folds", "2"]
COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "train-seg": lambda tmp: [
        "--images", str(SAMPLE / "images"), "--masks", str(SAMPLE / "masks"), *SMALL,
    ],
    "train-lesion": lambda tmp: [  # the lung masks stand in for lesion masks
        "--images", str(SAMPLE / "images"), "--masks", str(SAMPLE / "masks"), *SMALL,
        "--priors", "lungs", "--encoder", "unet", "--lr", "1e-3",
    ],
    "train-cls": lambda tmp: [
        "--images", str(_chests(tmp / "chests")), "--label-columns", "sick", *SMALL,
        "--model", "resnet18", "--epoch-steps", "2", "--val-fraction", "0.3", "--no-explain",
    ],
}  # fmt: skip
FOLD_FILES = {"best.pt", "last.pt", "metrics.csv", "config.yaml"}
RUN_FILES = {
    "train-seg": {"summary.json", "per_image.csv", "predictions"},
    "train-lesion": {"summary.json", "per_image.csv", "predictions", "detections.csv"},
    "train-cls": {"summary.json", "predictions.csv"},
}


@pytest.mark.slow  # about 30 s each: two fresh interpreters import torch and MONAI
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_torchrun_writes_one_run_folder(command: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = [command, *COMMANDS[command](tmp_path), "--out", str(run), "--no-progress"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc_per_node", str(WORLD), "-m", "cxrssl"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launcher, *argv, "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1, done.stdout  # rank 0 alone reports
    assert {p.name for p in run.iterdir()} >= RUN_FILES[command]
    for fold in ("fold_0", "fold_1"):
        names = {p.name for p in (run / fold).iterdir()}
        assert names >= FOLD_FILES
        assert not any(n.endswith(".tmp") for n in names)
