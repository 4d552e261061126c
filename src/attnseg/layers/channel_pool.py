"""Per-pixel pooling over channels, the input of CBAM-style spatial gates.

CBAM (Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018) feeds a spatial gate with the channel
mean and max of a feature map. Three models here do the same, in two orders (the order fixes which input channel
of the following conv sees which statistic, so it is part of the weights' meaning):

- MALUNet's SAB (Ruan et al., BIBM 2022): ``[mean, max]``;
- MSA²Net's MASAG global context (Kolahi et al., BMVC 2024): ``[mean, max]``;
- the CBAM gate of the Joint Attention reconstruction (Zhang, Dong, Li, ISBI 2022): ``[max, mean]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["CHANNEL_STATISTICS", "channel_pool"]

CHANNEL_STATISTICS = ("mean", "max")


def channel_pool(x: torch.Tensor, order: Sequence[str] = ("mean", "max")) -> torch.Tensor:
    """Stack per-pixel channel statistics: ``[B, C, H, W] -> [B, len(order), H, W]``.

    Args:
        x: feature map ``[B, C, *spatial]``.
        order: the statistics, in output-channel order, each ``"mean"`` or ``"max"``. Defaults to
            ``("mean", "max")`` (MALUNet, MSA²Net); the joint attention's CBAM gate uses ``("max", "mean")``.

    Returns:
        ``[B, len(order), *spatial]``.
    """
    if not order or any(s not in CHANNEL_STATISTICS for s in order):
        raise ValueError(f"order must be a non-empty sequence of {CHANNEL_STATISTICS}, got {order!r}")
    pooled = [x.mean(dim=1, keepdim=True) if s == "mean" else x.amax(dim=1, keepdim=True) for s in order]
    return torch.cat(pooled, dim=1)
