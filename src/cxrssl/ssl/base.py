"""The one interface of a pre-training method, and the contrastive base most methods share.

A method is an ``nn.Module`` that receives the augmented views of a batch (``cxrssl.augment``
:class:`~cxrssl.augment.View`: images, the pool maps warped with them, and their affines) and
returns its loss and the loss's named parts. Class attributes say what it needs:

- ``maps``: the pool maps (``cxrssl.data.pool.POOL_MAPS``) that must follow the views, with
  their kind (``"binary"`` lungs, ``"label"`` regions, ``"soft"`` pathology);
- ``views``: how many views of each image (2 for contrastive methods, 1 for MedSASS);
- ``crop``: whether views are cropped to the rule-based lung box first (seed option 4);
  an instance attribute, so any method combines with the crop (``lung-crop+attention``).

Every method keeps its backbone at ``self.encoder``: the state-dict keys ``encoder.*`` are
exactly those of the U-Net encoder that ``train-seg --init`` loads (MedSASS is a whole U-Net).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from cxrssl.augment import MapKind, View
from cxrssl.losses import NTXentLoss, ProjectionHead
from cxrssl.nets.encoders import Encoder, create_encoder

Parts = dict[str, torch.Tensor]


class PretrainMethod(Protocol):
    """What the pre-training task needs of a method (an ``nn.Module``)."""

    maps: ClassVar[Mapping[str, MapKind]]
    views: ClassVar[int]
    crop: bool

    def loss(self, views: Sequence[View]) -> tuple[torch.Tensor, Parts]:
        """Total loss of the views of a batch and its named, detached parts."""
        ...

    def embed(self, images: torch.Tensor, view: View | None = None) -> torch.Tensor:
        """(B, D) embedding of each image (for retrieval and spread)."""
        ...

    def visuals(self, view: View) -> dict[str, torch.Tensor]:
        """Maps worth looking at, each (B, 1, H, W) in [0, 1]."""
        ...


def coverage(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) map in [0, 1] -> (B,) its mean over the view (the share it covers)."""
    return mask.float().flatten(1).mean(1)


class ReconstructionDecoder(nn.Module):
    """The seed baseline's decoder: the coarsest features back to the view's pixels.

    ``log2(reduction)`` transposed convolutions (each doubling the side and halving the
    channels, batch norm, ReLU), then a 1x1 convolution and a sigmoid.
    """

    def __init__(self, in_channels: int, reduction: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = in_channels
        for _ in range(round(math.log2(reduction))):
            out = max(chans // 2, 8)
            layers += [nn.ConvTranspose2d(chans, out, 2, 2), nn.BatchNorm2d(out), nn.ReLU(True)]
            chans = out
        layers.append(nn.Conv2d(chans, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, C, h, w) -> (B, 1, *size) in [0, 1]."""
        out = torch.sigmoid(self.net(features))
        if out.shape[-2:] != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out


class ContrastiveMethod(nn.Module):
    """SimCLR: an encoder, a projection head and NT-Xent on two views (Chen et al. 2020).

    Subclasses change one thing each: the weight of a pair (:meth:`pair_weight`), the pooling
    of the features (:meth:`pool`), extra loss terms (:meth:`extra_loss`) or the features
    themselves (:meth:`features`).

    Args:
        encoder: ``cxrssl.nets.ENCODERS`` name.
        encoder_kwargs: Its keywords (e.g. ``features`` of the U-Net encoder).
        in_channels: Input channels.
        temperature: NT-Xent temperature.
        proj_dim: Output size of the projection head.
        hidden_dim: Hidden size of the projection head.
        recon_weight: Weight of the optional reconstruction decoder (0: none).
        crop: Crop the views to the rule-based lung box first.
        gather: Gather NT-Xent negatives from every process under DDP.
    """

    maps: ClassVar[Mapping[str, MapKind]] = {}
    views: ClassVar[int] = 2

    def __init__(
        self,
        encoder: str = "unet",
        encoder_kwargs: Mapping[str, Any] | None = None,
        in_channels: int = 1,
        temperature: float = 0.1,
        proj_dim: int = 128,
        hidden_dim: int = 512,
        recon_weight: float = 0.0,
        crop: bool = False,
        gather: bool = False,
    ) -> None:
        super().__init__()
        self.crop = crop
        built = create_encoder(encoder, in_channels, **dict(encoder_kwargs or {}))
        self.encoder = cast(Encoder, built)
        width = int(self.encoder.out_channels[-1])
        self.projector = ProjectionHead(width, hidden_dim, proj_dim)
        self.criterion = NTXentLoss(temperature, gather=gather)
        self.recon_weight = recon_weight
        self.global_weight = 1.0  # weight of the image-level NT-Xent term
        self.decoder = (
            ReconstructionDecoder(width, int(self.encoder.reductions[-1]))
            if recon_weight > 0
            else None
        )

    # ------------------------------------------------------------ what subclasses change
    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], Parts]:
        """Stage features of a batch of views, and any maps the method computes on the way."""
        return list(self.encoder(images)), {}

    def pool(self, features: list[torch.Tensor], view: View) -> torch.Tensor:
        """(B, C) descriptor of each view: global average of the coarsest features."""
        return features[-1].mean(dim=(2, 3))

    def pair_weight(self, a: View, b: View) -> torch.Tensor | None:
        """(B,) weight of each positive pair in NT-Xent, or None for equal weights."""
        return None

    def extra_loss(
        self, feats: Sequence[list[torch.Tensor]], found: Sequence[Parts], views: Sequence[View]
    ) -> tuple[torch.Tensor | None, Parts]:
        """Extra weighted loss (added to the total) and its named parts."""
        return None, {}

    # ------------------------------------------------------------ shared
    def _both(self, views: Sequence[View]) -> tuple[list[list[torch.Tensor]], list[Parts]]:
        """One encoder pass over both views (batch statistics shared, one big batch)."""
        n = views[0].image.shape[0]
        feats, found = self.features(torch.cat([v.image for v in views]))
        per_view = [[f[i * n : (i + 1) * n] for f in feats] for i in range(len(views))]
        maps = [{k: t[i * n : (i + 1) * n] for k, t in found.items()} for i in range(len(views))]
        return per_view, maps

    def loss(self, views: Sequence[View]) -> tuple[torch.Tensor, Parts]:
        """Total loss of the two views and its parts (``contrastive``, ``reconstruction``...)."""
        a, b = views
        feats, found = self._both(views)
        za = self.projector(self.pool(feats[0], a))
        zb = self.projector(self.pool(feats[1], b))
        contrastive = self.criterion(za, zb, weight=self.pair_weight(a, b))
        total = self.global_weight * contrastive
        parts: Parts = {"contrastive": contrastive.detach()}
        if self.decoder is not None:
            size = (a.image.shape[-2], a.image.shape[-1])
            pairs = zip(feats, views, strict=True)
            rec = torch.stack([F.mse_loss(self.decoder(f[-1], size), v.image) for f, v in pairs])
            rec = rec.mean()
            total = total + self.recon_weight * rec
            parts["reconstruction"] = rec.detach()
        extra, extra_parts = self.extra_loss(feats, found, views)
        if extra is not None:
            total = total + extra
        parts |= extra_parts
        return total, parts

    def embed(self, images: torch.Tensor, view: View | None = None) -> torch.Tensor:
        """(B, D) projections of images (the embedding retrieval accuracy is measured on)."""
        feats, _ = self.features(images)
        if view is None:
            return self.projector(feats[-1].mean(dim=(2, 3)))
        return self.projector(self.pool(feats, view))

    def visuals(self, view: View) -> dict[str, torch.Tensor]:
        """Maps worth looking at for a view, each (B, 1, H, W) in [0, 1] (TensorBoard)."""
        scale = {"regions": 6.0}  # labels 0..6 as grey levels
        return {k: (v.float() / scale.get(k, 1.0)).clamp(0, 1) for k, v in view.maps.items()}
