"""Segmentation losses by name (MONAI underneath). All take logits ``[B, C, *spatial]`` and integer targets
``[B, *spatial]``.

- ``dice_ce``: soft Dice (foreground classes, batch Dice) + cross-entropy, 1:1 (nnU-Net's DC+CE).
- ``bce_dice``: binary cross-entropy + soft Dice on one sigmoid logit, 1:1 (MALUNet's BceDiceLoss, on logits so it
  is numerically stable).
- ``ce_dice_0.4_0.6``: 0.4 CE + 0.6 TransUNet Dice, background included (MSA2Net's commented-out alternative).
- ``boundary_dou``: Boundary DoU loss (MSA2Net's released training loss).
- ``ce`` / ``bce``: plain cross-entropy (softmax models) / binary cross-entropy on one logit.
"""

from __future__ import annotations

import torch
from torch import nn

from attnseg.config import LOSSES

__all__ = ["build_loss", "LOSSES"]


class _OneHotTarget(nn.Module):
    """Adapts MONAI losses (which want ``[B, 1, *spatial]`` targets) to ``[B, *spatial]`` integer targets."""

    def __init__(self, loss: nn.Module, binary: bool = False) -> None:
        super().__init__()
        self.loss = loss
        self.binary = binary

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target.unsqueeze(1)
        return self.loss(logits, (t > 0).to(logits.dtype) if self.binary else t)


class _CrossEntropy(nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target.long())


class _BinaryCrossEntropy(nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], (target > 0).to(logits.dtype))


def build_loss(name: str, num_classes: int) -> nn.Module:
    """The loss called ``name`` for a model with ``num_classes`` output channels."""
    from monai.losses import DiceCELoss

    if name == "dice_ce":
        if num_classes == 1:
            return build_loss("bce_dice", 1)
        return _OneHotTarget(
            DiceCELoss(
                to_onehot_y=True, softmax=True, include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5
            )
        )
    if name == "bce_dice":
        if num_classes != 1:
            raise ValueError(f"--loss bce_dice needs a single-logit binary model (num_classes=1), got {num_classes}")
        return _OneHotTarget(DiceCELoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0), binary=True)
    if name == "ce_dice_0.4_0.6":  # TransUNet's Dice (squared denominators, batch-pooled), not MONAI's
        from attnseg.training.boundary_dou import CEDiceLoss

        return CEDiceLoss(num_classes)
    if name == "ce":
        if num_classes == 1:
            return build_loss("bce", 1)
        return _CrossEntropy()
    if name == "bce":
        if num_classes != 1:
            raise ValueError(f"--loss bce needs a single-logit binary model (num_classes=1), got {num_classes}")
        return _BinaryCrossEntropy()
    if name == "boundary_dou":
        from attnseg.training.boundary_dou import BoundaryDoULoss

        return BoundaryDoULoss(num_classes)
    raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
