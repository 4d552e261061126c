"""attnseg.layers.batch_chunks: chunk sizes from the blocked-buffer rule, and the chunked conv equals one call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnseg.layers import CHUNK_MAX_BYTES, batch_chunk_size, conv2d_batch_chunks

MIB = 1 << 20


@pytest.mark.parametrize(
    ("shape", "conv", "expected"),
    [
        # MALUNet's first conv at 256x256: 8 channels padded to 16 -> 16 * 65536 * 4 B = 4 MiB a sample -> 4 per chunk
        ((8, 3, 256, 256), nn.Conv2d(3, 8, 3, padding=1), 4),
        ((3, 3, 256, 256), nn.Conv2d(3, 8, 3, padding=1), 3),  # 12 MiB in all: one call
        ((2, 3, 512, 512), nn.Conv2d(3, 8, 3, padding=1), 1),  # 16 MiB a sample
        ((8, 16, 128, 128), nn.Conv2d(16, 24, 3, padding=1), 8),  # 24 -> 32 channels: 2 MiB a sample, 16 MiB in all
        ((9, 16, 128, 128), nn.Conv2d(16, 24, 3, padding=1), 8),
        # the input side counts too: 40 -> 48 blocked input channels at 128x128 = 3 MiB a sample -> 5
        ((8, 40, 128, 128), nn.Conv2d(40, 8, 1), 5),
        # stride 2 quarters the output: max(16 * 65536, 32 * 16384) * 4 B = 4 MiB a sample
        ((8, 3, 256, 256), nn.Conv2d(3, 32, 3, stride=2, padding=1), 4),
        ((8, 3, 256, 256), nn.Conv2d(3, 8, 3, padding="same"), 4),
        ((8, 3, 258, 258), nn.Conv2d(3, 8, 3, padding="valid"), 3),  # 256x256 out; the 258x258 input is larger
    ],
)
def test_chunk_size_from_the_blocked_buffers(shape, conv: nn.Conv2d, expected: int) -> None:
    assert CHUNK_MAX_BYTES == 16 * MIB
    assert batch_chunk_size(torch.empty(shape), conv) == expected


def test_no_chunks_for_channels_last_float64_scale_or_batch_one() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.empty(8, 3, 256, 256)
    assert batch_chunk_size(x.contiguous(memory_format=torch.channels_last), conv) == 8  # NHWC kernels: no blocked copy
    assert batch_chunk_size(x.double(), conv) == 2  # 8 bytes an element: 8 MiB a sample
    assert batch_chunk_size(torch.empty(1, 3, 1024, 1024), conv) == 1
    assert batch_chunk_size(x, conv, max_bytes=1) == 1  # never below one sample


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_conv_equals_one_call(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1).to(dtype)
    x = torch.randn(5, 3, 24, 20, dtype=dtype)
    calls: list[int] = []
    conv.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    per_sample = 16 * 24 * 20 * x.element_size()
    results = []
    for max_bytes in (CHUNK_MAX_BYTES, 2 * per_sample):
        conv.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        y = conv2d_batch_chunks(conv, xx, max_bytes)
        (y * torch.linspace(-1, 2, y.numel(), dtype=dtype).view_as(y)).sum().backward()
        results.append((y.detach(), xx.grad, conv.weight.grad, conv.bias.grad))
    assert calls == [5, 2, 2, 1]  # one call, then chunks of two samples
    eps = 1e-5 if dtype == torch.float32 else 1e-14
    for chunked, whole in zip(results[1], results[0]):  # sums in another order: rounding of the largest entry
        torch.testing.assert_close(chunked, whole, rtol=0, atol=eps * whole.abs().max())
