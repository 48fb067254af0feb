"""The U-Net family built from MONAI blocks, with a separable encoder.

One class covers the plain U-Net, the Attention U-Net (attention gates on the skips,
Oktay et al. 2018, MONAI ``AttentionBlock``) and deep supervision (extra 1x1 heads on the
decoder's coarser levels, as in MONAI ``DynUNet``). The encoder is its own module
(``net.encoder``, state-dict prefix ``encoder.``) so that pre-training can train it alone
and fine-tuning can load it alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, get_conv_layer
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

from cxrssl.errors import CxrsslError

INPUT_NORMS = ("image", "none")


class InputNorm(nn.Module):
    """Input normalisation: ``"image"`` standardises each image and channel to zero mean and
    unit variance over its content (robust to the exposure differences between radiograph
    sources); ``"none"`` passes the input through.

    Images arrive letterboxed: padding is exactly 0 (in every channel), so the statistics are
    over the pixels that are non-zero in some channel, and normalisation does not depend on
    the aspect ratio. An image whose content is under ``min_content`` of its pixels (or under
    2 pixels) uses all its pixels. Every pixel, padding included, is then mapped by the same
    ``(x - mean) / (std + eps)``.

    Args:
        mode: ``"image"`` or ``"none"``.
        eps: Added to the standard deviation.
        min_content: Smallest content fraction whose statistics are used.
    """

    def __init__(self, mode: str = "image", eps: float = 1e-5, min_content: float = 0.01) -> None:
        super().__init__()
        if mode not in INPUT_NORMS:
            raise CxrsslError(f"unknown input_norm {mode!r}; choose one of {INPUT_NORMS}")
        self.mode = mode
        self.eps = eps
        self.min_content = min_content

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        if self.mode == "none":
            return x
        content = (x != 0).any(dim=1, keepdim=True)  # (B, 1, H, W)
        count = content.sum(dim=(2, 3), keepdim=True)
        enough = count >= max(2.0, self.min_content * x.shape[2] * x.shape[3])
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # half sums would overflow
        weight = (content | ~enough).to(xf.dtype)  # too little content: every pixel counts
        n = weight.sum(dim=(2, 3), keepdim=True)
        mean = (xf * weight).sum(dim=(2, 3), keepdim=True) / n
        var = ((xf - mean) ** 2 * weight).sum(dim=(2, 3), keepdim=True) / (n - 1).clamp(min=1)
        return ((xf - mean) / (var.sqrt() + self.eps)).to(x.dtype)


class UNetEncoder(nn.Module):
    """Input normalisation and a pyramid of conv blocks, each halving the resolution
    after the first.

    Implements the encoder interface of :mod:`cxrssl.nets.encoders` (``stem``, ``stages``,
    ``out_channels``, ``reductions``) as the ``"unet"`` entry of its registry.

    Args:
        in_channels: Input channels (1 for a radiograph; more for 2.5D stacks or prior maps).
        features: Channels at each level, finest first.
        norm: ``"batch"`` or ``"instance"``.
        input_norm: See :class:`InputNorm`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        norm: str = "batch",
        input_norm: str = "image",
    ) -> None:
        super().__init__()
        self.input_norm = InputNorm(input_norm)
        self.out_channels = tuple(features)
        chans = (in_channels, *features)
        self.blocks = nn.ModuleList(
            UnetBasicBlock(2, chans[i], chans[i + 1], 3, 1 if i == 0 else 2, norm)
            for i in range(len(features))
        )

    @property
    def reduction(self) -> int:
        """Ratio between the input side and the coarsest feature map's side."""
        return int(2 ** (len(self.blocks) - 1))

    @property
    def reductions(self) -> tuple[int, ...]:
        """Input side / stage output side for each stage, finest first: (1, 2, 4, ...)."""
        return tuple(2**i for i in range(len(self.blocks)))

    @property
    def stages(self) -> nn.ModuleList:
        """The conv blocks (the same modules as :attr:`blocks`; the state dict keeps the
        ``blocks.`` keys). ``forward(x)`` equals running them one after another on
        ``stem(x)``."""
        return self.blocks

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The input normalisation, everything before the first stage (parameter-free)."""
        out: torch.Tensor = self.input_norm(x)
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> features [(B, F0, H, W), (B, F1, H/2, W/2), ...], H and W
        divisible by :attr:`reduction`."""
        x = self.input_norm(x)
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats


class UpBlock(nn.Module):
    """Transposed-conv upsampling, an optional attention gate on the skip, a conv block."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, attention: bool) -> None:
        super().__init__()
        self.up = get_conv_layer(2, in_ch, out_ch, 2, 2, conv_only=True, is_transposed=True)
        self.gate = AttentionBlock(2, max(out_ch // 2, 1), out_ch, out_ch) if attention else None
        self.conv = UnetBasicBlock(2, 2 * out_ch, out_ch, 3, 1, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """x (B, in_ch, h, w), skip (B, out_ch, 2h, 2w) -> (B, out_ch, 2h, 2w)."""
        up = self.up(x)
        if self.gate is not None:
            skip = self.gate(g=up, x=skip)
        out: torch.Tensor = self.conv(torch.cat([up, skip], 1))
        return out


class UNet(nn.Module):
    """U-Net for 2D segmentation returning logits.

    Args:
        in_channels: Input channels.
        out_channels: Output channels (1 for a binary mask).
        features: Channels per level, finest first.
        attention: Attention gates on every skip connection.
        deep_supervision: Number of extra output heads on coarser decoder levels; in
            training mode the forward then returns (B, 1 + n, C, H, W) (main output first,
            heads upsampled to H x W), in eval mode only the main (B, C, H, W).
        dropout: Channel dropout before the decoder (on the bottleneck).
        norm: ``"batch"`` or ``"instance"``.
        input_norm: See :class:`InputNorm`.

    Inputs of any height and width are accepted (padded internally to a multiple of
    :attr:`UNetEncoder.reduction`).
    """

    DEFAULT_FEATURES = (16, 32, 64, 128, 256)

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = DEFAULT_FEATURES,
        attention: bool = False,
        deep_supervision: int = 0,
        dropout: float = 0.0,
        norm: str = "batch",
        input_norm: str = "image",
    ) -> None:
        super().__init__()
        if len(features) < 2:
            raise CxrsslError(f"a U-Net needs at least 2 levels of features, got {features}")
        if not 0 <= deep_supervision <= len(features) - 2:
            raise CxrsslError(
                f"deep_supervision must be in [0, {len(features) - 2}], got {deep_supervision}"
            )
        if norm not in ("batch", "instance"):
            raise CxrsslError(f"unknown norm {norm!r}; use 'batch' or 'instance'")
        self.encoder = UNetEncoder(in_channels, features, norm, input_norm)
        self.dropout = nn.Dropout2d(dropout)
        rev = tuple(reversed(features))
        self.decoder = nn.ModuleList(
            UpBlock(rev[i], rev[i + 1], norm, attention) for i in range(len(rev) - 1)
        )
        self.head = UnetOutBlock(2, features[0], out_channels)
        # Heads on the decoder outputs just above the finest level, coarse to fine.
        self.ds_heads = nn.ModuleList(
            UnetOutBlock(2, features[i], out_channels) for i in range(1, deep_supervision + 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> logits (B, out_channels, H, W), or with deep
        supervision in training mode (B, 1 + n, out_channels, H, W)."""
        height, width = x.shape[-2:]
        red = self.encoder.reduction
        pad_h, pad_w = (-height) % red, (-width) % red
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.encoder(x)
        y = self.dropout(feats[-1])
        outs = []
        for block, skip in zip(self.decoder, reversed(feats[:-1]), strict=True):
            y = block(y, skip)
            outs.append(y)
        logits = self.head(y)[..., :height, :width]
        if not (self.training and len(self.ds_heads)):
            out: torch.Tensor = logits
            return out
        full = x.shape[-2:]
        extra = [
            F.interpolate(head(outs[-1 - level]), size=full, mode="bilinear")[..., :height, :width]
            for level, head in enumerate(self.ds_heads, start=1)
        ]
        return torch.stack([logits, *extra], 1)
