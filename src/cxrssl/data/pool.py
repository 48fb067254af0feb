"""The unlabelled pre-training pool: any folders of radiographs, streamed from a uint8 cache.

Self-supervised pre-training reads every image together with its rule-based maps. The pool
never holds them in memory: :func:`build_pool` computes one small cache entry per image (or
finds it), and :class:`PoolDataset` reads one entry per item inside the DataLoader's
workers. What stays in memory is O(N) small metadata, never pixels: the :class:`Pool`'s
lists of paths and ids (a few hundred bytes an image, tens of MB for the 112,120 NIH
images) and, in the :class:`PoolDataset` that workers receive, one bytes array of entry
paths plus the boxes and qualities (~150 bytes an image): NumPy arrays rather than lists
of Python objects, so that pickled or forked workers neither copy nor touch them.

Sources (:func:`open_sources`): each folder is read with an adapter of
``cxrssl.data.adapters.LOADERS`` or, with ``layout="auto"``, the first that fits:

- ``Data_Entry_2017*.csv[.gz]`` in the folder: ``"nih"``;
- ``MontgomerySet`` / ``ChinaSet_AllFiles`` (the folder or a child): ``"montgomery"`` /
  ``"shenzhen"``;
- ``labels.csv`` with an ``image_relpath`` column: ``"ieee8023"`` (the classification table);
- an ``images/`` subfolder: ``"folder"`` (:meth:`FolderDataset.from_folder`, ``labels.csv``
  optional);
- otherwise ``"files"``: the image files directly in the folder, no patient ids.

Several sources are concatenated. ``Record.patient_id`` keeps the **raw** id and
``Record.meta["source"]`` the source folder's name (``Pool.sources`` per row): the two
ieee8023 mask folders share patients under the same ids, so test-patient exclusion must
compare raw ids (ids of unrelated data sets that happen to be equal are refused too, which
errs on the safe side). File names are the key of split CSVs and failure rows, so they must
be unique: an image whose name an earlier source already gave is left out (one warning
gives the count; in the ieee8023 folders such names are the same radiograph).

Per image (at full resolution): the rule-based default lungs (``cxrssl.anatomy.lung_masks``),
their regions (labels 0..6), the soft pathology-candidate score (0..255), the lung crop box
(``cxrssl.anatomy.crop_box``) and the lung quality (an inverted film, white lungs and black
bones, is flipped first and named in a logged warning when its entry is computed); the
``lungs`` map comes from the mask source: ``"rules"`` (those default lungs), ``"otsu"`` (lung
method ``"otsu"``) or a folder of 0/255 masks matched by image stem (``<stem>.png`` or
``<stem>_mask.png``, the image's size). Then the image (linear/area) and the maps (nearest)
are letterboxed to ``size`` with zero padding, and the box is mapped into canvas pixels
(scaled, offset, rounded outward, clipped to the image area).

Cache (default ``$CXRSSL_CACHE_DIR/pool``, else ``~/.cache/cxrssl/pool`` beside the anatomy
engine's cache)::

    CACHE/ab/abcdef0123....npz   (compressed: image, lungs, regions, pathology as (S, S) uint8,
                                  box (4,) int32 canvas pixels, quality () float32)

The file name is the SHA-1 of the image's bytes, the run key and, with a mask folder, the
mask file's bytes. The run key (:func:`run_key`) is the fingerprint of ``size``, the mask
source (``"rules"``, ``"otsu"`` or ``"folder"``: a moved mask folder still hits),
``ENTRY_FORMAT``, the source text and UPPER_CASE constants of ``CODE_ROOTS`` (with every
cxrssl module they import) and of this module, and the OpenCV, NumPy and pydicom versions.
Entries are written atomically (temporary sibling, then rename), so a killed run leaves no
torn entry and a rerun computes only what is missing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import operator
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from tqdm import tqdm

from cxrssl.anatomy.crop import crop_box
from cxrssl.anatomy.engine import CACHE_ENV, default_cache_dir
from cxrssl.anatomy.lungs import lung_masks
from cxrssl.anatomy.pathology import pathology_map
from cxrssl.anatomy.polarity import upright
from cxrssl.anatomy.regions import regions
from cxrssl.data import adapters
from cxrssl.data.datasets import MASK_SUFFIXES, FolderDataset, Record, index_files
from cxrssl.errors import CxrsslError, DatasetError
from cxrssl.files import write_bytes_atomic
from cxrssl.geometry import Letterbox, apply_letterbox
from cxrssl.io import is_image_file, read_gray8, read_mask
from cxrssl.parallel import pool_context
from cxrssl.provenance import file_sha1, modules_of, rules_key
from cxrssl.train.distributed import train_sampler

__all__ = [
    "CODE_ROOTS",
    "ENTRY_FORMAT",
    "LAYOUTS",
    "MASK_SOURCES",
    "POOL_MAPS",
    "Pool",
    "PoolDataset",
    "PoolError",
    "build_pool",
    "canvas_box",
    "default_pool_dir",
    "detect_layout",
    "drop_patients",
    "open_sources",
    "pool_loader",
    "run_key",
]

POOL_MAPS = ("lungs", "regions", "pathology")
MASK_SOURCES = ("rules", "otsu")  # or a folder (a ``Path``, or a string naming neither)
LAYOUTS = ("auto", "files", *adapters.LOADERS)
ENTRY_FORMAT = "1"  # layout of a cache entry (``_store``/``_read_meta``): bump when it changes
CODE_ROOTS = ("cxrssl.anatomy", "cxrssl.io", "cxrssl.geometry")  # what computes an entry
_LUNG_METHOD = {"rules": "default", "otsu": "otsu"}
_SHOWN = 5  # names quoted in a message
_KEYS = ("image", *POOL_MAPS, "box", "quality")

log = logging.getLogger(__name__)


class PoolError(DatasetError):
    """A pool that cannot be built as asked: test images in it, nothing usable, bad settings."""


# --------------------------------------------------------------------------- sources


def detect_layout(root: str | Path) -> str:
    """The layout ``open_sources(..., layout="auto")`` reads ``root`` with (module notes)."""
    root = Path(root)
    if any(root.glob("Data_Entry_2017*.csv*")):
        return "nih"
    for name, layout in (("MontgomerySet", "montgomery"), ("ChinaSet_AllFiles", "shenzhen")):
        if root.name == name or (root / name).is_dir():
            return layout
    table = root / "labels.csv"
    if table.is_file():
        with table.open(encoding="utf-8-sig") as f:
            if "image_relpath" in f.readline():
                return "ieee8023"
    return "folder" if (root / "images").is_dir() else "files"


def _image_files(root: Path) -> FolderDataset:
    """The image files directly in ``root`` (layout ``"files"``), without patient ids."""
    files = [
        p
        for p in sorted(root.iterdir())
        if not p.name.startswith(".") and p.is_file() and is_image_file(p)
    ]
    if not files:
        raise DatasetError(f"{root}: no image files found (and no images/ subfolder)")
    return FolderDataset((Record(p) for p in files), root=root, name=root.name)


def _open_one(root: Path, layout: str) -> FolderDataset:
    if not root.is_dir():
        raise DatasetError(f"{root}: source folder not found")
    chosen = detect_layout(root) if layout == "auto" else layout
    if chosen == "files":
        return _image_files(root)
    if chosen == "folder":
        return FolderDataset.from_folder(root, name=root.name)
    return adapters.load(chosen, root)


def open_sources(sources: Sequence[str | Path] | str | Path, layout: str = "auto") -> FolderDataset:
    """Read one or more folders of radiographs as one dataset (see the module notes).

    Args:
        sources: folders; one path alone is accepted too.
        layout: ``"auto"``, ``"files"`` (image files directly in the folder) or a key of
            ``cxrssl.data.adapters.LOADERS``; the same for every source.

    Returns:
        The records of every source in order, ``patient_id`` raw, ``meta["source"]`` the
        source folder's name (its full path where two sources share a name).

    Raises:
        DatasetError: no source, unknown layout, a missing folder, or the reader's own.
    """
    roots = [Path(sources)] if isinstance(sources, str | Path) else [Path(s) for s in sources]
    if not roots:
        raise DatasetError("no source folder given")
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}; known: {sorted(LAYOUTS)}")
    parts = [_open_one(root, layout) for root in roots]
    names = [root.name for root in roots]
    names = [str(root) if names.count(n) > 1 else n for root, n in zip(roots, names, strict=True)]
    records: list[Record] = []
    seen: set[str] = set()
    dropped: list[str] = []
    for part, name in zip(parts, names, strict=True):
        for r in part.records:
            if r.name in seen:
                dropped.append(f"{name}/{r.name}")
                continue
            seen.add(r.name)
            records.append(replace(r, meta={**r.meta, "source": name}))
    if dropped:
        log.warning(
            "%d image(s) left out: an earlier source has an image of the same file name (%s)",
            len(dropped),
            _shown(dropped),
        )
    unions = {k: v for part in parts for k, v in part.mask_unions.items()}
    if len(parts) == 1:
        one = parts[0]
        return FolderDataset(
            records,
            root=one.root,
            name=one.name or names[0],
            label_names=one.label_names,
            mask_names=one.mask_names,
            mask_unions=unions,
            reader=one.reader,
        )
    return FolderDataset(records, name="+".join(names), mask_unions=unions)


def drop_patients(dataset: FolderDataset, patients: Iterable[str]) -> FolderDataset:
    """``dataset`` without the images of ``patients`` (raw ids; images without an id stay).

    ``build_pool`` refuses test patients rather than dropping them silently; call this when
    leaving them out is what you mean.
    """
    drop = {str(p) for p in patients}
    keep = [i for i, r in enumerate(dataset.records) if r.patient_id not in drop]
    if len(keep) < len(dataset):
        log.info("dropped %d image(s) of %d patient(s)", len(dataset) - len(keep), len(drop))
    return dataset.subset(keep)


def _shown(items: Sequence[str]) -> str:
    """The first few items, then how many more."""
    text = ", ".join(items[:_SHOWN])
    return text + (f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


# --------------------------------------------------------------------------- pool


@dataclass
class Pool:
    """The rows of a built pool; the images stay in their cache entries.

    Attributes:
        entries: cache entry file of each row.
        files: source image of each row.
        patient_ids: raw patient id of each row (``None`` when unknown).
        size: canvas side S of the entries.
        boxes: (N, 4) int32 lung crop box in canvas pixels (x0, y0, x1, y1), exclusive ends.
        quality: (N,) float32 rule-based lung quality.
        failures: (file name, reason) of each image that could not be read or processed.
        sources: source folder name of each row (``Record.meta["source"]``).
    """

    entries: list[Path]
    files: list[Path]
    patient_ids: list[str | None]
    size: int
    boxes: np.ndarray
    quality: np.ndarray
    failures: list[tuple[str, str]]
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    def subset(self, index: Sequence[int] | np.ndarray) -> Pool:
        """Rows ``index`` (integers or a boolean mask); failures are kept as they are."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {idx.shape} for {len(self)} rows")
            idx = np.flatnonzero(idx)
        rows = [int(i) for i in idx.reshape(-1)]
        sources = [self.sources[i] for i in rows] if self.sources else []
        return Pool(
            [self.entries[i] for i in rows],
            [self.files[i] for i in rows],
            [self.patient_ids[i] for i in rows],
            self.size,
            self.boxes[rows].copy(),
            self.quality[rows].copy(),
            list(self.failures),
            sources,
        )

    def dataset(self) -> PoolDataset:
        """The rows as a torch dataset that reads one entry per item."""
        return PoolDataset(self.entries, self.boxes, self.quality)


class PoolDataset(Dataset[dict[str, torch.Tensor]]):
    """Items of a pool, each read from its cache entry (nothing decoded is kept).

    ``dataset[i]`` is ``{"image", "lungs", "regions", "pathology"}``: (1, S, S) uint8 (image
    letterboxed with padding 0; lungs {0, 1}; regions 0..6; pathology the soft candidate
    score 0..255),
    ``"box"``: (4,) float32 canvas box (x0, y0, x1, y1), ``"quality"``: () float32 and
    ``"index"``: () int64, the row.

    Holds the entry paths as one bytes array and the boxes and qualities as arrays: pickled
    into a worker it costs ~100 bytes a row, whatever the image size.
    """

    def __init__(
        self, entries: Sequence[str | Path], boxes: np.ndarray, quality: np.ndarray
    ) -> None:
        self._entries = np.array([os.fsencode(p) for p in entries], dtype=np.bytes_)
        self._boxes = np.asarray(boxes, np.float32).reshape(len(entries), 4)
        self._quality = np.asarray(quality, np.float32).reshape(len(entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = operator.index(i)
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(f"row {i} of a pool of {len(self)}")
        path = os.fsdecode(self._entries[row])
        try:
            with np.load(path) as z:
                item = {k: torch.from_numpy(np.ascontiguousarray(z[k])[None]) for k in _KEYS[:4]}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise PoolError(f"{path}: unreadable pool entry ({err}); build the pool again") from err
        item["box"] = torch.from_numpy(self._boxes[row].copy())
        item["quality"] = torch.tensor(self._quality[row], dtype=torch.float32)
        item["index"] = torch.tensor(row, dtype=torch.int64)
        return item


def default_pool_dir() -> Path:
    """``$CXRSSL_CACHE_DIR/pool``, else ``pool`` beside the anatomy engine's default cache."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "pool"
    return default_cache_dir().parent / "pool"


def run_key(size: int, mask_source: str) -> str:
    """The part of every entry's key that is the same for all images of a build.

    Args:
        size: canvas side.
        mask_source: ``"rules"``, ``"otsu"`` or ``"folder"`` (the mask bytes go into each
            image's own key).
    """
    settings = {"size": size, "mask_source": mask_source, "format": ENTRY_FORMAT}
    return rules_key((*modules_of(CODE_ROOTS), __name__), settings)


def canvas_box(box: Sequence[int], frame: Letterbox) -> np.ndarray:
    """An image-pixel box (x0, y0, x1, y1; exclusive ends) in canvas pixels, as (4,) int32.

    Scaled like the image, offset by the padding, rounded outward and clipped to the image's
    area in the canvas.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    sx, sy = frame.inner_width / frame.width, frame.inner_height / frame.height
    eps = 1e-6  # float noise must not grow an exact box by a pixel
    left = [math.floor(x0 * sx + eps), math.floor(y0 * sy + eps)]
    right = [math.ceil(x1 * sx - eps), math.ceil(y1 * sy - eps)]
    cx0, cx1 = (min(max(v, 0), frame.inner_width) + frame.left for v in (left[0], right[0]))
    cy0, cy1 = (min(max(v, 0), frame.inner_height) + frame.top for v in (left[1], right[1]))
    return np.array([cx0, cy0, cx1, cy1], np.int32)


class _Settings(NamedTuple):
    size: int
    lung_method: str  # for the lungs map when there is no mask folder
    cache_dir: Path
    key: str
    excluded: frozenset[str]  # SHA-1 of the test images' bytes


class _Job(NamedTuple):
    row: int
    path: str
    mask: str  # mask file, "" without a mask folder


class _Done(NamedTuple):
    row: int
    status: str  # "computed", "cached", "failed" or "excluded"
    reason: str  # failure reason (or the matching test image's SHA-1)
    entry: str
    box: tuple[int, ...]
    quality: float
    inverted: bool = False  # an inverted film, flipped before its entry was computed


_settings: _Settings | None = None


def _compute(image: np.ndarray, mask: np.ndarray | None, s: _Settings) -> dict[str, np.ndarray]:
    """Every array of one entry from the full-resolution uint8 image (and its mask)."""
    rules = lung_masks(image, "default")
    if mask is None:
        mask = rules.both if s.lung_method == "default" else lung_masks(image, s.lung_method).both
    frame = Letterbox.fit(image.shape[0], image.shape[1], s.size)
    return {
        "image": apply_letterbox(image, frame, "linear"),
        "lungs": apply_letterbox(mask, frame, "nearest"),
        "regions": apply_letterbox(regions(rules), frame, "nearest"),
        "pathology": apply_letterbox(pathology_map(image, rules), frame, "nearest"),
        "box": canvas_box(crop_box(rules), frame),
        "quality": np.array(rules.quality, np.float32),
    }


def _store(entry: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: arrays[k] for k in _KEYS})  # type: ignore[arg-type]
    write_bytes_atomic(entry, buf.getvalue())


def _read_meta(entry: Path) -> tuple[tuple[int, ...], float] | None:
    """(box, quality) of a complete entry, or None when absent or damaged."""
    if not entry.is_file():
        return None
    try:
        with np.load(entry) as z:
            if not set(_KEYS) <= set(z.files):
                return None
            box = tuple(int(v) for v in z["box"])
            quality = float(z["quality"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return (box, quality) if len(box) == 4 else None


def _entry_of(data: bytes, mask: bytes | None, s: _Settings) -> Path:
    digest = hashlib.sha1(data, usedforsecurity=False)
    digest.update(f"|{s.key}".encode())
    if mask is not None:
        digest.update(b"|mask " + hashlib.sha1(mask, usedforsecurity=False).hexdigest().encode())
    name = digest.hexdigest()
    return s.cache_dir / name[:2] / f"{name}.npz"


def _reason(err: BaseException) -> str:
    if isinstance(err, CxrsslError):
        return str(getattr(err, "problem", err)).splitlines()[0]
    if isinstance(err, OSError | cv2.error | MemoryError):
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return f"internal error, please report: {type(err).__name__}: {err}".splitlines()[0]


def _process(job: _Job) -> _Done:
    """Hash, look up or compute, and store the entry of one image (runs in a worker)."""
    s = _settings
    if s is None:
        raise RuntimeError("pool worker used before its settings were set")
    try:
        data = Path(job.path).read_bytes()
        mask_bytes = Path(job.mask).read_bytes() if job.mask else None
    except OSError as err:
        return _Done(job.row, "failed", f"cannot read the file ({err.strerror})", "", (), 0.0)
    sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
    if sha1 in s.excluded:
        return _Done(job.row, "excluded", sha1, "", (), 0.0)
    entry = _entry_of(data, mask_bytes, s)
    found = _read_meta(entry)
    if found is not None:
        return _Done(job.row, "cached", "", str(entry), *found)
    try:
        # an inverted film is stored (and trained on) flipped; _assemble names it
        image, inverted = upright(read_gray8(job.path, data))
        mask = read_mask(job.mask, image.shape) if job.mask else None
        arrays = _compute(image, mask, s)
        _store(entry, arrays)
    except Exception as err:  # one odd image must not stop a long run
        return _Done(job.row, "failed", _reason(err), "", (), 0.0)
    box = tuple(int(v) for v in arrays["box"])
    quality = float(arrays["quality"])
    return _Done(job.row, "computed", "", str(entry), box, quality, inverted)


def _init_worker(settings: _Settings) -> None:
    global _settings
    _settings = settings
    cv2.setNumThreads(1)


def _run(jobs: list[_Job], settings: _Settings, workers: int, progress: bool) -> list[_Done]:
    """Process every job, in this process or a pool, with a progress bar."""
    bar = tqdm(total=len(jobs), desc="pool", unit="image", disable=not progress)
    done: list[_Done] = []
    try:
        if workers <= 1 or len(jobs) <= 1:
            previous = cv2.getNumThreads()
            _init_worker(settings)
            try:
                for job in jobs:
                    done.append(_process(job))
                    bar.update()
            finally:
                cv2.setNumThreads(previous)
        else:
            chunk = max(1, min(16, len(jobs) // (8 * workers)))
            with pool_context().Pool(workers, _init_worker, (settings,)) as pool:
                for result in pool.imap_unordered(_process, jobs, chunksize=chunk):
                    done.append(result)
                    bar.update()
    finally:
        bar.close()
    return done


def _mask_source(mask_source: str | Path) -> tuple[str, Path | None]:
    """(lung method or "folder", mask folder) of a ``mask_source`` argument."""
    if isinstance(mask_source, str) and mask_source in _LUNG_METHOD:
        return _LUNG_METHOD[mask_source], None
    folder = Path(mask_source)
    if not folder.is_dir():
        raise PoolError(
            f"mask source {str(mask_source)!r} is neither one of {list(MASK_SOURCES)} "
            "nor a folder of masks"
        )
    return "folder", folder


def _mask_files(records: Sequence[Record], folder: Path) -> dict[int, str]:
    """Row -> mask file in ``folder`` (``<stem>`` or ``<stem>_mask``, any mask suffix)."""
    found = index_files(folder, MASK_SUFFIXES)
    out: dict[int, str] = {}
    for i, r in enumerate(records):
        path = found.get(r.image.stem) or found.get(f"{r.image.stem}_mask")
        if path is not None:
            out[i] = str(path)
    return out


def _refuse(hits: list[str]) -> None:
    if hits:
        raise PoolError(
            f"the pool holds {len(hits)} image(s) of test patients: {_shown(hits)}; "
            "remove them or exclude those patients (drop_patients)"
        )


def _guard(
    records: Sequence[Record], patients: set[str], files: Iterable[str | Path]
) -> dict[str, str]:
    """Refuse test patients and test files found by path or name; SHA-1 -> name of the
    test files (the build refuses their copies).

    An ``exclude_files`` entry that is an existing file is matched by path and by content
    (in the build itself); any other entry is matched by file name.
    """
    paths: dict[Path, str] = {}
    names: set[str] = set()
    hashes: dict[str, str] = {}
    for item in files:
        path = Path(item)
        if path.is_file():
            paths[path.resolve()] = path.name
            hashes[file_sha1(path)] = path.name
        else:
            names.add(path.name)
    hits: list[str] = []
    for r in records:
        if r.patient_id is not None and r.patient_id in patients:
            hits.append(f"{r.name} (patient {r.patient_id})")
        elif r.name in names:
            hits.append(f"{r.name} (a test file name)")
        elif paths and r.image.resolve() in paths:
            hits.append(f"{r.name} (test image {paths[r.image.resolve()]})")
    _refuse(hits)
    return hashes


def build_pool(
    dataset: FolderDataset | Sequence[str | Path],
    size: int,
    *,
    mask_source: str | Path = "rules",
    cache_dir: str | Path | None = None,
    workers: int = 1,
    progress: bool = True,
    exclude_patients: Iterable[str] = (),
    exclude_files: Iterable[str | Path] = (),
) -> Pool:
    """Find or compute the cache entry of every image (see the module notes).

    Args:
        dataset: a dataset, or source folders for :func:`open_sources` (``layout="auto"``).
        size: canvas side S.
        mask_source: ``"rules"``, ``"otsu"`` or a folder of 0/255 masks by image stem (a
            ``Path`` is always a folder); images without a mask there become failures.
        cache_dir: entry folder (default :func:`default_pool_dir`).
        workers: processes (1 runs in this process).
        progress: show a tqdm bar over the images.
        exclude_patients: raw patient ids that must not be in the pool (test patients).
        exclude_files: test images; an existing file is matched by path and by content (a
            copy under another name is caught), any other entry by file name.

    Returns:
        The pool, rows in dataset order; images that failed are in ``failures`` (one
        logged warning gives the count).

    Raises:
        PoolError: bad ``size`` or ``mask_source``, test patients or test images in the
            pool (refused, not dropped: see :func:`drop_patients`), or no usable image.
    """
    if not isinstance(dataset, FolderDataset):
        dataset = open_sources(dataset)
    if int(size) < 1:
        raise PoolError(f"pool size must be a positive number of pixels, got {size}")
    size = int(size)
    method, folder = _mask_source(mask_source)
    records = dataset.records
    tests = _guard(records, {str(p) for p in exclude_patients}, exclude_files)
    root = Path(cache_dir) if cache_dir is not None else default_pool_dir()
    key = run_key(size, "folder" if folder is not None else str(mask_source))
    settings = _Settings(size, method, root, key, frozenset(tests))
    masks = _mask_files(records, folder) if folder is not None else {}
    jobs = [
        _Job(i, str(r.image), masks.get(i, ""))
        for i, r in enumerate(records)
        if folder is None or i in masks
    ]
    done = {d.row: d for d in _run(jobs, settings, workers, progress)}
    _refuse(
        [
            f"{records[i].name} (same content as test image {tests[d.reason]})"
            for i, d in sorted(done.items())
            if d.status == "excluded"
        ]
    )
    return _assemble(dataset, done, folder, size)


def _assemble(
    dataset: FolderDataset, done: dict[int, _Done], folder: Path | None, size: int
) -> Pool:
    """The pool of the rows that succeeded (failures listed, one warning)."""
    records = dataset.records
    failures: list[tuple[str, str]] = []
    rows: list[int] = []
    for i, r in enumerate(records):
        d = done.get(i)
        if d is None:
            failures.append((r.name, f"no mask for this image in {folder}"))
        elif d.status == "failed":
            failures.append((r.name, d.reason))
        else:
            rows.append(i)
    if not rows:
        raise PoolError(
            f"none of the {len(records)} image(s) could be used: "
            + _shown([f"{name} ({reason})" for name, reason in failures])
        )
    if failures:
        log.warning(
            "%d of %d image(s) could not be used and are left out of the pool: %s",
            len(failures),
            len(records),
            _shown([name for name, _ in failures]),
        )
    for i in rows:
        if done[i].inverted:
            log.warning("%s: inverted film (white lungs, black bones): flipped", records[i].image)
    computed = sum(done[i].status == "computed" for i in rows)
    log.info("pool: %d image(s), %d computed, %d cached", len(rows), computed, len(rows) - computed)
    fallback = dataset.name or (dataset.root.name if dataset.root is not None else "")
    return Pool(
        entries=[Path(done[i].entry) for i in rows],
        files=[records[i].image for i in rows],
        patient_ids=[records[i].patient_id for i in rows],
        size=size,
        boxes=np.array([done[i].box for i in rows], np.int32).reshape(len(rows), 4),
        quality=np.array([done[i].quality for i in rows], np.float32),
        failures=failures,
        sources=[records[i].meta.get("source", fallback) for i in rows],
    )


# --------------------------------------------------------------------------- loader


def pool_loader(
    data: PoolDataset | Pool,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int = 0,
    drop_last: bool = True,
    seed: int | None = None,
) -> DataLoader[dict[str, torch.Tensor]]:
    """Batches of pool items (default collate: each key stacked, e.g. image (B, 1, S, S)).

    The order is drawn once per epoch: from the global torch RNG (the training engine seeds
    it per epoch), or from a generator seeded with ``seed`` when given. Exactly one draw an
    epoch, whatever ``workers``: the loader's own worker seeds come from a private
    generator, so ``workers=0`` and ``workers>0`` (persistent, started from the forkserver
    like every cxrssl process pool) give the same batches. Under ``torchrun`` with several
    processes a shuffling loader gives each process its shard of every global batch (a
    ``DistributedSampler`` the engine seeds per epoch; ``batch_size`` is per process).

    Raises:
        PoolError: ``drop_last`` with fewer items than ``batch_size`` (no batch at all).
    """
    dataset = data.dataset() if isinstance(data, Pool) else data
    if drop_last and len(dataset) < batch_size:
        raise PoolError(f"a pool of {len(dataset)} image(s) gives no batch of {batch_size}")
    order = torch.Generator().manual_seed(seed) if seed is not None else None
    sampler: Sampler[int] | None = train_sampler(dataset, drop_last) if shuffle else None
    if shuffle and sampler is None:
        sampler = RandomSampler(dataset, generator=order)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        generator=torch.Generator(),  # worker base seeds: never a draw from the global RNG
        multiprocessing_context=pool_context() if workers > 0 else None,
    )
