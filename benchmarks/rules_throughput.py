"""Throughput of the masks engine on 512 px radiographs, side by side in one run.

Builds a temporary folder of N 512 px PNG files (real radiographs from ``--data``, else the
built-in sample scaled to 512 px; copies carry a numbered text chunk so that every file has
its own bytes and the content-hash cache cannot shortcut them) and measures, in turn:

- decode only: ``cxrssl.io.read_gray8`` of every file in one thread (the floor for any tool);
- seed recipe: read, seed option 1, write, in one thread, written straightforwardly;
- engine: ``run_masks`` (read, default method, write) with 1 and 2 workers, no cache;
- CLI: ``cxrssl masks lungs IN OUT --workers 2`` as a new process (cold cache), then again
  (warm cache: a second run over the same images).

Prints images/s, the ratios and the load average; ``--json`` also saves them.

    .venv/bin/python benchmarks/rules_throughput.py --n 2000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from cxrssl.anatomy.baselines import seed_lungs
from cxrssl.anatomy.engine import run_masks
from cxrssl.io import read_gray8

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "cxrssl" / "data" / "sample" / "images"
REAL = ("ieee8023_v7labs", "ieee8023_generalblockchain")


def _imread(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise SystemExit(f"{path}: cannot decode")
    return img


def build_folder(folder: Path, n: int, data: Path) -> str:
    """Write ``n`` PNGs of long side 512 into ``folder``; returns where they came from."""
    sources = [p for name in REAL for p in sorted((data / name / "images").glob("*.png"))]
    origin = f"{len(sources)} real radiographs from {data}"
    blobs = [p.read_bytes() for p in sources]
    if not blobs:
        origin = "the built-in sample scaled to 512 px"
        for path in sorted(SAMPLE.glob("*.png")):
            img = _imread(path)
            big = cv2.resize(img, (512, 512), interpolation=cv2.INTER_CUBIC)
            blobs.append(cv2.imencode(".png", big)[1].tobytes())
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"img_{i:05d}.png").write_bytes(_tagged(blobs[i % len(blobs)], i))
    return origin


def _tagged(png: bytes, number: int) -> bytes:
    """``png`` with a text chunk after IHDR, so every copy has its own bytes (and hash)."""
    text = b"Comment\x00copy " + str(number).encode()
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + text))
    return png[:33] + chunk + png[33:]


def quiet(work: Callable[..., None], *args: object) -> None:
    with quiet_stderr():
        work(*args)


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def decode_all(paths: list[Path]) -> None:
    for path in paths:
        read_gray8(path)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence libpng's warnings (printed by C code) while the seed recipe reads files."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def seed_all(paths: list[Path], out: Path) -> None:
    out.mkdir()
    for path in paths:
        img = _imread(path)
        cv2.imwrite(str(out / path.name), seed_lungs(img) * np.uint8(255))


def run_cli(images: Path, out: Path, cache: Path, workers: int) -> float:
    """Wall time of the CLI as a new process (the engine's entry when the verb is absent)."""
    env = {**os.environ, "CXRSSL_CACHE_DIR": str(cache)}
    cli = [sys.executable, "-m", "cxrssl.cli.main", "masks", "lungs", str(images), str(out)]
    cli += ["--workers", str(workers)]
    probe = subprocess.run(
        [sys.executable, "-m", "cxrssl.cli.main", "masks", "--help"], capture_output=True
    )
    if probe.returncode != 0:
        code = f"from cxrssl.anatomy.engine import run_masks; run_masks({str(images)!r}, "
        code += f"{str(out)!r}, workers={workers})"
        cli = [sys.executable, "-c", code]
    start = time.perf_counter()
    subprocess.run(cli, env=env, check=False, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    """Build the folder, time every contender, print and optionally save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = Path(os.environ.get("CXR_DATA_DIR", ROOT.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--n", type=int, default=2000, help="number of images")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cxrssl-throughput-") as tmp:
        root = Path(tmp)
        origin = build_folder(root / "images", args.n, args.data)
        paths = sorted((root / "images").glob("*.png"))
        decode_all(paths[:50])  # warm the page cache and the decoder
        seconds = {
            "decode, 1 thread": timed(lambda: decode_all(paths)),
            "seed recipe, 1 thread": timed(lambda: quiet(seed_all, paths, root / "seed")),
        }
        for workers in (1, 2):
            start = time.perf_counter()
            run_masks(root / "images", root / f"engine{workers}", workers=workers, use_cache=False)
            seconds[f"engine, {workers} worker(s)"] = time.perf_counter() - start
        cache = root / "cache"
        seconds["CLI, 2 workers, cold"] = run_cli(root / "images", root / "cli1", cache, 2)
        seconds["CLI, 2 workers, cached"] = run_cli(root / "images", root / "cli2", cache, 2)
        shutil.rmtree(root / "seed", ignore_errors=True)
    load_after = os.getloadavg()
    n = args.n
    decode = seconds["decode, 1 thread"]
    print(f"{n} images of 512 px from {origin}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (2 cores)")
    print(f"{'contender':28} {'seconds':>8} {'images/s':>9} {'x decode time':>14}")
    for name, sec in seconds.items():
        print(f"{name:28} {sec:8.2f} {n / sec:9.1f} {sec / decode:14.2f}")
    engine2 = seconds["engine, 2 worker(s)"]
    seed = seconds["seed recipe, 1 thread"]
    print(f"engine (2 workers) vs seed recipe: {seed / engine2:.2f}x faster")
    print(
        f"CLI cold run / decode time: {seconds['CLI, 2 workers, cold'] / decode:.2f} (target <= 2)"
    )
    if args.json:
        figures = {"n": n, "origin": origin, "load": [load_before[0], load_after[0]]}
        args.json.write_text(json.dumps({**figures, "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
