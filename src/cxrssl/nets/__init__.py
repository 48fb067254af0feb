"""Networks: a registry by name (:func:`create_net`), the U-Net family, encoders by name
(:func:`create_encoder`) and segmentation-guided attention."""

from cxrssl.nets.attention import GuidedAttention, SegmentationBranch, SpatialAttention
from cxrssl.nets.encoders import (
    ENCODERS,
    Encoder,
    StagedEncoder,
    create_encoder,
    masked_avg_pool,
)
from cxrssl.nets.registry import NETS, create_net
from cxrssl.nets.unet import InputNorm, UNet, UNetEncoder

__all__ = [
    "ENCODERS",
    "NETS",
    "Encoder",
    "GuidedAttention",
    "InputNorm",
    "SegmentationBranch",
    "SpatialAttention",
    "StagedEncoder",
    "UNet",
    "UNetEncoder",
    "create_encoder",
    "create_net",
    "masked_avg_pool",
]
