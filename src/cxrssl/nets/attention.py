"""Segmentation-guided spatial attention inside an encoder (seed 000, option 5).

:class:`GuidedAttention` steps through an encoder's stages (see
:mod:`cxrssl.nets.encoders`) and, at chosen scales, gates the features with a learnt spatial
attention map and with a predicted anatomy segmentation, each at the stage's own resolution.
It does not own the encoder: the encoder is passed to :meth:`GuidedAttention.forward`, so a
model holding both keeps the encoder's state-dict keys (``encoder.…``) unchanged and the
encoder can be saved and loaded alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from cxrssl.errors import CxrsslError
from cxrssl.nets.encoders import Encoder


def _as_encoder(encoder: nn.Module) -> Encoder:
    if not isinstance(encoder, Encoder):
        raise CxrsslError(
            "guided attention needs an encoder with stem, stages, out_channels and "
            f"reductions, got {type(encoder).__name__}"
        )
    return cast(Encoder, encoder)


class SpatialAttention(nn.Module):
    """A per-pixel gate: Conv1x1(C -> max(C // 8, 1)) -> ReLU -> Conv1x1(-> 1) -> Sigmoid.

    Args:
        channels: C.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 8, 1)
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, h, w) -> (x * a, a) with the attention a (B, 1, h, w) in (0, 1)."""
        a = torch.sigmoid(self.net(x))
        return x * a, a


class SegmentationBranch(nn.Module):
    """Segmentation logits from features: Conv3x3(C -> C/2) + BN + ReLU, Conv3x3(-> C/4) +
    BN + ReLU, Conv1x1(-> 1) (``self.out``).

    Args:
        channels: C.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        c2, c4 = max(channels // 2, 1), max(channels // 4, 1)
        self.body = nn.Sequential(
            nn.Conv2d(channels, c2, 3, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c4, 3, padding=1, bias=False),
            nn.BatchNorm2d(c4),
            nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(c4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> logits (B, 1, h, w)."""
        out: torch.Tensor = self.out(self.body(x))
        return out


class GuidedAttention(nn.Module):
    """Spatial attention and segmentation guidance applied between an encoder's stages.

    :meth:`forward` runs ``encoder.stem`` and then the stages one by one. After the stage at
    reduction ``seg_at`` it predicts segmentation logits from that stage's output (before
    its attention, so the segmentation sees the unattended features). After each stage at a
    reduction in ``attention_at`` the features are multiplied by that stage's
    :class:`SpatialAttention`; after the ``seg_at`` stage they are also multiplied by
    ``1 + sigmoid(seg_logits)`` (so a segmentation-positive region is weighted up to 2x and
    nothing is zeroed). The modified features are what the next stage receives and what is
    returned. Where several stages share a reduction, the last of them is used.

    Args:
        out_channels: The encoder's ``out_channels``.
        reductions: The encoder's ``reductions``.
        attention_at: Reductions of the stages that get a spatial attention.
        seg_at: Reduction of the stage that gets the segmentation branch; None for none.

    Raises:
        CxrsslError: If the encoder has no stage at a requested reduction (the message lists
            those it has).
    """

    def __init__(
        self,
        out_channels: Sequence[int],
        reductions: Sequence[int],
        attention_at: Sequence[int] = (8, 16),
        seg_at: int | None = 8,
    ) -> None:
        super().__init__()
        self.out_channels = tuple(int(c) for c in out_channels)
        self.reductions = tuple(int(r) for r in reductions)
        if len(self.out_channels) != len(self.reductions) or not self.reductions:
            raise CxrsslError(
                f"guided attention needs one out_channels per reduction, got "
                f"{self.out_channels} and {self.reductions}"
            )
        self.attention_at = tuple(dict.fromkeys(int(r) for r in attention_at))
        self.seg_at = seg_at
        self._attention_stage = {self._stage_at(r): r for r in self.attention_at}
        self.attention = nn.ModuleDict(
            {
                str(r): SpatialAttention(self.out_channels[i])
                for i, r in self._attention_stage.items()
            }
        )
        self._seg_stage = None if seg_at is None else self._stage_at(seg_at)
        self.segmentation = (
            None
            if self._seg_stage is None
            else SegmentationBranch(self.out_channels[self._seg_stage])
        )

    @classmethod
    def for_encoder(cls, encoder: nn.Module, **kw: Any) -> GuidedAttention:
        """Build for ``encoder``'s ``out_channels`` and ``reductions``."""
        enc = _as_encoder(encoder)
        return cls(enc.out_channels, enc.reductions, **kw)

    def _stage_at(self, reduction: int) -> int:
        idx = [i for i, r in enumerate(self.reductions) if r == reduction]
        if not idx:
            raise CxrsslError(
                f"the encoder has no stage at reduction {reduction}; its stages have "
                f"reductions {self.reductions}"
            )
        return idx[-1]

    def forward(
        self, encoder: nn.Module, x: torch.Tensor
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Run ``encoder`` (an :class:`~cxrssl.nets.encoders.Encoder`) on ``x`` with guidance.

        Args:
            encoder: The encoder whose ``out_channels`` and ``reductions`` this was built for.
            x: (B, C, H, W), sides multiples of the largest reduction.

        Returns:
            The stage features, as modified, and a dict with ``"attention_<r>"`` (B, 1, h_r,
            w_r) per attention reduction and ``"seg_logits"`` (B, 1, h_s, w_s) at ``seg_at``
            (compare with the mask area-downsampled to that size, or upsample the logits).
        """
        enc = _as_encoder(encoder)
        if (tuple(enc.out_channels), tuple(enc.reductions)) != (
            self.out_channels,
            self.reductions,
        ):
            raise CxrsslError(
                f"guided attention was built for out_channels {self.out_channels} and "
                f"reductions {self.reductions}, the encoder has {tuple(enc.out_channels)} "
                f"and {tuple(enc.reductions)}"
            )
        extras: dict[str, torch.Tensor] = {}
        feats: list[torch.Tensor] = []
        x = enc.stem(x)
        for i, stage in enumerate(enc.stages):
            x = stage(x)
            logits = None
            if i == self._seg_stage and self.segmentation is not None:
                logits = self.segmentation(x)
                extras["seg_logits"] = logits
            if i in self._attention_stage:
                r = self._attention_stage[i]
                x, extras[f"attention_{r}"] = self.attention[str(r)](x)
            if logits is not None:
                x = x * (1 + torch.sigmoid(logits))
            feats.append(x)
        return feats, extras
