"""``mask-pooled`` (beyond the seeds, in the spirit of lightly's ``pool_masked`` and DetCon):
the coarsest features are average-pooled inside each view's warped lung mask, not over the
whole view, before the projection head. A view that shows no lung falls back to the global
average."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from cxrssl.augment import MapKind, View
from cxrssl.nets.encoders import masked_avg_pool
from cxrssl.ssl.base import ContrastiveMethod


class MaskPooled(ContrastiveMethod):
    """Arguments as ``ContrastiveMethod``."""

    maps: ClassVar[Mapping[str, MapKind]] = {"lungs": "binary"}

    def pool(self, features: list[torch.Tensor], view: View) -> torch.Tensor:
        coarse = features[-1]
        pooled, sums = masked_avg_pool(coarse, view.maps["lungs"].float())
        inside = pooled[:, 0]
        empty = (sums[:, 0] <= 0).unsqueeze(1)
        return torch.where(empty, coarse.mean(dim=(2, 3)), inside)
