"""``regional`` (seed 000, option 2): a global contrastive loss plus a region-wise one over the
six rule-based lung regions (``cxrssl.anatomy.regions``: upper, middle and lower zone of each
lung).

The region map is warped with each view (labels move with the tissue, flips included), so
region ``r`` of an image in view A and region ``r`` of the same image in view B show the same
anatomy: they are a positive pair. Each region's descriptor is the coarsest features
averaged inside it. All (image, region) pairs of the batch that both views show (each covers at
least ``MIN_REGION_SHARE`` of its view) go into one NT-Xent, so a region's negatives are the
other regions of the same image and every region of the other images (as DetCon). Loss:
``alpha * global + beta * sum_r mean_{anchors of region r}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from cxrssl.augment import MapKind, View
from cxrssl.losses import NTXentLoss
from cxrssl.nets.encoders import masked_avg_pool
from cxrssl.ssl.base import ContrastiveMethod, Parts

N_REGIONS = 6
MIN_REGION_SHARE = 0.01  # a region counts in a view that shows at least this share of it


def region_weights(view: View) -> torch.Tensor:
    """(B, 6, H, W) float one-hot of the view's region labels 1..6."""
    labels = view.maps["regions"].long()  # (B, 1, H, W)
    ids = torch.arange(1, N_REGIONS + 1, device=labels.device).view(1, -1, 1, 1)
    return (labels == ids).float()


class Regional(ContrastiveMethod):
    """Args: ``alpha`` (global weight), ``beta`` (weight of the sum over regions; 1/6 makes
    the regions together weigh as much as the global term), and those of
    ``ContrastiveMethod``."""

    maps: ClassVar[Mapping[str, MapKind]] = {"regions": "label"}

    def __init__(self, alpha: float = 1.0, beta: float = 1 / N_REGIONS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.global_weight = alpha
        self.beta = beta
        self.region_criterion = NTXentLoss(self.criterion.temperature, gather=False)

    def extra_loss(
        self, feats: Sequence[list[torch.Tensor]], found: Sequence[Parts], views: Sequence[View]
    ) -> tuple[torch.Tensor | None, Parts]:
        a, b = views
        wa, wb = region_weights(a), region_weights(b)
        pa, _ = masked_avg_pool(feats[0][-1], wa)  # (B, 6, C)
        pb, _ = masked_avg_pool(feats[1][-1], wb)
        share_a, share_b = wa.flatten(2).mean(2), wb.flatten(2).mean(2)  # (B, 6)
        valid = (share_a >= MIN_REGION_SHARE) & (share_b >= MIN_REGION_SHARE)
        zero = feats[0][-1].sum() * 0
        if int(valid.sum()) < 2:
            return zero, {"regional": zero.detach(), "region_pairs": zero.detach()}
        region = torch.arange(N_REGIONS, device=valid.device).expand_as(valid)[valid]  # (M,)
        za, zb = self.projector(pa[valid]), self.projector(pb[valid])
        # local negatives only: M differs between processes, so nothing is gathered
        per_anchor = self.region_criterion(za, zb, reduction="none")  # (2M,)
        region = torch.cat([region, region])
        sums = torch.zeros(N_REGIONS, device=per_anchor.device, dtype=per_anchor.dtype)
        counts = torch.zeros_like(sums)
        sums = sums.index_add(0, region, per_anchor)
        counts = counts.index_add(0, region, torch.ones_like(per_anchor))
        regional = (sums / counts.clamp(min=1)).sum()
        pairs = valid.float().sum().detach()
        return self.beta * regional, {"regional": regional.detach(), "region_pairs": pairs}
