"""8-bit grey decoding for the engine: a fast path for plain PNG/JPEG, else ``cxrssl.io``.

``cxrssl.io.read_image`` is the one reader (DICOM, 16 bit, colour, EXIF, PNG colour chunks,
clear errors); it returns float32, which costs about 1 ms per 512 px image to make and undo.
Plain 8-bit grey PNGs and JPEGs without colour-management chunks, complete to their end
marker, decode here straight to uint8 with the same OpenCV flags; everything else goes
through ``read_image``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from cxrssl.anatomy._image import as_uint8
from cxrssl.errors import ImageReadError
from cxrssl.io import read_image

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_CHUNKS = (b"iCCP", b"sRGB", b"gAMA", b"cHRM")
_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR  # as cxrssl.io: EXIF applied, alpha dropped


def _plain_png(data: bytes) -> bool:
    """A PNG ending in IEND whose chunks before the image data carry no colour management."""
    if not data.endswith(b"IEND\xae\x42\x60\x82"):
        return False
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            return True
        if kind in _PNG_COLOUR_CHUNKS:
            return False
        pos += 12 + length
    return False


def _plain_jpeg(data: bytes) -> bool:
    """A JPEG whose end-of-image marker follows its last scan."""
    return data.startswith(b"\xff\xd8\xff") and data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda")


def decode_gray8(path: Path, data: bytes) -> np.ndarray:
    """Decode a radiograph file's bytes to (H, W) uint8 grey levels.

    Args:
        path: the file (named in errors, read again by the full reader when needed).
        data: its bytes.

    Returns:
        (H, W) uint8 array.

    Raises:
        ImageReadError: unreadable, not an image, 3-D, or constant (message names the file).
    """
    fast = (data.startswith(_PNG_MAGIC) and _plain_png(data)) or _plain_jpeg(data)
    if fast:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), _FLAGS)
        if image is not None and image.ndim == 2 and image.dtype == np.uint8:
            lo, hi = cv2.minMaxLoc(image)[:2]
            if lo == hi:
                raise ImageReadError(path, f"constant image (every pixel is {lo:g}); no anatomy")
            return image
    return as_uint8(read_image(path))
