"""``lung-crop`` (seed 000, option 4, the seed's recommendation): SimCLR on views cropped to
the rule-based lung box (``cxrssl.anatomy.crop_box``: 20 px pad at 224 px, minimum crop ratio
0.5, the whole image as the fallback). The crop is written into the checkpoint, so
``train-seg --init`` and ``predict`` apply the same crop and map masks back to the full image.

Any method takes the crop: ``lung-crop+attention`` is the attention method on cropped views.
"""

from __future__ import annotations

from typing import Any

from cxrssl.ssl.base import ContrastiveMethod


class LungCrop(ContrastiveMethod):
    """SimCLR with ``crop=True``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"crop": True, **kwargs})
