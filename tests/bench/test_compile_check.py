"""The compiled-vs-eager agreement rule (``attnseg.bench.compile_check``), on hand-computed values."""

from __future__ import annotations

import pytest
import timm.layers
import torch
from torch import nn

from attnseg.bench.compile_check import (
    FLOOR_FACTOR,
    GRAD_RTOL,
    PERTURBATION,
    disable_dropout,
    gradient_difference,
    gradients_agree,
    perturbation_floor,
)


def test_disable_dropout_counts_and_zeroes_dropout_and_drop_path() -> None:
    model = nn.Sequential(nn.Dropout(0.5), nn.Dropout2d(0.0), nn.Dropout3d(0.1), timm.layers.DropPath(0.2), nn.ReLU())
    assert disable_dropout(model) == 3  # the p = 0 layer is not counted
    assert [m.p for m in model if isinstance(m, nn.modules.dropout._DropoutNd)] == [0.0, 0.0, 0.0]
    assert model[3].drop_prob == 0.0
    x = torch.randn(4, 8)
    torch.testing.assert_close(model.train()(x), x.relu(), rtol=0, atol=0)
    assert disable_dropout(model) == 0


def test_gradient_difference_is_relative_to_the_largest_gradient() -> None:
    reference = {"w": torch.tensor([4.0, -2.0]), "b": torch.tensor([0.0])}
    grads = {"w": torch.tensor([4.0, -1.5]), "b": torch.tensor([1.0]), "extra": torch.tensor([100.0])}
    # |1 - 0| = 1 on b beats |-1.5 + 2| = 0.5 on w; both divided by the largest |reference| = 4; extra is ignored
    assert gradient_difference(grads, reference) == (0.25, "b")


@pytest.mark.parametrize(
    ("diff", "floor", "agree"),
    [(GRAD_RTOL, 0.0, True), (2 * GRAD_RTOL, 0.0, False), (2 * GRAD_RTOL, GRAD_RTOL, True), (0.1, 0.04, False)],
)
def test_gradients_agree(diff: float, floor: float, agree: bool) -> None:
    assert FLOOR_FACTOR == 2.0
    assert gradients_agree(diff, floor) is agree


def test_perturbation_floor_of_a_linear_map_is_the_input_noise() -> None:
    """For f(x) = sum(w * x) the gradient w.r.t. w is x itself: the floor is max |x * noise| * PERTURBATION / max |x|,
    computed here with the same seeded draws."""
    x = torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64)
    w = nn.Parameter(torch.ones(3, dtype=torch.float64))

    def gradients_at(inp: torch.Tensor) -> dict[str, torch.Tensor]:
        w.grad = None
        (w * inp).sum().backward()
        return {"w": w.grad.clone()}

    expected = max(
        float((x * torch.randn(3, generator=torch.Generator().manual_seed(d), dtype=x.dtype)).abs().max())
        for d in range(3)
    )
    got = perturbation_floor(gradients_at, x, gradients_at(x))
    assert got == pytest.approx(expected * PERTURBATION / 3.0, rel=1e-6)
