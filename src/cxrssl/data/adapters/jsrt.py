"""JSRT radiographs with the SCR lung, heart and clavicle masks.

Images: J. Shiraishi et al., "Development of a digital image database for chest radiographs
with and without a lung nodule", AJR 174:71-74, 2000 (http://db.jsrt.or.jp/eng.php): 247 PA
radiographs, 154 with one nodule (``JPCLN*``), 93 without (``JPCNN*``), 2048 x 2048, 12-bit,
headerless big-endian raw ``.IMG`` files.
Masks: B. van Ginneken, M. B. Stegmann, M. Loog, "Segmentation of anatomical structures in
chest radiographs using supervised methods", Medical Image Analysis 10(1):19-40, 2006
(https://www.isi.uu.nl/Research/Databases/SCR/): GIF masks at 1024 x 1024. Research and
education use only; no redistribution.

Layout read (any nesting below ``root`` and ``scr``)::

    <root>/.../JPCLN001.IMG ...
    <scr>/.../masks/left lung/JPCLN001.gif      (SCR: scratch/fold1/masks/..., fold2/...)
    <scr>/.../masks/right lung/, heart/, left clavicle/, right clavicle/

"left" is the patient's left, on the image right (SCR convention). Images are read at
1024 x 1024 to match the masks, inverted so that dense is bright (the raw values grow with
film darkness). Each image is taken as its own patient (``patient_id`` = stem).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import cv2
import numpy as np

from cxrssl.data.datasets import DatasetWarning, FolderDataset, Record, match_masks
from cxrssl.errors import DatasetError, ImageReadError

__all__ = ["LABEL", "RAW_SHAPE", "STRUCTURES", "load", "read_jsrt"]

LABEL = "Nodule"
RAW_SHAPE = (2048, 2048)
STRUCTURES = {
    "masks_left": "left lung",
    "masks_right": "right lung",
    "masks_heart": "heart",
    "masks_clavicle_left": "left clavicle",
    "masks_clavicle_right": "right clavicle",
}
"""Mask name -> SCR folder name."""


def read_jsrt(path: str | Path, size: int = 1024) -> np.ndarray:
    """Read a JSRT ``.IMG`` file: 2048 x 2048 big-endian 12-bit values, no header.

    Args:
        path: the ``.IMG`` file.
        size: output side in pixels (area interpolation); 1024 matches the SCR masks.

    Returns:
        float32 array of shape (size, size) in [0, 1], dense (bone) bright.

    Raises:
        ImageReadError: missing file or a size other than 2048 x 2048 x 2 bytes.
    """
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=">u2")
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read the file ({e.strerror})") from None
    expected = RAW_SHAPE[0] * RAW_SHAPE[1]
    if raw.size != expected:
        raise ImageReadError(
            path,
            f"{raw.size * 2} bytes; a JSRT image is {expected * 2} "
            "(2048 x 2048 big-endian 16-bit, no header)",
        )
    image = 1.0 - np.minimum(raw.reshape(RAW_SHAPE), 4095).astype(np.float32) / 4095.0
    if size != RAW_SHAPE[0]:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(image, 0.0, 1.0)


def load(root: str | Path, *, scr: str | Path | None = None, size: int = 1024) -> FolderDataset:
    """Find the JSRT images below ``root`` and their SCR masks below ``scr``.

    Args:
        root: folder holding the ``.IMG`` files (searched recursively).
        scr: folder holding the SCR ``masks/<structure>/`` folders; default ``root``.
        size: image side for reading (see :func:`read_jsrt`); keep 1024 with masks.

    Returns:
        A dataset with label ``Nodule`` (1 for ``JPCLN``, 0 for ``JPCNN``), masks from
        ``STRUCTURES`` that are present, and ``masks`` = both lungs.

    Raises:
        DatasetError: no ``.IMG`` file, or two with the same stem.
    """
    root = Path(root)
    scr = Path(scr) if scr is not None else root
    if not root.is_dir():
        raise DatasetError(f"{root}: JSRT folder not found")
    images: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() == ".img" and path.is_file():
            if path.stem in images:
                raise DatasetError(
                    f"two JSRT images with the stem {path.stem!r}: {images[path.stem]} and {path}"
                )
            images[path.stem] = path
    if not images:
        raise DatasetError(f"{root}: no JSRT .IMG files found")
    masks: dict[str, dict[str, Path]] = {}
    for name, structure in STRUCTURES.items():
        for folder in sorted(scr.rglob(structure)):
            if folder.is_dir() and folder.parent.name == "masks":
                matched, orphans = match_masks(images, folder)
                masks.setdefault(name, {}).update(matched)
                if orphans:
                    warnings.warn(
                        f"{folder}: {len(orphans)} mask file(s) match no JSRT "
                        f"image: {', '.join(p.name for p in orphans[:5])}",
                        DatasetWarning,
                        stacklevel=2,
                    )
    records = []
    for stem, path in sorted(images.items()):
        kind = stem[:5].upper()
        label = {"JPCLN": 1.0, "JPCNN": 0.0}.get(kind, float("nan"))
        mask_paths = {n: m[stem] for n, m in masks.items() if stem in m}
        records.append(Record(path, stem, mask_paths, {LABEL: label}))
    unions = (
        {"masks": ("masks_left", "masks_right")}
        if {"masks_left", "masks_right"} <= set(masks)
        else {}
    )
    return FolderDataset(
        records,
        root=root,
        name="jsrt",
        label_names=(LABEL,),
        mask_names=list(masks),
        mask_unions=unions,
        reader=functools.partial(read_jsrt, size=size),
    )
