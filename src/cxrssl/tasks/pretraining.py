"""Self-supervised pre-training: the unlabelled pool, two (or one) augmented views per image,
a method of :mod:`cxrssl.ssl`, and the one training engine.

Per step the task turns a pool batch (uint8 image and maps, lung box) into views with
:func:`cxrssl.augment.augment_view` (the seed's recipe, ``PRETRAIN_AUGMENT``; the maps a
method needs follow every geometric transform; lung-box crop first where the method crops)
and asks the method for its loss. Validation runs on held-out pool patients with fixed views:
the loss (which chooses ``best.pt``), the positive-pair retrieval accuracy (is each view's
nearest neighbour among the other views its own partner?), the embedding spread (mean
per-dimension standard deviation of the L2-normalised embeddings times sqrt(D): about 1 for
embeddings spread over the sphere, 0 for a collapse, which logs a warning) and, for MedSASS,
the Dice against the pseudo-masks.

The run folder is the engine's (``config.yaml``, ``metrics.csv``, ``best.pt``, ``last.pt``,
``tensorboard/`` with the views and their warped maps) plus ``summary.json``, ``views.png`` and
``failures.csv``. Checkpoints carry the method, the encoder (name and keywords), the crop and
the input size in ``extra``: ``train-seg --init RUN/best.pt`` loads the encoder (keys
``encoder.*``), ``--init-whole`` the whole U-Net of MedSASS, and the crop follows.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrssl.augment import PRETRAIN_AUGMENT, AugmentConfig, MapKind, View, augment_view
from cxrssl.data.pool import Pool, build_pool, open_sources, pool_loader
from cxrssl.data.splits import resolve_patient_ids
from cxrssl.errors import CxrsslError
from cxrssl.files import atomic_open
from cxrssl.ssl import create_method, parse_method
from cxrssl.ssl.base import PretrainMethod
from cxrssl.study.runner import write_json_atomic
from cxrssl.train import FitResult, TrainConfig, Trainer, distributed

log = logging.getLogger(__name__)

COLLAPSE_SPREAD = 0.1  # embedding spread below this (of about 1 when spread out) is a collapse
EVAL_SEED = 20_240_611  # the held-out views are the same every epoch
SHOWN = 4  # images per TensorBoard view grid (and views.png)
VIEWS = "views.png"  # the run folder's picture of the views and their maps


@dataclass
class PretrainConfig:
    """A pre-training run; see ``cxrssl pretrain --help``.

    Attributes:
        method: ``cxrssl.ssl`` name (``lung-crop+NAME`` combines the crop with a method).
        method_kwargs: The method's own settings (e.g. ``mask_weight``, ``seg_supervision``).
        encoder: ``cxrssl.nets.ENCODERS`` name (MedSASS: ``unet`` only).
        encoder_kwargs: Its keywords; keep them equal to the fine-tuning model's.
        size: Side of the letterboxed views (and of the pool cache).
        epochs: Passes over the pool.
        batch_size: Images per step (each gives ``views`` views).
        lr: Peak learning rate (AdamW, warm-up then cosine).
        weight_decay: AdamW weight decay.
        temperature: NT-Xent temperature.
        mask_source: Lung masks of the pool: ``rules``, ``otsu`` or a folder of masks.
        holdout: Share of the pool's patients held out for monitoring (at least 2 images,
            at most ``max_holdout``).
        max_holdout: Most held-out images.
        workers: DataLoader worker processes.
        mask_workers: Processes computing missing rule-based maps.
        cache_dir: Pool cache folder (default: beside the anatomy cache).
        seed: Seed of the hold-out, the weights and every random view.
        device: ``auto``, ``cpu``, ``cuda``...
        amp: Mixed precision on CUDA.
        progress: Progress bars.
        tensorboard: TensorBoard scalars and view images.
    """

    method: str = "medsass"  # the best measured (README, label-efficiency study)
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    encoder: str = "unet"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    size: int = 224
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    mask_source: str = "rules"
    holdout: float = 0.05
    max_holdout: int = 256
    workers: int = 0
    mask_workers: int = 1
    cache_dir: str | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    progress: bool = True
    tensorboard: bool = True


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns."""

    run_dir: Path
    fit: FitResult
    pool_images: int
    holdout_images: int
    failures: list[tuple[str, str]]


def _unwrap(model: nn.Module) -> PretrainMethod:
    return cast(PretrainMethod, getattr(model, "module", model))  # DDP wraps it


def as_views(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    generator: torch.Generator,
    config: AugmentConfig = PRETRAIN_AUGMENT,
) -> list[View]:
    """The method's views of a pool batch (uint8 tensors on the device)."""
    method = _unwrap(model)
    images = batch["image"].float() / 255
    maps: dict[str, tuple[torch.Tensor, MapKind]] = {}
    for name, kind in method.maps.items():
        value = batch[name]
        maps[name] = (value.float() / 255 if kind == "soft" else value, kind)
    boxes = batch["box"] if method.crop else None
    return [augment_view(images, maps, generator, config, boxes) for _ in range(method.views)]


def retrieval_accuracy(za: torch.Tensor, zb: torch.Tensor) -> float:
    """Share of views whose nearest other-view embedding (cosine) is their own partner, both
    directions averaged."""
    sim = F.normalize(za.float(), dim=1) @ F.normalize(zb.float(), dim=1).T
    target = torch.arange(len(sim), device=sim.device)
    hits = (sim.argmax(1) == target).float().mean() + (sim.argmax(0) == target).float().mean()
    return float(hits / 2)


def embedding_spread(z: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised embeddings, times sqrt(D) (0: collapse)."""
    zn = F.normalize(z.float(), dim=1)
    return float(zn.std(0).mean() * math.sqrt(zn.shape[1]))


def _grid(view: View, visuals: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(3, n*H, (1+maps)*W) tiles: each image, then each map, one row per image."""
    n = min(SHOWN, view.image.shape[0])
    cols = [view.image[:n, :1].float()]
    cols += [value[:n, :1].float() for value in visuals.values()]
    rows = torch.cat([torch.cat(list(c), -1) for c in zip(*cols, strict=True)], -2)
    return rows.clamp(0, 1).expand(3, -1, -1).cpu()


class PretrainTask:
    """The engine's task for pre-training (see the module notes)."""

    def __init__(self, augment: AugmentConfig = PRETRAIN_AUGMENT) -> None:
        self.augment = augment

    def training_step(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        views = as_views(model, batch, generator, self.augment)
        loss, parts = _unwrap(model).loss(views)
        return loss, parts

    def evaluate(
        self, model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]
    ) -> dict[str, float]:
        method = _unwrap(model)
        generator: torch.Generator | None = None
        sums: dict[str, float] = {}
        n_batches = 0
        za: list[torch.Tensor] = []
        zb: list[torch.Tensor] = []
        dice: list[torch.Tensor] = []
        for batch in batches:
            if generator is None:
                generator = torch.Generator(batch["image"].device).manual_seed(EVAL_SEED)
            views = as_views(model, batch, generator, self.augment)
            loss, parts = method.loss(views)
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_batches += 1
            za.append(method.embed(views[0].image, views[0]))
            if len(views) > 1:
                zb.append(method.embed(views[1].image, views[1]))
            if hasattr(method, "dice"):
                dice.append(method.dice(views[0]))
        out = {k: v / max(n_batches, 1) for k, v in sums.items()}
        if za:
            out["spread"] = embedding_spread(torch.cat(za))
        if zb:
            out["retrieval"] = retrieval_accuracy(torch.cat(za), torch.cat(zb))
        if dice:
            out["pseudo_dice"] = float(torch.nanmean(torch.cat(dice)))
        return out

    def overlays(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        method = _unwrap(model)
        generator = torch.Generator(batch["image"].device).manual_seed(EVAL_SEED)
        views = as_views(model, batch, generator, self.augment)
        return {f"view_{i}": _grid(v, method.visuals(v)) for i, v in enumerate(views)}


def write_views(model: nn.Module, loader: Iterable[Mapping[str, torch.Tensor]], path: Path) -> None:
    """What the method looked at, as one PNG: for the first held-out batch, each view's images
    beside their warped maps and the method's own maps (attention, segmentation branch,
    MedSASS prediction), one row per image, the views side by side."""
    import cv2

    from cxrssl.files import write_bytes_atomic
    from cxrssl.train.device import to_device
    from cxrssl.viz import png_bytes

    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        grids = PretrainTask().overlays(model, to_device(next(iter(loader)), device))
    tiles = [g.permute(1, 2, 0).numpy() for g in grids.values()]
    gap = np.ones((tiles[0].shape[0], 4, 3), np.float32)
    picture = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    rgb = (picture * 255 + 0.5).clip(0, 255).astype(np.uint8)
    write_bytes_atomic(path, png_bytes(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))


def hold_out(patient_ids: Sequence[str | None], share: float, most: int, seed: int) -> np.ndarray:
    """Boolean (N,) mask of held-out images: whole patients in an order drawn with ``seed``,
    added until ``share`` of the images (at least 2, at most ``most``) are held out.

    Raises:
        CxrsslError: fewer than 4 images, or patients too large to leave 2 for training.
    """
    ids = resolve_patient_ids(patient_ids)
    n = len(ids)
    if n < 4:
        raise CxrsslError(f"the pool has {n} image(s); pre-training needs at least 4")
    want = min(max(2, round(share * n)), most)
    rows: dict[str, list[int]] = {}
    for i, pid in enumerate(ids):
        rows.setdefault(pid, []).append(i)
    order = sorted(rows)
    np.random.default_rng(seed).shuffle(order)
    held = np.zeros(n, bool)
    for pid in order:
        if held.sum() >= want:
            break
        held[rows[pid]] = True
    if n - held.sum() < 2:
        raise CxrsslError("too few patients to hold some out for monitoring pre-training")
    return held


def _warn_collapse(trainer: Trainer, row: dict[str, float]) -> None:
    spread = row.get("val_spread")
    if spread is not None and spread < COLLAPSE_SPREAD:
        log.warning(
            "epoch %d: embedding spread %.3f < %.2f: the embeddings are collapsing (try a "
            "higher temperature, a lower learning rate or a larger batch)",
            trainer.epoch,
            spread,
            COLLAPSE_SPREAD,
        )


def build_method(config: PretrainConfig) -> nn.Module:
    """The method's network with seeded initial weights. Under ``torchrun`` with several
    processes a contrastive method gathers its NT-Xent negatives from every process unless
    ``method_kwargs`` says ``gather: false``."""
    kwargs = {
        "encoder": config.encoder,
        "encoder_kwargs": dict(config.encoder_kwargs),
        "temperature": config.temperature,
        "gather": distributed.world()[2] > 1,
        **config.method_kwargs,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return create_method(config.method, **kwargs)


def _write_failures(path: Path, failures: Sequence[tuple[str, str]]) -> None:
    with atomic_open(path, "w") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "reason"])
        writer.writerows(failures)


def pretrain(
    sources: Sequence[str | Path] | Pool,
    out: str | Path,
    config: PretrainConfig | None = None,
    *,
    exclude_patients: Iterable[str] = (),
    exclude_files: Iterable[str | Path] = (),
    resume: bool = False,
) -> PretrainResult:
    """Pre-train ``config.method`` on the radiographs of ``sources`` (folders in any layout
    ``cxrssl data`` reads, or a built :class:`~cxrssl.data.pool.Pool`).

    Args:
        sources: Folders of unlabelled radiographs, or a pool.
        out: Run folder.
        config: Settings (defaults: :class:`PretrainConfig`).
        exclude_patients: Test patients: a pool holding any of their images is refused.
        exclude_files: Test images (compared by content): likewise.
        resume: Continue from ``out/last.pt``.

    Raises:
        CxrsslError: Unknown method or setting, a pool with test patients, too few images.
    """
    config = config or PretrainConfig()
    out = Path(out)
    parse_method(config.method)  # fail before the pool is built
    if isinstance(sources, Pool):
        pool = sources
    else:
        pool = build_pool(
            open_sources(sources),
            config.size,
            mask_source=config.mask_source,
            cache_dir=config.cache_dir,
            workers=config.mask_workers,
            progress=config.progress,
            exclude_patients=exclude_patients,
            exclude_files=exclude_files,
        )
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        _write_failures(out / "failures.csv", pool.failures)
    held = hold_out(pool.patient_ids, config.holdout, config.max_holdout, config.seed)
    train_pool, val_pool = pool.subset(np.flatnonzero(~held)), pool.subset(np.flatnonzero(held))
    model = build_method(config)
    batch = min(config.batch_size, len(train_pool))
    train_loader = pool_loader(
        train_pool, batch, shuffle=True, workers=config.workers, drop_last=True
    )
    val_batch = min(batch, len(val_pool))
    while len(val_pool) % val_batch == 1:  # NT-Xent needs two images in every batch
        val_batch += 1
    val_loader = pool_loader(val_pool, val_batch, shuffle=False, workers=0, drop_last=False)
    method, _ = parse_method(config.method)
    extra = {
        "method": config.method,
        "encoder": {"name": config.encoder, "kwargs": dict(config.encoder_kwargs)},
        "crop": "lung-box" if model.crop else "none",  # the name or method_kwargs
        "size": config.size,
        "mask_source": str(config.mask_source),
        "task": "pretrain",
    }
    train_config = TrainConfig(
        epochs=config.epochs,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_epochs=min(2.0, config.epochs / 5),
        amp=config.amp,
        monitor="loss",
        monitor_mode="min",
        seed=config.seed,
        device=config.device,
        progress=config.progress,
        tensorboard=config.tensorboard,
    )
    spec = {"name": config.method, "kwargs": {"method": method, **config.method_kwargs}}
    data = {"images": len(pool), "train": len(train_pool), "holdout": len(val_pool)}
    trainer = Trainer(
        model,
        PretrainTask(),
        train_config,
        out,
        model_spec=spec,
        extra=extra,
        run_config={"pretrain": asdict(config), "pool": data},
        callbacks=[_warn_collapse],
    )
    fit = trainer.fit(train_loader, val_loader, resume=resume)
    summary = {
        "method": config.method,
        "pool": {**data, "failed": len(pool.failures)},
        "best_epoch": fit.best_epoch,
        "best_val_loss": fit.best,
        "last": fit.history[-1] if fit.history else {},
        "seconds": sum(h.get("seconds", 0.0) for h in fit.history),
        "config": asdict(config),
    }
    if distributed.is_main():
        write_json_atomic(out / "summary.json", summary)
        write_views(trainer.model, val_loader, out / VIEWS)
    distributed.barrier()
    return PretrainResult(out, fit, len(pool), len(val_pool), list(pool.failures))
