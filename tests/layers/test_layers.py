"""attnseg.layers: each shared block computes what the hand-written code it replaced computed."""

from __future__ import annotations

import ast
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import attnseg.layers
from attnseg.layers import (
    FAST_BACKWARD_MIN_BATCH,
    ConvBNAct,
    ConvNormAct,
    channel_pool,
    check_divisible,
    conv_bn_act,
    init_conv_fan_out_,
    padded_size,
    polyphase_depthwise_conv2d,
    same_conv2d,
    to_pair,
    uses_fast_backward,
)


def _randomise_bn(bn: nn.BatchNorm2d, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)


def _same_function(old: nn.Module, new: nn.Module, x: torch.Tensor) -> None:
    """Equal outputs in eval and train mode, equal input and weight gradients, equally updated running statistics."""
    for training in (False, True):
        old.train(training)
        new.train(training)
        x_old, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_old, y_new = old(x_old), new(x_new)
        torch.testing.assert_close(y_new, y_old, rtol=1e-6, atol=1e-6)
        y_old.square().sum().backward()
        y_new.square().sum().backward()
        torch.testing.assert_close(x_new.grad, x_old.grad, rtol=1e-5, atol=1e-5)
    grads_old = [p.grad for p in old.parameters()]
    grads_new = [p.grad for p in new.parameters()]
    for g_new, g_old in zip(grads_new, grads_old, strict=True):
        torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-5)
    for v_new, v_old in zip(new.state_dict().values(), old.state_dict().values(), strict=True):
        torch.testing.assert_close(v_new, v_old, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------- conv -> BN -> ReLU
class _HandWrittenConvNormAct(nn.Module):
    """MT-UNet's former block: conv, then BatchNorm, then ReLU or nothing (children conv, norm, act)."""

    def __init__(self, kernel_size: int, stride: int, padding: int, bias: bool, act: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(5, 6, kernel_size, stride, padding, bias=bias)
        self.norm = nn.BatchNorm2d(6)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


@pytest.mark.parametrize(
    ("kernel_size", "stride", "padding", "bias", "act"),
    [
        (3, 1, 1, False, True),  # MT-UNet double conv, first conv
        (3, 1, 1, False, False),  # its second conv (no ReLU)
        (1, 1, 0, True, False),  # its residual 1x1 conv-BN
        (2, 2, 0, False, True),  # its strided downsampling
    ],
)
def test_timm_conv_norm_act_equals_hand_written(
    kernel_size: int, stride: int, padding: int, bias: bool, act: bool
) -> None:
    torch.manual_seed(0)
    old = _HandWrittenConvNormAct(kernel_size, stride, padding, bias, act)
    _randomise_bn(old.norm, 1)
    new = ConvNormAct(5, 6, kernel_size, stride=stride, padding=padding, bias=bias, apply_act=act)
    renamed = {k.replace("norm.", "bn."): v for k, v in old.state_dict().items()}
    new.load_state_dict(renamed, strict=True)
    assert sum(p.numel() for p in new.parameters()) == sum(p.numel() for p in old.parameters())
    _same_function(old, new, torch.randn(3, 5, 8, 8))


@pytest.mark.parametrize(
    ("kernel_size", "kwargs"),
    [
        (3, {}),  # DenseUNet CBR
        (1, {}),  # PSANet map head reduce
        (7, {"stride": 4, "padding": 3, "bias": True}),  # MDSA-UNet EDM main branch
        (3, {"bias": True, "act": False}),  # MDSA-UNet EUF auxiliary conv-BN
    ],
)
def test_conv_bn_act_keeps_the_sequential_layout(kernel_size: int, kwargs: dict) -> None:
    torch.manual_seed(0)
    stride, bias, act = kwargs.get("stride", 1), kwargs.get("bias", False), kwargs.get("act", True)
    padding = kwargs.get("padding", kernel_size // 2)
    old = nn.Sequential(
        nn.Conv2d(4, 6, kernel_size, stride, padding, bias=bias),
        nn.BatchNorm2d(6, eps=1e-5, momentum=0.1),
        *([nn.ReLU(inplace=True)] if act else []),
    )
    _randomise_bn(old[1], 2)
    new = ConvBNAct(4, 6, kernel_size, **kwargs)
    assert list(new.state_dict()) == list(old.state_dict())
    new.load_state_dict(old.state_dict(), strict=True)
    _same_function(old, new, torch.randn(2, 4, 16, 16))


def test_conv_bn_act_splices_into_a_longer_sequential() -> None:
    # MDSA-UNet's EDM auxiliary branch: conv-BN, max-pool, conv-BN-ReLU, with the released indices 0..5
    spliced = nn.Sequential(
        *conv_bn_act(3, 2, 3, bias=True, act=False), nn.MaxPool2d(3, 2, 1), *conv_bn_act(2, 8, 1, bias=True)
    )
    assert [type(m) for m in spliced] == [nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert spliced[0].padding == (1, 1) and spliced[3].padding == (0, 0)
    assert conv_bn_act(4, 4, 3, dilation=2)[0].padding == (2, 2)


# ---------------------------------------------------------------------------------------------- channel pooling
def test_channel_pool_order() -> None:
    x = torch.randn(2, 5, 4, 3)
    mean, amax = x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    torch.testing.assert_close(channel_pool(x), torch.cat([mean, amax], dim=1), rtol=0, atol=0)  # MALUNet, MSA²Net
    flipped = channel_pool(x, order=("max", "mean"))  # the joint attention's CBAM gate
    torch.testing.assert_close(flipped, torch.cat([amax, mean], dim=1), rtol=0, atol=0)
    assert not torch.equal(flipped, channel_pool(x))
    for bad in ((), ("mean", "min"), "mean"):
        with pytest.raises(ValueError, match="order"):
            channel_pool(x, order=bad)


# ---------------------------------------------------------------------------------------------- size rules
def test_check_divisible_names_the_rule_and_the_padded_size() -> None:
    expected = "input (250, 250): sides must be multiples of 32 (five 2x poolings); pad to 256x256, i.e. (256, 256)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        check_divisible((250, 250), 32, why="five 2x poolings")
    with pytest.raises(ValueError, match=re.escape("img_size (16, 64): sides must be multiples of 32; use 32x64")):
        check_divisible((16, 64), 32, what="img_size", fix="use")
    with pytest.raises(ValueError, match=re.escape("img_size 100: sides must be multiples of 32; use 128")):
        check_divisible((100,), 32, what="img_size", fix="use")
    with pytest.raises(ValueError, match=re.escape("MALUNet input must be 2D, got a 3D size (64, 64, 64)")):
        check_divisible((64, 64, 64), 32, what="MALUNet input", ndim=2)
    check_divisible((224, 320), 32, ndim=2)
    check_divisible((96, 96, 96), 16)
    assert padded_size((0, 1, 32, 33), 32) == (32, 32, 32, 64)


def test_to_pair() -> None:
    assert to_pair(5) == (5, 5)
    assert to_pair([64, 96]) == (64, 96)
    assert to_pair((3, 7), odd=True) == (3, 7)
    with pytest.raises(ValueError, match=r"img_size must be an int or \(height, width\)"):
        to_pair((64, 64, 64), name="img_size")
    for bad in (4, (3, 4), (-1, 3)):
        with pytest.raises(ValueError, match="mask_size must be one or two odd ints >= 1"):
            to_pair(bad, name="mask_size", odd=True)


# ---------------------------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(8, 16, 3, padding=1),
        lambda: nn.Conv2d(8, 8, 7, padding=9, dilation=3, groups=8),  # depthwise: fan-out divided by groups
        lambda: nn.Conv1d(1, 1, 3, padding=1, bias=False),
        lambda: nn.Conv1d(24, 96, 1),
    ],
)
def test_fan_out_init_equals_the_official_rule(make) -> None:
    old, new = make(), make()
    torch.manual_seed(3)
    with torch.no_grad():  # the hand-written official rule: N(0, 2 / fan_out), fan_out = prod(k) * C_out / groups
        fan_out = math.prod(old.kernel_size) * old.out_channels // old.groups
        old.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
        if old.bias is not None:
            old.bias.zero_()
    torch.manual_seed(3)
    init_conv_fan_out_(new)
    torch.testing.assert_close(new.weight, old.weight, rtol=0, atol=0)
    if new.bias is not None:
        assert not new.bias.any()


# ---------------------------------------------------------------------------------------------- package rules
def test_layers_depend_only_on_torch_timm_monai_einops() -> None:
    allowed = {"torch", "timm", "monai", "einops", "attnseg"} | set(sys.stdlib_module_names) | {"__future__"}
    for path in Path(attnseg.layers.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.name} needs a module docstring naming its papers"
        names = [n.name for node in ast.walk(tree) if isinstance(node, ast.Import) for n in node.names]
        names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        for name in names:
            assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
            if name.startswith("attnseg"):
                assert name.startswith("attnseg.layers"), f"{path.name} imports {name}"
    assert sorted(attnseg.layers.__all__) == sorted(set(attnseg.layers.__all__))
    assert all(hasattr(attnseg.layers, n) for n in attnseg.layers.__all__)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(2, 1, 7, padding=9, dilation=3),  # MALUNet's SAB conv
        lambda: nn.Conv2d(3, 5, 3, padding=1, bias=False),
        lambda: nn.Conv2d(6, 6, 3, padding=7, dilation=7, groups=6),  # DGA's dilated depthwise convs
        lambda: nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False),  # the gated attention's depthwise 5x5
    ],
)
def test_same_conv2d_backward_equals_autograd(make) -> None:
    torch.manual_seed(0)
    conv = make().double()
    x = torch.randn(4, conv.in_channels, 11, 13, dtype=torch.float64)  # batch 4: the hand-written backward
    g = torch.randn(4, conv.out_channels, 11, 13, dtype=torch.float64)
    grads = []
    for fn in (same_conv2d, lambda t, c: c(t)):
        conv.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        y = fn(xx, conv)
        assert torch.equal(y, conv(x))  # the forward is F.conv2d itself
        y.backward(g)
        grads.append([xx.grad] + [p.grad for p in conv.parameters()])
    assert "SameConv2d" in type(same_conv2d(x.clone().requires_grad_(True), conv).grad_fn).__name__
    for fast, ref in zip(*grads):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("make", "batch", "channels_last"),
    [
        (lambda: nn.Conv2d(8, 8, 5, padding=2, groups=8), 1, False),  # MDSA-UNet's LCE / aggregator 5x5
        (lambda: nn.Conv2d(6, 6, 7, padding=3, groups=6, bias=False), 2, True),  # the aggregator's 7x7
        (lambda: nn.Conv2d(6, 6, 3, padding=4, dilation=4, groups=6), 2, True),  # dilated, channels-last
        (lambda: nn.Conv2d(5, 5, 5, padding=2, groups=5), 3, True),
    ],
)
def test_same_conv2d_depthwise_weight_gradient_at_any_batch(make, batch: int, channels_last: bool, monkeypatch) -> None:
    # the depthwise kernels whose oneDNN weight gradient is slow take the batch-as-groups conv at every batch size
    # (on inputs of ANY_BATCH_MIN_ELEMENTS and more: lowered here to keep the float64 check small)
    import attnseg.layers.same_conv as same_conv_module

    monkeypatch.setattr(same_conv_module, "ANY_BATCH_MIN_ELEMENTS", 0)
    torch.manual_seed(1)
    conv = make().double()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, conv.in_channels, 9, 12, dtype=torch.float64).contiguous(memory_format=fmt)
    g = torch.randn(batch, conv.out_channels, 9, 12, dtype=torch.float64).contiguous(memory_format=fmt)
    grads = []
    for fn in (same_conv2d, lambda t, c: c(t)):
        conv.zero_grad(set_to_none=True)
        xx = x.clone(memory_format=torch.preserve_format).requires_grad_(True)
        y = fn(xx, conv)
        if fn is same_conv2d:
            assert "SameConv2d" in type(y.grad_fn).__name__
        y.backward(g)
        grads.append([xx.grad] + [p.grad for p in conv.parameters()])
    for fast, ref in zip(*grads):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("kernel", "dilation", "size", "channels_last"),
    [(7, 3, (28, 28), False), (7, 3, (13, 17), True), (5, 2, (9, 12), False), (3, 4, (10, 7), True)],
)
def test_polyphase_depthwise_conv_equals_the_dilated_conv(kernel, dilation, size, channels_last, monkeypatch) -> None:
    # forward and every gradient of the pixel-phase form against PyTorch's dilated conv, float64, at map sides that
    # are and are not multiples of the dilation (the phases then need zero rows and columns past the edge)
    import attnseg.layers.same_conv as same_conv_module

    monkeypatch.setattr(same_conv_module, "ANY_BATCH_MIN_ELEMENTS", 0)
    torch.manual_seed(2)
    pad = dilation * (kernel - 1) // 2
    conv = nn.Conv2d(6, 6, kernel, padding=pad, dilation=dilation, groups=6).double()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 6, *size, dtype=torch.float64).contiguous(memory_format=fmt)
    g = torch.randn(2, 6, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            polyphase_depthwise_conv2d(x, conv.weight, conv.bias, dilation), conv(x), rtol=1e-12, atol=1e-12
        )
    grads = []
    for fn in (lambda t, c: same_conv2d(t, c, polyphase=True), lambda t, c: c(t)):
        conv.zero_grad(set_to_none=True)
        xx = x.clone(memory_format=torch.preserve_format).requires_grad_(True)
        y = fn(xx, conv)
        y.backward(g)
        grads.append([y.detach(), xx.grad] + [p.grad for p in conv.parameters()])
    for fast, ref in zip(*grads):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("conv", "batch"),
    [
        (nn.Conv2d(4, 4, 3, padding=1, groups=4), FAST_BACKWARD_MIN_BATCH - 1),  # 3x3 depthwise below the threshold
        (nn.Conv2d(4, 4, 5, padding=2), FAST_BACKWARD_MIN_BATCH - 1),  # dense below the threshold
        (nn.Conv2d(4, 4, 5, padding=2, groups=4), 1),  # depthwise 5x5, batch 1, a map below ANY_BATCH_MIN_ELEMENTS
        (nn.Conv2d(4, 4, 3, padding=1, stride=2), 4),  # strided
        (nn.Conv2d(4, 4, 3, padding=0), 4),  # not size-preserving
        (nn.Conv2d(4, 8, 3, padding=1, groups=4), 4),  # grouped, two filters per group
    ],
)
def test_same_conv2d_falls_back_to_the_module(conv: nn.Conv2d, batch: int) -> None:
    x = torch.randn(batch, 4, 8, 8, requires_grad=True)
    assert type(same_conv2d(x, conv).grad_fn).__name__ == "ConvolutionBackward0"
    assert not uses_fast_backward(x.detach())  # no autograd, no hand-written backward
