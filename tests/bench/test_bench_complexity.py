"""Complexity counters against hand-computed parameter counts, MACs and FLOPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from attnseg.bench.complexity import (
    count_flops,
    count_parameters,
    fvcore_macs,
    mac_bearing,
    measure_complexity,
    thop_macs,
    thop_profile,
)


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)  # 8*3*3*3 + 8 = 224
        self.bn = nn.BatchNorm2d(8)  # 16 (running stats are buffers, not parameters)
        self.conv2 = nn.Conv2d(8, 2, 1, bias=False)  # 16
        self.shared = nn.Conv2d(2, 2, 1, bias=False)  # 4, applied twice, counted once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.shared(self.shared(x))


class ConvLinearNet(nn.Module):
    """Only conv, linear and ReLU: fvcore MACs must be exactly FLOPs / 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))  # [B, 4, H/2, W/2]
        return self.fc(y.flatten(2).transpose(1, 2))  # [B, HW/4, 5]


class LinearThenMatmul(nn.Module):
    """A Linear (thop sees it) followed by a functional token-mixing matmul (thop cannot see it)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, N, D]
        q = self.proj(x)
        return torch.matmul(q, q.transpose(1, 2))  # [B, N, N]


class SDPANet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, H, L, E]
        return F.scaled_dot_product_attention(x * self.scale, x, x)


class _OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_parameter_counts_match_hand_count() -> None:
    net = TinyConvNet()
    assert count_parameters(net).total == 224 + 16 + 16 + 4
    net.conv1.requires_grad_(False)
    counts = count_parameters(net)
    assert (counts.total, counts.trainable) == (260, 260 - 224)


def test_matmul_flops_are_2mnk() -> None:
    class MatMul(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a @ b

    m, k, n = 7, 5, 3
    total, by_op = count_flops(MatMul(), (torch.randn(m, k), torch.randn(k, n)))
    assert total == 2 * m * n * k
    assert by_op == {"aten.mm": 2 * m * n * k}
    b = 4
    total, _ = count_flops(MatMul(), (torch.randn(b, m, k), torch.randn(b, k, n)))
    assert total == 2 * b * m * n * k


@pytest.mark.parametrize("groups,stride", [(1, 1), (2, 2)])
def test_conv_flops_match_hand_formula(groups: int, stride: int) -> None:
    cin, cout, k, h, w, batch = 4, 6, 3, 10, 12, 2
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=1, groups=groups, bias=False)
    ho, wo = (h + 2 - k) // stride + 1, (w + 2 - k) // stride + 1
    macs = batch * cout * ho * wo * (cin // groups) * k * k
    total, _ = count_flops(conv, (torch.randn(batch, cin, h, w),))
    assert total == 2 * macs
    fv, unsupported = fvcore_macs(conv, (torch.randn(batch, cin, h, w),))
    assert fv == macs and unsupported == {}


def test_sdpa_flops_on_the_cpu_flash_kernel() -> None:
    b, heads, length, e = 2, 3, 16, 8
    x = torch.randn(b, heads, length, e)
    log = _OpLog()
    with log, torch.no_grad():
        SDPANet()(x)
    # The case must exercise the CPU flash kernel, the one FlopCounterMode has no formula for in torch 2.14.
    assert any("_scaled_dot_product_flash_attention_for_cpu" in op for op in log.ops), log.ops

    forward = 2 * b * heads * length * length * e * 2  # q @ k^T and attn @ v
    total, by_op = count_flops(SDPANet(), (x,))
    assert total == forward
    assert by_op == {"aten._scaled_dot_product_flash_attention_for_cpu": forward}

    # Backward recomputes q @ k^T and does 4 more matmuls of the same size: 2*B*H*L*S*(3E + 2Ev).
    total, by_op = count_flops(SDPANet(), (x,), backward=True)
    backward = 2 * b * heads * length * length * (3 * e + 2 * e)
    assert by_op["aten._scaled_dot_product_flash_attention_for_cpu_backward"] == backward
    assert total == forward + backward


def test_sdpa_math_fallback_gives_the_same_count() -> None:
    # Different q/v head dims force the math path (explicit bmm): the count must agree with the kernel formula.
    b, heads, lq, lk, e, ev = 1, 2, 5, 7, 8, 4
    q, k, v = torch.randn(b, heads, lq, e), torch.randn(b, heads, lk, e), torch.randn(b, heads, lk, ev)

    class Attn(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    total, _ = count_flops(Attn(), (q, k, v))
    assert total == 2 * b * heads * lq * lk * e + 2 * b * heads * lq * lk * ev


def test_fvcore_macs_are_half_the_flops_on_conv_linear_net() -> None:
    net = ConvLinearNet().eval()
    x = torch.randn(1, 3, 8, 8)
    flops, _ = count_flops(net, (x,))
    macs, unsupported = fvcore_macs(net, (x,))
    conv_macs = 4 * 4 * 4 * 3 * 3 * 3  # out 4x4x4, each 3*3*3 MACs
    fc_macs = 16 * 4 * 5
    assert macs == conv_macs + fc_macs
    assert flops == 2 * macs
    assert not mac_bearing(unsupported)


def test_fvcore_records_skipped_sdpa() -> None:
    macs, unsupported = fvcore_macs(SDPANet().eval(), (torch.randn(1, 2, 16, 8),))
    assert macs == 0
    assert unsupported.get("aten::scaled_dot_product_attention") == 1
    assert mac_bearing(unsupported) == ["aten::scaled_dot_product_attention"]


def test_thop_misses_the_functional_matmul() -> None:
    pytest.importorskip("thop")
    b, n, d = 1, 6, 4
    net = LinearThenMatmul(d)
    x = torch.randn(b, n, d)
    linear_macs = b * n * d * d
    matmul_macs = b * n * n * d
    assert thop_macs(net, (x,)) == linear_macs  # the matmul counts as zero
    flops, _ = count_flops(net, (x,))
    assert flops == 2 * (linear_macs + matmul_macs)
    assert thop_macs(net, (x,)) < flops / 2
    # thop ran on a copy: the model keeps no thop buffers.
    assert not any("total_ops" in name for name, _ in net.named_buffers())


def test_measure_complexity_collects_every_figure_and_restores_mode() -> None:
    net = ConvLinearNet().train()
    result = measure_complexity(net, (1, 3, 8, 8))
    assert net.training
    conv_and_fc_macs = 4 * 4 * 4 * 3 * 3 * 3 + 16 * 4 * 5
    assert result.flops == 2 * conv_and_fc_macs
    assert result.macs_fvcore == conv_and_fc_macs
    assert result.params.total == (4 * 27 + 4) + (4 * 5 + 5)
    d = result.to_dict()
    assert d["input_shape"] == [1, 3, 8, 8]
    assert d["flops_error"] is None and d["fvcore_error"] is None


def test_measure_complexity_records_a_failing_counter() -> None:
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> dict[str, object]:
            return {"out": self.fc(x), "note": object()}  # jit.trace cannot return arbitrary objects

    result = measure_complexity(Untraceable(), (2, 3))
    assert result.flops == 2 * 2 * 3 * 3
    assert result.macs_fvcore is None and result.fvcore_error


def test_thop_is_not_reported_for_a_module_reachable_by_two_paths() -> None:
    """nnU-Net's decoder holds its encoder (and a flat list of every module): thop counted them twice (QA found a
    thop parameter count 3x the real one)."""
    pytest.importorskip("thop")

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.all_modules = nn.Sequential(self.conv)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    net = Shared()
    assert thop_profile(net, (torch.randn(1, 3, 8, 8),))[1] == 2 * sum(p.numel() for p in net.parameters())
    result = measure_complexity(net, (1, 3, 8, 8))
    assert result.macs_thop is None and result.params_thop is None
    assert "module(s) reachable by two paths" in result.thop_error
    assert result.params.total == sum(p.numel() for p in net.parameters())
