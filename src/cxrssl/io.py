"""Read radiographs and masks from disk, write masks; every failure is an ``ImageReadError``.

One reader for PNG, JPEG, TIFF, BMP (OpenCV) and DICOM (pydicom). Images come back as float32
``(H, W)`` in ``[0, 1]`` with bright = dense (bone) (:func:`read_image`), or as uint8 ``(H, W)``
equal to ``round(255 * read_image(path))`` (:func:`read_gray8`, which skips the float round trip
for 8-bit images); masks as uint8 ``(H, W)`` in ``{0, 1}``.

Choices, each made once here:

- Raster images: colour is converted to grey (ITU-R BT.601 weights, ``cv2.cvtColor``), an
  alpha channel is dropped, palettes are expanded, JPEG EXIF orientation is applied. 8-bit
  images are divided by 255. Float images already in ``[0, 1]`` are kept; other floats and
  signed integers are min-max scaled.
- 16-bit rasters (PNG, TIFF) are scaled by their file format, never by their own content, so
  that one raw value means one grey level in every film of a scanner: they are divided by
  65535, the meaning of a 16-bit PNG sample (an encoder of fewer-bit data scales it up to
  16 bits and records the original depth in an ``sBIT`` chunk) and of a 16-bit TIFF.
  One exception: when a PNG's ``sBIT`` says ``b < 16`` significant bits but its samples all
  fit in ``b`` bits, the encoder stored them unshifted (common in medical exporters), and
  they are divided by ``2**b - 1``, as a DICOM's BitsStored would say. (A spec-conforming
  file is misread by this only when nearly black: every original sample under
  ``2**(2b - 16)``, 256 of 4095 for 12 bits.)
  A 16-bit file without ``sBIT`` that uses 12 bits or fewer is still divided by 65535 and
  comes out dark (and coarse in :func:`read_gray8`); a warning, once per process, says to
  add an ``sBIT`` chunk or rescale such files.
- DICOM: modality LUT (rescale slope/intercept), then the first VOI LUT or window
  centre/width scaled by its output range, else min-max of the values; MONOCHROME1 is then
  inverted so that dense is bright.
- Refused: missing, empty, truncated, undecodable or constant images, multi-page TIFF and
  multi-frame DICOM (3-D), compressed DICOM without an installed decoder.
- Refused before decoding: an image of more than :data:`MAX_PIXELS` pixels (the environment
  variable ``CXRSSL_MAX_PIXELS`` overrides it), so that a small file claiming a huge size
  (a decompression bomb) never allocates its pixels. PNG (``IHDR``), JPEG (the ``SOF``
  marker) and BMP sizes are read from the header; DICOM ``Rows`` x ``Columns`` after the
  header is parsed and before the pixel data is decoded. TIFF and any other format, whose
  size OpenCV gives only by decoding, are checked right after decoding, before any further
  processing.
- DICOM metadata never leaves this module: only the pixels come back, so patient tags
  (name, id, birth date, accession number, institution) cannot reach logs, tables or
  written images, and error messages name the file, never a tag's value.
- PNG colour-management chunks (iCCP, sRGB, gAMA, cHRM) and ``sBIT`` (read here, above) are
  dropped before decoding: OpenCV ignores them anyway, and libpng would print warnings about
  bad profiles or depths straight to stderr.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.pixels.processing import apply_voi, apply_windowing

from cxrssl.errors import ImageReadError
from cxrssl.files import write_bytes_atomic

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "is_image_file",
    "pixel_limit",
    "read_gray8",
    "read_image",
    "read_mask",
    "write_mask",
]

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".dcm",
    ".dicom",
)
"""Lowercase suffixes read by :func:`read_image`; extensionless DICOM is found by its magic."""

MAX_PIXELS = 100_000_000
"""The most pixels (width x height) an image may have; ``CXRSSL_MAX_PIXELS`` overrides it."""

MAX_PIXELS_ENV = "CXRSSL_MAX_PIXELS"
_DICOM_SUFFIXES = (".dcm", ".dicom")
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR  # keeps 16 bits, drops alpha
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_DROPPED_CHUNKS = (b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"sBIT")
_PNG_COLOUR_SAMPLES = {0: 1, 2: 3, 4: 1, 6: 3}  # sBIT bytes of the grey or RGB samples
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_DECODER_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
_EMPTY = "empty file (0 bytes)"
_FULL_16 = 65535

log = logging.getLogger(__name__)
_warned_dark_16: list[Path] = []  # the first 16-bit file read dark without sBIT


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` looks like an image :func:`read_image` accepts, judged by its name.

    A file with no suffix, or a numeric one (DICOM named by UID, ``1.2.840.113619.2.55``), is
    an image when it carries the DICOM ``DICM`` marker at byte 128.

    Args:
        path: a file path.

    Returns:
        True for a known image suffix or a marked DICOM file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    if suffix and not suffix[1:].isdigit():
        return False
    try:
        with path.open("rb") as f:
            return _is_dicom(f.read(132))
    except OSError:
        return False


def read_image(path: str | Path) -> np.ndarray:
    """Read a radiograph as grey levels, dense (bone) bright.

    Args:
        path: a PNG, JPEG, TIFF, BMP or DICOM file (see the module notes for the scaling).

    Returns:
        float32 array of shape (H, W), values in [0, 1].

    Raises:
        ImageReadError: the file is missing, empty, truncated, not an image, 3-D, constant,
            or a compressed DICOM whose decoder is not installed; the message names the file.
    """
    path = Path(path)
    return _to_unit_range(path, *_read_grey(path, _read_bytes(path)))


def read_gray8(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """Read a radiograph as 8-bit grey levels: ``round(255 * read_image(path))``, faster.

    The checks and errors are those of :func:`read_image`. An image that decodes to 8-bit grey
    (8-bit PNG, JPEG, BMP, TIFF, colour converted to grey) is returned as decoded; any other
    (16 bit, float, signed, DICOM) is scaled as by :func:`read_image`, then rounded.

    Args:
        path: the image file (named in errors).
        data: the file's bytes when the caller already holds them (to hash them, say);
            read from ``path`` when None.

    Returns:
        uint8 array of shape (H, W).

    Raises:
        ImageReadError: as :func:`read_image`.
    """
    path = Path(path)
    if data is None:
        data = _read_bytes(path)
    elif not data:
        raise ImageReadError(path, _EMPTY)
    grey, sbit = _read_grey(path, data)
    if grey.dtype == np.uint8:
        _value_range(path, grey)
        return grey
    unit = _to_unit_range(path, grey, sbit)
    return np.rint(unit * np.float32(255), out=unit).astype(np.uint8)


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a binary mask stored as 0/255, 0/1 or anti-aliased grey levels.

    Integer masks whose maximum is 1 are taken as 0/1; otherwise a pixel is foreground above
    half the dtype maximum (127.5 for 8 bits; 0.5 for float). Colour masks use the brightest
    channel, so a red outline on black still counts.

    Args:
        path: a raster image file (DICOM masks are not supported).
        shape: the (H, W) of the image the mask belongs to, checked when given.

    Returns:
        uint8 array of shape (H, W), values in {0, 1}.

    Raises:
        ImageReadError: the file cannot be read (as in :func:`read_image`, constant masks
            allowed) or its size differs from ``shape``.
    """
    path = Path(path)
    data = _read_bytes(path)
    if _is_dicom(data) or path.suffix.lower() in _DICOM_SUFFIXES:
        raise ImageReadError(path, "DICOM masks are not supported; save masks as PNG")
    raw, _ = _decode_raster(path, data)
    if raw.ndim == 3:
        raw = raw.max(axis=2)
    if shape is not None and raw.shape != tuple(shape):
        (h, w), (eh, ew) = raw.shape, shape
        raise ImageReadError(path, f"mask is {h}x{w} but its image is {eh}x{ew} (H x W)")
    if np.issubdtype(raw.dtype, np.integer):
        if raw.max() <= 1:
            return (raw > 0).astype(np.uint8)
        threshold = np.iinfo(raw.dtype).max / 2
    else:
        threshold = 0.5
    return (raw > threshold).astype(np.uint8)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a binary mask as a 0/255 8-bit PNG, atomically (temporary file, then rename).

    Parent folders are created.

    Args:
        path: destination ending in ``.png``.
        mask: bool or integer array of shape (H, W) with values in {0, 1}.

    Raises:
        ValueError: ``path`` is not a ``.png`` or ``mask`` is not a 2-D 0/1 array.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: masks are written as PNG; use a .png file name")
    mask = np.asarray(mask)
    if mask.ndim != 2 or not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
        raise ValueError(
            f"{path}: mask must be a 2-D bool/integer array, got {mask.dtype} {mask.shape}"
        )
    if mask.size and (mask.min() < 0 or mask.max() > 1):
        raise ValueError(f"{path}: mask values must be 0 or 1")
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * np.uint8(255))
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode the mask as PNG")
    write_bytes_atomic(path, buf.tobytes())


def _read_bytes(path: Path) -> bytes:
    """The whole file, after the checks that need no decoding (missing, folder, empty)."""
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read the file ({e.strerror})") from None
    if not data:
        raise ImageReadError(path, _EMPTY)
    return data


def _is_dicom(head: bytes) -> bool:
    return head[128:132] == b"DICM"


def _read_grey(path: Path, data: bytes) -> tuple[np.ndarray, int | None]:
    """(H, W) grey levels (native dtype for raster images, float32 in [0, 1] for DICOM) and
    the significant bits a 16-bit PNG's ``sBIT`` declares (None without one)."""
    if _is_dicom(data) or path.suffix.lower() in _DICOM_SUFFIXES:
        return _read_dicom(path, data), None
    raw, sbit = _decode_raster(path, data)
    return (cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY) if raw.ndim == 3 else raw), sbit


def _decode_raster(path: Path, data: bytes) -> tuple[np.ndarray, int | None]:
    """Decode with OpenCV after format checks: (H, W) or (H, W, 3) BGR, native dtype, and
    the significant bits of a 16-bit PNG's ``sBIT`` chunk (None without one)."""
    sbit = None
    header_size = _raster_header_size(data)
    if header_size is not None:
        _check_pixels(path, *header_size)
    if data.startswith(_PNG_MAGIC):
        kind = "PNG"
        data, sbit = _checked_png(path, data)
    elif data.startswith(b"\xff\xd8\xff"):
        kind = "JPEG"
        if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):  # EOI must follow the last scan
            raise ImageReadError(path, "truncated JPEG (no end-of-image marker after the scan)")
    elif data.startswith(b"BM"):
        kind = "BMP"
        size = struct.unpack_from("<I", data, 2)[0] if len(data) >= 6 else 0
        if len(data) < size:
            raise ImageReadError(path, f"truncated BMP ({len(data)} of {size} bytes)")
    elif data[:4] in _TIFF_MAGICS:
        kind = "TIFF"
    else:
        kind = ""
    buf = np.frombuffer(data, np.uint8)
    if kind == "TIFF":
        ok, pages = cv2.imdecodemulti(buf, _DECODE_FLAGS)
        if ok and len(pages) > 1:
            raise ImageReadError(
                path,
                f"3-D image: multi-page TIFF with {len(pages)} pages; "
                "only 2-D radiographs are supported",
            )
        image = pages[0] if ok and pages else None
    else:
        image = cv2.imdecode(buf, _DECODE_FLAGS)
    if image is None:
        if not kind:
            raise ImageReadError(
                path,
                f"not an image (unrecognised content starting "
                f"{data[:8]!r}; expected PNG, JPEG, TIFF, BMP or DICOM)",
            )
        raise ImageReadError(path, f"corrupt {kind} data (OpenCV cannot decode it)")
    if header_size is None:  # TIFF and other formats: checked once decoded
        _check_pixels(path, image.shape[1], image.shape[0])
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2 and not (image.ndim == 3 and image.shape[2] == 3):
        raise ImageReadError(path, f"3-D image of shape {image.shape}; expected H x W or colour")
    return image, sbit


def pixel_limit() -> int:
    """The pixel limit in force: ``CXRSSL_MAX_PIXELS`` when set, else :data:`MAX_PIXELS`.

    Raises:
        ValueError: ``CXRSSL_MAX_PIXELS`` is not a positive integer.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return MAX_PIXELS
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"{MAX_PIXELS_ENV}={text!r} is not a positive whole number of pixels")
    return int(text)


def _check_pixels(path: Path, width: int, height: int) -> None:
    """Refuses an image of more pixels than :func:`pixel_limit` allows."""
    try:
        limit = pixel_limit()
    except ValueError as e:
        raise ImageReadError(path, str(e)) from None
    if width * height > limit:
        raise ImageReadError(
            path,
            f"image of {width} x {height} = {width * height:,} pixels is over the limit of "
            f"{limit:,} pixels (set {MAX_PIXELS_ENV} to raise it)",
        )


def _raster_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG or BMP header; None for other formats or a header
    too damaged to say (decoding then reports the damage)."""
    if data.startswith(_PNG_MAGIC) and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack_from(">II", data, 16)
        return width, height
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_size(data)
    if data.startswith(b"BM") and len(data) >= 26:
        width, height = struct.unpack_from("<ii", data, 18)
        return abs(width), abs(height)  # a negative height means top-down rows
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame marker before the first scan."""
    pos, size = 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker == 0xDA:  # a scan before any frame header
            return None
        if marker in _JPEG_SOF:
            if pos + 9 > size:
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return None


def _checked_png(path: Path, data: bytes) -> tuple[bytes, int | None]:
    """``data`` without the chunks OpenCV need not see, and the significant bits of the grey
    or colour samples from ``sBIT`` (16-bit images only; None without a valid one); refuses
    a PNG cut before IEND."""
    pos, size, drop, sbit = 8, len(data), [], None
    depth, colour = (data[24], data[25]) if size >= 26 else (0, 0)
    while True:
        if pos + 12 > size:
            raise ImageReadError(path, f"truncated PNG ({size} bytes, ends before IEND)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > size:
            raise ImageReadError(
                path, f"truncated PNG ({size} bytes, ends inside a {kind.decode('latin-1')} chunk)"
            )
        if kind == b"IEND":
            break
        if kind == b"sBIT" and depth == 16 and colour in _PNG_COLOUR_SAMPLES:
            bits = data[pos + 8 : pos + 8 + min(length, _PNG_COLOUR_SAMPLES[colour])]
            if bits and all(0 < b <= depth for b in bits):  # else invalid: ignored, as libpng
                sbit = max(bits)
        if kind in _PNG_DROPPED_CHUNKS:
            drop.append((pos, end))
        pos = end
    if not drop:
        return data, sbit
    keep, start = [], 0
    for a, b in drop:
        keep.append(data[start:a])
        start = b
    keep.append(data[start:])
    return b"".join(keep), sbit


def _to_unit_range(path: Path, image: np.ndarray, sbit: int | None = None) -> np.ndarray:
    """(H, W) grey levels of any dtype -> float32 in [0, 1] (see the module notes);
    ``sbit``: the significant bits a 16-bit PNG declares."""
    lo, hi = _value_range(path, image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1 / 255)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(1 / _full_scale_16(path, hi, sbit))
    if image.dtype.kind == "f" and lo >= 0 and hi <= 1:
        return image.astype(np.float32, copy=False)
    return _stretch(image, lo, hi)


def _full_scale_16(path: Path, hi: float, sbit: int | None) -> int:
    """The raw value read as 1.0 in a 16-bit raster whose maximum is ``hi``: 65535, or
    ``2**sbit - 1`` for a PNG whose ``sBIT`` samples are stored unshifted."""
    if sbit is not None and sbit < 16 and hi < 2**sbit:
        return int(2**sbit - 1)
    if sbit is None and hi < 2**12 and not _warned_dark_16:
        _warned_dark_16.append(path)
        log.warning(
            "%s: 16-bit image whose values fit in %d bits, without an sBIT chunk: read as "
            "16 bits, so it is dark (brightest pixel %.3f); store such files as PNG with an "
            "sBIT chunk naming their bits, or scale them to 16 bits (warned once)",
            path,
            max(1, int(hi).bit_length()),
            hi / _FULL_16,
        )
    return _FULL_16


def _value_range(path: Path, image: np.ndarray) -> tuple[float, float]:
    """Minimum and maximum; refuses non-finite and constant images."""
    lo, hi = float(image.min()), float(image.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ImageReadError(path, "image holds non-finite values (NaN or infinity)")
    if lo == hi:
        raise ImageReadError(path, f"constant image (every pixel is {lo:g}); nothing to read")
    return lo, hi


def _stretch(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (image.astype(np.float32) - np.float32(lo)) * np.float32(1 / (hi - lo))
    return np.clip(scaled, 0, 1, out=scaled)


def dicom_pixels(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """The stored pixel array of a DICOM dataset (radiograph or CT slice).

    Raises:
        ImageReadError: compressed without an installed decoder, or truncated / undecodable.
    """
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise ImageReadError(
                path, f"compressed DICOM ({syntax.name}) needs a decoder: {_DECODER_HINT}"
            )
    try:
        pixels: np.ndarray = ds.pixel_array
    except Exception as e:  # decoders raise many types on damaged or truncated data
        raise ImageReadError(
            path, f"DICOM pixel data is truncated or cannot be decoded ({_summary(e)})"
        ) from None
    return pixels


def _read_dicom(path: Path, data: bytes) -> np.ndarray:
    """DICOM -> (H, W) grey: float32 in [0, 1] after modality LUT, VOI and MONOCHROME1
    inversion, or the native dtype for colour converted to grey."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise ImageReadError(path, "not a DICOM file (no 'DICM' marker at byte 128)") from None
    except Exception as e:  # pydicom raises many types on a damaged header
        raise ImageReadError(path, f"unreadable DICOM header ({_summary(e)})") from None
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file holds no pixel data (truncated, or not an image)")
    _check_dicom_pixels(path, ds)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageReadError(
            path,
            f"3-D image: multi-frame DICOM with {frames} frames; "
            "only 2-D radiographs are supported",
        )
    pixels = dicom_pixels(path, ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 3 and pixels.shape[2] == 3:  # RGB (pydicom converts YBR to RGB)
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    if pixels.ndim != 2:
        raise ImageReadError(path, f"3-D image of shape {pixels.shape}; expected H x W")
    image = _dicom_grey(path, ds, pixels)
    return 1 - image if photometric == "MONOCHROME1" else image


def _check_dicom_pixels(path: Path, ds: pydicom.Dataset) -> None:
    """Refuses a DICOM whose Rows x Columns is over the pixel limit, before its pixel data is
    decoded (multi-frame files are refused next, also before decoding)."""
    try:
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    except (TypeError, ValueError):
        raise ImageReadError(path, "DICOM Rows or Columns is not a number") from None
    _check_pixels(path, columns, rows)


def _dicom_grey(path: Path, ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    """Modality LUT then VOI LUT / window (scaled by its output range) or min-max."""
    values = apply_modality_lut(pixels, ds)
    try:
        if ds.get("VOILUTSequence"):
            values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
            item = ds.VOILUTSequence[0]
            first, count = int(item.LUTDescriptor[1]), int(item.LUTDescriptor[0] or 2**16)
            out, table = apply_voi(values, ds), apply_voi(np.arange(first, first + count), ds)
            lo, hi = float(table.min()), float(table.max())
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            out = apply_windowing(values, ds)
            lo, hi = (float(v) for v in apply_windowing(np.array([-np.inf, np.inf]), ds))
        else:
            return _stretch(values, *_value_range(path, values))
    except (ValueError, NotImplementedError, AttributeError, KeyError) as e:
        raise ImageReadError(path, f"invalid DICOM VOI LUT or window ({_summary(e)})") from None
    if lo == hi:
        raise ImageReadError(path, "invalid DICOM VOI LUT or window (empty output range)")
    image = _stretch(out, lo, hi)
    _value_range(path, image)
    return image


def _summary(error: BaseException) -> str:
    """``Type: message`` on one line, at most 200 characters."""
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
