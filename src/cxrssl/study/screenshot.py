"""Render a report in headless Chromium and check it as a person would: not blank, plots drawn.

Chromium is optional (Debian package ``chromium``); :func:`find_chromium` says whether it is
here. Used by the tests and by ``python -m cxrssl.study.screenshot REPORT.html OUT.png``.
"""

from __future__ import annotations

import html as htmlmod
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

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


_CHECK = """<script>window.addEventListener('load',function(){var imgs=[].slice.call(
document.images).filter(function(i){return i.getAttribute('src');});
var r={scroll_width:document.documentElement.scrollWidth,
view_width:window.innerWidth,images:imgs.length,
broken:imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0);}).length,
sections:[].slice.call(document.querySelectorAll('h2')).map(function(h){return h.textContent;})};
var p=document.createElement('pre');p.id='cxrssl-check';p.textContent=JSON.stringify(r);
document.body.appendChild(p);});</script>"""


def check_page(html: Path, width: int = 1280) -> dict[str, Any]:
    """Load ``html`` in headless Chromium at ``width`` px and report what a reader would
    meet: ``scroll_width`` against ``view_width`` (a horizontal scroll when larger), the
    number of ``images`` and of ``broken`` ones (not decoded), and the ``sections`` (h2).

    Raises:
        CxrsslError: no Chromium, or the page did not load.
    """
    binary = find_chromium()
    if binary is None:
        raise CxrsslError("headless Chromium not found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(Path(html).read_text().replace("</body>", _CHECK + "</body>"))
        cmd = [
            binary,
            *_FLAGS,
            f"--user-data-dir={Path(tmp) / 'profile'}",
            f"--window-size={width},900",
            "--dump-dom",
            page.as_uri(),
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'<pre id="cxrssl-check">(.*?)</pre>', run.stdout, re.S)
    if found is None:
        raise CxrsslError(f"{html}: Chromium did not load the page ({run.stderr[-300:]})")
    result: dict[str, Any] = json.loads(htmlmod.unescape(found.group(1)))
    return result


if __name__ == "__main__":
    shot = screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
    print(looks_rendered(shot), check_page(Path(sys.argv[1])))
