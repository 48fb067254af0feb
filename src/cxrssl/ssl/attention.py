"""``attention`` (seed 000, option 5): an encoder with spatial attention after the stages at
1/8 and 1/16 of the input side, each at its own resolution, and a segmentation branch at 1/8
whose mask weights the features by ``1 + mask`` (``cxrssl.nets.GuidedAttention``).

Loss = contrastive + 0.5 reconstruction + 0.2 segmentation consistency. The seed compared
the two views' masks pixel by pixel although the views differ geometrically; here view A's
mask is warped into view B's frame (``cxrssl.augment.relative`` of their affines) and compared
only where B sees what A does, in both directions. With ``seg_supervision`` the branch is also
trained towards the rule-based lung mask of each view (binary cross entropy, same weight), the
switch the study measures as ``attention-lungs``.

Only the backbone (``encoder.*``) transfers to ``train-seg``; the attention and segmentation
branch are pre-training machinery.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cxrssl.augment import MapKind, View, relative, warp_maps
from cxrssl.nets.attention import GuidedAttention
from cxrssl.ssl.base import ContrastiveMethod, Parts


def consistency(a: View, b: View, prob_a: torch.Tensor, prob_b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of A's mask warped into B's frame and B's mask, over the part
    of B that A covers (the ``(B, 1, h, w)`` masks may be at any resolution)."""
    theta = relative(a.theta, b.theta)
    ones = torch.ones_like(prob_a)
    warped = warp_maps({"p": (prob_a, "soft"), "seen": (ones, "binary")}, theta)
    seen = warped["seen"].to(prob_a.dtype)
    diff = (warped["p"] - prob_b) ** 2 * seen
    return diff.sum() / seen.sum().clamp(min=1)


def _side(t: torch.Tensor) -> tuple[int, int]:
    return int(t.shape[-2]), int(t.shape[-1])


class Attention(ContrastiveMethod):
    """Args: ``seg_weight`` (0.2), ``seg_supervision`` (also fit the rule-based lungs), and
    those of ``ContrastiveMethod`` (``recon_weight`` defaults to the seed's 0.5 here)."""

    maps: ClassVar[Mapping[str, MapKind]] = {"lungs": "binary"}

    def __init__(
        self,
        seg_weight: float = 0.2,
        seg_supervision: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**{"recon_weight": 0.5, **kwargs})
        self.seg_weight = seg_weight
        self.seg_supervision = seg_supervision
        self.guide = GuidedAttention(self.encoder.out_channels, self.encoder.reductions)

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], Parts]:
        feats, maps = self.guide(self.encoder, images)
        return list(feats), dict(maps)

    def extra_loss(
        self, feats: Sequence[list[torch.Tensor]], found: Sequence[Parts], views: Sequence[View]
    ) -> tuple[torch.Tensor | None, Parts]:
        a, b = views
        prob_a = torch.sigmoid(found[0]["seg_logits"].float())
        prob_b = torch.sigmoid(found[1]["seg_logits"].float())
        seg = (consistency(a, b, prob_a, prob_b) + consistency(b, a, prob_b, prob_a)) / 2
        total = self.seg_weight * seg
        parts: Parts = {"seg_consistency": seg.detach()}
        if self.seg_supervision:
            sup = torch.stack(
                [
                    F.binary_cross_entropy_with_logits(
                        m["seg_logits"].float(),
                        F.adaptive_avg_pool2d(v.maps["lungs"].float(), _side(m["seg_logits"])),
                    )
                    for m, v in zip(found, views, strict=True)
                ]
            ).mean()
            total = total + self.seg_weight * sup
            parts["seg_lungs"] = sup.detach()
        return total, parts

    def visuals(self, view: View) -> dict[str, torch.Tensor]:
        _, maps = self.features(view.image)
        size = view.image.shape[-2:]
        out = super().visuals(view)
        for name, value in maps.items():
            prob = torch.sigmoid(value) if name == "seg_logits" else value
            up = F.interpolate(prob.float(), size=size, mode="bilinear", align_corners=False)
            out["segmentation" if name == "seg_logits" else name] = up.clamp(0, 1)
        return out
