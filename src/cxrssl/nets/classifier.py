"""An image classifier: any :mod:`cxrssl.nets.encoders` backbone, global average pooling of
its last stage, dropout and one linear layer.

The backbone sits at ``self.encoder`` (state-dict keys ``encoder.*``), the layout of every
pre-training method and of the segmentation U-Net, so ``load_init(net, ckpt,
encoder_only=True)`` initialises it from either. :meth:`Classifier.features` and
:meth:`Classifier.head` split the forward pass where Grad-CAM needs the feature map.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cxrssl.nets.encoders import create_encoder


class Classifier(nn.Module):
    """Encoder -> global average pool -> dropout -> linear logits.

    Args:
        encoder: A name of :data:`cxrssl.nets.encoders.ENCODERS`.
        n_outputs: Logits per image (one per label; classes for multi-class).
        in_channels: Input channels.
        dropout: Dropout before the linear layer.
        encoder_kwargs: Keywords of :func:`cxrssl.nets.encoders.create_encoder`.
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        n_outputs: int = 1,
        in_channels: int = 1,
        dropout: float = 0.0,
        encoder_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = create_encoder(encoder, in_channels, **(encoder_kwargs or {}))
        width = int(self.encoder.out_channels[-1])  # type: ignore[index]
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, n_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the last stage's feature map (B, F, h, w)."""
        out: torch.Tensor = self.encoder(x)[-1]
        return out

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map (B, F, h, w) -> logits (B, n_outputs)."""
        pooled = features.mean(dim=(2, 3))
        out: torch.Tensor = self.fc(self.dropout(pooled))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float in [0, 1] -> logits (B, n_outputs)."""
        return self.head(self.features(x))
