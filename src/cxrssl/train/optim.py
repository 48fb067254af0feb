"""Optimiser parameter groups (per-prefix learning rates, frozen prefixes) and the schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cxrssl.errors import CxrsslError


def param_groups(
    model: nn.Module, lr: float, lr_mult: dict[str, float], freeze: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Optimiser groups: parameters under a ``freeze`` prefix get ``requires_grad`` off and
    are left out; the rest are grouped by the multiplier of their longest ``lr_mult`` prefix.

    Raises:
        CxrsslError: Every parameter is frozen.
    """
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if any(name.startswith(p) for p in freeze):
            param.requires_grad_(False)
            continue
        prefixes = [p for p in lr_mult if name.startswith(p)]
        mult = lr_mult[max(prefixes, key=len)] if prefixes else 1.0
        groups.setdefault(mult, []).append(param)
    if not groups:
        raise CxrsslError(f"every parameter is frozen by {freeze}; nothing to train")
    return [{"params": ps, "lr": lr * m} for m, ps in groups.items()]


def make_optimizer(
    name: str, groups: list[dict[str, Any]], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``"adamw"`` (decoupled weight decay) or ``"adam"`` (L2) over ``groups``."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    raise CxrsslError(f"unknown optimizer {name!r}; use 'adamw' or 'adam'")


def lr_factor(
    schedule: str, total_steps: int, warmup_steps: int, min_ratio: float
) -> Callable[[int], float]:
    """Learning-rate multiplier per step: linear warm-up, then ``"cosine"`` decay to
    ``min_ratio`` or ``"constant"`` (for ``torch.optim.lr_scheduler.LambdaLR``)."""
    total = max(1, total_steps)
    warmup = min(total - 1, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
