"""U-Net baselines (2D and 3D) built on MONAI's ``BasicUNet``.

Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015 (2D);
Cicek et al., "3D U-Net", MICCAI 2016 (3D). MONAI's implementation: four max-pool downsamplings, instance norm,
LeakyReLU, transposed-conv upsampling. ``width`` sets the first level's channels; deeper levels double up to 8x.
"""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from attnseg.layers import check_divisible
from attnseg.models.registry import register_model

__all__ = ["UNet"]


class UNet(nn.Module):
    """MONAI ``BasicUNet`` with the attnseg feature interface (``forward_features`` / ``forward_head``).

    Args:
        in_channels: input channels.
        num_classes: output logit channels.
        spatial_dims: 2 or 3.
        width: channels of the first level; levels use (w, w, 2w, 4w, 8w) and the last decoder level w.
            Defaults to 32 (MONAI's default).
        dropout: dropout probability inside the conv blocks. Defaults to 0.
    """

    divisor = 16  # four 2x poolings: other sizes are padded unevenly inside MONAI's UpCat

    def __init__(
        self, in_channels: int, num_classes: int, spatial_dims: int = 2, width: int = 32, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        w = int(width)
        self.spatial_dims = spatial_dims
        self.net = BasicUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=num_classes,
            features=(w, w, 2 * w, 4 * w, 8 * w, w),
            dropout=dropout,
        )
        self.feature_channels = w

    def validate_input_size(self, spatial: tuple[int, ...]) -> None:
        check_divisible(spatial, self.divisor, what="U-Net input", why="four 2x poolings", ndim=self.spatial_dims)
        if all(int(s) == self.divisor for s in spatial):  # a 1x1 bottleneck: instance norm needs two values or more
            larger = (2 * self.divisor, *spatial[1:])
            raise ValueError(
                f"U-Net input {tuple(spatial)}: the 1/{self.divisor} bottleneck would be a single voxel; "
                f"use a larger side, e.g. {'x'.join(map(str, larger))}, i.e. {larger}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x0 = n.conv_0(x)
        x1 = n.down_1(x0)
        x2 = n.down_2(x1)
        x3 = n.down_3(x2)
        x4 = n.down_4(x3)
        u = _up(n.upcat_4, x4, x3)
        u = _up(n.upcat_3, u, x2)
        u = _up(n.upcat_2, u, x1)
        return _up(n.upcat_1, u, x0)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.final_conv(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.validate_input_size(tuple(x.shape[2:]))
        return self.forward_head(self.forward_features(x))


def _up(block: nn.Module, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """MONAI ``UpCat`` without its padding branch: upsample, concatenate (skip first), convolve.

    ``validate_input_size`` admits only multiples of 16, so the upsampled map always matches its skip and ``UpCat``'s
    replicate padding would be a zero-width pad. Calling its parts directly keeps ``torch.compile`` to one graph (the
    ``torch.jit.isinstance`` test in ``UpCat.forward`` breaks it) and keeps the no-op pad out of inductor's backward."""
    return block.convs(torch.cat([skip, block.upsample(x)], dim=1))


_UNET_PAPER = "Ronneberger et al., U-Net, MICCAI 2015 (MONAI BasicUNet)"


@register_model(
    "unet",
    paper=_UNET_PAPER,
    input_divisor=16,
    default_input_size=(224, 224),
    test_kwargs={"width": 8},
    test_input_size=(32, 32),
)
def unet(in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.0) -> UNet:
    """2D U-Net baseline."""
    return UNet(in_channels, num_classes, spatial_dims=2, width=width, dropout=dropout)


@register_model(
    "unet3d",
    spatial_dims=3,
    paper="Cicek et al., 3D U-Net, MICCAI 2016 (MONAI BasicUNet)",
    input_divisor=16,
    default_input_size=(96, 96, 96),
    test_kwargs={"width": 4},
    test_input_size=(32, 32, 32),
)
def unet3d(in_channels: int, num_classes: int, width: int = 16, dropout: float = 0.0) -> UNet:
    """3D U-Net baseline."""
    return UNet(in_channels, num_classes, spatial_dims=3, width=width, dropout=dropout)
