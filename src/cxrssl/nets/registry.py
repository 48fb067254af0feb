"""Networks by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from cxrssl.errors import CxrsslError
from cxrssl.nets.prior_guided import PriorGuidedNet
from cxrssl.nets.unet import UNet


def _unet(**kw: Any) -> nn.Module:
    return UNet(**kw)


def _attention_unet(**kw: Any) -> nn.Module:
    return UNet(**{"attention": True, **kw})


def _unet_ds(**kw: Any) -> nn.Module:
    # Two extra heads, or as many as the levels allow.
    levels = len(kw.get("features", UNet.DEFAULT_FEATURES))
    return UNet(**{"deep_supervision": min(2, levels - 2), **kw})


NETS: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
    "attention_unet": _attention_unet,
    "unet_ds": _unet_ds,
    "prior_guided": PriorGuidedNet,  # seed 004: image + prior (last channel), lesion logits
}
"""Name -> builder taking ``in_channels``, ``out_channels`` and the class's keywords."""

ENCODER_PREFIX = "encoder."


def create_net(name: str, in_channels: int = 1, out_channels: int = 1, **kw: Any) -> nn.Module:
    """Build a network from the registry.

    Args:
        name: One of :data:`NETS`.
        in_channels: Input channels.
        out_channels: Output channels.
        **kw: Passed to the network class (e.g. ``features``, ``dropout``, ``norm``).

    Raises:
        CxrsslError: For an unknown name or bad keyword, listing what is valid.
    """
    if name not in NETS:
        raise CxrsslError(f"unknown model {name!r}; choose one of {', '.join(sorted(NETS))}")
    try:
        return NETS[name](in_channels=in_channels, out_channels=out_channels, **kw)
    except TypeError as err:
        raise CxrsslError(f"model {name!r}: {err}") from err
