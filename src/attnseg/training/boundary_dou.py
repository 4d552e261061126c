"""Losses of the MSA²Net Synapse recipe: Boundary DoU (the released training loss) and 0.4 CE + 0.6 Dice.

Boundary DoU: Sun et al., "Boundary Difference Over Union Loss For Medical Image Segmentation", MICCAI 2023
(arXiv:2308.00220), as used by MSA²Net's ``utils.BoundaryDoULoss`` (xmindflow/MSA-2Net @ 209ca72). For class k, with
softmax probabilities s and one-hot target t summed over the whole batch:

- C = target pixels whose 4-neighbour cross sum (itself included, zero padding outside the image) is below 5, i.e.
  boundary pixels; S = target pixels;
- alpha = min(2 (1 - (C + eps) / (S + eps)) - 1, 0.8);
- loss_k = (Σs² + Σt² - 2Σst + eps) / (Σs² + Σt² - (1 + alpha) Σst + eps), eps = 1e-5;

and the loss is the mean over all classes, background included. A class absent from the batch contributes exactly 1
with zero gradient. Differences from the official code: vectorised (one convolution for all samples and classes
instead of a Python loop), device-agnostic (no ``.cuda()``), and 3D inputs use the 6-neighbour cross (sum below 7).

``CEDiceLoss`` is the TransUNet-family 0.4 CE + 0.6 Dice that MSA²Net's trainer has commented out: cross-entropy on
logits plus a soft Dice with squared denominators, summed over the whole batch per class, background included,
smoothing 1e-5 in numerator and denominator (MONAI ``DiceCELoss`` with those settings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BoundaryDoULoss", "CEDiceLoss", "boundary_dou_loss"]


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> None:
    if logits.ndim not in (4, 5):
        raise ValueError(f"logits must be [B, C, H, W] or [B, C, D, H, W], got shape {tuple(logits.shape)}")
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} channels but the loss was built for {num_classes} classes")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target must be integer labels [B, *spatial] = {tuple(logits.shape[:1] + logits.shape[2:])}, "
            f"got {tuple(target.shape)}"
        )
    if target.is_floating_point():
        raise ValueError("target must hold integer class labels, got a floating-point tensor")


def _boundary_counts(onehot: torch.Tensor) -> torch.Tensor:
    """Per class, the number of target pixels with at least one 4- (6- in 3D) neighbour outside the class."""
    b, k, *spatial = onehot.shape
    nd = len(spatial)
    kernel = torch.zeros((3,) * nd, dtype=onehot.dtype, device=onehot.device)
    centre = (1,) * nd
    kernel[centre] = 1
    for axis in range(nd):
        for offset in (0, 2):
            idx = list(centre)
            idx[axis] = offset
            kernel[tuple(idx)] = 1
    conv = F.conv2d if nd == 2 else F.conv3d
    # (B*K, 1, *spatial): every sample and class convolved at once, zero padding like the official code
    cross = conv(onehot.reshape(b * k, 1, *spatial), kernel[None, None], padding=1).reshape(onehot.shape)
    boundary = (onehot > 0) & (cross < 2 * nd + 1)
    return boundary.sum(dim=[0, *range(2, 2 + nd)]).to(onehot.dtype)


def boundary_dou_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha_max: float = 0.8, smooth: float = 1e-5
) -> torch.Tensor:
    """Boundary DoU loss (mean over classes) of ``logits [B, K, *spatial]`` against integer ``target [B, *spatial]``.

    Args:
        logits: raw network outputs; softmax is applied here.
        target: class indices in ``[0, K)``.
        alpha_max: upper clip of alpha. Defaults to 0.8 (the official value).
        smooth: eps in alpha and in the ratio. Defaults to 1e-5.

    Returns:
        Scalar loss.
    """
    num_classes = logits.shape[1]
    _check_inputs(logits, target, num_classes)
    probs = logits.softmax(dim=1)
    # (B, *spatial) -> (B, K, *spatial) one-hot, in the probabilities' dtype
    onehot = torch.movedim(F.one_hot(target.long(), num_classes), -1, 1).to(probs.dtype)
    dims = [0, *range(2, logits.ndim)]
    with torch.no_grad():
        edge = _boundary_counts(onehot)
        size = onehot.sum(dim=dims)
        alpha = (2 * (1 - (edge + smooth) / (size + smooth)) - 1).clamp(max=alpha_max)
    intersect = (probs * onehot).sum(dim=dims)
    y_sum = onehot.sum(dim=dims)  # t² = t for a one-hot target
    z_sum = (probs * probs).sum(dim=dims)
    per_class = (z_sum + y_sum - 2 * intersect + smooth) / (z_sum + y_sum - (1 + alpha) * intersect + smooth)
    return per_class.mean()


class BoundaryDoULoss(nn.Module):
    """Boundary DoU loss on logits ``[B, K, *spatial]`` and integer targets ``[B, *spatial]`` (see module docstring).

    Args:
        num_classes: K, the number of logit channels (background included).
        alpha_max: upper clip of alpha. Defaults to 0.8.
        smooth: eps. Defaults to 1e-5.
    """

    def __init__(self, num_classes: int, alpha_max: float = 0.8, smooth: float = 1e-5) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (softmax over classes, background included), got {num_classes}")
        self.num_classes = num_classes
        self.alpha_max = alpha_max
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, target, self.num_classes)
        return boundary_dou_loss(logits, target, self.alpha_max, self.smooth)


class CEDiceLoss(nn.Module):
    """``ce_weight · CE + dice_weight · Dice`` as in TransUNet-family trainers (0.4 / 0.6 by default).

    Dice: per class (background included) ``1 - (2Σst + 1e-5) / (Σs² + Σt² + 1e-5)`` over the whole batch, on
    softmax probabilities, averaged over classes; CE: mean cross-entropy on logits.

    Args:
        num_classes: K, the number of logit channels.
        ce_weight: weight of the cross-entropy. Defaults to 0.4.
        dice_weight: weight of the Dice loss. Defaults to 0.6.
    """

    def __init__(self, num_classes: int, ce_weight: float = 0.4, dice_weight: float = 0.6) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (softmax over classes), got {num_classes}")
        self.num_classes = num_classes
        self.loss = DiceCELoss(
            include_background=True,
            to_onehot_y=True,
            softmax=True,
            squared_pred=True,
            batch=True,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
            lambda_ce=ce_weight,
            lambda_dice=dice_weight,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, target, self.num_classes)
        return self.loss(logits, target.long().unsqueeze(1))
