"""Film polarity: inverted radiographs (white lungs, black bones) are detected and flipped.

On a radiograph shown the usual way, the aerated lung fields are darker than the mediastinum
and spine between them and darker than the abdomen below the diaphragm. On an inverted film
(``255 - image``) both comparisons turn round. On a thumbnail of the image without its
uniform frame bands (``rules._content_box``), the median of the central column band
(``CENTRE_BAND``) and that of the bottom-centre band (``BOTTOM_BAND``) are compared with the
median of the two lung bands (``LUNG_BANDS``): the film is called inverted only when *both*
are darker than the lungs. Requiring both keeps normal films with white (opacified) lungs,
whose mediastinum can be darker than the lungs, from being flipped.

Measured with ``255 - image`` copies of real films (``../shared/data``: ieee8023
GeneralBlockchain 100, v7labs 427 and the classification folder's own 67, JSRT 196, every
9th Kermany film (580), the NIH sample 52, and the built-in sample 90, a subset of v7labs):
no original is flagged; 1,498 of the 1,512 inverted copies are (the 14 missed are copies of
films with white lungs or a dark bottom band, where one cue is ambiguous).
"""

from __future__ import annotations

import cv2
import numpy as np

from cxrssl.anatomy._image import as_uint8
from cxrssl.anatomy.rules import _content_box

THUMB = 64  # side of the square thumbnail the cues are read on (px)
# (row0, row1, col0, col1) as fractions of the thumbnail side
CENTRE_BAND = (0.25, 0.75, 0.42, 0.58)  # mediastinum and spine
BOTTOM_BAND = (0.84, 0.97, 0.30, 0.70)  # below the diaphragm
LUNG_BANDS = ((0.25, 0.66, 0.16, 0.34), (0.25, 0.66, 0.66, 0.84))  # the two lung fields


def _band(thumb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    r0, r1, c0, c1 = (round(v * THUMB) for v in box)
    return thumb[r0:r1, c0:c1].ravel()


def is_inverted(image: np.ndarray) -> bool:
    """Whether a radiograph is shown inverted (lungs brighter than mediastinum and abdomen).

    Args:
        image: (H, W) uint8, or float in [0, 1].

    Returns:
        True when both the central band and the bottom band are darker than the lung bands.
    """
    full = as_uint8(image)
    y0, y1, x0, x1 = _content_box(full)
    img = full[y0:y1, x0:x1]
    if min(img.shape) < 8:
        return False
    small = cv2.resize(img, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    thumb = cv2.GaussianBlur(small.astype(np.float32), (0, 0), 1.0)
    lungs = float(np.median(np.concatenate([_band(thumb, b) for b in LUNG_BANDS])))
    centre = float(np.median(_band(thumb, CENTRE_BAND)))
    bottom = float(np.median(_band(thumb, BOTTOM_BAND)))
    return centre < lungs and bottom < lungs


def upright(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """The image in the usual polarity, and whether it had to be flipped.

    Args:
        image: (H, W) uint8, or float in [0, 1].

    Returns:
        ((H, W) uint8 image, flipped): ``255 - image`` when ``is_inverted``, else the image.
    """
    img = as_uint8(image)
    if is_inverted(img):
        return cv2.bitwise_not(img), True
    return img, False
