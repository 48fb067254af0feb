"""The prior-guided lesion network of seed 004, designed so that the prior meets the features
where they live.

:class:`PriorGuidedNet` takes an image and, optionally, a prior map (a nodule heatmap, a
pathology-candidate map, the lungs, or any map from a folder), and returns lesion logits at the
input's size:

- **Encoder**: any :func:`~cxrssl.nets.encoders.create_encoder` backbone (``"unet"``, cxrssl's
  U-Net encoder, is the class default; ``"resnet18"`` / ``"resnet50"``, MONAI's ResNets, are
  the seed's choice and ``train-lesion``'s default). It sees the image channel(s) only, never
  the prior, so an encoder pre-trained by ``cxrssl pretrain`` (keys ``encoder.*``) loads into
  it unchanged (``--init``).
- **Attention branch** (:class:`PriorAttention`): a residual network of 7 conv layers at 64
  channels with batch norm, run on the prior at the input's full resolution and downsampling
  inside itself (strided convs) to each attention scale. With the default scales (strides 4,
  8 and 16 of the input, i.e. scales 1, 2 and 4 of the branch's first attention level) it
  emits one map in (0, 1) per stride, each computed at that stride: no map is ever computed
  at full size and squeezed to a coarse grid (the seed's sketch computed one at 512 px and
  resized it to 16 px).
- **Where the attention acts**: the encoder is stepped through stage by stage (as
  :class:`~cxrssl.nets.attention.GuidedAttention` does) and the output of the last stage at
  each attention stride is multiplied by ``1 + a`` (a in (0, 1): a prior-positive region is
  weighted up to 2x and nothing is zeroed, so a missing or wrong prior cannot blank the
  image's evidence). The gated features are what the next stage receives and what the
  decoder's skip connection carries. For the ResNets that is layer1 (stride 4), layer2 (8) and
  layer3 (16); for the U-Net encoder blocks 2, 3 and 4 (its deepest). The ResNets' deepest
  stage (stride 32) is not gated. ``GuidedAttention``'s own
  :class:`~cxrssl.nets.attention.SpatialAttention` derives its gate from the features
  themselves, so it does not fit a prior-driven gate.
- **Decoder**: one transposed-conv stage per factor 2 of the encoder's deepest stride, back to
  the full resolution (five stages for the ResNets at stride 32, four for the default U-Net
  encoder at 16), each ``ConvTranspose2d(2, stride 2)``, concatenation with the encoder's
  (gated) feature map at that stride when there is one, then two 3x3 conv + norm + activation
  (MONAI ``UnetBasicBlock``); 256, 128, 64, 32, 16 channels for five stages. The ResNets have
  no feature map at strides 2 and 1, so their last two stages have no skip.

Input convention (that of every registry network): ``in_channels`` counts every input
channel. With ``prior`` (by default: whenever ``in_channels`` >= 2) the **last** channel is the
prior and the others are the image; ``forward`` takes (N, in_channels, H, W), so (N, 2, H, W)
= (image, prior) for a radiograph. Without a prior (``in_channels=1``, or ``prior=False``) the
branch does not exist and the same network trains without it: the ablation. Inputs of any
height and width are padded internally to a multiple of the deepest stride.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetBasicBlock
from torch import nn

from cxrssl.errors import CxrsslError
from cxrssl.nets.encoders import Encoder, create_encoder

DEFAULT_ATTENTION_AT = (4, 8, 16)
"""Strides (input side / map side) at which the prior gates the encoder by default."""


class _ResidualConv(nn.Module):
    """One conv layer with a shortcut: ``relu(bn(conv3x3(x, stride)) + shortcut(x))``.

    The shortcut is the identity, average-pooled by ``stride`` when it downsamples, and
    projected by a 1x1 conv + batch norm when the channels change.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_ch)
        self.stride = stride
        self.project = (
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
            if in_ch != out_ch
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride)."""
        short = F.avg_pool2d(x, self.stride) if self.stride > 1 else x
        if self.project is not None:
            short = self.project(short)
        out: torch.Tensor = F.relu(self.norm(self.conv(x)) + short)
        return out


def _layer_plan(scales: Sequence[int]) -> tuple[list[int], dict[int, int]]:
    """Strides of the branch's conv layers and which layer's output feeds the map of each
    scale: a stride-1 stem, stride-2 layers down to each scale, a stride-1 refinement at the
    first and at the last scale. For (4, 8, 16): strides [1, 2, 2, 1, 2, 2, 1] (7 layers),
    maps after layers 4, 5 and 7."""
    strides, taps, prev = [1], {}, 1
    for k, scale in enumerate(scales):
        strides += [2] * round(math.log2(scale // prev))
        if k == 0:
            strides.append(1)
        if k == len(scales) - 1:
            strides.append(1)
        taps[len(strides) - 1] = scale
        prev = scale
    return strides, taps


def _check_scales(scales: Sequence[int]) -> tuple[int, ...]:
    out = tuple(sorted(dict.fromkeys(int(s) for s in scales)))
    if not out or any(s < 1 or s & (s - 1) for s in out):
        raise CxrsslError(f"attention strides must be powers of two, got {tuple(scales)}")
    return out


class PriorAttention(nn.Module):
    """Multi-scale spatial attention from a prior map: a deep residual conv network that runs
    at the prior's full resolution and downsamples inside itself.

    Layers (see :func:`_layer_plan`): 3x3 convs of ``channels`` channels, each with batch norm,
    ReLU and a residual shortcut; after the layer that reaches each stride in ``scales`` a 1x1
    conv head and a sigmoid give that stride's map. Coarser maps see a larger context (the
    trunk is shared), finer ones keep the prior's detail.

    Args:
        in_channels: Prior channels.
        channels: Width of every layer.
        scales: Strides of the maps (powers of two), e.g. (4, 8, 16).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        scales: Sequence[int] = DEFAULT_ATTENTION_AT,
    ) -> None:
        super().__init__()
        if in_channels < 1 or channels < 1:
            raise CxrsslError(
                f"prior attention needs positive channels, got {in_channels} and {channels}"
            )
        self.scales = _check_scales(scales)
        strides, self._taps = _layer_plan(self.scales)
        chans = [in_channels] + [channels] * len(strides)
        self.layers = nn.ModuleList(
            _ResidualConv(chans[i], chans[i + 1], s) for i, s in enumerate(strides)
        )
        self.heads = nn.ModuleDict({str(s): nn.Conv2d(channels, 1, 1) for s in self.scales})

    @property
    def reduction(self) -> int:
        """The coarsest stride (input sides should be multiples of it)."""
        return max(self.scales)

    def forward(self, prior: torch.Tensor) -> dict[int, torch.Tensor]:
        """(B, C, H, W) prior in [0, 1] -> {stride: (B, 1, H / stride, W / stride) in (0, 1)}."""
        maps: dict[int, torch.Tensor] = {}
        x = prior
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self._taps:
                scale = self._taps[i]
                maps[scale] = torch.sigmoid(self.heads[str(scale)](x))
        return maps


class _UpStage(nn.Module):
    """ConvTranspose2d(2, stride 2), concatenation with a skip (if any), two conv blocks."""

    def __init__(self, in_ch: int, out_ch: int, skip_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        self.conv = UnetBasicBlock(2, out_ch + skip_ch, out_ch, 3, 1, "batch")

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """x (B, in_ch, h, w), skip (B, skip_ch, 2h, 2w) or None -> (B, out_ch, 2h, 2w)."""
        y = self.up(x)
        if skip is not None:
            y = torch.cat([y, skip], 1)
        out: torch.Tensor = self.conv(y)
        return out


def _last_stage_at(reductions: Sequence[int], reduction: int) -> int | None:
    idx = [i for i, r in enumerate(reductions) if r == reduction]
    return idx[-1] if idx else None


class PriorGuidedNet(nn.Module):
    """Lesion segmentation guided by a prior map (see the module doc).

    Args:
        in_channels: Input channels in all, the prior included (the last one) when ``prior``.
        out_channels: Output channels (1 for a lesion mask).
        encoder: :data:`~cxrssl.nets.encoders.ENCODERS` name.
        encoder_kwargs: Keywords of the encoder (see :func:`create_encoder`).
        features: Channels per level of the ``"unet"`` encoder (a shortcut for
            ``encoder_kwargs={"features": ...}``).
        prior: Whether the last input channel is a prior for the attention branch; None
            (default): when ``in_channels`` >= 2.
        attention_channels: Width of the attention branch.
        attention_at: Strides at which the prior gates the encoder; None: those of (4, 8, 16)
            at which the encoder has a stage.
        decoder_channels: Channels of each decoder stage, coarsest first, one per factor 2 of
            the deepest stride; None: 16 * 2**k down to 16 (256 ... 16 for five stages).

    Raises:
        CxrsslError: Bad channels, an encoder without a stage at a requested attention
            stride, a deepest stride that is not a power of two, or the wrong number of
            decoder channels.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        encoder: str = "unet",
        encoder_kwargs: Mapping[str, Any] | None = None,
        features: Sequence[int] | None = None,
        prior: bool | None = None,
        attention_channels: int = 64,
        attention_at: Sequence[int] | None = None,
        decoder_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.prior = in_channels >= 2 if prior is None else bool(prior)
        self.in_channels = int(in_channels)
        image_channels = self.in_channels - int(self.prior)
        if image_channels < 1 or out_channels < 1:
            raise CxrsslError(
                f"prior_guided needs at least one image channel besides the prior and one "
                f"output, got in_channels={in_channels} (prior={self.prior}) and "
                f"out_channels={out_channels}"
            )
        kw = dict(encoder_kwargs or {})
        if features is not None:
            if encoder != "unet":
                raise CxrsslError(
                    f"prior_guided: features sets the unet encoder's channels; encoder "
                    f"{encoder!r} takes its own keywords (encoder_kwargs)"
                )
            kw["features"] = tuple(features)
        self.encoder = create_encoder(encoder, image_channels, **kw)
        enc = cast(Encoder, self.encoder)
        reductions = tuple(int(r) for r in enc.reductions)
        chans = tuple(int(c) for c in enc.out_channels)
        self.reduction = max(reductions)
        n_up = round(math.log2(self.reduction))
        if 2**n_up != self.reduction:
            raise CxrsslError(
                f"prior_guided needs an encoder whose deepest stride is a power of two, got "
                f"{self.reduction}"
            )
        if attention_at is None:
            scales = tuple(r for r in DEFAULT_ATTENTION_AT if r in reductions)
        else:
            scales = _check_scales(attention_at)
        self.attention_at = scales if self.prior else ()
        if self.prior:
            if not scales:
                raise CxrsslError(
                    f"prior_guided: the encoder has no stage at strides {DEFAULT_ATTENTION_AT}; "
                    f"its strides are {reductions} (set attention_at)"
                )
            missing = [r for r in scales if _last_stage_at(reductions, r) is None]
            if missing:
                raise CxrsslError(
                    f"prior_guided: the encoder has no stage at stride(s) {missing}; its "
                    f"strides are {reductions}"
                )
        self._gate_stage = {cast(int, _last_stage_at(reductions, r)): r for r in self.attention_at}
        self.attention = PriorAttention(1, attention_channels, scales) if self.prior else None
        if decoder_channels is None:
            decoder_channels = [16 * 2 ** (n_up - 1 - i) for i in range(n_up)]
        dec = tuple(int(c) for c in decoder_channels)
        if n_up < 1 or len(dec) != n_up or any(c < 1 for c in dec):
            raise CxrsslError(
                f"prior_guided: {n_up} decoder stages for an encoder of deepest stride "
                f"{self.reduction}, got decoder_channels {dec}"
            )
        self._skips: list[int | None] = []
        stages = []
        prev = chans[-1]
        for i, out_ch in enumerate(dec):
            stride = self.reduction // 2 ** (i + 1)
            skip = _last_stage_at(reductions[:-1], stride)
            self._skips.append(skip)
            stages.append(_UpStage(prev, out_ch, chans[skip] if skip is not None else 0))
            prev = out_ch
        self.decoder = nn.ModuleList(stages)
        self.head = nn.Conv2d(dec[-1], out_channels, 1)

    def forward_with_attention(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the attention maps, for pictures.

        Args:
            x: (B, in_channels, H, W): the image channel(s), then the prior when the network
                has one.

        Returns:
            Logits (B, out_channels, H, W) and ``{"attention_<stride>": (B, 1, h, w)}``, each
            map at its stride of the padded input (empty without a prior).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            what = "(image, prior)" if self.prior else "the image"
            raise CxrsslError(
                f"prior_guided expects (B, {self.in_channels}, H, W) input ({what}), got "
                f"{tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.reduction, (-width) % self.reduction
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        image = x[:, : self.in_channels - int(self.prior)]
        maps: dict[int, torch.Tensor] = {}
        if self.attention is not None:
            maps = self.attention(x[:, -1:])
        enc = cast(Encoder, self.encoder)
        h = enc.stem(image)
        feats = []
        for i, stage in enumerate(enc.stages):
            h = stage(h)
            if i in self._gate_stage:
                h = h * (1 + maps[self._gate_stage[i]].to(h.dtype))
            feats.append(h)
        y = feats[-1]
        for stage, skip in zip(self.decoder, self._skips, strict=True):
            y = stage(y, feats[skip] if skip is not None else None)
        logits: torch.Tensor = self.head(y)[..., :height, :width]
        return logits, {f"attention_{s}": m for s, m in maps.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> logits (B, out_channels, H, W)."""
        return self.forward_with_attention(x)[0]


def encoder_stage_prefixes(net: nn.Module) -> list[str]:
    """Parameter-name prefixes of ``net.encoder``'s stages, finest first (for freezing the
    first stages through the engine's ``freeze``): ``encoder.stages.<i>.`` for the ResNets,
    ``encoder.blocks.<i>.`` for the U-Net encoder.

    Raises:
        CxrsslError: ``net`` has no ``encoder`` with ``stages``.
    """
    encoder = getattr(net, "encoder", None)
    if not isinstance(encoder, Encoder):
        raise CxrsslError(f"{type(net).__name__} has no staged encoder to freeze stages of")
    names = {id(m): n for n, m in net.named_modules()}
    return [f"{names[id(stage)]}." for stage in encoder.stages]
