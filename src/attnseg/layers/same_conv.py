"""A stride-1, "same"-padded 2D conv whose CPU backward runs as forward convolutions.

On CPU, oneDNN's backward of some conv shapes is many times slower than their forward: the weight gradient of
depthwise convs with kernels of 5 and more or a dilation (MALUNet's DGA and gated attention, Ruan et al., BIBM 2022;
MDSA-UNet's LCE and multi-scale aggregator, Li et al., JBHI 2025), 10-25x the forward (it falls back to a GEMM on NCHW
tensors); a joint data + weight backward that costs more than the two separately; and the 2 -> 1 channel dilated 7x7
conv of MALUNet's spatial attention bridge. For a stride-1 conv whose padding keeps the size
(``2 * padding == dilation * (kernel - 1)``) the backward has closed forms (docs/models/malunet.md §7):

- input gradient: the same conv applied to the output gradient with the kernel flipped in space (and, for a dense
  conv, its in/out channels swapped);
- weight gradient: a conv of the padded input with the output gradient as the kernel, stride = dilation. For a dense
  conv the batch becomes the channels (``[C_in, B, ...] * [C_out, B, ...]``); for a depthwise conv each (sample,
  channel) plane is its own group (``groups = B * C``) and the ``B`` results are summed. Depthwise 3x3 convs without
  dilation keep oneDNN's weight-only backward, which is fast there.

The forward is ``F.conv2d`` itself (identical values); gradients equal PyTorch's up to float rounding. Dilated
depthwise convs are slow in the forward too (oneDNN runs them in its generic kernel, not its depthwise one): with
``polyphase=True`` the forward and the input gradient run as undilated convs on the ``d x d`` pixel phases stacked
along the batch (:func:`polyphase_depthwise_conv2d`; same products and sums, so values equal up to rounding).
:func:`same_conv2d` takes this path for CPU autograd outside tracing / ``torch.compile`` / autocast: from batch 4 on
(below, PyTorch's own kernels are as fast), and at any batch for the depthwise convs with the slow weight gradient
when the input is large enough for the gain to beat the extra calls (64 Ki elements).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ANY_BATCH_MIN_ELEMENTS",
    "FAST_BACKWARD_MIN_BATCH",
    "depthwise_weight_grad",
    "fast_backward_applies",
    "polyphase_depthwise_conv2d",
    "same_conv2d",
    "uses_fast_backward",
]

FAST_BACKWARD_MIN_BATCH = 4  # below this batch PyTorch's own backward kernels are as fast (benchmarks/bench_malunet.py)
# below it too, depthwise convs with a slow oneDNN weight gradient take the hand-written backward from this many input
# elements on (MDSA-UNet's 56x56 and 28x28 maps at batch 1-2; not MALUNet's small maps at batch 1)
ANY_BATCH_MIN_ELEMENTS = 1 << 16


def uses_fast_backward(x: torch.Tensor, min_batch: int = FAST_BACKWARD_MIN_BATCH) -> bool:
    """True when ``x`` would take a hand-written CPU backward: CPU autograd, batch >= ``min_batch``, no tracing /
    compile."""
    tracing = torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
    cpu_grad = x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled()
    return cpu_grad and x.shape[0] >= min_batch and not tracing


def depthwise_weight_grad(
    grad: torch.Tensor, x: torch.Tensor, kernel: int, padding: int, dilation: int
) -> torch.Tensor:
    """Weight gradient ``[C, 1, k, k]`` of a stride-1 depthwise conv from its input ``x`` and output gradient ``grad``
    (both ``[B, C, H, W]``, any memory format): one grouped conv of the zero-padded input with the output gradient as
    the kernel, one group per (sample, channel) plane (``[1, B C, H + 2p, W + 2p] * [B C, 1, H, W]``, stride =
    dilation), summed over the batch."""
    b, c, h, w = x.shape
    xp = x.new_zeros(b, c, h + 2 * padding, w + 2 * padding)  # NCHW whatever the layout of x
    xp[:, :, padding : padding + h, padding : padding + w] = x
    kernels = grad.contiguous().view(b * c, 1, h, w)
    planes = F.conv2d(xp.view(1, b * c, *xp.shape[-2:]), kernels, stride=dilation, groups=b * c)
    return planes.view(b, c, kernel, kernel).sum(0).unsqueeze(1)


def polyphase_depthwise_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int
) -> torch.Tensor:
    """A stride-1, same-padded depthwise conv with dilation ``d`` computed as the undilated conv of its ``d x d`` pixel
    phases, stacked along the batch: ``out[..., r::d, s::d] = conv(x[..., r::d, s::d])`` with padding ``(k - 1) / 2``.
    The same products and sums; CPU kernels for dilated depthwise filters are several times slower than for plain
    ones (LKA's 7x7 with dilation 3 in MSA²Net, Kolahi et al., BMVC 2024). ``x``: ``[B, C, H, W]``; returns NCHW."""
    b, c, h, w = x.shape
    d, k = dilation, weight.shape[-1]
    hq, wq = -(-h // d), -(-w // d)
    if hq * d != h or wq * d != w:  # zeros past the bottom / right edge: what the conv's own padding reads there
        x = F.pad(x, (0, wq * d - w, 0, hq * d - h))
    phases = x.reshape(b, c, hq, d, wq, d).permute(3, 5, 0, 1, 2, 4).reshape(d * d * b, c, hq, wq)
    y = F.conv2d(phases, weight, bias, padding=(k - 1) // 2, groups=c)
    y = y.view(d, d, b, c, hq, wq).permute(2, 3, 4, 0, 5, 1).reshape(b, c, hq * d, wq * d)
    return y[:, :, :h, :w]


class _SameConv2d(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        padding: int,
        dilation: int,
        groups: int,
        polyphase: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.groups, ctx.has_bias = padding, dilation, groups, bias is not None
        ctx.polyphase = polyphase
        if polyphase:
            return polyphase_depthwise_conv2d(x, weight, bias, dilation)
        return F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        p, d, groups = ctx.padding, ctx.dilation, ctx.groups
        grad_x = grad_w = grad_b = None
        depthwise = groups > 1
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(-1, -2) if depthwise else weight.flip(-1, -2).transpose(0, 1)
            if ctx.polyphase:
                grad_x = polyphase_depthwise_conv2d(grad, flipped, None, d)
            else:
                grad_x = F.conv2d(grad, flipped, padding=p, dilation=d, groups=groups)
        if ctx.needs_input_grad[1] and depthwise and not _slow_depthwise_weight_grad(weight.shape[-1], d):
            grad_w = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [p, p], [d, d], False, [0, 0], groups, [False, True, False]
            )[1]
        elif ctx.needs_input_grad[1] and depthwise:
            grad_w = depthwise_weight_grad(grad, x, weight.shape[-1], p, d)
        elif ctx.needs_input_grad[1]:
            # [C_in, B, H + 2p, W + 2p] * [C_out, B, H, W] -> [C_in, C_out, k, k]
            xp = F.pad(x, (p, p, p, p)).transpose(0, 1)
            grad_w = F.conv2d(xp, grad.transpose(0, 1), stride=d).transpose(0, 1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None


def _slow_depthwise_weight_grad(kernel: int, dilation: int) -> bool:
    # oneDNN's depthwise weight gradient is fast only for undilated 3x3 kernels (benchmarks/results/same_conv.md)
    return kernel >= 5 or dilation > 1


def fast_backward_applies(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether :func:`same_conv2d` would run ``conv`` on ``x`` with the hand-written backward: a same-padded stride-1
    square conv (dense, or depthwise with one filter per channel), ``x`` in a CPU autograd graph outside autocast, at
    batch >= 4 (:data:`FAST_BACKWARD_MIN_BATCH`), or at any batch for depthwise convs with kernels >= 5 or a dilation
    on inputs of at least :data:`ANY_BATCH_MIN_ELEMENTS` elements."""
    k, d, p = conv.kernel_size[0], conv.dilation[0], conv.padding[0]
    square = conv.kernel_size == (k, k) and conv.dilation == (d, d) and conv.padding == (p, p)
    shape_ok = conv.stride == (1, 1) and square and 2 * p == d * (k - 1) and conv.padding_mode == "zeros"
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    if not (shape_ok and (conv.groups == 1 or depthwise)):
        return False
    # small maps (MALUNet's at batch 1, 6-64 channels at 8-32 px) pay more for the extra calls than they save
    any_batch = depthwise and _slow_depthwise_weight_grad(k, d) and x.numel() >= ANY_BATCH_MIN_ELEMENTS
    if not uses_fast_backward(x, min_batch=1 if any_batch else FAST_BACKWARD_MIN_BATCH):
        return False
    return not torch.is_autocast_enabled(x.device.type)  # autocast: the module's own op and dtype rules


def same_conv2d(x: torch.Tensor, conv: nn.Conv2d, polyphase: bool = False) -> torch.Tensor:
    """``conv(x)``, with the backward of the module docstring where :func:`fast_backward_applies`.

    ``polyphase``: for a dilated depthwise conv, run the forward and the input gradient as undilated convs on the
    pixel phases (:func:`polyphase_depthwise_conv2d`); ignored for other convs.
    """
    if not fast_backward_applies(x, conv):
        return conv(x)
    d = conv.dilation[0]
    poly = polyphase and d > 1 and conv.groups > 1
    return _SameConv2d.apply(x, conv.weight, conv.bias, conv.padding[0], d, conv.groups, poly)
