"""Networks: a registry by name (:func:`create_net`) and the U-Net family."""

from cxrssl.nets.registry import NETS, create_net
from cxrssl.nets.unet import InputNorm, UNet, UNetEncoder

__all__ = ["NETS", "InputNorm", "UNet", "UNetEncoder", "create_net"]
