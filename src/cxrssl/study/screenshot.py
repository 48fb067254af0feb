"""Render a report in headless Chromium and check it as a person would: not blank, plots drawn.

Chromium is optional (Debian package ``chromium``); :func:`find_chromium` says whether it is
here. Used by the tests and by ``python -m cxrssl.study.screenshot REPORT.html OUT.png``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from cxrssl.errors import CxrsslError

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html: Path, png: Path, width: int = 1200, height: int = 4000) -> np.ndarray:
    """Render ``html`` to ``png`` and return the image (BGR uint8).

    Raises:
        CxrsslError: no Chromium, or it wrote no image.
    """
    binary = find_chromium()
    if binary is None:
        raise CxrsslError("headless Chromium not found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            binary,
            *_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={Path(png).resolve()}",
            Path(html).resolve().as_uri(),
        ]
        subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    image = cv2.imread(str(png), cv2.IMREAD_COLOR)
    if image is None:
        raise CxrsslError(f"{png}: Chromium wrote no screenshot of {html}")
    return image


def looks_rendered(image: np.ndarray) -> dict[str, float]:
    """Simple checks of a screenshot: share of non-white pixels and of coloured pixels
    (plot lines, overlay contours; text is grey)."""
    b, g, r = (image[..., i].astype(np.int16) for i in range(3))
    non_white = (image.min(axis=2) < 235).mean()
    coloured = ((np.maximum(np.maximum(b, g), r) - np.minimum(np.minimum(b, g), r)) > 60).mean()
    return {"non_white": float(non_white), "coloured": float(coloured)}


if __name__ == "__main__":
    shot = screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
    print(looks_rendered(shot))
