"""A CPU conv run over the batch in chunks, so that oneDNN's blocked buffers stay out of fresh mmaps.

For a plain NCHW input on CPU, oneDNN computes a conv into a channel-blocked buffer (channels padded up to a multiple of
16 on AVX-512, of 8 on AVX2) and then reorders that buffer into the NCHW tensor PyTorch returns; the weight-gradient
backward does the same with the output gradient. glibc serves an allocation above its mmap threshold (which adapts up
to 32 MiB on 64-bit Linux) with a fresh ``mmap`` on every call, so a buffer above 32 MiB is page-faulted in, page by
page, on every call. MALUNet's first conv (Ruan et al., BIBM 2022: 3 -> 8 channels at 256x256) crosses that line at
batch 8: its 16-channel blocked output is 32 MiB; on a 2-core AVX-512 VM the forward then costs 3.6 ms per sample
against 1.2 ms at batch 4 (9,000 page faults per call against none), and the weight gradient 3.0 ms against 1.0 ms.
With ``MALLOC_MMAP_THRESHOLD_`` raised the cliff disappears, which shows where it comes from.

:func:`conv2d_batch_chunks` runs such a conv in batch chunks whose blocked buffers stay within ``max_bytes`` (16 MiB by
default, half the ceiling, for the scratch space next to them) and concatenates the outputs. Every sample's output
depends on that sample only, so the values are those of one call up to float rounding (oneDNN runs a chunk of one
sample with another kernel; chunks of two or more gave identical values here); autograd sums the chunks' weight
gradients. The chunks call the module itself, so forward hooks (thop, fvcore) see each chunk.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CHUNK_MAX_BYTES", "batch_chunk_size", "conv2d_batch_chunks"]

CHUNK_MAX_BYTES = 16 << 20  # half of glibc's largest mmap threshold (32 MiB on 64-bit Linux)
_BLOCK = 16  # oneDNN's channel block on AVX-512 (8 on AVX2, so 16 is the conservative choice)


def _blocked(channels: int) -> int:
    return -(-channels // _BLOCK) * _BLOCK


def _out_side(size: int, conv: nn.Conv2d, dim: int) -> int:
    pad = conv.padding
    if isinstance(pad, str):  # "same" keeps the size (stride 1 only); "valid" pads nothing
        if pad == "same":
            return size
        pad = (0, 0)
    span = conv.dilation[dim] * (conv.kernel_size[dim] - 1) + 1
    return (size + 2 * pad[dim] - span) // conv.stride[dim] + 1


def batch_chunk_size(x: torch.Tensor, conv: nn.Conv2d, max_bytes: int = CHUNK_MAX_BYTES) -> int:
    """Samples per chunk for ``conv(x)`` on CPU (the whole batch when no chunking is needed).

    A sample's share is the larger of its blocked input and blocked output in bytes. Chunking applies to plain
    (NCHW-contiguous) 4-D CPU inputs outside tracing / ``torch.compile``: channels-last inputs use oneDNN's NHWC
    kernels, which need no blocked copy.
    """
    batch = x.shape[0] if x.dim() == 4 else 1
    tracing = torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
    if x.dim() != 4 or batch < 2 or x.device.type != "cpu" or not x.is_contiguous() or tracing:
        return batch
    h, w = x.shape[-2:]
    out_pixels = _out_side(h, conv, 0) * _out_side(w, conv, 1)
    per_sample = max(_blocked(conv.in_channels) * h * w, _blocked(conv.out_channels) * out_pixels) * x.element_size()
    return min(batch, max(1, max_bytes // per_sample))


def conv2d_batch_chunks(conv: nn.Conv2d, x: torch.Tensor, max_bytes: int = CHUNK_MAX_BYTES) -> torch.Tensor:
    """``conv(x)``, computed in batch chunks of :func:`batch_chunk_size` samples when one call's blocked buffers would
    exceed ``max_bytes`` (module docstring)."""
    chunk = batch_chunk_size(x, conv, max_bytes)
    if chunk >= x.shape[0]:
        return conv(x)
    return torch.cat([conv(part) for part in x.split(chunk)])
