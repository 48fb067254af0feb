"""Pool cache build speed against single-thread decode, and peak memory as the pool and
``cxrssl masks`` grow.

The pre-training pool (``cxrssl.data.pool``) computes one npz cache entry per radiograph
(letterboxed image, rule-based lungs, regions, pathology, lung box, quality) and streams
batches from those entries. This script measures, in one run:

1. Throughput on the first ``--n`` images, side by side: ``cxrssl.io.read_gray8`` of every
   file in one thread (OpenCV and torch at one thread: the floor for any tool), then a
   fresh ``build_pool`` into an empty cache folder with ``--workers`` processes (all cores
   by default), then (``--single``, on by default) the same with ``workers=1``. Reported:
   images/s of each and build time / decode time; and, with several workers, the time of
   a build of as many images as workers (the cost of starting the processes).
2. Memory, for every N of ``--sizes`` (default 1,000 and 10,000 images): a new Python
   process builds a fresh pool of the first N images (``--workers`` processes, empty cache)
   and then streams one epoch of ``pool_loader`` over it (``--loader-workers``,
   ``--batch-size``). A thread in that process samples the resident memory of its whole
   process tree (itself, the forkserver, the build and loader workers; the sum of VmRSS,
   every ``--interval`` seconds, and of Pss, which counts pages shared between the workers
   once, every ``--pss-interval`` seconds: reading it costs the kernel a few ms a process),
   per phase (after the imports, build, stream, masks: ``cxrssl masks lungs`` over the
   same N files, ``run_masks`` with ``--workers`` processes and its own empty cache, as the
   command runs it); at the end it reads its own
   ``ru_maxrss`` (the exact peak of the process that holds the pool's metadata; the
   workers are children of the forkserver, not of this process, so ``RUSAGE_CHILDREN``
   would not see them: the sampled tree covers them). Reported:
   the peaks per N, the ratio of the largest N's peak to the smallest's (target: below
   ``FLAT_TARGET``, i.e. memory stays flat) and the growth per added image.

Images: N synthetic radiographs (grey 8-bit PNG, ``--shape`` 512x410 by default: two dark
lung ovals in a brighter body, a mediastinum, smooth and fine noise; image i drawn from
seed i, so every file has its own content and the content-hash cache cannot share entries),
written by ``--gen-workers`` processes into ``--workdir`` (reused across runs: only missing
files are written) or a temporary folder; or ``--images DIR``, a real folder (the first N
files of ``open_sources(DIR)``; N is capped at its size). Cache folders are temporary
(inside the work folder) and removed after each measurement.

    .venv/bin/python benchmarks/cache_build.py --json cache_build.json
    .venv/bin/python benchmarks/cache_build.py --images ../shared/data/kermany_pneumonia/images \
        --sizes 1000,5000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from cxrssl.anatomy.engine import CACHE_ENV, run_masks
from cxrssl.data.datasets import FolderDataset
from cxrssl.data.pool import build_pool, open_sources, pool_loader
from cxrssl.io import read_gray8

SCRIPT = Path(__file__).resolve()
FLAT_TARGET = 1.3  # peak memory at the largest N / at the smallest N
SHAPE = (512, 410)  # (H, W) of the synthetic radiographs
MIB = 1024 * 1024
FLAT_KEYS = (  # the peaks that must stay flat
    "build_tree_rss", "stream_tree_rss", "masks_tree_rss",
    "build_main_rss", "stream_main_rss", "masks_main_rss",
)  # fmt: skip


# --------------------------------------------------------------------------- images


def synthetic_image(seed: int, height: int = SHAPE[0], width: int = SHAPE[1]) -> np.ndarray:
    """A chest-radiograph-like uint8 (H, W) image; every seed gives other contents.

    A bright body (brightest down the middle, darker towards the sides), two dark lung ovals
    with soft edges, a bright mediastinum between them, smooth low-frequency and fine noise.
    Positions and sizes jitter with the seed.
    """
    rng = np.random.default_rng(seed)

    def jitter(scale: float) -> float:
        return float(rng.uniform(-scale, scale))

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= height
    xx /= width
    width_of_body = 0.42 + jitter(0.03)
    image = 70 + 110 * np.exp(-(((xx - 0.5 - jitter(0.02)) / width_of_body) ** 2)) + 30 * yy
    for cx in (0.30, 0.70):
        cxs, cys = cx + jitter(0.03), 0.47 + jitter(0.04)
        rx, ry = 0.14 + jitter(0.02), 0.27 + jitter(0.03)
        d = ((xx - cxs) / rx) ** 2 + ((yy - cys) / ry) ** 2
        image -= 85 * np.sqrt(np.clip(1.4 - d, 0, 1))
    image += 40 * np.exp(-(((xx - 0.5) / 0.06) ** 2)) * (yy > 0.2)  # mediastinum
    coarse = rng.normal(0, 8, (max(2, height // 16), max(2, width // 16))).astype(np.float32)
    image += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 3, (height, width)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def image_name(i: int) -> str:
    return f"img_{i:05d}.png"


def write_images(folder: Path, rows: Sequence[int], shape: tuple[int, int]) -> None:
    """Write the synthetic images ``rows`` into ``folder`` (atomically: no torn file)."""
    cv2.setNumThreads(1)
    for i in rows:
        ok, png = cv2.imencode(".png", synthetic_image(i, *shape))
        if not ok:
            raise RuntimeError(f"cannot encode synthetic image {i}")
        part = folder / f".{image_name(i)}.part"
        part.write_bytes(png.tobytes())
        part.replace(folder / image_name(i))


def generate(folder: Path, n: int, shape: tuple[int, int], workers: int) -> int:
    """Images 0..n-1 in ``folder`` (those missing written by ``workers`` fresh processes);
    returns how many were written."""
    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(n) if not (folder / image_name(i)).is_file()]
    if workers <= 1 or len(missing) < 64:
        write_images(folder, missing, shape)
        return len(missing)
    procs = []
    for k in range(workers):
        spec = {"task": "generate", "folder": str(folder), "rows": missing[k::workers]}
        spec["shape"] = list(shape)
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), "--child", json.dumps(spec)]))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"image generation failed (exit codes {codes})")
    return len(missing)


# --------------------------------------------------------------------------- memory


def _descendants(root: int) -> list[int]:
    """``root`` and every live process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _kib(path: str, field: str) -> int:
    """A ``Field:  123 kB`` line of a /proc file (0 when absent or gone)."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(field.encode()):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


def tree_memory(root: int, pss: bool = True) -> tuple[int, int, int]:
    """(sum of VmRSS, sum of Pss or 0, VmRSS of ``root``) of ``root``'s process tree, bytes.

    VmRSS costs ~0.1 ms a process; Pss (``smaps_rollup``: the kernel walks the page tables)
    ~2-3 ms a process holding torch, hence sampled less often.
    """
    pids = _descendants(root)
    sizes = [_kib(f"/proc/{p}/status", "VmRSS:") for p in pids]
    shared = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids) if pss else 0
    return sum(sizes) * 1024, shared * 1024, sizes[0] * 1024


def reset_peak() -> bool:
    """Reset this process's VmHWM (its peak RSS) to its current RSS; False when refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class Sampler(threading.Thread):
    """Samples this process tree's RSS every ``interval`` s and its PSS about every
    ``pss_interval`` s (and at every phase change); keeps the peaks per phase.

    The peak of this process alone (``main``) is exact: its VmHWM, reset at every phase
    change (``/proc/self/clear_refs``; the sampled VmRSS where that is refused).
    """

    def __init__(self, interval: float, pss_interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.pss_every = max(1, round(pss_interval / interval))
        self.phase = "baseline"
        self.peaks: dict[str, dict[str, int]] = {}
        self.samples = 0
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self.exact = reset_peak()

    def sample(self, pss: bool = True) -> None:
        rss, pss_bytes, own = tree_memory(os.getpid(), pss)
        with self._lock:
            peak = self.peaks.setdefault(self.phase, {"rss": 0, "pss": 0, "main": 0})
            peak["rss"] = max(peak["rss"], rss)
            peak["pss"] = max(peak["pss"], pss_bytes)
            peak["main"] = max(peak["main"], own)
            self.samples += 1

    def _close_phase(self) -> None:
        """The end of the current phase: a last sample and the exact peak of this process."""
        self.sample()
        if self.exact:
            hwm = _kib("/proc/self/status", "VmHWM:") * 1024
            with self._lock:
                peak = self.peaks[self.phase]
                peak["main"] = max(peak["main"], hwm)
            reset_peak()

    def enter(self, phase: str) -> None:
        self._close_phase()
        with self._lock:
            self.phase = phase
        self.sample()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample(pss=self.samples % self.pss_every == 0)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self._close_phase()


def _first(dataset: FolderDataset, n: int) -> FolderDataset:
    return dataset.subset(np.arange(min(n, len(dataset))))


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Build a fresh pool of the first ``spec["n"]`` images, stream one epoch (runs in its
    own process, so that the peaks are this N's alone)."""
    sampler = Sampler(spec["interval"], spec["pss_interval"])
    sampler.start()
    dataset = _first(open_sources(spec["images"]), spec["n"])
    sampler.enter("build")
    start = time.perf_counter()
    pool = build_pool(
        dataset, spec["size"], cache_dir=spec["cache"], workers=spec["workers"], progress=False
    )
    build_s = time.perf_counter() - start
    sampler.enter("stream")
    start = time.perf_counter()
    batch_size = min(spec["batch_size"], len(pool))
    loader = pool_loader(pool, batch_size, shuffle=True, workers=spec["loader_workers"], seed=0)
    streamed = 0
    for batch in loader:
        streamed += int(batch["image"].shape[0])
    del loader  # its workers end here
    stream_s = time.perf_counter() - start
    masks_s, masked = _masks_phase(dataset, Path(spec["cache"]), spec["workers"], sampler)
    sampler.stop()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "n": len(dataset),
        "pool_images": len(pool),
        "failures": len(pool.failures),
        "build_s": build_s,
        "build_images_per_s": len(dataset) / build_s,
        "stream_s": stream_s,
        "streamed_images": streamed,
        "stream_images_per_s": streamed / stream_s if streamed else 0.0,
        "baseline_tree_rss_mib": sampler.peaks["baseline"]["rss"] / MIB,
        "build_tree_rss_mib": sampler.peaks["build"]["rss"] / MIB,
        "build_tree_pss_mib": sampler.peaks["build"]["pss"] / MIB,
        "stream_tree_rss_mib": sampler.peaks["stream"]["rss"] / MIB,
        "stream_tree_pss_mib": sampler.peaks["stream"]["pss"] / MIB,
        "build_main_rss_mib": sampler.peaks["build"]["main"] / MIB,
        "stream_main_rss_mib": sampler.peaks["stream"]["main"] / MIB,
        "masks_s": masks_s,
        "masks_images": masked,
        "masks_tree_rss_mib": sampler.peaks["masks"]["rss"] / MIB,
        "masks_tree_pss_mib": sampler.peaks["masks"]["pss"] / MIB,
        "masks_main_rss_mib": sampler.peaks["masks"]["main"] / MIB,
        "main_peak_exact": sampler.exact,
        "main_maxrss_mib": own / MIB,
        "samples": sampler.samples,
    }


def _masks_phase(
    dataset: FolderDataset, work: Path, workers: int, sampler: Sampler
) -> tuple[float, int]:
    """``cxrssl masks lungs`` (``run_masks``, as the command calls it) over the dataset's
    files, linked into one folder, with a cache of its own; (seconds, images written)."""
    folder = work / "masks-in"
    folder.mkdir(parents=True, exist_ok=True)
    for r in dataset.records:
        (folder / r.image.name).symlink_to(r.image.resolve())
    os.environ[CACHE_ENV] = str(work / "masks-cache")
    sampler.enter("masks")
    start = time.perf_counter()
    summary = run_masks(folder, work / "masks-out", kind="lungs", workers=workers)
    return time.perf_counter() - start, summary.written


def run_measure(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure` in a new Python process; its JSON result."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"memory run for N={spec['n']} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def child(spec: dict[str, Any]) -> None:
    if spec["task"] == "generate":
        write_images(Path(spec["folder"]), spec["rows"], (spec["shape"][0], spec["shape"][1]))
    else:
        print(json.dumps(measure(spec)), flush=True)


# --------------------------------------------------------------------------- throughput


def decode_all(paths: Sequence[Path]) -> float:
    """Seconds to ``read_gray8`` every file in this thread (OpenCV and torch at 1 thread)."""
    previous = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for path in paths:
            read_gray8(path)
        return time.perf_counter() - start
    finally:
        cv2.setNumThreads(previous[0])
        torch.set_num_threads(previous[1])


def entries_in(cache: Path) -> int:
    return sum(1 for _ in cache.rglob("*.npz"))


def timed_build(dataset: FolderDataset, size: int, cache: Path, workers: int) -> dict[str, Any]:
    """A fresh build of ``dataset`` into the empty folder ``cache`` (removed afterwards)."""
    start = time.perf_counter()
    pool = build_pool(dataset, size, cache_dir=cache, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    entries = entries_in(cache)
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "workers": workers,
        "seconds": seconds,
        "images_per_s": len(dataset) / seconds,
        "pool_images": len(pool),
        "entries": entries,
    }


# --------------------------------------------------------------------------- report


def table(result: dict[str, Any]) -> str:
    t = result["throughput"]
    lines = [
        f"images: {result['images']} | canvas {result['size']} px | {result['cores']} cores | "
        f"load average {result['load'][0]:.2f} before, {result['load'][1]:.2f} after",
        "",
        f"throughput, {t['n']} images",
        f"{'contender':<30} {'seconds':>8} {'images/s':>9} {'x decode time':>14}",
    ]
    decode = t["decode"]["seconds"]
    rows = [("decode (read_gray8), 1 thread", t["decode"])]
    rows += [(f"pool build, {b['workers']} worker(s)", b) for b in t["builds"]]
    for name, r in rows:
        lines.append(
            f"{name:<30} {r['seconds']:8.2f} {r['images_per_s']:9.1f} {r['seconds'] / decode:14.2f}"
        )
    if "startup" in t:
        s = t["startup"]
        lines.append(
            f"(of which start-up: a build of {s['pool_images']} image(s) with {s['workers']} "
            f"workers takes {s['seconds']:.2f} s)"
        )
    m = result["memory"]
    lines += [
        "",
        f"peak memory (MiB), a fresh process per N: build with {result['workers']} worker(s), "
        f"then one epoch of pool_loader (batch {result['batch_size']}, "
        f"{result['loader_workers']} worker(s))",
        "tree: the process and all its children, sampled (RSS sum; PSS sum); main: the "
        "process alone (holds the pool's rows), exact peak per phase",
        f"{'':21} {' build ':-^23} {' stream ':-^30} {' cxrssl masks ':-^30}",
        f"{'N':>7} {'s':>6} {'img/s':>6} {'main':>7} {'tree':>7} {'pss':>7} "
        f"{'main':>7} {'tree':>7} {'pss':>7} {'s':>6} "
        f"{'main':>7} {'tree':>7} {'pss':>7} {'s':>6}",
    ]
    for r in m["runs"]:
        lines.append(
            f"{r['n']:>7} {r['build_s']:6.1f} {r['build_images_per_s']:6.1f} "
            f"{r['build_main_rss_mib']:7.1f} {r['build_tree_rss_mib']:7.0f} "
            f"{r['build_tree_pss_mib']:7.0f} {r['stream_main_rss_mib']:7.1f} "
            f"{r['stream_tree_rss_mib']:7.0f} {r['stream_tree_pss_mib']:7.0f} {r['stream_s']:6.1f} "
            f"{r['masks_main_rss_mib']:7.1f} {r['masks_tree_rss_mib']:7.0f} "
            f"{r['masks_tree_pss_mib']:7.0f} {r['masks_s']:6.1f}"
        )
    if m["runs"]:
        lines.append(f"(main after the imports: {m['runs'][0]['baseline_tree_rss_mib']:.0f} MiB)")
    if len(m["runs"]) > 1:
        lo, hi = m["runs"][0]["n"], m["runs"][-1]["n"]
        ratio = m["ratio"]
        growth = m["growth_kib_per_image"]
        names = {
            "build_main_rss": "build main",
            "build_tree_rss": "build tree",
            "stream_main_rss": "stream main",
            "stream_tree_rss": "stream tree",
            "masks_main_rss": "masks main",
            "masks_tree_rss": "masks tree",
        }
        lines += [
            f"ratio N={hi} / N={lo}: "
            + ", ".join(f"{v} {ratio[k]:.3f}" for k, v in names.items())
            + f" (flat, all < {FLAT_TARGET}: {'yes' if m['flat'] else 'NO'})",
            "growth per added image: "
            + ", ".join(f"{v} {growth[k]:.2f} KiB" for k, v in names.items()),
        ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(v) for v in s.split(",") if v.strip()],
        default=[1000, 10000],
        help="pool sizes N of the memory runs (default: 1000,10000)",
    )
    parser.add_argument(
        "--n", type=int, default=None, help="images of the throughput runs (default: min sizes)"
    )
    parser.add_argument("--size", type=int, default=224, help="pool canvas side")
    parser.add_argument("--images", type=Path, default=None, help="a real folder instead")
    parser.add_argument(
        "--shape",
        type=lambda s: tuple(int(v) for v in s.lower().split("x")),
        default=SHAPE,
        help="HxW of the synthetic images (default 512x410)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keeps the generated images (default: temp)"
    )
    parser.add_argument("--workers", type=int, default=None, help="build processes (all cores)")
    parser.add_argument(
        "--single",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time a build with workers=1",
    )
    parser.add_argument(
        "--loader-workers", type=int, default=None, help="pool_loader workers (half the cores)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--gen-workers", type=int, default=None, help="processes writing images (all cores)"
    )
    parser.add_argument("--interval", type=float, default=0.1, help="RSS sampling period, s")
    parser.add_argument(
        "--pss-interval", type=float, default=1.0, help="PSS sampling period, s (costlier)"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def ratios(runs: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """(largest N / smallest N, KiB per added image) of each peak."""
    lo, hi = runs[0], runs[-1]
    keys = {
        "build_tree_rss": "build_tree_rss_mib",
        "stream_tree_rss": "stream_tree_rss_mib",
        "build_tree_pss": "build_tree_pss_mib",
        "stream_tree_pss": "stream_tree_pss_mib",
        "build_main_rss": "build_main_rss_mib",
        "stream_main_rss": "stream_main_rss_mib",
        "masks_tree_rss": "masks_tree_rss_mib",
        "masks_tree_pss": "masks_tree_pss_mib",
        "masks_main_rss": "masks_main_rss_mib",
        "main_maxrss": "main_maxrss_mib",
    }
    added = max(1, hi["n"] - lo["n"])
    ratio = {k: hi[v] / lo[v] for k, v in keys.items()}
    growth = {k: (hi[v] - lo[v]) * 1024 / added for k, v in keys.items()}
    return ratio, growth


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child is not None:
        child(json.loads(args.child))
        return {}
    cores = os.cpu_count() or 1
    workers = args.workers or cores
    loader_workers = (
        min(8, max(1, cores // 2)) if args.loader_workers is None else args.loader_workers
    )
    sizes = sorted(set(args.sizes))
    n_tp = args.n or sizes[0]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cxrssl-cache-build-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.images is None:
            shape = (int(args.shape[0]), int(args.shape[1]))
            folder = work / f"images-{shape[0]}x{shape[1]}"
            start = time.perf_counter()
            written = generate(folder, max(*sizes, n_tp), shape, args.gen_workers or cores)
            gen_s = time.perf_counter() - start
            print(f"generated {written} image(s) in {gen_s:.1f} s into {folder}", flush=True)
            origin = f"synthetic {shape[0]}x{shape[1]} PNG"
        else:
            folder = args.images
            origin = str(folder)
        dataset = open_sources(folder)
        cache_root = Path(tempfile.mkdtemp(prefix="caches-", dir=work))
        try:
            # throughput, side by side
            part = _first(dataset, n_tp)
            paths = [r.image for r in part.records]
            decode_all(paths[:50])  # page cache and decoder warm
            decode_s = decode_all(paths)
            builds = [timed_build(part, args.size, cache_root / "all", workers)]
            print(f"build with {workers} worker(s): {builds[0]['seconds']:.1f} s", flush=True)
            if args.single and workers != 1:
                builds.append(timed_build(part, args.size, cache_root / "one", 1))
            for b in builds:
                b["ratio_to_decode"] = b["seconds"] / decode_s
            throughput: dict[str, Any] = {
                "n": len(part),
                "decode": {"seconds": decode_s, "images_per_s": len(part) / decode_s},
                "builds": builds,
            }
            if workers > 1:  # what a build pays before its first image: the processes
                startup = _first(dataset, workers)
                throughput["startup"] = timed_build(startup, args.size, cache_root / "s", workers)
            # memory, a fresh process per N
            runs = []
            for n in sizes:
                cache = cache_root / f"mem{n}"
                spec = {
                    "task": "measure",
                    "images": str(folder),
                    "n": n,
                    "size": args.size,
                    "cache": str(cache),
                    "workers": workers,
                    "loader_workers": loader_workers,
                    "batch_size": args.batch_size,
                    "interval": args.interval,
                    "pss_interval": args.pss_interval,
                }
                run = run_measure(spec)
                run["entries"] = entries_in(cache)
                shutil.rmtree(cache, ignore_errors=True)
                runs.append(run)
                print(
                    f"N={run['n']}: build {run['build_s']:.1f} s, stream {run['stream_s']:.1f} s",
                    flush=True,
                )
        finally:
            shutil.rmtree(cache_root, ignore_errors=True)
    memory: dict[str, Any] = {"sizes": [r["n"] for r in runs], "runs": runs}
    if len(runs) > 1:
        memory["ratio"], memory["growth_kib_per_image"] = ratios(runs)
        memory["flat"] = all(memory["ratio"][k] < FLAT_TARGET for k in FLAT_KEYS)
    result: dict[str, Any] = {
        "images": origin,
        "size": args.size,
        "cores": cores,
        "workers": workers,
        "loader_workers": loader_workers,
        "batch_size": args.batch_size,
        "flat_target": FLAT_TARGET,
        "load": [load_before, os.getloadavg()[0]],
        "throughput": throughput,
        "memory": memory,
    }
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
