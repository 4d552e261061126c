"""Building blocks shared by several model files; each model file keeps only its own paper's modules.

One concept per module: ``conv_norm_act`` (conv -> BatchNorm -> ReLU, timm's and an ``nn.Sequential`` layout),
``channel_pool`` (CBAM-style channel mean / max), ``pair`` (``(h, w)`` from an int or a pair),
``same_conv`` (a same-padded conv with a faster CPU backward; dilated depthwise convs on pixel phases),
``batch_chunks`` (a CPU conv run in batch chunks that keep oneDNN's buffers out of fresh mmaps), ``input_size``
(sides must be multiples of N, with the padded size in the error) and ``weight_init`` (fan-out He-normal convs).
This package depends on torch, timm, MONAI and einops only, never on the rest of attnseg.
"""

from __future__ import annotations

from attnseg.layers.batch_chunks import CHUNK_MAX_BYTES, batch_chunk_size, conv2d_batch_chunks
from attnseg.layers.channel_pool import CHANNEL_STATISTICS, channel_pool
from attnseg.layers.conv_norm_act import ConvBNAct, ConvNormAct, conv_bn_act
from attnseg.layers.input_size import check_divisible, padded_size
from attnseg.layers.pair import to_pair
from attnseg.layers.same_conv import (
    ANY_BATCH_MIN_ELEMENTS,
    FAST_BACKWARD_MIN_BATCH,
    fast_backward_applies,
    polyphase_depthwise_conv2d,
    same_conv2d,
    uses_fast_backward,
)
from attnseg.layers.weight_init import init_conv_fan_out_

__all__ = [
    "CHUNK_MAX_BYTES",
    "batch_chunk_size",
    "conv2d_batch_chunks",
    "CHANNEL_STATISTICS",
    "channel_pool",
    "ConvBNAct",
    "ConvNormAct",
    "conv_bn_act",
    "check_divisible",
    "padded_size",
    "to_pair",
    "ANY_BATCH_MIN_ELEMENTS",
    "FAST_BACKWARD_MIN_BATCH",
    "fast_backward_applies",
    "polyphase_depthwise_conv2d",
    "same_conv2d",
    "uses_fast_backward",
    "init_conv_fan_out_",
]
