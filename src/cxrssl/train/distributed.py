"""Helpers for running under ``torchrun`` (PyTorch DistributedDataParallel).

``torchrun`` (``python -m torch.distributed.run``) starts one process per device and sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (plus ``MASTER_ADDR``/``MASTER_PORT``) in each;
:func:`init_from_env` turns them into a process group. Every helper here is a no-op in a
single process (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``), so code calling them runs unchanged
without ``torchrun``.
"""

from __future__ import annotations

import atexit
import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from cxrssl.train.config import TrainingError

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError as err:
        raise TrainingError(f"environment variable {name}={value!r} is not an integer") from err


def world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the ``torchrun`` environment ((0, 0, 1)
    without it)."""
    return _env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1)


def active() -> bool:
    """Whether a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from the ``torchrun`` environment when
    ``WORLD_SIZE > 1`` and none is initialised yet.

    Args:
        backend: ``"gloo"``, ``"nccl"``...; None: gloo for CPU tensors and, where CUDA is
            available, NCCL for CUDA tensors (so ``--device cpu`` works on a GPU node too).

    Returns:
        Whether a process group of more than one process is active afterwards.

    Raises:
        TrainingError: ``WORLD_SIZE > 1`` but torch was built without distributed support.
    """
    rank, _, size = world()
    if size <= 1 or active():
        return active()
    if not dist.is_available():
        raise TrainingError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=size)
    atexit.register(_destroy)
    return True


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's global rank (0 in a single process)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return world()[0]


def world_size() -> int:
    """Number of processes of the active group (1 in a single process)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0, or a single process)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if active():
        dist.barrier()


def all_reduce_flag(flags: torch.Tensor) -> torch.Tensor:
    """Element-wise minimum of boolean or integer ``flags`` over all processes: true only
    where every process has it true. Returned as a new tensor of the input's dtype."""
    if not active():
        return flags
    out = flags.to(torch.int32).clone()
    dist.all_reduce(out, op=dist.ReduceOp.MIN)
    return out.to(flags.dtype)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (floating) over all processes."""
    if not active():
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``tensor`` (dim 0 may differ between processes; the other
    dims may not), concatenated in rank order on every process."""
    if not active():
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    most = int(max(int(s) for s in sizes))
    padded = tensor.new_zeros((most, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)])


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of process ``src`` (picklable) on every process."""
    if not active():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    out: T = box[0]
    return out


def train_sampler(dataset: Dataset[Any], drop_last: bool = True) -> DistributedSampler[Any] | None:
    """A shuffling :class:`~torch.utils.data.DistributedSampler` (each process its shard of
    the global batch) when the torchrun environment has more than one process, else None.

    The engine reseeds it each epoch (``seed`` from the training seed, ``set_epoch``), so
    the shards are deterministic and together cover one shuffled pass.
    """
    if not init_from_env():
        return None
    return DistributedSampler(dataset, shuffle=True, seed=0, drop_last=drop_last)
