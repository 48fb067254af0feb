"""Pre-training methods by name. A new method is a module in ``cxrssl.ssl`` plus a line here.

Names combine with ``+`` where the seed suggests it: ``lung-crop+NAME`` runs method NAME on
views cropped to the lung box (``lung-crop`` alone is SimCLR on cropped views).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from cxrssl.errors import CxrsslError
from cxrssl.ssl.attention import Attention
from cxrssl.ssl.lung_crop import LungCrop
from cxrssl.ssl.mask_pooled import MaskPooled
from cxrssl.ssl.mask_weighted import MaskWeighted
from cxrssl.ssl.medsass import MedSASS
from cxrssl.ssl.pathology import Pathology
from cxrssl.ssl.regional import Regional
from cxrssl.ssl.simclr import SimCLR

METHODS: dict[str, Callable[..., nn.Module]] = {
    "simclr": SimCLR,
    "mask-weighted": MaskWeighted,
    "mask-pooled": MaskPooled,
    "regional": Regional,
    "pathology": Pathology,
    "lung-crop": LungCrop,
    "attention": Attention,
    "attention-lungs": partial(Attention, seg_supervision=True),
    "medsass": MedSASS,
}
"""Name -> builder taking ``encoder``, ``encoder_kwargs``, ``in_channels`` and the method's
own keywords."""

CROP = "lung-crop"


def parse_method(name: str) -> tuple[str, bool]:
    """``"lung-crop+attention"`` -> ``("attention", True)``; ``"simclr"`` -> ``("simclr",
    False)``; ``"lung-crop"`` -> ``("lung-crop", True)``.

    Raises:
        CxrsslError: an unknown name or combination (the message lists the methods).
    """
    parts = [p.strip() for p in name.split("+") if p.strip()]
    crop = CROP in parts
    rest = [p for p in parts if p != CROP]
    known = ", ".join(METHODS)
    if len(rest) > 1 or not parts or any(p not in METHODS for p in rest):
        raise CxrsslError(
            f"unknown pre-training method {name!r}; choose one of {known}, or lung-crop+NAME"
        )
    return (rest[0] if rest else CROP), crop


def create_method(name: str, **kwargs: Any) -> nn.Module:
    """Build method ``name`` (see :func:`parse_method`) with its keywords.

    Raises:
        CxrsslError: unknown name or keyword.
    """
    base, crop = parse_method(name)
    if crop:
        kwargs["crop"] = True
    try:
        return METHODS[base](**kwargs)
    except TypeError as err:
        raise CxrsslError(f"method {name!r}: {err}") from None
