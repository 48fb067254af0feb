"""Backbones with one staged interface, a registry by name, and masked average pooling.

Every encoder built by :func:`create_encoder` follows :class:`Encoder`:

- ``stem(x)``: the parameter-free input normalisation (:class:`~cxrssl.nets.unet.InputNorm`);
- ``stages``: an ``nn.ModuleList``; ``forward(x)`` is the list of the outputs of running the
  stages one after another on ``stem(x)``, so a caller may step through them itself (as
  :class:`~cxrssl.nets.attention.GuidedAttention` does) and get the same features;
- ``out_channels`` and ``reductions``: per stage, finest first, the channels and the ratio
  input side / output side (for an input whose sides are multiples of the largest one).

Entries of :data:`ENCODERS`:

===============  ==========================================  =========================
name             out_channels                                reductions
===============  ==========================================  =========================
``unet``         (16, 32, 64, 128, 256) (``features``)       (1, 2, 4, 8, 16)
``resnet18``     (64, 64, 128, 256, 512)                     (4, 4, 8, 16, 32)
``resnet50``     (64, 256, 512, 1024, 2048)                  (4, 4, 8, 16, 32)
``densenet121``  (64, 256, 512, 1024, 1024)                  (4, 4, 8, 16, 32)
===============  ==========================================  =========================

``unet`` is :class:`~cxrssl.nets.unet.UNetEncoder` itself, the encoder of the segmentation
U-Net: its state-dict keys are those of ``UNet(...).encoder``. The ResNets are MONAI's
:class:`monai.networks.nets.ResNet` regrouped into the stages [conv1 + norm + act + maxpool,
layer1, layer2, layer3, layer4] (keys ``stages.0.conv1.weight``, ``stages.1.0.conv1.weight``,
...). MONAI's default first-conv stride is 1 (made for 3D volumes); here it is 2, the 2D
ImageNet layout (pass ``conv1_t_stride=1`` for MONAI's). DenseNet-121 is MONAI's
:class:`~monai.networks.nets.DenseNet` ``features`` split before each transition: [conv0 +
norm0 + relu0 + pool0, denseblock1, transition1 + denseblock2, transition2 + denseblock3,
transition3 + denseblock4 + norm5 + relu] (so each stage ends at its block's full width,
before the transition compresses it). Classification heads are not built into the encoders.
No pretrained weights: ``pretrained=True`` is refused (nothing is downloaded).
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import torch
import torch.nn.functional as F
from monai.networks.nets import resnet as monai_resnet
from monai.networks.nets.densenet import DenseNet
from monai.utils import ensure_tuple_rep
from torch import nn

from cxrssl.errors import CxrsslError
from cxrssl.nets.unet import InputNorm, UNetEncoder


@runtime_checkable
class Encoder(Protocol):
    """The interface of every backbone (a structural type: any ``nn.Module`` with these
    members conforms, :class:`~cxrssl.nets.unet.UNetEncoder` and :class:`StagedEncoder`
    included; ``isinstance(m, Encoder)`` checks that the members exist).

    ``forward(x)`` (B, C, H, W) -> ``[stages[0](stem(x)), stages[1](...), ...]``.
    """

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each stage's output, finest first."""
        ...

    @property
    def reductions(self) -> tuple[int, ...]:
        """Input side / stage output side, per stage, finest first."""
        ...

    @property
    def stages(self) -> nn.ModuleList:
        """The stages, run one after another on ``stem(x)``."""
        ...

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input normalisation and anything before stage 0."""
        ...

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stage outputs, finest first."""
        ...


class StagedEncoder(nn.Module):
    """An :class:`Encoder` from a list of stages, after an :class:`InputNorm` stem.

    Only ``stages`` holds parameters (state-dict keys ``stages.<i>.…``).

    Args:
        stages: The stages, finest first.
        out_channels: Output channels of each stage.
        reductions: Input side / output side of each stage.
        input_norm: See :class:`~cxrssl.nets.unet.InputNorm`.
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        out_channels: Sequence[int],
        reductions: Sequence[int],
        input_norm: str = "image",
    ) -> None:
        super().__init__()
        if not len(stages) == len(out_channels) == len(reductions) or not stages:
            raise CxrsslError(
                f"an encoder needs one out_channels and one reduction per stage, got "
                f"{len(stages)} stages, {tuple(out_channels)} and {tuple(reductions)}"
            )
        self.input_norm = InputNorm(input_norm)
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(int(c) for c in out_channels)
        self.reductions = tuple(int(r) for r in reductions)

    @property
    def reduction(self) -> int:
        """The largest reduction (input sides should be multiples of it)."""
        return max(self.reductions)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The input normalisation (parameter-free)."""
        out: torch.Tensor = self.input_norm(x)
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> the stage outputs [(B, out_channels[i], H / reductions[i], ...)]."""
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def _check_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise CxrsslError(
            f"encoder {name!r}: pretrained weights are not available (nothing is downloaded); "
            "use pretrained=False and load a checkpoint instead"
        )


# MONAI ResNet arguments fixed by the encoder (2D, no classification head).
_RESNET_FIXED = (
    "self",
    "block",
    "layers",
    "block_inplanes",
    "spatial_dims",
    "n_input_channels",
    "num_classes",
    "feed_forward",
)
_RESNET_KWARGS = tuple(
    p for p in inspect.signature(monai_resnet.ResNet.__init__).parameters if p not in _RESNET_FIXED
)
_DENSENET_KWARGS = ("bn_size", "act", "norm", "dropout_prob")


def _resnet(
    arch: str,
    in_channels: int = 1,
    input_norm: str = "image",
    pretrained: bool = False,
    conv1_t_stride: int = 2,
    **kw: Any,
) -> StagedEncoder:
    _check_pretrained(arch, pretrained)
    build = {"resnet18": monai_resnet.resnet18, "resnet50": monai_resnet.resnet50}[arch]
    expansion: int = {
        "resnet18": monai_resnet.ResNetBlock.expansion,
        "resnet50": monai_resnet.ResNetBottleneck.expansion,
    }[arch]
    strides = set(ensure_tuple_rep(conv1_t_stride, 2))
    if len(strides) != 1:
        raise CxrsslError(f"encoder {arch!r}: conv1_t_stride must be isotropic, got {strides}")
    stride = int(strides.pop())
    net = build(
        pretrained=False,
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_stride=stride,
        feed_forward=False,
        **kw,
    )
    stem: OrderedDict[str, nn.Module] = OrderedDict(conv1=net.conv1, bn1=net.bn1, act=net.act)
    if not net.no_max_pool:
        stem["maxpool"] = net.maxpool
        stride *= 2
    planes = [int(p * kw.get("widen_factor", 1.0)) for p in monai_resnet.get_inplanes()]
    return StagedEncoder(
        [nn.Sequential(stem), net.layer1, net.layer2, net.layer3, net.layer4],
        [planes[0], *(p * expansion for p in planes)],
        [stride, stride, 2 * stride, 4 * stride, 8 * stride],
        input_norm,
    )


def _resnet18(**kw: Any) -> nn.Module:
    return _resnet("resnet18", **kw)


def _resnet50(**kw: Any) -> nn.Module:
    return _resnet("resnet50", **kw)


def _densenet121(
    in_channels: int = 1, input_norm: str = "image", pretrained: bool = False, **kw: Any
) -> nn.Module:
    _check_pretrained("densenet121", pretrained)
    init_features, growth_rate, block_config = 64, 32, (6, 12, 24, 16)
    net = DenseNet(
        2, in_channels, 1, init_features, growth_rate, block_config, **kw
    )  # out_channels=1: the classifier is dropped
    parts = dict(net.features.named_children())
    stages: list[nn.Module] = [
        nn.Sequential(OrderedDict((k, parts[k]) for k in ("conv0", "norm0", "relu0", "pool0")))
    ]
    chans, out_channels = init_features, [init_features]
    for i, layers in enumerate(block_config, start=1):
        stage: OrderedDict[str, nn.Module] = OrderedDict()
        if i > 1:
            stage[f"transition{i - 1}"] = parts[f"transition{i - 1}"]
            chans //= 2
        stage[f"denseblock{i}"] = parts[f"denseblock{i}"]
        chans += layers * growth_rate
        if i == len(block_config):
            stage["norm5"] = parts["norm5"]
            stage["relu5"] = cast(nn.Module, net.class_layers.relu)
        stages.append(nn.Sequential(stage))
        out_channels.append(chans)
    return StagedEncoder(stages, out_channels, [4, 4, 8, 16, 32], input_norm)


def _unet(in_channels: int = 1, **kw: Any) -> nn.Module:
    return UNetEncoder(in_channels, **kw)


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,  # UNetEncoder(features, norm, input_norm)
    "resnet18": _resnet18,
    "resnet50": _resnet50,
    "densenet121": _densenet121,
}
"""Name -> builder taking ``in_channels`` and the encoder's keywords (see
:func:`create_encoder`)."""

_KWARGS: dict[str, tuple[str, ...]] = {
    "unet": ("features", "norm", "input_norm"),
    "resnet18": ("input_norm", "pretrained", *_RESNET_KWARGS),
    "resnet50": ("input_norm", "pretrained", *_RESNET_KWARGS),
    "densenet121": ("input_norm", "pretrained", *_DENSENET_KWARGS),
}


def create_encoder(name: str, in_channels: int = 1, **kw: Any) -> nn.Module:
    """Build an :class:`Encoder` by name.

    Args:
        name: One of :data:`ENCODERS`.
        in_channels: Input channels.
        **kw: ``unet``: ``features``, ``norm``, ``input_norm`` (as
            :class:`~cxrssl.nets.unet.UNetEncoder`). ResNets: ``input_norm``,
            ``pretrained=False`` and MONAI ``ResNet`` keywords (``conv1_t_stride`` (default 2
            here), ``no_max_pool``, ``widen_factor``, ``norm``, ``act``, ...). ``densenet121``:
            ``input_norm``, ``pretrained=False``, ``bn_size``, ``act``, ``norm``,
            ``dropout_prob``.

    Raises:
        CxrsslError: For an unknown name or keyword (listing the valid ones), a bad value, or
            ``pretrained=True``.
    """
    if name not in ENCODERS:
        raise CxrsslError(f"unknown encoder {name!r}; choose one of {', '.join(sorted(ENCODERS))}")
    unknown = sorted(set(kw) - set(_KWARGS[name]))
    if unknown:
        raise CxrsslError(
            f"encoder {name!r}: unknown keyword(s) {', '.join(unknown)}; "
            f"valid: {', '.join(_KWARGS[name])}"
        )
    try:
        return ENCODERS[name](in_channels=in_channels, **kw)
    except (TypeError, ValueError) as err:
        raise CxrsslError(f"encoder {name!r}: {err}") from err


def masked_avg_pool(
    features: torch.Tensor, weights: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average ``features`` over each of K soft masks.

    The weights are area-downsampled to the feature grid (``F.adaptive_avg_pool2d``, so a
    feature cell's weight is the mean weight over the input pixels it covers), then
    ``pooled[b, k] = sum_hw w[b, k] * features[b] / sum_hw w[b, k]``.

    Args:
        features: (B, C, h, w).
        weights: (B, K, H, W) (or (B, 1, H, W)) in [0, 1], at any resolution (normally the
            input's: H, W multiples of h, w).
        eps: A mask whose downsampled weight sum is under ``eps`` is empty: its row is the
            plain global average of the features instead (finite, with gradient).

    Returns:
        ``(pooled, sums)``: pooled (B, K, C) and the downsampled weight sums (B, K), in
        feature cells (``sums < eps`` marks the rows that fell back to the global average;
        ``sums / (h * w)`` is the fraction of the image a mask covers).
    """
    if features.ndim != 4 or weights.ndim != 4 or weights.shape[0] != features.shape[0]:
        raise CxrsslError(
            f"masked_avg_pool needs features (B, C, h, w) and weights (B, K, H, W), got "
            f"{tuple(features.shape)} and {tuple(weights.shape)}"
        )
    w = weights.to(features.dtype)
    if w.shape[-2:] != features.shape[-2:]:
        w = F.adaptive_avg_pool2d(w, (int(features.shape[-2]), int(features.shape[-1])))
    sums = w.sum(dim=(2, 3))  # (B, K)
    pooled = torch.einsum("bkhw,bchw->bkc", w, features) / sums.clamp_min(eps).unsqueeze(-1)
    mean = features.mean(dim=(2, 3)).unsqueeze(1)  # (B, 1, C)
    return torch.where((sums >= eps).unsqueeze(-1), pooled, mean), sums
