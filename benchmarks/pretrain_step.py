"""Pre-training step time per method, the augmentation's share of it, and the data pipeline.

1. Per method of ``cxrssl.ssl.METHODS`` (or ``--methods``): the engine's own training step
   (``Trainer.train_epoch`` with :class:`~cxrssl.tasks.pretraining.PretrainTask`: views from
   ``as_views``, the method's loss, backward, clipping, the non-finite guard, AdamW and the
   schedule; the model in channels-last as the engine keeps it) on synthetic uint8 batches
   shaped like pool batches (image, lungs, regions 0..6, pathology, box: two lung ovals,
   regions the thirds of each, a box around them), already on the device. Reported: the
   median step, images/s (images of the batch, not views) and the time of the ``as_views``
   call (synchronised on CUDA) as a share of the step. Target: augmentation <= 10 % of the
   step. On CUDA each method runs in fp32 and with AMP (bf16 autocast where supported), the
   two alternating round by round.
2. The data pipeline: a real pool (``build_pool`` of ``--pool``, the built-in sample by
   default, its rows repeated so that one epoch holds every timed step) read by
   ``pool_loader(..., workers=N, shuffle=True)`` feeding the same step, against the same
   steps on synthetic batches already on the device, rounds alternating. Target: the
   pipeline within 1.1x of the device batches (never the bottleneck). On by default
   (``--no-pipeline`` skips it); on CPU the loader workers and the step share the same
   cores: informative, not the target's setting.

Warm-up steps are excluded everywhere (and at the start of every pipeline epoch).

    python benchmarks/pretrain_step.py --json pretrain_step.json
    python benchmarks/pretrain_step.py --device cpu --size 128 --batch-size 8 --steps 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrssl.data.pool import build_pool, open_sources, pool_loader
from cxrssl.ssl import METHODS
from cxrssl.tasks.pretraining import PretrainConfig, PretrainTask, as_views, build_method
from cxrssl.train import TrainConfig, Trainer, resolve_device

AUG_TARGET = 0.10  # augmentation share of the step
PIPELINE_TARGET = 1.1  # pipeline step / device-batch step
SAMPLE_POOL = Path(__file__).resolve().parents[1] / "src" / "cxrssl" / "data" / "sample"

Batch = dict[str, torch.Tensor]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- synthetic data


def synthetic_batch(batch_size: int, size: int, generator: torch.Generator) -> Batch:
    """A pool-shaped uint8 batch: a chest-like image (zero letterbox bands above and below),
    two lung ovals (``lungs`` {0, 1}), their thirds of height as ``regions`` (1-3 the image's
    left lung, 4-6 the right one), a few candidate blobs inside the lungs (``pathology``
    0/255), the lung box (x0, y0, x1, y1, float32 canvas pixels, exclusive ends), plus
    ``quality`` and ``index`` like a pool item."""
    n, s = batch_size, size

    def jitter(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    yy = coords.view(1, s, 1)
    xx = coords.view(1, 1, s)
    lungs = torch.zeros(n, s, s, dtype=torch.bool)
    regions = torch.zeros(n, s, s, dtype=torch.uint8)
    x0 = torch.full((n,), float(s))
    y0 = torch.full((n,), float(s))
    x1 = torch.zeros(n)
    y1 = torch.zeros(n)
    for first, cx in ((1, 0.32), (4, 0.68)):
        cxs = (cx + 0.03 * jitter(n)).view(n, 1, 1)
        cys = (0.5 + 0.03 * jitter(n)).view(n, 1, 1)
        rx = (0.13 + 0.02 * jitter(n)).view(n, 1, 1)
        ry = (0.27 + 0.03 * jitter(n)).view(n, 1, 1)
        oval = ((xx - cxs) / rx) ** 2 + ((yy - cys) / ry) ** 2 <= 1
        third = ((yy - (cys - ry)) / (2 * ry) * 3).floor().clamp(0, 2).to(torch.uint8)
        regions = torch.where(oval & ~lungs, first + third, regions)
        lungs |= oval
        x0 = torch.minimum(x0, ((cxs - rx) * s).floor().flatten())
        x1 = torch.maximum(x1, ((cxs + rx) * s).ceil().flatten())
        y0 = torch.minimum(y0, ((cys - ry) * s).floor().flatten())
        y1 = torch.maximum(y1, ((cys + ry) * s).ceil().flatten())
    margin = 0.02 * s
    box = torch.stack([x0 - margin, y0 - margin, x1 + margin, y1 + margin], 1).clamp(0, s)
    blobs = torch.zeros(n, s, s, dtype=torch.bool)
    for _ in range(3):
        bx = (0.5 + 0.3 * jitter(n)).view(n, 1, 1)
        by = (0.5 + 0.2 * jitter(n)).view(n, 1, 1)
        r = (0.03 + 0.02 * torch.rand(n, generator=generator)).view(n, 1, 1)
        blobs |= (xx - bx) ** 2 + (yy - by) ** 2 <= r**2
    pathology = (blobs & lungs).to(torch.uint8) * 255
    body = 150 + 60 * torch.exp(-(((xx - 0.5) / 0.45) ** 2)) - 50 * yy  # soft tissue
    image = body - 90 * lungs.float() + 60 * pathology.float() / 255
    image = image + 12 * torch.randn(n, s, s, generator=generator)
    image = image.clamp(1, 255)  # content is never 0 ...
    pad = round(0.05 * s)
    image[:, :pad] = 0  # ... and the letterbox padding exactly 0
    image[:, s - pad :] = 0
    return {
        "image": image.round().to(torch.uint8).unsqueeze(1),
        "lungs": lungs.to(torch.uint8).unsqueeze(1),
        "regions": regions.unsqueeze(1),
        "pathology": pathology.unsqueeze(1),
        "box": box.to(torch.float32),
        "quality": torch.ones(n),
        "index": torch.arange(n),
    }


def synthetic_batches(count: int, batch_size: int, size: int, device: torch.device) -> list[Batch]:
    gen = torch.Generator().manual_seed(0)
    return [
        {k: v.to(device) for k, v in synthetic_batch(batch_size, size, gen).items()}
        for _ in range(count)
    ]


# --------------------------------------------------------------------------- timing


class TimedTask(PretrainTask):
    """``PretrainTask`` that times its ``as_views`` call (synchronised before and after)."""

    def __init__(self, device: torch.device, timing: bool) -> None:
        super().__init__()
        self.device = device
        self.timing = timing
        self.aug_s: list[float] = []

    def training_step(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.timing:
            sync(self.device)
            start = time.perf_counter()
        views = as_views(model, batch, generator, self.augment)
        if self.timing:
            sync(self.device)
            self.aug_s.append(time.perf_counter() - start)
        loss, parts = getattr(model, "module", model).loss(views)
        return loss, parts


def clocked(
    batches: Iterable[Batch], device: torch.device, marks: list[float], sync_from: int | None
) -> Iterator[Batch]:
    """Yield ``batches``, appending to ``marks`` the time before each is fetched and, at the
    end, after the last step: ``len + 1`` marks. Synchronised at every mark
    (``sync_from=None``), or only at mark ``sync_from`` and at the end."""
    it = iter(batches)
    i = 0
    while True:
        if sync_from is None or i == sync_from:
            sync(device)
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            sync(device)
            marks.append(time.perf_counter())
            return
        marks.append(start)
        yield batch
        i += 1


class Variant:
    """One method's model, engine and task (fp32 or AMP)."""

    def __init__(
        self, method: str, args: argparse.Namespace, device: torch.device, amp: bool, run_dir: str
    ) -> None:
        kwargs: dict[str, Any] = {}
        if args.features:
            kwargs["encoder_kwargs"] = {"features": args.features}
        config = PretrainConfig(method=method, size=args.size, seed=0, **kwargs)
        model = build_method(config)
        self.task = TimedTask(device, timing=True)
        train_config = TrainConfig(
            epochs=1000,
            lr=config.lr,
            weight_decay=config.weight_decay,
            amp=amp,
            device=str(device),
            progress=False,
            tensorboard=False,
            channels_last=args.channels_last,
        )
        self.trainer = Trainer(model, self.task, train_config, run_dir)
        self.trainer.setup(100)
        self.device = device

    @property
    def amp(self) -> bool:
        return self.trainer.use_amp

    def run(
        self, batches: Iterable[Batch], sync_from: int | None
    ) -> tuple[list[float], list[float]]:
        """One engine epoch over ``batches``: (marks, augmentation seconds per step)."""
        marks: list[float] = []
        self.task.aug_s = []
        self.trainer.train_epoch(clocked(batches, self.device, marks, sync_from))
        return marks, list(self.task.aug_s)


def summarise(step_s: Sequence[float], aug_s: Sequence[float], batch_size: int) -> dict[str, Any]:
    step = statistics.median(step_s)
    share = statistics.median(a / s for a, s in zip(aug_s, step_s, strict=True))
    return {
        "step_s": step,
        "images_per_s": batch_size / step,
        "aug_s": statistics.median(aug_s),
        "aug_share": share,
        "aug_ok": share <= AUG_TARGET,
        "steps_s": list(step_s),
        "aug_steps_s": list(aug_s),
    }


def bench_method(
    method: str, args: argparse.Namespace, device: torch.device, run_dir: str
) -> dict[str, Any]:
    """fp32 (and AMP on CUDA) of one method; rounds alternate between the two."""
    variants = {"fp32": Variant(method, args, device, False, run_dir)}
    if device.type == "cuda" and args.amp:
        amp = Variant(method, args, device, True, run_dir)
        dtype = "bf16" if amp.trainer.amp_dtype == torch.bfloat16 else "fp16"
        variants[f"amp-{dtype}"] = amp
    batches = synthetic_batches(max(args.steps, args.warmup), args.batch_size, args.size, device)
    for v in variants.values():
        v.run(batches[: args.warmup], None)
    steps: dict[str, list[float]] = {k: [] for k in variants}
    augs: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, v in variants.items():
            marks, aug = v.run(batches[: args.steps], None)
            steps[name] += [b - a for a, b in itertools.pairwise(marks)]
            augs[name] += aug
    return {name: summarise(steps[name], augs[name], args.batch_size) for name in variants}


def bench_pipeline(
    args: argparse.Namespace, device: torch.device, run_dir: str, cache_dir: Path | None
) -> dict[str, Any]:
    """Pool loader feeding the step against synthetic batches already on the device."""
    per_epoch = args.warmup + args.steps
    start = time.perf_counter()
    pool = build_pool(
        open_sources(args.pool),
        args.size,
        cache_dir=cache_dir,
        workers=args.pool_workers,
        progress=False,
    )
    build_s = time.perf_counter() - start
    rows = np.resize(np.arange(len(pool)), per_epoch * args.batch_size)
    loader = pool_loader(pool.subset(rows), args.batch_size, shuffle=True, workers=args.workers)
    synthetic = synthetic_batches(per_epoch, args.batch_size, args.size, device)
    v = Variant(args.pipeline_method, args, device, args.amp, run_dir)
    v.task.timing = False  # no extra synchronisation inside the steps
    v.run(loader, args.warmup)  # starts the workers and warms the model up
    times: dict[str, list[float]] = {"device": [], "pipeline": []}
    for _ in range(args.pipeline_rounds):
        for name, source in (("device", synthetic), ("pipeline", loader)):
            marks, _ = v.run(source, args.warmup)
            times[name].append((marks[-1] - marks[args.warmup]) / args.steps)
    device_s = statistics.median(times["device"])
    pipeline_s = statistics.median(times["pipeline"])
    ratio = pipeline_s / device_s
    return {
        "method": args.pipeline_method,
        "pool": str(args.pool),
        "pool_images": len(pool),
        "pool_build_s": build_s,
        "workers": args.workers,
        "amp": v.amp,
        "device_step_s": device_s,
        "pipeline_step_s": pipeline_s,
        "ratio": ratio,
        "ok": ratio <= PIPELINE_TARGET,
        "rounds_s_per_step": times,
    }


# --------------------------------------------------------------------------- report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def table(result: Mapping[str, Any]) -> str:
    lines = [
        f"torch {result['torch']} | {result['device']} | size {result['size']} | batch "
        f"{result['batch_size']} | {result['steps']} steps x {result['rounds']} round(s) "
        f"timed, {result['warmup']} warm-up | channels_last {result['channels_last']}",
        f"target: augmentation <= {AUG_TARGET:.0%} of the step",
        "",
        f"{'method':<16} {'variant':<9} {'step ms':>9} {'img/s':>8} {'aug ms':>8} {'aug %':>6}  ok",
    ]
    for method, variants in result["methods"].items():
        for name, r in variants.items():
            lines.append(
                f"{method:<16} {name:<9} {1e3 * r['step_s']:9.1f} {r['images_per_s']:8.1f} "
                f"{1e3 * r['aug_s']:8.1f} {100 * r['aug_share']:6.1f}  "
                f"{'yes' if r['aug_ok'] else 'NO'}"
            )
    p = result.get("pipeline")
    if p:
        where = "CUDA" if result["device_type"] == "cuda" else "CPU (workers share the cores)"
        lines += [
            "",
            f"data pipeline on {where}: {p['method']}, pool {p['pool']} ({p['pool_images']} "
            f"images, built/found in {p['pool_build_s']:.1f} s), workers {p['workers']}, "
            f"amp {p['amp']}",
            f"  device batches {1e3 * p['device_step_s']:.1f} ms/step, pool loader "
            f"{1e3 * p['pipeline_step_s']:.1f} ms/step: ratio {p['ratio']:.2f} (target <= "
            f"{PIPELINE_TARGET}: {'yes' if p['ok'] else 'NO'})",
        ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated (default: all)"
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=None, help="16 on CPU, 64 on CUDA")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per round (5 on CPU, 10 on CUDA)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per method (1 on CPU, 3 on CUDA)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up steps (1 on CPU, 3 on CUDA)"
    )
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--features",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        help="U-Net encoder features, e.g. 16,32,64,128,256 (default: the encoder's)",
    )
    parser.add_argument(
        "--pipeline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the data-pipeline comparison (on CPU too: informative there)",
    )
    parser.add_argument("--pipeline-method", default="simclr")
    parser.add_argument(
        "--pipeline-rounds", type=int, default=None, help="rounds per source (2 on CPU, 3 on CUDA)"
    )
    parser.add_argument("--pool", type=Path, default=SAMPLE_POOL, help="folder of radiographs")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="pool cache (default: cxrssl's own)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="loader workers (default: half the cores, <= 8)"
    )
    parser.add_argument(
        "--pool-workers", type=int, default=None, help="processes building the pool (all cores)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    cores = os.cpu_count() or 1
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.batch_size = args.batch_size or (64 if cuda else 16)
    args.steps = args.steps or (10 if cuda else 5)
    args.rounds = args.rounds or (3 if cuda else 1)
    args.warmup = (3 if cuda else 1) if args.warmup is None else args.warmup
    args.pipeline_rounds = args.pipeline_rounds or (3 if cuda else 2)
    args.workers = min(8, max(1, cores // 2)) if args.workers is None else args.workers
    args.pool_workers = args.pool_workers or cores
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "device": device_name(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "channels_last": args.channels_last,
        "aug_target": AUG_TARGET,
        "pipeline_target": PIPELINE_TARGET,
        "methods": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            start = time.perf_counter()
            result["methods"][method] = bench_method(method, args, device, tmp)
            print(f"{method}: {time.perf_counter() - start:.1f} s", flush=True)
        if args.pipeline:
            result["pipeline"] = bench_pipeline(args, device, tmp, args.cache_dir)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
