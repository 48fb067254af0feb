"""``medsass`` (seed 003; Singh & Cirrone 2024, arXiv:2402.02367): a whole U-Net, encoder
and decoder, trained to predict pseudo-masks with the focal Tversky loss.

The pseudo-masks are the pool's lung channel: cxrssl's rule-based lungs by default
(``--mask-source rules``), Otsu's threshold as in the paper (``otsu``), or a folder of masks.
One augmented view per image; the mask follows its geometry. The method *is* a
``cxrssl.nets.UNet`` (same state-dict keys), so ``train-seg --init RUN/best.pt`` transfers
the encoder and ``--init-whole`` the whole network ("end to end", the paper's +14.4 % for
CNNs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cxrssl.augment import MapKind, View
from cxrssl.errors import CxrsslError
from cxrssl.losses import FocalTverskyLoss
from cxrssl.nets.unet import UNet
from cxrssl.ssl.base import Parts


class MedSASS(UNet):
    """Args: ``encoder`` (only ``"unet"``), ``encoder_kwargs`` (U-Net ``features``, ``norm``,
    ``input_norm``), ``alpha``/``beta``/``gamma`` of the focal Tversky loss, ``crop``."""

    maps: ClassVar[Mapping[str, MapKind]] = {"lungs": "binary"}
    views: ClassVar[int] = 1

    def __init__(
        self,
        encoder: str = "unet",
        encoder_kwargs: Mapping[str, Any] | None = None,
        in_channels: int = 1,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 4 / 3,
        crop: bool = False,
        **unused: Any,
    ) -> None:
        if encoder != "unet":
            raise CxrsslError(f"medsass pre-trains a whole U-Net; encoder {encoder!r} has none")
        unused.pop("temperature", None)  # shared settings of the contrastive methods
        unused.pop("gather", None)
        if unused:
            raise CxrsslError(f"medsass: unknown setting(s) {sorted(unused)}")
        super().__init__(in_channels=in_channels, out_channels=1, **dict(encoder_kwargs or {}))
        self.crop = crop
        self.criterion = FocalTverskyLoss(alpha, beta, gamma)

    def loss(self, views: Sequence[View]) -> tuple[torch.Tensor, Parts]:
        """Focal Tversky loss of the U-Net's logits against the view's pseudo-mask."""
        view = views[0]
        target = view.maps["lungs"].float()
        logits = self(view.image)
        loss = self.criterion(logits.float(), target)
        return loss, {"focal_tversky": loss.detach()}

    def dice(self, view: View) -> torch.Tensor:
        """(B,) Dice of the thresholded prediction against the view's pseudo-mask."""
        pred = (self(view.image) > 0).float()
        target = view.maps["lungs"].float()
        inter = (pred * target).flatten(1).sum(1)
        total = pred.flatten(1).sum(1) + target.flatten(1).sum(1)
        return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.nan)

    def embed(self, images: torch.Tensor, view: View | None = None) -> torch.Tensor:
        """Globally pooled bottleneck features (for the embedding spread)."""
        return F.adaptive_avg_pool2d(self.encoder(images)[-1], 1).flatten(1)

    def visuals(self, view: View) -> dict[str, torch.Tensor]:
        return {
            "lungs": view.maps["lungs"].float(),
            "prediction": torch.sigmoid(self(view.image)).float(),
        }
