"""MALUNet: a Multi-Attention and Light-weight UNet for skin lesion segmentation.

Paper: J. Ruan, S. Xiang, M. Xie, T. Liu, Y. Fu, "MALUNet: A Multi-Attention and Light-weight UNet for Skin Lesion
Segmentation", IEEE BIBM 2022, pp. 1150-1156, DOI 10.1109/BIBM55620.2022.9995040, arXiv:2211.01784.

Official code: https://github.com/JCruan519/MALUNet (``models/malunet.py``, class ``MALUNet``), read at commit
``e184b47de99b3fda6b7880fcf3ff99b806308d2b``; this file follows the description of that code in docs/models/malunet.md
(no official code is copied). Official weights were never published; :func:`from_official` loads checkpoints trained
with the official code (``attnseg.models.from_official("models.malunet.MALUNet", state_dict)``).

Four attention modules on a six-stage U-shape with additive skips: DGA (Dilated Gated Attention), IEA (Inverted
External Attention), and the bridge of SAB (Spatial Attention Bridge, one conv shared by the five stages) followed by
CAB (Channel Attention Bridge, a Conv1d over all pooled stage channels plus one Linear per stage). Default channel list
(8, 16, 24, 32, 48, 64): 177,943 parameters. The paper's "0.175M params / 0.083 GFLOPs" are thop's counts at 256x256:
thop 0.1.1 has no rule for GroupNorm, so it drops the 2,912 GroupNorm parameters, and its "FLOPs" are MACs.

@inproceedings{ruan2022malunet,
  title={MALUNet: A Multi-Attention and Light-weight UNet for Skin Lesion Segmentation},
  author={Ruan, Jiacheng and Xiang, Suncheng and Xie, Mingye and Liu, Ting and Fu, Yuzhuo},
  booktitle={2022 IEEE International Conference on Bioinformatics and Biomedicine (BIBM)},
  pages={1150--1156}, year={2022}}

Deviations from the official code (none changes the function computed with given weights):

- **Logits out.** The official ``forward`` ends with a sigmoid; ours returns logits (apply ``torch.sigmoid`` for the
  official probabilities). No flag: a sigmoid belongs to the loss / inference.
- **Independent IEA memories.** The official block makes the value memory M_v a permuted *view* of the key memory
  M_k, so on CPU the two parameters share storage and stay tied (M_v = M_k^T) through training, while ``.cuda()``
  unties them (the authors trained on GPU, i.e. independent memories). Ours are always two parameters, initialised
  as in the untied official model: M_k ~ N(0, 2/C), M_v = a copy of M_k^T. The loader accepts both tied and untied
  checkpoints (a tied one simply has M_v = M_k^T), and one that stores only one of the two (see ``from_official``).
- **Fast CPU autograd path** (``impl="fast"``, the default; ``impl="reference"`` or :meth:`MALUNet.set_impl` restores
  the official op sequence). Same forward values (bitwise, except where a batch-chunked conv runs chunks of one sample:
  float rounding); gradients equal up to float rounding (docs/models/malunet.md, "Fast CPU path"): the plain 3x3 conv
  stages run the batch in chunks when oneDNN's blocked buffers would exceed 16 MiB
  (``attnseg.layers.conv2d_batch_chunks``; the first conv at 256x256 from batch 8 on); the 2x2 max-pools run PyTorch's
  channels-last kernel with an index scatter backward (same indices, so identical gradients), or, without autograd, a
  max of the four strided window views; from batch 4 on, the backward of the SAB conv and of the depthwise convs (DGA,
  gated attention) runs as forward convs plus a weight-only backward (``attnseg.layers.same_conv2d``), and the bilinear
  x2 upsampling's backward as two matmuls with its interpolation matrices (at batch 1 PyTorch's own kernels are faster).
  GPU tensors, TorchScript / ONNX tracing and ``torch.compile`` use the reference ops.
- Kept for fidelity (flagged as probably unintended in docs/models/malunet.md, B7): the bridge returns
  ``c * (x + s * x) + s * x``, adding the SAB product, not the raw skip, as the last residual.

Input sides must be multiples of 32 (five 2x poolings, fixed 2x upsamplings then additions); other sizes raise a
``ValueError`` at the call.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from attnseg.layers import (
    CHUNK_MAX_BYTES,
    channel_pool,
    check_divisible,
    conv2d_batch_chunks,
    init_conv_fan_out_,
    same_conv2d,
    uses_fast_backward,
)
from attnseg.models.official import load_mapped, register_official
from attnseg.models.registry import register_model

__all__ = [
    "DepthwiseSeparableConv",
    "GatedAttentionUnit",
    "DGA",
    "IEA",
    "SAB",
    "CAB",
    "DilatedGatedAttention",
    "InvertedExternalAttention",
    "SpatialAttentionBridge",
    "ChannelAttentionBridge",
    "SCAttentionBridge",
    "ConvStage",
    "MALUNet",
    "malunet",
]

_GROUPS = 4  # every GroupNorm of the model has 4 groups (docs/models/malunet.md §1)
_DILATIONS = (7, 5, 2, 1)  # DGA's four channel chunks, in channel order (docs/models/malunet.md §2.2)
Impl = Literal["fast", "reference"]
_IMPLS = ("fast", "reference")


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_GROUPS, channels)


def _conv(conv: nn.Conv2d, x: torch.Tensor, impl: Impl) -> torch.Tensor:
    # The fast path's same-padded convs (depthwise, SAB) take the forward-conv backward of attnseg.layers.same_conv
    return same_conv2d(x, conv) if impl == "fast" else conv(x)


class DepthwiseSeparableConv(nn.Module):
    """Depthwise kxk conv -> GroupNorm(4) -> pointwise 1x1 conv, no activation (the official depthwise helper).

    Args:
        in_channels: input channels (depthwise groups).
        out_channels: output channels of the pointwise conv.
        kernel_size: depthwise kernel size; padding keeps the size (kernel_size // 2).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels)
        self.norm = _gn(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)
        self.impl: Impl = "fast"  # set by MALUNet.set_impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # docs/models/malunet.md §2.1: DW conv -> GN -> PW conv
        return self.pointwise(self.norm(_conv(self.depthwise, x, self.impl)))


class GatedAttentionUnit(nn.Module):
    """GAU of DGA: ``GELU(DS3(sigmoid(DS3(z)) * GELU(DS5(z)))) + Conv1x1(z)``.

    Args:
        in_channels: channels of z.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.gate = DepthwiseSeparableConv(in_channels, in_channels, 3)
        self.value = DepthwiseSeparableConv(in_channels, in_channels, 5)  # gate kernel + 2
        self.output = DepthwiseSeparableConv(in_channels, out_channels, 3)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # docs/models/malunet.md §2.2 step 2 (paper: gated attention of DGA): gate * value, projected, plus a 1x1
        # shortcut of z
        gated = torch.sigmoid(self.gate(z)) * F.gelu(self.value(z))
        return F.gelu(self.output(gated)) + self.shortcut(z)


class DGA(nn.Module):
    """DGA, MALUNet's Dilated Gated Attention.

    Four channel chunks through depthwise 3x3 convs with dilations 7/5/2/1, then a gated attention unit.

    Args:
        in_channels: input channels (divisible by 4).
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if in_channels % 4:
            raise ValueError(f"DGA in_channels must be divisible by 4 (four dilation chunks), got {in_channels}")
        chunk = in_channels // 4
        self.dilated = nn.ModuleList(
            nn.Conv2d(chunk, chunk, 3, padding=d, dilation=d, groups=chunk) for d in _DILATIONS
        )
        self.norm = _gn(in_channels)
        self.proj = nn.Conv2d(in_channels, in_channels, 1)
        self.gau = GatedAttentionUnit(in_channels, out_channels)
        self.impl: Impl = "fast"  # set by MALUNet.set_impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # docs/models/malunet.md §2.2 step 1 (paper: DGA's multi-dilation part):
        # [B, C, H, W] -> 4 x [B, C/4, H, W] -> [B, C, H, W]
        chunks = torch.chunk(x, 4, dim=1)
        x = torch.cat([_conv(conv, c, self.impl) for conv, c in zip(self.dilated, chunks)], dim=1)
        z = F.gelu(self.proj(self.norm(x)))
        return self.gau(z)


class IEA(nn.Module):
    """IEA, MALUNet's Inverted External Attention.

    External attention with memory size 4C, double normalisation, GroupNorm and a final GELU.

    Args:
        channels: channels C (divisible by 4 for the GroupNorm); the memories hold S = 4C slots.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.memory_key = nn.Conv1d(channels, 4 * channels, 1, bias=False)  # M_k, C -> S
        self.memory_value = nn.Conv1d(4 * channels, channels, 1, bias=False)  # M_v, S -> C
        self.proj_out = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm = _gn(channels)
        self.reset_memories()

    @torch.no_grad()
    def reset_memories(self) -> None:
        """Initialise as the untied official model: M_k ~ N(0, 2/C), M_v a copy of M_k^T (docs/models/malunet.md B1)."""
        channels = self.memory_key.in_channels
        self.memory_key.weight.normal_(0.0, math.sqrt(2.0 / channels))
        self.memory_value.weight.copy_(self.memory_key.weight.permute(1, 0, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # docs/models/malunet.md §2.3 (paper: IEA, external attention with inverted memory size and double
        # normalisation)
        b, c, h, w = x.shape
        identity = x
        x = self.proj_in(x).reshape(b, c, h * w)  # [B, C, N]
        attn = self.memory_key(x)  # [B, 4C, N]
        attn = attn.softmax(dim=-1)  # over the N pixels, per memory slot
        attn = attn / (attn.sum(dim=1, keepdim=True) + 1e-9)  # L1 over the 4C slots, per pixel
        x = self.memory_value(attn).reshape(b, c, h, w)  # [B, C, N] -> [B, C, H, W]
        x = self.norm(self.proj_out(x))
        return F.gelu(x + identity)


class SAB(nn.Module):
    """SAB, MALUNet's Spatial Attention Bridge.

    One 7x7 conv (dilation 3) shared by all stages maps [channel mean, channel max] to a spatial gate.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=9, dilation=3)
        self.impl: Impl = "fast"  # set by MALUNet.set_impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the spatial gate s in (0, 1), [B, 1, H, W]."""
        # docs/models/malunet.md §2.4 (paper: SAB): s = sigmoid(conv([mean_c(x), max_c(x)]))
        pooled = channel_pool(x, order=("mean", "max"))  # [B, 2, H, W]
        return torch.sigmoid(_conv(self.conv, pooled, self.impl))


class CAB(nn.Module):
    """CAB, MALUNet's Channel Attention Bridge.

    Pooled channels of all stages -> shared Conv1d (k=3) -> one projection + sigmoid per stage.

    Args:
        stage_channels: channels of the bridged stages, in stage order.
        split_att: ``"fc"`` (default, the paper's) a Linear per stage, or ``"conv"`` an equivalent 1x1 Conv1d.
    """

    def __init__(self, stage_channels: Sequence[int], split_att: str = "fc") -> None:
        super().__init__()
        if split_att not in ("fc", "conv"):
            raise ValueError(f"split_att must be 'fc' (the paper's) or 'conv', got {split_att!r}")
        total = sum(stage_channels)
        self.split_att = split_att
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.local_conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        if split_att == "fc":
            self.stage_fc = nn.ModuleList(nn.Linear(total, c) for c in stage_channels)
        else:
            self.stage_fc = nn.ModuleList(nn.Conv1d(total, c, 1) for c in stage_channels)

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return one channel gate c_i in (0, 1), [B, C_i, 1, 1], per stage."""
        # docs/models/malunet.md §2.5 (paper: CAB): global-local channel fusion across stages
        pooled = torch.cat([self.pool(x) for x in xs], dim=1)  # [B, sum C, 1, 1]
        att = self.local_conv(pooled.flatten(1).unsqueeze(1))  # [B, 1, sum C]
        if self.split_att != "fc":
            att = att.transpose(1, 2)  # [B, sum C, 1] for the Conv1d projections
        gates = []
        for fc in self.stage_fc:
            g = fc(att)  # fc: [B, 1, C_i]; conv: [B, C_i, 1]
            gates.append(torch.sigmoid(g.reshape(g.shape[0], -1, 1, 1)))  # [B, C_i, 1, 1]
        return gates


# Descriptive names of the four modules MALUNet (Ruan et al., BIBM 2022) introduces under these acronyms
DilatedGatedAttention = DGA  # MALUNet's Dilated Gated Attention
InvertedExternalAttention = IEA  # MALUNet's Inverted External Attention
SpatialAttentionBridge = SAB  # MALUNet's Spatial Attention Bridge
ChannelAttentionBridge = CAB  # MALUNet's Channel Attention Bridge


class SCAttentionBridge(nn.Module):
    """The SC-Att bridge: SAB then CAB on the five skips, ``out_i = c_i * (x_i + s_i * x_i) + s_i * x_i``.

    Args:
        stage_channels: channels of the five skips, in stage order.
        split_att: CAB projection type, ``"fc"`` or ``"conv"``.
    """

    def __init__(self, stage_channels: Sequence[int], split_att: str = "fc") -> None:
        super().__init__()
        self.sab = SAB()
        self.cab = CAB(stage_channels, split_att)

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # docs/models/malunet.md §2.6 and B7 (paper: SAB then CAB): the last residual is the SAB product, as officially
        spatial = [self.sab(x) * x for x in xs]  # a_i = s_i * x_i
        mixed = [a + x for a, x in zip(spatial, xs)]  # b_i = a_i + x_i
        gates = self.cab(mixed)
        return [c * b + a for c, b, a in zip(gates, mixed, spatial)]


class ConvStage(nn.Module):
    """A plain 3x3 conv stage of MALUNet (encoder stages 1-3, decoder stages 4-5); its norm, pooling and GELU live in
    :class:`MALUNet`.

    On the fast path the batch runs in chunks when oneDNN's blocked buffers would exceed ``chunk_bytes``
    (``attnseg.layers.conv2d_batch_chunks``; at 256x256 the 3 -> 8 conv from batch 8 on), same values up to float
    rounding.

    Args:
        in_channels: input channels.
        out_channels: output channels.
    """

    chunk_bytes = CHUNK_MAX_BYTES

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.impl: Impl = "fast"  # set by MALUNet.set_impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d_batch_chunks(self.conv, x, self.chunk_bytes) if self.impl == "fast" else self.conv(x)


class MALUNet(nn.Module):
    """MALUNet (Ruan et al., BIBM 2022), returning logits.

    Encoder: three plain 3x3 conv stages, then three IEA -> DGA stages; each stage conv -> GN -> max-pool -> GELU
    (the bottleneck: no norm, no pool). Decoder: three DGA -> IEA stages and two 3x3 conv stages, each
    -> GN -> (bilinear x2) -> GELU, then + the bridged skip. Head: 1x1 conv at H/2, bilinear x2.

    Args:
        in_channels: input image channels. Defaults to 3.
        num_classes: output logit channels. Defaults to 1 (binary lesion mask, sigmoid at inference).
        c_list: the six stage widths, each divisible by 4. Defaults to (8, 16, 24, 32, 48, 64).
        split_att: CAB per-stage projection, ``"fc"`` (Linear, the paper's) or ``"conv"`` (1x1 Conv1d).
            Defaults to ``"fc"``.
        bridge: apply the SAB/CAB bridge to the skips (False adds the raw skips). Defaults to True.
        impl: ``"fast"`` (default) or ``"reference"`` (the official op sequence); same function, see the module
            docstring. Switch later with :meth:`set_impl`.

    Example:
        >>> model = MALUNet(in_channels=3, num_classes=1)
        >>> model(torch.randn(1, 3, 256, 256)).shape
        torch.Size([1, 1, 256, 256])
    """

    input_divisor = 32  # five 2x max-pools, then fixed 2x upsamplings added to the skips

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        c_list: Sequence[int] = (8, 16, 24, 32, 48, 64),
        split_att: str = "fc",
        bridge: bool = True,
        impl: Impl = "fast",
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        c = [int(v) for v in c_list]
        if len(c) != 6:
            raise ValueError(f"c_list must have exactly 6 stage widths (the bridge has 5 per-stage gates), got {c}")
        if any(v < 4 or v % 4 for v in c):
            raise ValueError(f"every c_list entry must be a positive multiple of 4 (GroupNorm(4), DGA chunks), got {c}")
        if split_att not in ("fc", "conv"):
            raise ValueError(f"split_att must be 'fc' (the paper's) or 'conv', got {split_att!r}")
        if not isinstance(bridge, bool):
            raise ValueError(f"bridge must be True or False, got {bridge!r}")
        self.c_list = tuple(c)
        self.num_classes = num_classes
        self.feature_channels = c[0]

        self.encoder = nn.ModuleList(
            [
                ConvStage(in_channels, c[0]),
                ConvStage(c[0], c[1]),
                ConvStage(c[1], c[2]),
                _attention_stage(c[2], c[3], encoder=True),
                _attention_stage(c[3], c[4], encoder=True),
                _attention_stage(c[4], c[5], encoder=True),
            ]
        )
        self.encoder_norms = nn.ModuleList(_gn(v) for v in c[:5])
        self.bridge = SCAttentionBridge(c[:5], split_att) if bridge else None
        self.decoder = nn.ModuleList(
            [
                _attention_stage(c[5], c[4], encoder=False),
                _attention_stage(c[4], c[3], encoder=False),
                _attention_stage(c[3], c[2], encoder=False),
                ConvStage(c[2], c[1]),
                ConvStage(c[1], c[0]),
            ]
        )
        self.decoder_norms = nn.ModuleList(_gn(v) for v in reversed(c[:5]))
        self.head = nn.Conv2d(c[0], num_classes, 1)
        self.apply(_init_weights)
        self.set_impl(impl)

    @property
    def impl(self) -> Impl:
        """The CPU autograd path in use: ``"fast"`` or ``"reference"``."""
        return self._impl

    def set_impl(self, impl: Impl) -> MALUNet:
        """Switch to ``impl`` (``"fast"`` or ``"reference"``, see the module docstring); returns ``self``."""
        if impl not in _IMPLS:
            raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
        for m in self.modules():
            if isinstance(m, (SAB, DGA, DepthwiseSeparableConv, ConvStage)):
                m.impl = impl
        self._impl: Impl = impl
        return self

    def validate_input_size(self, spatial: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless ``spatial`` is 2D with sides that are positive multiples of 32."""
        why = "input_divisor=32: five 2x poolings; the paper uses 256x256"
        check_divisible(spatial, self.input_divisor, what="MALUNet input", why=why, ndim=2)

    def forward_encoder(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Return the five skips (fine to coarse, H/2 ... H/32) and the bottleneck (H/32)."""
        # docs/models/malunet.md §1 encoder table: stage -> GN -> max-pool -> GELU; the bottleneck has no norm and no
        # pool
        skips = []
        for stage, norm in zip(self.encoder[:5], self.encoder_norms):
            x = F.gelu(_pool2(norm(stage(x)), self._impl == "fast"))
            skips.append(x)
        return skips, F.gelu(self.encoder[5](x))

    def forward_decoder(self, skips: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Return the last decoder feature map [B, c_list[0], H/2, W/2] (before the 1x1 head)."""
        if self.bridge is not None:
            skips = self.bridge(skips)
        # docs/models/malunet.md §1 decoder table: stage -> GN -> (bilinear x2, except D1) -> GELU, then + skip
        # (coarse to fine)
        for i, (stage, norm) in enumerate(zip(self.decoder, self.decoder_norms)):
            x = norm(stage(x))
            if i > 0:
                x = _up2(x, self._impl == "fast")
            x = F.gelu(x) + skips[4 - i]
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features right before the 1x1 head, upsampled to the input resolution: [B, c_list[0], H, W].

        The head is a 1x1 conv and bilinear interpolation weights sum to 1, so
        ``forward_head(forward_features(x))`` equals ``forward(x)`` (which applies the head at H/2, then upsamples,
        as the official model does) up to float rounding.
        """
        self._check_input(x)
        return _up2(self.forward_decoder(*self.forward_encoder(x)), self._impl == "fast")

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """1x1 conv classifier: [B, c_list[0], H, W] -> logits [B, num_classes, H, W]."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes, H, W] for images [B, in_channels, H, W] (H, W multiples of 32)."""
        # docs/models/malunet.md §1 head: 1x1 conv at H/2, bilinear x2 (the official sigmoid is left to the loss /
        # inference)
        self._check_input(x)
        return _up2(self.head(self.forward_decoder(*self.forward_encoder(x))), self._impl == "fast")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"MALUNet expects a [B, C, H, W] batch, got a tensor of shape {tuple(x.shape)}")
        self.validate_input_size(tuple(x.shape[2:]))


def _tracing() -> bool:
    # TorchScript / ONNX tracing and torch.compile see the reference ops (no custom autograd functions)
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


class _MaxPool2(torch.autograd.Function):
    """2x2 max-pool for autograd on CPU: PyTorch's channels-last kernel forward, an index scatter backward.

    Same values, same indices (the first maximum of each window in row-major order, as the NCHW kernel) and so the
    same gradient as ``F.max_pool2d(x, 2)``; the NCHW kernel with indices is several times slower at few channels.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y, idx = torch.ops.aten.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), [2, 2], [2, 2])
        ctx.save_for_backward(idx)
        ctx.in_shape = x.shape
        return y.contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (idx,) = ctx.saved_tensors
        b, c, h, w = ctx.in_shape
        out = grad.new_zeros(b, c, h * w)
        # idx holds the flat h * W + w position of each window's maximum in its plane
        out.scatter_(2, idx.contiguous().view(b, c, -1), grad.contiguous().view(b, c, -1))
        return out.view(b, c, h, w)


def _pool2(x: torch.Tensor, fast: bool = True) -> torch.Tensor:
    # 2x2 max-pool, stride 2 (the official F.max_pool2d(x, 2, 2)); the fast path gives identical values and gradients
    h, w = x.shape[-2:]
    if not fast or x.device.type != "cpu" or h % 2 or w % 2 or _tracing():
        return F.max_pool2d(x, 2)
    if x.requires_grad and torch.is_grad_enabled():
        return _MaxPool2.apply(x)
    # no autograd: max of the four strided window views (max is exact, so the values are identical)
    v = x.unflatten(-1, (w // 2, 2)).unflatten(-3, (h // 2, 2))  # [B, C, H/2, 2, W/2, 2]
    top = torch.maximum(v[..., 0, :, 0], v[..., 0, :, 1])
    return torch.maximum(top, torch.maximum(v[..., 1, :, 0], v[..., 1, :, 1]), out=top)


def _interp_matrix(n: int, like: torch.Tensor) -> torch.Tensor:
    """[2n, n] matrix of the 1D bilinear (align_corners) x2 upsampling, from F.interpolate itself (same weights)."""
    key = (n, like.dtype, like.device)
    mat = _INTERP_CACHE.get(key)
    if mat is None:
        eye = torch.eye(n, dtype=like.dtype, device=like.device).view(1, n, n, 1)
        mat = F.interpolate(eye, size=(2 * n, 1), mode="bilinear", align_corners=True)[0, :, :, 0].t().contiguous()
        _INTERP_CACHE[key] = mat
    return mat


_INTERP_CACHE: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


class _Up2(torch.autograd.Function):
    """Bilinear x2 upsampling (align_corners): forward ``F.interpolate`` (same values), backward as two matmuls
    ``A_h^T g A_w`` (the transpose of the separable interpolation), faster than PyTorch's CPU scatter kernel."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.in_shape = x.shape
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        h, w = ctx.in_shape[-2:]
        a_h, a_w = _interp_matrix(h, grad), _interp_matrix(w, grad)
        return torch.matmul(a_h.t(), torch.matmul(grad, a_w))


def _up2(x: torch.Tensor, fast: bool = True) -> torch.Tensor:
    # Functional (not nn.Upsample), as in the official model, so thop's MAC count matches the paper's.
    if fast and uses_fast_backward(x):
        return _Up2.apply(x)
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


def _attention_stage(in_channels: int, out_channels: int, *, encoder: bool) -> nn.Sequential:
    # Encoder stages run IEA then DGA; decoder stages DGA then IEA (docs/models/malunet.md §1).
    if encoder:
        return _named(iea=IEA(in_channels), dga=DGA(in_channels, out_channels))
    return _named(dga=DGA(in_channels, out_channels), iea=IEA(out_channels))


def _named(**modules: nn.Module) -> nn.Sequential:
    seq = nn.Sequential()
    for name, module in modules.items():
        seq.add_module(name, module)
    return seq


@torch.no_grad()
def _init_weights(m: nn.Module) -> None:
    """The official init (docs/models/malunet.md §1): conv N(0, 2/fan_out), zero bias; Linear trunc-normal std 0.02,
    zero bias.

    ``nn.Module.apply`` visits children before parents, so the IEA rule (run on the block) overrides its memories'
    Conv1d rule.
    """
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        init_conv_fan_out_(m)  # the official Conv1d rule omits the groups, which are all 1 here
    elif isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            m.bias.zero_()
    elif isinstance(m, IEA):
        m.reset_memories()


# ---------------------------------------------------------------------------------------------------------------
# Official-weights loader: official key names -> ours
# ---------------------------------------------------------------------------------------------------------------

_DSCONV_KEYS = {"conv1": "depthwise", "norm_layer": "norm", "conv2": "pointwise"}
_GAU_KEYS = {"w1.0": "gate", "w2.0": "value", "wo.0": "output", "cw": "shortcut"}
_DGA_KEYS = {
    "mda0": "dilated.0",
    "mda1": "dilated.1",
    "mda2": "dilated.2",
    "mda3": "dilated.3",
    "norm_layer": "norm",
    "conv": "proj",
    "gau": "gau",
}
_IEA_KEYS = {
    "conv1": "proj_in",
    "linear_0": "memory_key",
    "linear_1": "memory_value",
    "conv2": "proj_out",
    "norm_layer": "norm",
}
_OFFICIAL_STAGE = re.compile(r"(encoder|decoder)(\d)\.(\d)\.(.+)")


def _sub_prefix(table: Mapping[str, str], rest: str) -> tuple[str, str] | None:
    """Split ``rest`` at the longest official module name in ``table``; return (our name, remainder)."""
    for official in sorted(table, key=len, reverse=True):
        if rest.startswith(official + "."):
            return table[official], rest[len(official) + 1 :]
    return None


def _rename_dga(rest: str) -> str | None:
    hit = _sub_prefix(_DGA_KEYS, rest)
    if hit is None:
        return None
    ours, rest = hit
    if ours != "gau":
        return f"{ours}.{rest}"
    gau = _sub_prefix(_GAU_KEYS, rest)
    if gau is None:
        return None
    part, rest = gau
    if part == "shortcut":
        return f"gau.shortcut.{rest}"
    ds = _sub_prefix(_DSCONV_KEYS, rest)
    return None if ds is None else f"gau.{part}.{ds[0]}.{ds[1]}"


def _rename_iea(rest: str) -> str | None:
    hit = _sub_prefix(_IEA_KEYS, rest)
    return None if hit is None else f"{hit[0]}.{hit[1]}"


def _rename_official(key: str) -> str | None:
    """Map an official ``MALUNet`` state-dict key onto ours (None: not an official key)."""
    for official, ours in (("ebn", "encoder_norms"), ("dbn", "decoder_norms")):
        m = re.fullmatch(rf"{official}(\d)\.(weight|bias)", key)
        if m:
            return f"{ours}.{int(m.group(1)) - 1}.{m.group(2)}"
    if key.startswith("final."):
        return "head." + key[len("final.") :]
    if key.startswith("scab.satt.shared_conv2d.0."):
        return "bridge.sab.conv." + key[len("scab.satt.shared_conv2d.0.") :]
    if key == "scab.catt.get_all_att.weight":
        return "bridge.cab.local_conv.weight"
    m = re.fullmatch(r"scab\.catt\.att(\d)\.(weight|bias)", key)
    if m:
        return f"bridge.cab.stage_fc.{int(m.group(1)) - 1}.{m.group(2)}"
    m = _OFFICIAL_STAGE.fullmatch(key)
    if m is None:
        return None
    part, stage, sub, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    ours = f"{part}.{stage - 1}"
    attention_stages = (4, 5, 6) if part == "encoder" else (1, 2, 3)
    if stage not in attention_stages:  # plain 3x3 conv stages: officially Sequential(conv)
        return f"{ours}.conv.{rest}" if sub == 0 else None
    # encoder: Sequential(IEA, DGA); decoder: Sequential(DGA, IEA)
    is_iea = (sub == 0) == (part == "encoder")
    if sub not in (0, 1):
        return None
    renamed = _rename_iea(rest) if is_iea else _rename_dga(rest)
    return None if renamed is None else f"{ours}.{'iea' if is_iea else 'dga'}.{renamed}"


def _fill_tied_memories(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Restore a memory dropped by alias-aware savers (e.g. safetensors' ``save_model``) from its tied partner."""
    filled = []
    for key in list(state_dict):
        for have, missing in (("linear_0.weight", "linear_1.weight"), ("linear_1.weight", "linear_0.weight")):
            if key.endswith(have):
                other = key[: -len(have)] + missing
                if other not in state_dict:
                    # Official tie: linear_1.weight is linear_0.weight.permute(1, 0, 2) (and the reverse).
                    state_dict[other] = state_dict[key].permute(1, 0, 2).contiguous()
                    filled.append(other)
    if filled:
        warnings.warn(
            f"official MALUNet checkpoint stores only one of the tied IEA memories for {len(filled)} blocks; "
            f"filled the other as its transpose (the official CPU tie M_v = M_k^T): {filled}",
            stacklevel=3,
        )
    return state_dict


@register_official("models.malunet.MALUNet")
def _load_official_malunet(
    state_dict: Mapping[str, torch.Tensor],
    num_classes: int = 1,
    input_channels: int = 3,
    c_list: Sequence[int] = (8, 16, 24, 32, 48, 64),
    split_att: str = "fc",
    bridge: bool = True,
    impl: Impl = "fast",
) -> MALUNet:
    """Build ``MALUNet`` from the official constructor's arguments and load an official state dict strictly.

    ``impl`` is ours (not an official argument): the CPU autograd path, ``"fast"`` or ``"reference"``.

    Tied checkpoints (trained on CPU, where M_v is a view of M_k) load like untied ones: each memory is copied into
    its own parameter. A checkpoint that holds only one memory of a block gets the other as its transpose.
    """
    model = MALUNet(input_channels, num_classes, c_list=c_list, split_att=split_att, bridge=bool(bridge), impl=impl)
    sd = _fill_tied_memories(OrderedDict(state_dict))
    # DataParallel checkpoints (the official train.py wraps the model) prefix every key with "module.".
    if sd and all(k.startswith("module.") for k in sd):
        consume_prefix_in_state_dict_if_present(sd, "module.")
    return load_mapped(model, sd, _rename_official)


@register_model(
    "malunet",
    options_from=MALUNet,
    paper="Ruan et al., MALUNet, IEEE BIBM 2022 (doi:10.1109/BIBM55620.2022.9995040)",
    official_repo="JCruan519/MALUNet",
    input_divisor=32,
    default_input_size=(256, 256),
    test_input_size=(64, 64),
)
def malunet(in_channels: int, num_classes: int, **kwargs: Any) -> MALUNet:
    """MALUNet; kwargs: ``c_list`` (6 widths), ``split_att`` ("fc" | "conv"), ``bridge`` (bool), ``impl``."""
    return MALUNet(in_channels, num_classes, **kwargs)
