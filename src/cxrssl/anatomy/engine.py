"""The batch engine behind ``cxrssl masks``: a folder of radiographs in, one output each.

Per image: read the bytes, hash them with the run's key (SHA-1 of the bytes + ``cache_key``),
copy the result from the cache when the same key was seen before, else decode, compute and
store it. The run's key, computed once in the parent, covers everything but the image an
output depends on: kind, method, ``ENTRY_FORMAT``, the source text of every cxrssl module
the computation runs (``CODE_ROOTS`` and what they import), the UPPER_CASE constants of those
modules as they are at run time (the methods' parameters) and the OpenCV, NumPy and pydicom
versions. So no edit, patched parameter or upgrade can be served a stale output.

Work is spread over a process pool; each worker writes its own files, so only small records
travel back. Every file (outputs, tables, cache entries) is written to a temporary sibling and
renamed into place, so a killed run leaves no torn file. A file that cannot be read becomes a
row of ``OUT_DIR/failures.csv`` (file name and reason) and the run goes on.

Outputs in ``OUT_DIR`` (one per image, same stem, same size as the image):

- ``lungs``: ``STEM.png``, 0/255 union of both lungs.
- ``regions``: ``STEM.png``, label map 0..6 (``regions.REGION_NAMES``).
- ``pathology``: ``STEM.png``, the soft candidate score 0..255 inside the lungs
  (``pathology.pathology_map``; ``pathology.candidates`` or ``>= 255 * CANDIDATE_LEVEL``
  gives the binary candidates), 0 outside.
- ``crop``: no PNG; ``boxes.csv`` holds each image's lung box (seed option 4).

Beside them: ``quality.csv`` (file name, lung-mask quality) and ``failures.csv``.

An inverted film (white lungs, black bones; ``polarity.is_inverted``) is flipped before
everything else (the overlay too) and logged as a warning naming the file; the run's
``RunSummary.inverted`` lists them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from cxrssl.anatomy._image import AnatomyError
from cxrssl.anatomy.crop import lung_box
from cxrssl.anatomy.lungs import METHODS, lung_masks
from cxrssl.anatomy.overlay import draw_overlay
from cxrssl.anatomy.pathology import candidates, pathology_map
from cxrssl.anatomy.polarity import upright
from cxrssl.anatomy.regions import regions
from cxrssl.errors import CxrsslError
from cxrssl.files import atomic_open, write_bytes_atomic
from cxrssl.io import is_image_file, read_gray8
from cxrssl.parallel import pool_context
from cxrssl.provenance import modules_of, rules_key

KINDS = ("lungs", "regions", "pathology", "crop")
ENTRY_FORMAT = "3"  # layout of a cache entry (``_store``/``_lookup``): bump when it changes
CODE_ROOTS = ("cxrssl.anatomy", "cxrssl.io")  # what computes an output (with their imports)
QUALITY_FLAG = 0.2  # masks below this quality are counted as flagged
CACHE_ENV = "CXRSSL_CACHE_DIR"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    """What a run did.

    Attributes:
        images: image files found (other files are ``skipped``).
        written: outputs computed in this run.
        cached: outputs copied from the content-hash cache.
        failed: images that gave no output (listed in ``failures_csv``).
        skipped: files in the folder that are not images.
        flagged: outputs whose lung-mask quality is below ``QUALITY_FLAG``.
        seconds: wall time of the run.
        out_dir: where the outputs are.
        failures_csv: ``OUT_DIR/failures.csv`` (written on every run, maybe header only).
        failures: (file name, reason) of every failed image.
        inverted: file names of the inverted films that were flipped (each also logged).
    """

    images: int
    written: int
    cached: int
    failed: int
    skipped: int
    flagged: int
    seconds: float
    out_dir: Path
    failures_csv: Path
    failures: tuple[tuple[str, str], ...]
    inverted: tuple[str, ...] = ()


class _Settings(NamedTuple):
    out_dir: Path
    kind: str
    method: str
    overlays_dir: Path | None
    cache_dir: Path | None
    key: str  # the run's cache key (``cache_key``); empty without a cache
    stem: str  # of the image being processed (set per image)


class _Result(NamedTuple):
    name: str
    status: str  # "written", "cached" or "failed"
    reason: str
    quality: float
    box: tuple[int, ...] | None
    inverted: bool = False


_settings: _Settings | None = None


def default_cache_dir() -> Path:
    """``$CXRSSL_CACHE_DIR``, else ``$XDG_CACHE_HOME/cxrssl/anatomy`` (``~/.cache`` default)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cxrssl" / "anatomy"


def cache_key(kind: str, method: str) -> str:
    """The part of every cache key that is the same for all images of a run.

    SHA-1 of the kind, the method, ``ENTRY_FORMAT``, the source hash of ``CODE_ROOTS`` and
    every cxrssl module they import, those modules' UPPER_CASE constants read now (so a
    changed or patched parameter misses) and the decoding/array library versions.
    """
    settings = {"kind": kind, "method": method, "format": ENTRY_FORMAT}
    return rules_key(modules_of(CODE_ROOTS), settings)


def _encode_png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise AnatomyError("OpenCV could not encode the output PNG")
    return buf.tobytes()


def _compute(image: np.ndarray, s: _Settings) -> tuple[bytes, float, list[int] | None, bool]:
    """Output PNG bytes (empty for crop), quality, box and inversion of one image; draws its
    overlay. An inverted film is flipped first."""
    image, inverted = upright(image)
    lungs = lung_masks(image, s.method)
    extra: np.ndarray | None = None
    box: tuple[int, int, int, int] | None = None
    if s.kind == "lungs":
        png = _encode_png(lungs.both * np.uint8(255))
    elif s.kind == "regions":
        extra = regions(lungs)
        png = _encode_png(extra)
    elif s.kind == "pathology":
        score = pathology_map(image, lungs)
        png = _encode_png(score)
        extra = candidates(score)  # the overlay outlines the binary candidates
    else:
        box = lung_box(lungs)
        png = b""
    if s.overlays_dir is not None:
        picture = draw_overlay(image, lungs.right, lungs.left, lungs.quality, extra, box)
        write_bytes_atomic(s.overlays_dir / f"{s.stem}.png", _encode_png(picture))
    return png, lungs.quality, list(box) if box else None, inverted


def _lookup(entry: Path | None) -> tuple[bytes, float, list[int] | None, bool] | None:
    """Cached output, or None when absent or damaged.

    An entry is a 4-byte length, JSON {quality, box, size, inverted}, then ``size`` bytes of
    PNG.
    """
    if entry is None:
        return None
    try:
        blob = entry.read_bytes()
        head = int.from_bytes(blob[:4], "big")
        meta = json.loads(blob[4 : 4 + head])
        png = blob[4 + head :]
        if len(png) != int(meta["size"]):
            return None
        return png, float(meta["quality"]), meta["box"], bool(meta.get("inverted", False))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(entry: Path, png: bytes, quality: float, box: list[int] | None, inverted: bool) -> None:
    """Write a cache entry atomically (``_lookup``'s size check still guards old entries)."""
    fields = {"quality": quality, "box": box, "size": len(png), "inverted": inverted}
    meta = json.dumps(fields).encode()
    write_bytes_atomic(entry, len(meta).to_bytes(4, "big") + meta + png)


def _process(path_text: str) -> _Result:
    """Read, look up or compute, and write the output of one image (runs in a worker)."""
    if _settings is None:
        raise RuntimeError("engine worker used before its settings were set")
    path = Path(path_text)
    s = _settings._replace(stem=path.stem)
    try:
        data = path.read_bytes()
    except OSError as err:
        return _Result(path.name, "failed", f"cannot read the file ({err.strerror})", 0.0, None)
    key = hashlib.sha1(data, usedforsecurity=False)
    key.update(f"|{s.key}".encode())
    digest = key.hexdigest()
    entry = s.cache_dir / digest[:2] / f"{digest}.bin" if s.cache_dir else None
    found = _lookup(entry) if s.overlays_dir is None else None
    try:
        if found is not None:
            status = "cached"
            png, quality, box, inverted = found
        else:
            status = "written"
            png, quality, box, inverted = _compute(read_gray8(path, data), s)
            if entry is not None:
                _store(entry, png, quality, box, inverted)
        if png:
            write_bytes_atomic(s.out_dir / f"{path.stem}.png", png)
    except CxrsslError as err:
        return _Result(path.name, "failed", getattr(err, "problem", str(err)), 0.0, None)
    except (OSError, cv2.error, MemoryError) as err:
        return _Result(path.name, "failed", f"{type(err).__name__}: {err}", 0.0, None)
    except Exception as err:  # a bug on one odd image must not stop a long run
        reason = f"internal error, please report: {type(err).__name__}: {err}"
        return _Result(path.name, "failed", reason, 0.0, None)
    return _Result(path.name, status, "", quality, tuple(box) if box else None, inverted)


def _init_worker(settings: _Settings) -> None:
    global _settings
    _settings = settings
    cv2.setNumThreads(1)


def _list_images(images_dir: Path) -> tuple[list[Path], int, list[tuple[str, str]]]:
    """Image files to process, count of other files, and clashes of output names."""
    if not images_dir.is_dir():
        raise AnatomyError(f"{images_dir}: images folder not found")
    jobs: list[Path] = []
    skipped = 0
    clashes: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for path in sorted(images_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if not is_image_file(path):
            skipped += 1
        elif path.stem in seen:
            clashes.append((path.name, f"same stem as {seen[path.stem]}; outputs would collide"))
        else:
            seen[path.stem] = path.name
            jobs.append(path)
    return jobs, skipped, clashes


def _write_tables(out_dir: Path, kind: str, results: list[_Result]) -> Path:
    """failures.csv always; quality.csv or boxes.csv for the images that succeeded."""
    done = sorted((r for r in results if r.status != "failed"), key=lambda r: r.name)
    failed = sorted((r for r in results if r.status == "failed"), key=lambda r: r.name)
    failures_csv = out_dir / "failures.csv"
    with atomic_open(failures_csv, "w") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "reason"])
        writer.writerows((r.name, r.reason) for r in failed)
    if kind == "crop":
        with atomic_open(out_dir / "boxes.csv", "w") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "x0", "y0", "x1", "y1", "quality"])
            writer.writerows((r.name, *(r.box or ()), r.quality) for r in done)
    else:
        with atomic_open(out_dir / "quality.csv", "w") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "quality"])
            writer.writerows((r.name, r.quality) for r in done)
    return failures_csv


def run_masks(
    images_dir: str | Path,
    out_dir: str | Path,
    kind: str = "lungs",
    method: str = "default",
    workers: int = 1,
    overlays_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> RunSummary:
    """Compute one output per radiograph of a folder (see the module notes for the files).

    Args:
        images_dir: folder of radiographs (PNG, JPEG, TIFF, BMP, DICOM; not recursive).
        out_dir: output folder, created; must differ from ``images_dir``.
        kind: "lungs", "regions", "pathology" or "crop".
        method: lung method, a name in ``METHODS``.
        workers: processes (1 runs in this process).
        overlays_dir: when given, also write a contour overlay PNG per image there.
        cache_dir: content-hash cache (default ``default_cache_dir()``).
        use_cache: False computes everything and leaves the cache untouched.

    Returns:
        RunSummary; ``failed > 0`` means some images gave no output.

    Raises:
        AnatomyError: unknown kind or method, missing images folder, ``out_dir`` equal to
            ``images_dir``, or ``overlays_dir`` equal to either.
    """
    start = time.perf_counter()
    if kind not in KINDS:
        raise AnatomyError(f"unknown kind {kind!r}; choose from {list(KINDS)}")
    if method not in METHODS:
        raise AnatomyError(f"unknown lung method {method!r}; choose from {sorted(METHODS)}")
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    jobs, skipped, clashes = _list_images(images_dir)
    if out_dir.resolve() == images_dir.resolve():
        raise AnatomyError(f"{out_dir}: the output folder must differ from the images folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    overlays = Path(overlays_dir) if overlays_dir is not None else None
    if overlays is not None:
        if overlays.resolve() in (out_dir.resolve(), images_dir.resolve()):
            raise AnatomyError(f"{overlays}: overlays need a folder of their own")
        overlays.mkdir(parents=True, exist_ok=True)
    cache = (Path(cache_dir) if cache_dir else default_cache_dir()) if use_cache else None
    if cache is not None:
        for i in range(256):
            (cache / f"{i:02x}").mkdir(parents=True, exist_ok=True)
    key = cache_key(kind, method) if cache is not None else ""
    settings = _Settings(out_dir, kind, method, overlays, cache, key, "")
    paths = [str(p) for p in jobs]
    if workers <= 1 or len(paths) <= 1:
        previous = cv2.getNumThreads()
        _init_worker(settings)
        try:
            results = [_process(p) for p in paths]
        finally:
            cv2.setNumThreads(previous)
    else:
        chunk = max(1, min(32, len(paths) // (4 * workers)))
        with pool_context().Pool(workers, _init_worker, (settings,)) as pool:
            results = list(pool.imap_unordered(_process, paths, chunksize=chunk))
    results += [_Result(name, "failed", reason, 0.0, None) for name, reason in clashes]
    failures_csv = _write_tables(out_dir, kind, results)
    failures = tuple(sorted((r.name, r.reason) for r in results if r.status == "failed"))
    done = [r for r in results if r.status != "failed"]
    inverted = tuple(sorted(r.name for r in done if r.inverted))
    for name in inverted:
        log.warning("%s: inverted film (white lungs, black bones): flipped", name)
    return RunSummary(
        images=len(jobs) + len(clashes),
        written=sum(r.status == "written" for r in results),
        cached=sum(r.status == "cached" for r in results),
        failed=len(failures),
        skipped=skipped,
        flagged=sum(r.quality < QUALITY_FLAG for r in done),
        seconds=time.perf_counter() - start,
        out_dir=out_dir,
        failures_csv=failures_csv,
        failures=failures,
        inverted=inverted,
    )
