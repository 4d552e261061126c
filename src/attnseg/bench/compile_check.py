"""Does a ``torch.compile``-d training step agree with eager? One rule for the conformance suite and the benchmark.

Compiled code sums in another order than eager, so its float32 gradients differ from eager's by round-off, and how
far round-off carries depends on the model *at that input*: a model whose gradient is smooth moves by ~1e-6 of its
largest gradient, one with ReLU kinks or BatchNorm over a handful of values (the DenseUNet family at 64x64: 2x2
bottleneck maps, BN over 8 values) by ~1e-3. The rule therefore accepts a gradient difference (largest absolute
difference / largest eager gradient) that is either within ``GRAD_RTOL`` or within ``FLOOR_FACTOR`` times the
*conditioning floor*: the largest change of eager's own float32 gradients when the input is perturbed by a relative
``PERTURBATION`` (``PERTURBATION_DRAWS`` draws). Used by ``tests/models/test_conformance.py`` (``--compile`` for
every registered model) and ``benchmarks/compile_speedup.py`` (its results table, README "Benchmarks").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

__all__ = [
    "FLOOR_FACTOR",
    "GRAD_RTOL",
    "PERTURBATION",
    "PERTURBATION_DRAWS",
    "disable_dropout",
    "gradient_difference",
    "gradients_agree",
    "perturbation_floor",
]

GRAD_RTOL = 1e-3
PERTURBATION = 1e-6  # eager and inductor float32 activations differ by ~1e-6 relative (DenseUNet's first dense block)
PERTURBATION_DRAWS = 3
FLOOR_FACTOR = 2.0

Gradients = Mapping[str, torch.Tensor]


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout and drop-path probability to zero (compiled code draws its own random numbers, so masks
    would differ); returns how many layers had a non-zero one."""
    count = 0
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            count += m.p > 0
            m.p = 0.0
        elif isinstance(getattr(m, "drop_prob", None), float):  # timm DropPath
            count += m.drop_prob > 0
            m.drop_prob = 0.0
    return int(count)


def gradient_difference(grads: Gradients, reference: Gradients) -> tuple[float, str]:
    """``(largest |grads - reference| / largest |reference|, name of that parameter)`` over the parameters both
    have. Relative to the largest gradient, not per tensor: biases before batch-statistics BN have a true gradient of
    zero, and a per-tensor ratio would compare round-off with round-off."""
    scale = max(float(g.abs().max()) for g in reference.values())
    diff, name = max((float((grads[n] - g).abs().max()), n) for n, g in reference.items() if n in grads)
    return diff / max(scale, 1e-30), name


def perturbation_floor(
    gradients_at: Callable[[torch.Tensor], Gradients], x: torch.Tensor, reference: Gradients
) -> float:
    """The conditioning floor: the largest :func:`gradient_difference` between ``reference`` (eager gradients at
    ``x``) and ``gradients_at(x * (1 + PERTURBATION * noise))`` over ``PERTURBATION_DRAWS`` seeded draws."""
    worst = 0.0
    for draw in range(PERTURBATION_DRAWS):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(draw), dtype=x.dtype)
        worst = max(worst, gradient_difference(gradients_at(x * (1 + PERTURBATION * noise)), reference)[0])
    return worst


def gradients_agree(diff: float, floor: float) -> bool:
    """True when ``diff`` is within ``GRAD_RTOL`` or within ``FLOOR_FACTOR`` x the conditioning ``floor``."""
    return diff <= GRAD_RTOL or diff <= FLOOR_FACTOR * floor
