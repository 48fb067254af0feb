"""Pre-training units of a study: one checkpoint per method, cached like every unit.

A unit's stamp holds the pre-training settings, the pool's image files (by content), the
code of :mod:`cxrssl.tasks.pretraining` and what it imports; a stale or half-finished run
folder is removed before the unit runs again.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrssl.data.pool import Pool
from cxrssl.study.runner import Unit, run_units
from cxrssl.tasks.pretraining import VIEWS, PretrainConfig, pretrain

PRETRAIN_CODE = ("cxrssl.tasks.pretraining",)  # computes a pre-training unit (with imports)


def pretrain_checkpoints(
    pool: Pool,
    methods: Sequence[str],
    out: Path,
    settings: Mapping[str, Any],
    *,
    size: int,
    seed: int,
    device: str,
    stamp: Mapping[str, Any] | None = None,
    bar: Any | None = None,
) -> dict[str, dict[str, Any]]:
    """Pre-train each method on ``pool`` under ``out/<method>``, or reuse a finished run.

    Args:
        pool: The unlabelled images (test patients already left out).
        methods: ``cxrssl.ssl`` method names.
        out: Folder of the pre-training runs (and their ``units/``).
        settings: ``PretrainConfig`` keys of every unit (``size``, ``seed`` and ``device``
            come from the arguments).
        size: Input side.
        seed: Seed of every unit.
        device: The resolved device.
        stamp: Anything else the checkpoints depend on (e.g. a pool limit).
        bar: The study's progress bar (see :func:`~cxrssl.study.runner.run_units`).

    Returns:
        Method -> its result: ``checkpoint`` (``best.pt``), ``views`` (``views.png``),
        ``history`` (the engine's rows per epoch), ``pool`` and ``failed`` image counts.
    """

    def run(unit: Unit) -> dict[str, Any]:
        folder = out / unit.method
        shutil.rmtree(folder, ignore_errors=True)
        keys = {"tensorboard": True, **settings, "progress": False}
        config = PretrainConfig(
            **{**keys, "method": unit.method, "size": size, "seed": seed, "device": device}
        )
        result = pretrain(pool, folder, config)
        return {
            "checkpoint": str(folder / "best.pt"),
            "views": str(folder / VIEWS),
            "history": result.fit.history,
            "pool": len(pool),
            "failed": len(pool.failures),
        }

    units = [Unit(m, None, seed) for m in methods]
    key = {"pretrain": dict(settings), "size": size, **(stamp or {})}
    done = run_units(
        units,
        run,
        out,
        key,
        data=pool.files,
        device=device,
        code=PRETRAIN_CODE,
        bar=bar,
        label="pre-training ",
    )
    return {u.method: done[u.key] for u in units}
