"""He-normal initialisation in fan-out mode with grouped-conv fan-out, as the official MALUNet and MDSA-UNet code.

He et al., "Delving Deep into Rectifiers", ICCV 2015, Eq. 10 with the fan-out of the backward pass: weights
N(0, 2 / fan_out), ``fan_out = prod(kernel_size) * out_channels / groups``, zero biases. Unlike
``nn.init.kaiming_normal_(mode="fan_out")``, the fan-out is divided by ``groups``, which the official MALUNet
(Ruan et al., BIBM 2022) and MDSA-UNet (Li et al., JBHI 2025) initialisers do for depthwise convs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["init_conv_fan_out_"]


@torch.no_grad()
def init_conv_fan_out_(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> None:
    """Draw ``conv.weight`` from N(0, 2 / fan_out) and zero its bias, in place.

    Args:
        conv: a 1D, 2D or 3D convolution; ``fan_out = prod(kernel_size) * out_channels // groups``.
    """
    fan_out = math.prod(conv.kernel_size) * conv.out_channels // conv.groups
    conv.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
    if conv.bias is not None:
        conv.bias.zero_()
