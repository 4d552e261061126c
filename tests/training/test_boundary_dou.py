"""Boundary DoU and 0.4 CE + 0.6 Dice: hand-computed cases, an independent scipy oracle, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from attnseg.training.boundary_dou import BoundaryDoULoss, CEDiceLoss, boundary_dou_loss

EPS = 1e-5


def _ratio(z: float, y: float, inter: float, alpha: float) -> float:
    return (z + y - 2 * inter + EPS) / (z + y - (1 + alpha) * inter + EPS)


def _alpha(c: float, s: float) -> float:
    return min(2 * (1 - (c + EPS) / (s + EPS)) - 1, 0.8)


def _block_target(n: int = 7) -> torch.Tensor:
    t = torch.zeros(n, n, dtype=torch.long)
    t[1:6, 1:6] = 1  # a 5x5 block: 16 boundary + 9 interior pixels
    return t


def test_uniform_logits_block_by_hand() -> None:
    # 7x7 image, logits 0 -> p = 0.5 everywhere
    target = _block_target()[None]
    logits = torch.zeros(1, 2, 7, 7)
    # class 1: S=25, C=16 -> alpha=-0.28; Σs²=49/4, Σt²=25, Σst=12.5
    # class 0: S=24 pixels, all on the image border (zero padding) -> C=24, alpha=-1; Σst=12
    expected = (_ratio(12.25, 25, 12.5, _alpha(16, 25)) + _ratio(12.25, 24, 12.0, _alpha(24, 24))) / 2
    assert _alpha(16, 25) == pytest.approx(-0.28, abs=1e-6)
    assert expected == pytest.approx((12.25 / 28.25 + 12.25 / 36.25) / 2, abs=1e-6)
    loss = BoundaryDoULoss(2)(logits, target)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_counts_are_pooled_over_the_batch() -> None:
    # sample 2 is all background: 24 border (boundary) + 25 interior pixels
    target = torch.stack([_block_target(), torch.zeros(7, 7, dtype=torch.long)])
    logits = torch.zeros(2, 2, 7, 7)
    cls1 = _ratio(24.5, 25, 12.5, _alpha(16, 25))
    cls0 = _ratio(24.5, 73, 36.5, _alpha(24 + 24, 24 + 49))
    loss = boundary_dou_loss(logits, target)
    assert loss.item() == pytest.approx((cls0 + cls1) / 2, abs=1e-6)
    # not the mean of per-sample losses
    per_sample = (boundary_dou_loss(logits[:1], target[:1]) + boundary_dou_loss(logits[1:], target[1:])) / 2
    assert abs(loss.item() - per_sample.item()) > 1e-2


def test_alpha_is_clipped_at_0_8_and_absent_class_is_one() -> None:
    # 40x40 all class 1: C = 156 border pixels, S = 1600 -> unclipped alpha 0.805, clipped to 0.8
    target = torch.ones(1, 40, 40, dtype=torch.long)
    logits = torch.zeros(1, 2, 40, 40)
    logits[:, 1] = math.log(3.0)  # p1 = 3/4, p0 = 1/4
    assert 2 * (1 - 156 / 1600) - 1 > 0.8
    cls1 = _ratio(1600 * 9 / 16, 1600, 1200, 0.8)
    assert cls1 == pytest.approx(100 / 340, abs=1e-6)
    loss = boundary_dou_loss(logits, target)
    assert loss.item() == pytest.approx((1.0 + cls1) / 2, abs=1e-6)
    unclipped = boundary_dou_loss(logits, target, alpha_max=1.0)
    assert unclipped.item() == pytest.approx((1.0 + _ratio(900, 1600, 1200, 2 * (1 - 156 / 1600) - 1)) / 2, abs=1e-6)


def test_absent_class_has_zero_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 6, 6, requires_grad=True)
    target = torch.randint(0, 2, (1, 6, 6))  # class 2 absent
    probs = logits.softmax(1)
    # the absent class's term alone is exactly 1 regardless of the logits
    onehot = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    z = (probs[:, 2] ** 2).sum()
    term = (z + 0 - 0 + EPS) / (z + 0 - 0 + EPS)
    assert term.item() == 1.0
    assert onehot[:, 2].sum() == 0
    loss = boundary_dou_loss(logits, target)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def _official_style_reference(logits: np.ndarray, target: np.ndarray, k: int) -> float:
    """The official per-class algorithm, re-expressed with numpy/scipy (independent of our convolution)."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.float64)
    total = 0.0
    for c in range(k):
        t = (target == c).astype(np.float64)
        s = probs[:, c]
        y = np.stack([ndimage.convolve(t[i], cross, mode="constant", cval=0.0) for i in range(t.shape[0])]) * t
        y[y == 5] = 0
        cnt, size = np.count_nonzero(y), np.count_nonzero(t)
        alpha = min(2 * (1 - (cnt + EPS) / (size + EPS)) - 1, 0.8)
        inter, ysum, zsum = (s * t).sum(), (t * t).sum(), (s * s).sum()
        total += (zsum + ysum - 2 * inter + EPS) / (zsum + ysum - (1 + alpha) * inter + EPS)
    return total / k


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_official_algorithm_on_random_inputs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 4
    logits = rng.normal(size=(3, k, 12, 10)) * 2
    # blobby labels so that boundary fractions vary
    target = ndimage.zoom(rng.integers(0, k, size=(3, 4, 5)), (1, 3, 2), order=0)
    ref = _official_style_reference(logits, target, k)
    ours = BoundaryDoULoss(k)(torch.from_numpy(logits).float(), torch.from_numpy(target))
    assert ours.item() == pytest.approx(ref, abs=1e-5)


def test_gradcheck_float64() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (1, 4, 4))
    assert torch.autograd.gradcheck(lambda x: boundary_dou_loss(x, target), (logits,))


def test_3d_uses_six_neighbour_cross() -> None:
    # 3x3x3 cube of class 1 inside a 5x5x5 volume: only the centre voxel is interior -> C = 26, S = 27
    target = torch.zeros(1, 5, 5, 5, dtype=torch.long)
    target[0, 1:4, 1:4, 1:4] = 1
    logits = torch.zeros(1, 2, 5, 5, 5)
    cls1 = _ratio(125 / 4, 27, 13.5, _alpha(26, 27))
    cls0 = _ratio(125 / 4, 98, 49, _alpha(98, 98))  # every background voxel touches the cube or the border
    assert boundary_dou_loss(logits, target).item() == pytest.approx((cls0 + cls1) / 2, abs=1e-6)


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        BoundaryDoULoss(1)
    loss = BoundaryDoULoss(3)
    with pytest.raises(ValueError, match="channels"):
        loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4))


def test_ce_dice_by_hand() -> None:
    # logits 0 -> p = 0.5; target [[0, 1], [1, 1]]
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[0, 1], [1, 1]]])
    ce = math.log(2.0)
    # squared Dice, pooled over the batch: class 0 I=0.5, Σs²=1, Σt²=1; class 1 I=1.5, Σs²=1, Σt²=3
    dice0 = 1 - (2 * 0.5 + EPS) / (1 + 1 + EPS)
    dice1 = 1 - (2 * 1.5 + EPS) / (1 + 3 + EPS)
    expected = 0.4 * ce + 0.6 * (dice0 + dice1) / 2
    assert expected == pytest.approx(0.4 * ce + 0.6 * 0.375, abs=1e-6)
    assert CEDiceLoss(2)(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_ce_dice_pools_over_batch_and_squares_denominator() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    p = logits.softmax(1)
    t = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    dice = 1 - (2 * (p * t).sum(dims) + EPS) / ((p * p).sum(dims) + (t * t).sum(dims) + EPS)
    ce = torch.nn.functional.cross_entropy(logits, target)
    expected = 0.4 * ce + 0.6 * dice.mean()
    assert CEDiceLoss(3)(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)
