"""Mixed-precision self-tests: catch platform kernels that return wrong bf16 gradients before a run trains on them.

oneDNN's bf16 Conv3d weight gradient on some AVX512-BF16 CPUs (seen on AMD EPYC with PyTorch 2.14) intermittently
returns garbage (|g| ~ 1e16, or NaN) for small maps (2x2x2, 32+ channels: the bottleneck of a 3D U-Net on small
patches), while the forward and 2D convolutions are right. A training step would apply such a gradient silently, so
``attnseg train --amp bf16`` on CPU runs :func:`bf16_conv3d_backward_is_reliable` first for 3D models
(docs/mixed_precision.md).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["bf16_conv3d_backward_is_reliable"]


@functools.cache
def bf16_conv3d_backward_is_reliable(device_type: str = "cpu", trials: int = 24) -> bool:
    """Whether bf16-autocast Conv3d weight gradients on ``device_type`` match float32 over ``trials`` repeats.

    The probe is the failing shape class (batch 2, 32 -> 32 channels, 3x3x3, 2x2x2 maps, with and without
    channels-last), a few milliseconds on CPU; the answer is cached per process. Gradients must stay within bf16
    round-off (5 % of the float32 gradient's scale).
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 2, 2, 2, generator=gen).to(device_type)
    w = (torch.randn(32, 32, 3, 3, 3, generator=gen) * 0.05).to(device_type)
    g = torch.randn(2, 32, 2, 2, 2, generator=gen).to(device_type)
    w_ref = w.clone().requires_grad_(True)
    F.conv3d(x, w_ref, padding=1).backward(g)
    reference = w_ref.grad
    scale = float(reference.abs().max())
    for i in range(trials):
        fmt = torch.channels_last_3d if i % 2 else torch.contiguous_format
        xi = x.contiguous(memory_format=fmt).requires_grad_(True)
        wi = w.clone().requires_grad_(True)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            y = F.conv3d(xi, wi, padding=1)
        y.backward(g.to(y.dtype))
        err = (wi.grad.float() - reference).abs().max()
        if not bool(torch.isfinite(err)) or float(err) > 0.05 * scale:
            return False
    return True
