"""CT volumes: read a NIfTI-1 file or a DICOM series, write NIfTI-1, 2.5D slice stacks and
nodule masks grown from centre points in 3-D.

Every volume comes back in one orientation, whatever its file's layout: a float32 array
``Z x Y x X`` with

- z from the patient's head to the feet (superior -> inferior): slice 0 is the top,
- y from the front to the back (anterior -> posterior),
- x from the patient's right to the left,

so that a coronal view ``array[:, y, :]`` (and the DRR of :mod:`cxrssl.lesions.drr`) has
the head at the top and the patient's left on the image right, as a radiograph is shown.
For the usual axial CT (ImageOrientationPatient ``1\\0\\0\\0\\1\\0``) x and y are the
DICOM column and row, and z counts slices from the most superior one. ``Volume.affine``
maps an index ``(z, y, x)`` to patient coordinates in mm (DICOM LPS: +x left, +y
posterior, +z superior); oblique files are put on their nearest axes, without resampling.

NIfTI-1 (``.nii``, ``.nii.gz``), as far as read here: little- or big-endian single files
(magic ``n+1``), 3-D (a 4th and later dimensions of size 1 are dropped), integer and float
voxels (not binary, complex or RGB), ``scl_slope``/``scl_inter``, spatial units (m, mm,
micron; unknown is read as mm), orientation from the sform (``sform_code > 0``) else the
qform. Refused: NIfTI-2, ``.hdr``/``.img`` pairs, ANALYZE 7.5, 4-D series, files with no
orientation (both codes 0). Extensions are skipped.

DICOM series: every file of one folder carrying the ``DICM`` marker (``DICOMDIR`` is
skipped), one 2-D slice each, of one SeriesInstanceUID, sorted by ImagePositionPatient
along the slice normal (never by file name or InstanceNumber); RescaleSlope/Intercept make
HU. Only the pixels and their geometry are kept: no patient tag reaches a ``Volume``.

Volumes of more than :data:`MAX_VOXELS` voxels (``CXRSSL_MAX_VOXELS`` overrides it) are
refused before their voxels are read.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from cxrssl.errors import CxrsslError, DatasetError, ImageReadError
from cxrssl.files import write_bytes_atomic
from cxrssl.io import _summary, dicom_pixels
from cxrssl.lesions.points import Point

if TYPE_CHECKING:
    from cxrssl.lesions.grow import Grown

__all__ = [
    "LUNG_WINDOW",
    "MAX_VOXELS",
    "MEDIASTINUM_WINDOW",
    "Volume",
    "grow_nodule",
    "read_volume",
    "stack_25d",
    "volume_masks",
    "voxel_limit",
    "window",
    "world_to_index",
    "write_nifti",
]

MAX_VOXELS = 500_000_000
"""The most voxels a volume may have (2 GB as float32); ``CXRSSL_MAX_VOXELS`` overrides it."""
MAX_VOXELS_ENV = "CXRSSL_MAX_VOXELS"

LUNG_WINDOW = (-600.0, 1500.0)
"""(level, width) in HU of the lung window: -1350 HU -> 0, 150 HU -> 1."""
MEDIASTINUM_WINDOW = (40.0, 400.0)
"""(level, width) in HU of the soft-tissue window: -160 HU -> 0, 240 HU -> 1."""

# LPS world axis -> (standard array axis, the direction it must run in).
_TARGET = {0: (2, 1.0), 1: (1, 1.0), 2: (0, -1.0)}
_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}
_NIFTI_TYPES |= {1024: "i8", 1280: "u8"}
_NIFTI_CODES = {np.dtype(v).name: k for k, v in _NIFTI_TYPES.items()}
_NIFTI_UNITS = {0: 1.0, 1: 1000.0, 2: 1.0, 3: 0.001}  # xyzt_units & 7 -> mm
_HEADER = 348
_VOX_OFFSET = 352
_RAS = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS


@dataclass(frozen=True, repr=False, eq=False)
class Volume:
    """A CT volume in the standard orientation (see the module notes).

    Attributes:
        array: float32 ``Z x Y x X`` (HU for CT).
        spacing: voxel size ``(z, y, x)`` in mm.
        path: the file or DICOM folder it was read from.
        affine: 4 x 4, index ``(z, y, x, 1)`` -> patient LPS mm ``(x, y, z, 1)``.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    path: Path
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.array.shape
        return z, y, x

    def __repr__(self) -> str:
        z, y, x = self.shape
        sz, sy, sx = self.spacing
        return f"Volume({str(self.path)!r}, {z}x{y}x{x}, spacing {sz:g}x{sy:g}x{sx:g} mm)"


def voxel_limit() -> int:
    """The voxel limit in force: ``CXRSSL_MAX_VOXELS`` when set, else :data:`MAX_VOXELS`.

    Raises:
        CxrsslError: ``CXRSSL_MAX_VOXELS`` is not a positive whole number.
    """
    text = os.environ.get(MAX_VOXELS_ENV, "").strip().replace("_", "")
    if not text:
        return MAX_VOXELS
    if not text.isdigit() or int(text) <= 0:
        raise CxrsslError(f"{MAX_VOXELS_ENV}={text!r} is not a positive whole number of voxels")
    return int(text)


def _check_voxels(path: Path, sizes: Sequence[int]) -> None:
    count = int(np.prod([int(s) for s in sizes], dtype=np.int64))
    limit = voxel_limit()
    if count > limit:
        shown = " x ".join(str(s) for s in sizes)
        raise ImageReadError(
            path,
            f"volume of {shown} = {count:,} voxels is over the limit of {limit:,} voxels "
            f"(set {MAX_VOXELS_ENV} to raise it)",
        )


def read_volume(path: str | Path) -> Volume:
    """Read a CT volume in the standard orientation.

    Args:
        path: a ``.nii`` / ``.nii.gz`` file, or a folder holding one DICOM series.

    Raises:
        ImageReadError: missing, truncated, unsupported or inconsistent input; the message
            names the file or folder and the problem.
    """
    path = Path(path)
    if path.is_dir():
        array, affine = _read_series(path)
    elif not path.exists():
        raise ImageReadError(path, "not found")
    elif path.name.lower().endswith((".nii", ".nii.gz")):
        array, affine = _read_nifti(path)
    elif path.name.lower().endswith((".hdr", ".img")):
        raise ImageReadError(path, "NIfTI/ANALYZE .hdr/.img pairs are not supported; use .nii")
    else:
        raise ImageReadError(
            path, "not a volume: expected a .nii or .nii.gz file or a DICOM series folder"
        )
    array, affine = _reorient(path, array, affine)
    if not np.isfinite(array).all():
        raise ImageReadError(path, "volume holds non-finite values (NaN or infinity)")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    sz, sy, sx = (float(s) for s in spacing)
    return Volume(np.ascontiguousarray(array, dtype=np.float32), (sz, sy, sx), path, affine)


def world_to_index(volume: Volume, x: float, y: float, z: float) -> tuple[float, float, float]:
    """The voxel index ``(z, y, x)`` (fractional) of a patient LPS point in mm (the world
    coordinates of DICOM, and of LUNA16's ``.mhd`` annotations)."""
    ijk = np.linalg.solve(volume.affine, np.array([x, y, z, 1.0]))
    return float(ijk[0]), float(ijk[1]), float(ijk[2])


def _reorient(path: Path, array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute and flip ``array`` (axes as in ``affine``'s columns) into the standard order."""
    cols = affine[:3, :3]
    if not np.isfinite(affine).all() or abs(np.linalg.det(cols)) < 1e-9:
        raise ImageReadError(path, "degenerate orientation (its voxel axes are not independent)")
    world = [int(w) for w in np.argmax(np.abs(cols), axis=0)]
    if len(set(world)) != 3:
        raise ImageReadError(path, "orientation too oblique: two voxel axes share a body axis")
    out = affine.copy()
    order = [0, 0, 0]
    flips = []
    for n, w in enumerate(world):
        target, sign = _TARGET[w]
        order[target] = n
        if np.sign(cols[w, n]) != sign:
            flips.append(n)
            out[:3, 3] += cols[:, n] * (array.shape[n] - 1)
            out[:3, n] *= -1
    out[:, :3] = out[:, order]
    return np.transpose(np.flip(array, tuple(flips)), order), out


# ------------------------------------------------------------------ NIfTI-1


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (axes k, j, i of the file) and their index -> LPS affine."""
    packed = path.name.lower().endswith(".gz")
    try:
        with path.open("rb") as raw:
            if not packed:
                return _parse_nifti(path, raw)
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return _parse_nifti(path, f)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ImageReadError(path, f"truncated or corrupt gzip data ({_summary(e)})") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read the file ({_summary(e)})") from None


def _parse_nifti(path: Path, f: io.BufferedIOBase) -> tuple[np.ndarray, np.ndarray]:
    head = f.read(_HEADER)
    if len(head) < _HEADER:
        raise ImageReadError(path, f"truncated NIfTI header ({len(head)} of {_HEADER} bytes)")
    size = {struct.unpack_from(e + "i", head)[0]: e for e in "<>"}
    if 540 in size:
        raise ImageReadError(path, "NIfTI-2 is not supported; save the volume as NIfTI-1")
    if _HEADER not in size:
        raise ImageReadError(path, "not a NIfTI-1 file (sizeof_hdr is not 348)")
    e = size[_HEADER]
    magic = head[344:348]
    if magic == b"ni1\x00":
        raise ImageReadError(path, "NIfTI .hdr/.img pairs are not supported; use a .nii file")
    if magic != b"n+1\x00":
        raise ImageReadError(path, "no NIfTI-1 magic (ANALYZE 7.5 is not supported)")
    dim = struct.unpack_from(e + "8h", head, 40)
    sizes = dim[1 : dim[0] + 1] if 1 <= dim[0] <= 7 else ()
    if len(sizes) < 3 or min(sizes) < 1:
        raise ImageReadError(path, f"not a 3-D volume (NIfTI dim {list(dim)})")
    if int(np.prod(sizes[3:])) > 1:
        raise ImageReadError(path, f"{len(sizes)}-D NIfTI {list(sizes)}; only 3-D is supported")
    nx, ny, nz = sizes[:3]
    code = struct.unpack_from(e + "h", head, 70)[0]
    if code not in _NIFTI_TYPES:
        raise ImageReadError(path, f"NIfTI datatype {code} is not supported (binary/complex/RGB?)")
    _check_voxels(path, (nz, ny, nx))
    dtype = np.dtype(e + _NIFTI_TYPES[code])
    offset_f = struct.unpack_from(e + "f", head, 108)[0]
    if not _HEADER <= offset_f < 2**31:
        raise ImageReadError(path, f"invalid vox_offset {offset_f}")
    offset = int(offset_f)
    if len(f.read(offset - _HEADER)) < offset - _HEADER:
        raise ImageReadError(path, "truncated NIfTI file (ends before its voxel data)")
    need = nx * ny * nz * dtype.itemsize
    data = f.read(need)
    if len(data) < need:
        raise ImageReadError(path, f"truncated NIfTI file ({len(data):,} of {need:,} voxel bytes)")
    array = np.frombuffer(data, dtype).reshape(nz, ny, nx).astype(np.float32)
    slope, inter = struct.unpack_from(e + "2f", head, 112)
    if slope != 0 and np.isfinite(slope) and np.isfinite(inter):
        array = array * np.float32(slope) + np.float32(inter)
    return array, _nifti_affine(path, head, e)


def _nifti_affine(path: Path, head: bytes, e: str) -> np.ndarray:
    """The index (k, j, i) -> LPS mm affine from the sform, else the qform."""
    qcode, scode = struct.unpack_from(e + "2h", head, 252)
    pixdim = struct.unpack_from(e + "8f", head, 76)
    m = np.eye(4)
    if scode > 0:
        m[:3] = np.array(struct.unpack_from(e + "12f", head, 280)).reshape(3, 4)
    elif qcode > 0:
        b, c, d, qx, qy, qz = struct.unpack_from(e + "6f", head, 256)
        if min(pixdim[1:4]) <= 0:
            raise ImageReadError(path, f"invalid NIfTI voxel size {list(pixdim[1:4])}")
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        rot = np.array(
            [
                [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
            ]
        )
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        m[:3, :3] = rot * np.array([pixdim[1], pixdim[2], pixdim[3] * qfac])
        m[:3, 3] = qx, qy, qz
    else:
        raise ImageReadError(
            path, "NIfTI file has no orientation (qform_code and sform_code are 0)"
        )
    m[:3] *= _NIFTI_UNITS.get(head[123] & 7, 1.0)
    m[:3] = _RAS @ m[:3]
    return m[:, [2, 1, 0, 3]]


def write_nifti(
    path: str | Path,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    dtype: str = "float32",
    slope: float = 1.0,
    inter: float = 0.0,
) -> None:
    """Write a NIfTI-1 file (``.nii``, or gzipped ``.nii.gz``) atomically, with sform and
    qform; :func:`read_volume` reads it back as it was.

    Args:
        path: destination ending in ``.nii`` or ``.nii.gz``.
        array: 3-D voxels, axis 0 slowest (a ``Volume.array``).
        affine: 4 x 4 index -> LPS mm of ``array``'s axes (a ``Volume.affine``).
        dtype: stored type (``"float32"``, ``"int16"``, ``"uint8"`` ...).
        slope, inter: stored value = ``round((array - inter) / slope)`` for integer types;
            a reader's value is ``stored * slope + inter``.
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: NIfTI files are named .nii or .nii.gz")
    array = np.asarray(array)
    kind = np.dtype(dtype)
    if array.ndim != 3 or kind.name not in _NIFTI_CODES or slope == 0:
        raise ValueError(f"{path}: cannot write {array.shape} as {kind.name} (slope {slope})")
    stored = (array.astype(np.float64) - inter) / slope
    if kind.kind in "iu":
        info = np.iinfo(kind)
        stored = np.clip(np.rint(stored), info.min, info.max)
    nz, ny, nx = array.shape
    m = _RAS @ np.asarray(affine, dtype=np.float64)[:3][:, [2, 1, 0, 3]]
    spacing = np.linalg.norm(m[:, :3], axis=0)
    rot = m[:, :3] / spacing
    qfac = 1.0
    if np.linalg.det(rot) < 0:
        qfac, rot[:, 2] = -1.0, -rot[:, 2]
    head = bytearray(_HEADER)
    struct.pack_into("<i", head, 0, _HEADER)
    struct.pack_into("<8h", head, 40, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into("<2h", head, 70, _NIFTI_CODES[kind.name], kind.itemsize * 8)
    struct.pack_into("<8f", head, 76, qfac, *spacing, 0, 0, 0, 0)
    struct.pack_into("<3f", head, 108, _VOX_OFFSET, slope, inter)
    head[123] = 2  # mm
    struct.pack_into("<2h", head, 252, 1, 1)
    struct.pack_into("<6f", head, 256, *_quaternion(rot), *m[:, 3])
    struct.pack_into("<12f", head, 280, *m.ravel())
    head[344:348] = b"n+1\x00"
    data = bytes(head) + b"\x00" * 4 + stored.astype(kind.newbyteorder("<")).tobytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    write_bytes_atomic(path, data)


def _quaternion(rot: np.ndarray) -> tuple[float, float, float]:
    """(b, c, d) of a proper rotation matrix, with ``a >= 0`` (the NIfTI qform)."""
    t = np.trace(rot)
    if t > 0:
        s = 2 * np.sqrt(1 + t)
        q = [s / 4, (rot[2, 1] - rot[1, 2]) / s, (rot[0, 2] - rot[2, 0]) / s]
        q.append((rot[1, 0] - rot[0, 1]) / s)
    else:
        i = int(np.argmax(np.diag(rot)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * np.sqrt(max(1e-12, 1 + rot[i, i] - rot[j, j] - rot[k, k]))
        v = [0.0, 0.0, 0.0]
        v[i], v[j], v[k] = s / 4, (rot[j, i] + rot[i, j]) / s, (rot[k, i] + rot[i, k]) / s
        q = [(rot[k, j] - rot[j, k]) / s, *v]
    if q[0] < 0:
        q = [-v for v in q]
    return float(q[1]), float(q[2]), float(q[3])


# ------------------------------------------------------------------ DICOM series


def _read_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (sorted slice, row, column) in HU and their index -> LPS affine."""
    files = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR":
            with p.open("rb") as f:
                if f.read(132)[128:132] == b"DICM":
                    files.append(p)
    if len(files) < 2:
        raise ImageReadError(folder, f"{len(files)} DICOM file(s); a series needs 2 slices or more")
    slices = [_slice_header(p) for p in files]
    series = len({s[1] for s in slices})
    if series > 1:
        raise ImageReadError(
            folder, f"holds {series} series (SeriesInstanceUID); keep one per folder"
        )
    first = slices[0][0]
    rows, cols = int(first.Rows), int(first.Columns)
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    spacing = [float(v) for v in first.PixelSpacing]
    for p, (ds, _) in zip(files, slices, strict=True):
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise ImageReadError(
                folder, f"mixed slice sizes: {p.name} is {ds.Rows}x{ds.Columns}, not {rows}x{cols}"
            )
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4):
            raise ImageReadError(folder, f"mixed slice orientations ({p.name})")
        if not np.allclose([float(v) for v in ds.PixelSpacing], spacing, atol=1e-4):
            raise ImageReadError(folder, f"mixed pixel spacings ({p.name})")
    _check_voxels(folder, (len(files), rows, cols))
    row_dir, col_dir = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds, _ in slices])
    along = positions @ np.cross(row_dir, col_dir)
    order = np.argsort(along, kind="stable")
    gaps = np.diff(along[order])
    if gaps.min() < 0.01:
        i = int(np.argmin(gaps))
        a, b = files[order[i]].name, files[order[i + 1]].name
        raise ImageReadError(folder, f"two slices at the same position: {a} and {b} (duplicates?)")
    median = float(np.median(gaps))
    if gaps.max() - gaps.min() > max(0.05, 0.02 * median):
        raise ImageReadError(
            folder,
            f"slice gaps vary from {gaps.min():.3g} to {gaps.max():.3g} mm (missing slices?)",
        )
    array = np.empty((len(files), rows, cols), np.float32)
    for n, i in enumerate(order):
        array[n] = _slice_pixels(files[i], slices[i][0], rows, cols)
    affine = np.eye(4)
    affine[:3, 0] = (positions[order[-1]] - positions[order[0]]) / (len(files) - 1)
    affine[:3, 1] = col_dir * spacing[0]
    affine[:3, 2] = row_dir * spacing[1]
    affine[:3, 3] = positions[order[0]]
    return array, affine


def _slice_header(path: Path) -> tuple[pydicom.Dataset, str]:
    """The dataset (pixel data deferred) and its series UID; refuses what cannot be a slice."""
    try:
        ds = pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError:
        raise ImageReadError(path, "not a DICOM file") from None
    except Exception as e:  # pydicom raises many types on a damaged header
        raise ImageReadError(path, f"unreadable DICOM header ({_summary(e)})") from None
    for tag in ("PixelData", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if tag not in ds:
            raise ImageReadError(path, f"DICOM slice without {tag}")
    if int(ds.get("NumberOfFrames") or 1) > 1:
        raise ImageReadError(path, "multi-frame DICOM is not supported; use one file per slice")
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        raise ImageReadError(path, "colour DICOM; CT slices are grey")
    try:
        _ = (int(ds.Rows), int(ds.Columns), [float(v) for v in ds.ImagePositionPatient])
        ok = len(ds.ImagePositionPatient) == 3 and len(ds.ImageOrientationPatient) == 6
        ok = ok and len(ds.PixelSpacing) == 2 and min(float(v) for v in ds.PixelSpacing) > 0
    except (TypeError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise ImageReadError(path, "invalid Rows, Columns, PixelSpacing or slice geometry")
    return ds, str(ds.get("SeriesInstanceUID", ""))


def _slice_pixels(path: Path, ds: pydicom.Dataset, rows: int, cols: int) -> np.ndarray:
    pixels = dicom_pixels(path, ds)
    if pixels.shape != (rows, cols):
        raise ImageReadError(path, f"pixel data of shape {pixels.shape}, not {rows}x{cols}")
    hu: np.ndarray = apply_modality_lut(pixels, ds)
    return hu.astype(np.float32)


# ------------------------------------------------------------------ 2.5D and masks


def window(
    hu: np.ndarray, level: float = LUNG_WINDOW[0], width: float = LUNG_WINDOW[1]
) -> np.ndarray:
    """HU -> float32 in [0, 1]: ``level - width / 2`` -> 0, ``level + width / 2`` -> 1
    (default: the lung window, :data:`LUNG_WINDOW`)."""
    if width <= 0:
        raise CxrsslError(f"window width must be positive, got {width}")
    out = (np.asarray(hu, np.float32) - np.float32(level - width / 2)) * np.float32(1 / width)
    return np.clip(out, 0, 1, out=out)


def stack_25d(volume_array: np.ndarray, k: int, slices: Sequence[int] | None = None) -> np.ndarray:
    """Each slice with its neighbours as channels: ``out[z, c] = array[z - k // 2 + c]``,
    the first and last slices repeated past the ends.

    Args:
        volume_array: ``Z x Y x X``.
        k: channels, odd (3: the slice above, the slice, the slice below).
        slices: the slices to stack (default: all), to spare memory.

    Returns:
        ``len(slices) x k x Y x X`` (``Z x k x Y x X``) of the input's dtype (a copy).
    """
    if k < 1 or k % 2 == 0:
        raise CxrsslError(f"a 2.5D stack needs an odd number of slices, got k={k}")
    if volume_array.ndim != 3:
        raise CxrsslError(f"expected a Z x Y x X volume, got shape {volume_array.shape}")
    depth = volume_array.shape[0]
    centre = np.arange(depth) if slices is None else np.asarray(slices, dtype=np.int64)
    if centre.size and (centre.min() < 0 or centre.max() >= depth):
        raise CxrsslError(f"slices must lie in 0..{depth - 1}")
    z = centre.reshape(-1, 1) + np.arange(k)[None, :] - k // 2
    return volume_array[np.clip(z, 0, depth - 1)]


def volume_masks(volume: Volume, points: Iterable[Point]) -> np.ndarray:
    """The union of the nodules grown in 3-D from ``points`` (:func:`grow_nodule`).

    Returns:
        uint8 ``Z x Y x X`` in {0, 1}; empty without points.

    Raises:
        DatasetError: a point without ``z``, outside the volume, or of no diameter.
    """
    out = np.zeros(volume.shape, np.uint8)
    for p in points:
        box, mask, _ = _grow_box(volume, p)
        out[box] |= mask
    return out


def grow_nodule(volume: Volume, point: Point) -> Grown:
    """One nodule's mask grown in 3-D from its centre, on the volume's grid.

    ``point``'s ``(z, y, x)`` is a voxel index in the standard orientation and its
    ``diameter_px`` is in in-plane voxels (x spacing). Voxels need not be cubic: a box of
    about three diameters around the centre is resampled (linearly) to cubic voxels of the
    finest spacing, grown there with :func:`cxrssl.lesions.grow.grow_mask`, and sampled back
    (linearly, thresholded at 0.5).

    Returns:
        The ``Grown`` of ``grow_mask``, its mask the volume's shape.

    Raises:
        DatasetError: a point without ``z``, outside the volume, or of no diameter.
    """
    box, mask, grown = _grow_box(volume, point)
    out = np.zeros(volume.shape, np.uint8)
    out[box] = mask
    return replace(grown, mask=out)


def _grow_box(volume: Volume, p: Point) -> tuple[tuple[slice, ...], np.ndarray, Grown]:
    """The box grown around ``p``, its mask on the volume grid, and the grower's answer."""
    from cxrssl.lesions.grow import grow_mask

    shape, spacing = np.array(volume.shape), np.array(volume.spacing)
    where = f"{volume.path.name}: the nodule of {p.file} at x={p.x:g}, y={p.y:g}"
    if p.z is None:
        raise DatasetError(f"{where} has no z (slice); CT points need one")
    centre = np.array([p.z, p.y, p.x], dtype=np.float64)
    if not np.isfinite(centre).all() or (centre < -0.5).any() or (centre > shape - 0.5).any():
        raise DatasetError(f"{where}, z={p.z:g} is outside the volume of {tuple(shape)} (z, y, x)")
    if not p.diameter_px > 0:
        raise DatasetError(f"{where}: the diameter must be positive, got {p.diameter_px}")
    iso = float(spacing.min())
    diameter_mm = p.diameter_px * float(spacing[2])
    half = (1.5 * diameter_mm + 2 * iso) / spacing
    lo = np.maximum(np.floor(centre - half), 0).astype(int)
    hi = np.minimum(np.ceil(centre + half) + 1, shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    crop = volume.array[box]
    steps = spacing / iso  # cubic voxels per volume voxel, along each axis
    cube = crop
    for axis in range(3):
        n = int(np.floor((crop.shape[axis] - 1) * steps[axis])) + 1
        cube = _interp_axis(cube, axis, np.arange(n) / steps[axis])
    grown = grow_mask(cube, tuple((centre - lo) * steps), diameter_mm / iso)
    soft = grown.mask.astype(np.float32)
    for axis in range(3):
        soft = _interp_axis(soft, axis, np.arange(crop.shape[axis]) * steps[axis])
    return box, (soft >= 0.5).astype(np.uint8), grown


def _interp_axis(a: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """``a`` sampled linearly along ``axis`` at fractional indices (clamped to the ends)."""
    n = a.shape[axis]
    pos = np.clip(positions, 0, n - 1)
    i0 = np.minimum(np.floor(pos).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * a.ndim
    shape[axis] = len(pos)
    w = (pos - i0).astype(np.float32).reshape(shape)
    out: np.ndarray = np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w
    return out.astype(np.float32)
