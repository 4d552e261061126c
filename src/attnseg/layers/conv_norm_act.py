"""Convolution -> BatchNorm -> ReLU blocks ("CBR"), the block the attnseg models repeat most.

One function, two state-dict layouts, so that every model keeps the key names its weights were saved with:

- :class:`ConvNormAct` is timm's ``timm.layers.ConvNormAct`` (children ``conv`` and ``bn``; the ReLU sits inside
  ``bn``, a ``BatchNormAct2d``). Used by MSA²Net (Kolahi et al., BMVC 2024: MASAG's local and global context) and
  MT-UNet (Wang et al., ICASSP 2022: conv stem, token projection, strided downsampling), whose official modules
  also name their children ``conv`` / ``bn``.
- :class:`ConvBNAct` and :func:`conv_bn_act` keep the ``nn.Sequential`` layout of hand-written blocks (``0`` conv,
  ``1`` BatchNorm, ``2`` ReLU): DenseUNet's CBR layers (Zhang, Dong, Li, "Joint Attention for Medical Image
  Segmentation", ISBI 2022, after the authors' DACN code), PSANet's map head (Zhao et al., ECCV 2018) inside the
  joint attention, and MDSA-UNet's EDM / EUF branches and multi-scale aggregator (Li et al., JBHI 2025).
"""

from __future__ import annotations

from timm.layers import ConvNormAct
from torch import nn

__all__ = ["ConvNormAct", "ConvBNAct", "conv_bn_act"]


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    *,
    stride: int = 1,
    padding: int | None = None,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = False,
    act: bool = True,
) -> list[nn.Module]:
    """The modules of a conv -> BatchNorm2d -> ReLU block, to splice into a longer ``nn.Sequential``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: conv kernel size. Defaults to 1.
        stride: conv stride. Defaults to 1.
        padding: conv padding; ``None`` keeps the size at stride 1 (``dilation * (kernel_size - 1) // 2``).
        dilation: conv dilation. Defaults to 1.
        groups: conv groups. Defaults to 1.
        bias: give the conv a bias. Defaults to False.
        act: append an in-place ReLU. Defaults to True.

    Returns:
        ``[Conv2d, BatchNorm2d]`` plus ``ReLU`` when ``act``; BatchNorm with PyTorch's defaults (eps 1e-5,
        momentum 0.1).
    """
    if padding is None:
        padding = dilation * (kernel_size - 1) // 2
    modules: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias),
        nn.BatchNorm2d(out_channels),
    ]
    if act:
        modules.append(nn.ReLU(inplace=True))
    return modules


class ConvBNAct(nn.Sequential):
    """Conv -> BatchNorm2d -> ReLU as an ``nn.Sequential`` (keys ``0.weight``, ``1.running_mean``, ...).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: conv kernel size. Defaults to 1.
        **kwargs: ``stride``, ``padding``, ``dilation``, ``groups``, ``bias``, ``act`` as in :func:`conv_bn_act`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, **kwargs: int | bool | None) -> None:
        super().__init__(*conv_bn_act(in_channels, out_channels, kernel_size, **kwargs))  # type: ignore[arg-type]
