"""Named losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from attnseg.training.losses import build_loss


def test_ce_and_bce_match_their_definitions():
    logits = torch.tensor([[[[2.0]], [[0.0]], [[-1.0]]]])  # [1, 3, 1, 1]
    target = torch.tensor([[[1]]])
    expected = -(0.0 - math.log(math.exp(2) + 1 + math.exp(-1)))
    assert build_loss("ce", 3)(logits, target).item() == pytest.approx(expected)
    one = torch.tensor([[[[0.5]]]])
    assert build_loss("bce", 1)(one, torch.tensor([[[1]]])).item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))))


def test_dice_ce_is_ce_plus_foreground_dice():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    p = logits.softmax(1)
    onehot = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    inter = (p * onehot)[:, 1:].sum((0, 2, 3))  # batch Dice over foreground classes
    denom = (p + onehot)[:, 1:].sum((0, 2, 3))
    dice = (1 - (2 * inter + 1e-5) / (denom + 1e-5)).mean()
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert build_loss("dice_ce", 3)(logits, target).item() == pytest.approx((dice + ce).item(), rel=1e-5)


def test_binary_losses_need_one_logit():
    with pytest.raises(ValueError, match="num_classes=1"):
        build_loss("bce_dice", 3)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("focal", 2)


def test_transunet_combination_is_the_official_definition():
    from attnseg.training.boundary_dou import CEDiceLoss

    torch.manual_seed(1)
    logits, target = torch.randn(2, 4, 6, 6), torch.randint(0, 4, (2, 6, 6))
    assert torch.equal(build_loss("ce_dice_0.4_0.6", 4)(logits, target), CEDiceLoss(4)(logits, target))
