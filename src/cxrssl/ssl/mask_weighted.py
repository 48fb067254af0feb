"""``mask-weighted`` (seed 000, option 1): each positive pair's NT-Xent term weighted by
``1 + w * c``, with ``c`` the mean lung coverage of its two views (the rule-based lung mask,
warped with each view).

The weights are relative: the loss is ``sum_i w_i l_i / sum_i w_i`` over the 2B anchors, so a
batch of uniformly well-covered views is not simply a larger learning rate; pairs that show
more lung count more than those of the same batch that show less.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from cxrssl.augment import MapKind, View
from cxrssl.ssl.base import ContrastiveMethod, coverage


class MaskWeighted(ContrastiveMethod):
    """Args: ``mask_weight`` (the seed's 0.3), and those of ``ContrastiveMethod``."""

    maps: ClassVar[Mapping[str, MapKind]] = {"lungs": "binary"}

    def __init__(self, mask_weight: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mask_weight = mask_weight

    def pair_weight(self, a: View, b: View) -> torch.Tensor:
        c = (coverage(a.maps["lungs"]) + coverage(b.maps["lungs"])) / 2
        return 1 + self.mask_weight * c
