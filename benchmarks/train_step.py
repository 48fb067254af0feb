"""Engine overhead and inference speed, measured side by side in one run.

Per-step time of ``Trainer.train_epoch`` against a bare forward/backward/step loop over the
same model, optimiser, loss and batches (augmentation off in both, so the difference is the
engine: device moves, the non-finite guard, clipping, the schedule, loss bookkeeping, the
progress bar). Rounds alternate between the two and the median is reported. Then inference
images/s at ``--size`` (fp32, and bf16 autocast on CUDA).

    python benchmarks/train_step.py --device cpu --json train_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cxrssl.losses import get_loss
from cxrssl.nets import create_net
from cxrssl.tasks.seg_task import SegmentationTask, as_float, predict_probs
from cxrssl.train import TrainConfig, Trainer, resolve_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 1, args.size, args.size)
    batches = [
        (
            torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8),
            (torch.rand(shape, generator=gen) > 0.6).to(torch.uint8),
        )
        for _ in range(args.steps)
    ]
    torch.manual_seed(0)
    model = create_net(args.model)
    loss = get_loss("bce_dice")
    task = SegmentationTask(loss, augmentation=None)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            epochs=1000, device=str(device), progress=True, tensorboard=False, grad_clip=1.0
        )
        trainer = Trainer(model, task, config, tmp)
        trainer.setup(len(batches))
        use_amp = trainer.use_amp
        gpu_batches = [(x.to(device), y.to(device)) for x, y in batches]

        def bare() -> None:
            model.train()
            for x, y in gpu_batches:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    out = loss(model(as_float(x)), y.float())
                trainer.optimizer.zero_grad(set_to_none=True)
                out.backward()
                trainer.optimizer.step()

        def engine() -> None:
            trainer.train_epoch(gpu_batches)

        timed(bare, device)  # warm-up both paths
        timed(engine, device)
        t_bare, t_engine = [], []
        for _ in range(args.rounds):
            t_bare.append(timed(bare, device) / len(batches))
            t_engine.append(timed(engine, device) / len(batches))
        result_rounds = {"bare": t_bare, "engine": t_engine}
    bare_s, engine_s = statistics.median(t_bare), statistics.median(t_engine)

    model.eval()
    images = torch.randint(0, 256, (16, 1, args.size, args.size), dtype=torch.uint8, device=device)
    inference = {}
    for name, amp in [("fp32", False), ("bf16", device.type == "cuda")]:
        if name == "bf16" and not amp:
            continue

        def infer(amp: bool = amp) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                predict_probs([model], images)

        infer()
        seconds = statistics.median(timed(infer, device) for _ in range(3))
        inference[name] = len(images) / seconds
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "model": args.model,
        "size": args.size,
        "batch_size": args.batch_size,
        "amp": use_amp,
        "bare_step_s": bare_s,
        "engine_step_s": engine_s,
        "overhead_pct": 100 * (engine_s / bare_s - 1),
        "rounds_s_per_step": result_rounds,
        "inference_images_per_s": inference,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
