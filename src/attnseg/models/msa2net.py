"""MSA²Net: multi-scale adaptive spatial attention gates (MASAG) on the skips of a MaxViT U-shaped network.

Paper: Kolahi, Azad, Kazerouni, Merhof et al., "MSA²Net: Multi-scale Adaptive Attention-guided Network for Medical
Image Segmentation", BMVC 2024 (oral), arXiv:2407.21640.
Official code: github.com/xmindflow/MSA-2Net, commit 209ca72263c903048ae03077dfc023dd14d09c6c
(``networks/msa2net.py``, ``networks/masag.py``).

Architecture (paper figure; docs/models/msa2net.md): timm ``maxvit_rmlp_small_rw_224`` encoder (features 96/192/384/768
at 1/4..1/32, the last one after the encoder's final LayerNorm2d); a decoder that PatchExpands the 1/32 tokens, then
at 1/16 gates the skip with MASAG and runs two DAE-Former dual-transformer blocks, at 1/8 and 1/4 gates the skip with
MASAG and runs two LKA blocks; a 4x FinalPatchExpand and a 1x1 classifier give logits at input resolution. One
output, no deep supervision. Gray input (1 channel) is repeated to 3 channels, as in the official forward.

Parameter counts: encoder 64,126,044; our default (paper decoder, executed modules only) 76,606,666; the official
file's 112,767,981 (paper decoder) / 93,660,877 (shipped decoder) with ``keep_dead_modules=True``.

Deviations from the official code, and the option that restores each:

- **Token layout.** The official decoder turns ``(B, H*W, C)`` tokens (and the channels-last skip) into "NCHW" with
  ``.view(B, C, H, W)``: a memory reinterpretation, not a transpose, so MASAG's convolutions, its channel pooling,
  the LayerNorm and the LKA blocks run on a scrambled pseudo-image, and after the DAE stage raster order is never
  restored. We transpose properly by default; ``legacy_layout=True`` reproduces the reinterpretation exactly (needed
  for official weights).
- **Decoder variant.** ``MyDecoderLayerDAEFormer`` in the released file defines ``__init__``/``forward`` twice and
  Python keeps the second pair: no DAE-Former blocks and no MASAG at 1/16 (``LN(G + X)`` then two LKA blocks). The
  paper's 112.77 M / 15.56 G were measured on the first pair, which is our default (``decoder="paper"``);
  ``decoder="shipped"`` builds the released file's decoder.
- **Never-executed modules are not built.** The 1/32 decoder layer is called without a skip, so only its
  PatchExpand runs; its projection, MASAG, LayerNorm and two blocks (36.2 M parameters in the paper variant) are
  dead, as are the shipped variant's 1/16 MASAG and the backbone's unused 1->3 gray conv. Building them breaks DDP
  (unused parameters) and wastes memory; ``keep_dead_modules=True`` builds them for parameter-count parity.
- **Input size.** The official decoder hard-codes the 7x7 bottleneck (224x224 only). We keep 224 by default and
  accept ``img_size`` with sides that are multiples of 32 (the MaxViT window and grid become side/32, as timm does
  for other image sizes), decoder resolutions following the input.

- **Fast kernels (same function).** By default MASAG folds its eval-mode BatchNorms into the convolutions and fuses
  its elementwise steps (softmax over two maps as a sigmoid, ``(x·σ(g))·(g·σ(x))`` as ``SiLU(x)·SiLU(g)``), the LKA
  dilated depthwise conv runs on polyphase sub-images, and the DAE-Former efficient attention runs on tokens with one
  fused projection (docs/models/msa2net.md, "Performance"). Values agree with the reference up to float rounding;
  ``fast_kernels=False`` (or :func:`set_fast_kernels`) runs the step-by-step reference code.

Not reproduced: MASAG's "DW-D" convolution is drawn depthwise in the figure but is dense in the code (and in the
published parameter count); we keep it dense, as published.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import LayerNorm2d, LayerScale2d
from torch import nn

from attnseg.layers import (
    ConvNormAct,
    channel_pool,
    check_divisible,
    fast_backward_applies,
    polyphase_depthwise_conv2d,
    same_conv2d,
    to_pair,
)
from attnseg.models.official import load_mapped, register_official
from attnseg.models.registry import register_model

__all__ = [
    "GlobalContext",
    "LocalContext",
    "MASAG",
    "LargeKernelAttention",
    "LKASpatialAttention",
    "ConvMixFFN",
    "LKABlock",
    "EfficientAttention",
    "ChannelAttention",
    "MixFFN",
    "DualTransformerBlock",
    "PatchExpand",
    "DecoderStage",
    "MSA2Net",
    "msa2net",
    "set_fast_kernels",
]

DECODER_VARIANTS = ("paper", "shipped")
DEFAULT_ENCODER = "maxvit_rmlp_small_rw_224"


# --------------------------------------------------------------------------------------------------------------------
# Fast kernels (docs/models/msa2net.md, "Performance"): same function, same parameters, fewer passes over memory
# --------------------------------------------------------------------------------------------------------------------


def set_fast_kernels(module: nn.Module, enabled: bool) -> nn.Module:
    """Switch every MSA²Net submodule with a fast path (``fast`` attribute) of ``module`` to it or to the reference."""
    for m in module.modules():
        if isinstance(m, (MASAG, LargeKernelAttention, EfficientAttention)):
            m.fast = bool(enabled)
    return module


def _conv_bn(block: ConvNormAct, x: torch.Tensor) -> torch.Tensor:
    """``block(x)``; in eval mode the BatchNorm (running statistics) is folded into the conv: one pass, not two."""
    bn = block.bn
    if bn.training or bn.running_var is None or block.conv.weight.numel() > x.numel():
        return block(x)  # (scaling a weight larger than the map costs more than the BatchNorm pass it saves)
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if block.conv.bias is not None:
        bias = bias + block.conv.bias * scale
    y = block.conv._conv_forward(x, block.conv.weight * scale.view(-1, 1, 1, 1), bias)
    return bn.act(bn.drop(y))


def _dilated_depthwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A "same"-padded dilated depthwise conv as an undilated one on the dilation² pixel phases of the map
    (:func:`attnseg.layers.polyphase_depthwise_conv2d`): CPU kernels for dilated depthwise filters are several times
    slower than for plain ones. From 28x28 maps up (smaller ones gain nothing); in CPU training through
    :func:`attnseg.layers.same_conv2d`, whose backward computes the input gradient the same way and the weight gradient
    as one grouped conv.
    """
    h, w = x.shape[-2:]
    polyphase = h * w >= 784
    if fast_backward_applies(x, conv):
        return same_conv2d(x, conv, polyphase=polyphase)
    return polyphase_depthwise_conv2d(x, conv.weight, conv.bias, conv.dilation[0]) if polyphase else conv(x)


# --------------------------------------------------------------------------------------------------------------------
# MASAG: multi-scale adaptive spatial attention gate
# --------------------------------------------------------------------------------------------------------------------


class GlobalContext(nn.Module):
    """MASAG global branch: per-pixel channel mean and max of G, fused by a 1x1 conv to one map, then BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = ConvNormAct(2, 1, 1, bias=True, apply_act=False)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        # docs/models/msa2net.md §4 step 2: [mean_c(G), max_c(G)] -> conv 2->1 -> BN; (B, 1, H, W)
        pooled = channel_pool(g, order=("mean", "max"))
        return self.proj(pooled)


class LocalContext(nn.Module):
    """MASAG local branch on X: depthwise 3x3, dense dilated 3x3 (dilation 2), 1x1; BN after each, ReLU after two.

    Args:
        dim: channels.
        dilated_depthwise: make the dilated conv depthwise, as the paper figure draws it. Defaults to False (dense, as
            in the official code and the published parameter count).
    """

    def __init__(self, dim: int, dilated_depthwise: bool = False) -> None:
        super().__init__()
        self.dw = ConvNormAct(dim, dim, 3, groups=dim, bias=True)
        self.dilated = ConvNormAct(dim, dim, 3, dilation=2, groups=dim if dilated_depthwise else 1, bias=True)
        self.proj = ConvNormAct(dim, dim, 1, bias=True, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # docs/models/msa2net.md §4 step 1: receptive field 7x7
        return self.proj(self.dilated(self.dw(x)))


class MASAG(nn.Module):
    """Multi-Scale Adaptive Spatial Attention Gate (paper Fig. 2; official ``MultiScaleGatedAttn``).

    Gates the encoder skip X with the decoder feature G (same shape, NCHW): local context of X plus global context of
    G select, per pixel, how much each of X and G is re-weighted; the two then cross-modulate each other, and their
    product recalibrates X. Returns a tensor shaped like X (no residual).

    Args:
        dim: channels of X and G.
        dilated_depthwise: see :class:`LocalContext`. Defaults to False.
    """

    def __init__(self, dim: int, dilated_depthwise: bool = False) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.local_context = LocalContext(dim, dilated_depthwise)
        self.global_context = GlobalContext()
        self.fuse_norm = nn.BatchNorm2d(dim)
        self.selection = nn.Conv2d(dim, 2, 1)
        self.recalibrate = ConvNormAct(dim, dim, 1, bias=True, apply_act=False)
        self.out_proj = ConvNormAct(dim, dim, 1, bias=True, apply_act=False)

    fast = True  # the fused formulation below; False runs the step-by-step reference (set_fast_kernels)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return self.forward_reference(x, g)
        # docs/models/msa2net.md §4 steps 1-8, with the same values as forward_reference
        lc = self.local_context
        local = _conv_bn(lc.dilated, _conv_bn(lc.dw, x))
        glob = _conv_bn(self.global_context.proj, channel_pool(g, order=("mean", "max")))  # (B, 1, H, W)
        bn = self.fuse_norm
        if bn.training or bn.running_var is None or lc.proj.bn.training or lc.proj.conv.weight.numel() > x.numel():
            fused = bn(_conv_bn(lc.proj, local) + glob)
        else:
            # eval: BN(P(l) + glob) = P'(l) + s * glob with BN folded into the projection P
            s = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            p, pbn = lc.proj.conv, lc.proj.bn
            s_p = pbn.weight * torch.rsqrt(pbn.running_var + pbn.eps) * s
            bias = (p.bias - pbn.running_mean) * s_p + (pbn.bias - bn.running_mean) * s + bn.bias
            fused = torch.addcmul(
                p._conv_forward(local, p.weight * s_p.view(-1, 1, 1, 1), bias), s.view(1, -1, 1, 1), glob
            )
        # softmax over the two selection maps = sigmoid of their difference: a = σ(s0 - s1), b = 1 - a
        w, bias = self.selection.weight, self.selection.bias
        a = torch.sigmoid(F.conv2d(fused, w[:1] - w[1:], bias[:1] - bias[1:]))  # (B, 1, H, W)
        x_sel = x * (1 + a)  # x·a + x
        g_sel = g * (2 - a)  # g·b + g
        # (x_sel·σ(g_sel))·(g_sel·σ(x_sel)) = SiLU(x_sel)·SiLU(g_sel)
        interaction = F.silu(x_sel) * F.silu(g_sel)
        weighted = torch.sigmoid(_conv_bn(self.recalibrate, interaction)) * x
        return _conv_bn(self.out_proj, weighted)

    def forward_reference(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The gate step by step as in the paper (docs/models/msa2net.md §4 steps 3-8)."""
        fused = self.fuse_norm(self.local_context(x) + self.global_context(g))  # global map broadcast over C
        a, b = self.selection(fused).softmax(dim=1).split(1, dim=1)  # (B, 1, H, W) each, a + b = 1
        x_sel = x * a + x
        g_sel = g * b + g
        interaction = (x_sel * torch.sigmoid(g_sel)) * (g_sel * torch.sigmoid(x_sel))
        weighted = torch.sigmoid(self.recalibrate(interaction)) * x
        return self.out_proj(weighted)


# --------------------------------------------------------------------------------------------------------------------
# LKA block (VAN-style large-kernel attention; the decoder blocks at 1/8 and 1/4)
# --------------------------------------------------------------------------------------------------------------------


class LargeKernelAttention(nn.Module):
    """LKA: ``u * pw(dw7x7_dil3(dw5x5(u)))``, a 21x21 receptive field from cheap convolutions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_dw_dilated = nn.Conv2d(dim, dim, 7, padding=9, dilation=3, groups=dim)
        self.conv_pw = nn.Conv2d(dim, dim, 1)

    fast = True  # polyphase dilated depthwise conv (_dilated_depthwise); False: the direct dilated conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = same_conv2d(x, self.conv_dw) if self.fast else self.conv_dw(x)
        attn = _dilated_depthwise(self.conv_dw_dilated, attn) if self.fast else self.conv_dw_dilated(attn)
        return x * self.conv_pw(attn)


class LKASpatialAttention(nn.Module):
    """1x1 -> GELU -> LKA -> 1x1, plus a shortcut of the (normalised) input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.lka = LargeKernelAttention(dim)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.lka(self.act(self.proj_in(x)))) + x


class ConvMixFFN(nn.Module):
    """Channel MLP on NCHW maps with a depthwise 3x3 inside: 1x1 (C->rC) -> dw3x3 -> GELU -> 1x1 (rC->C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class LKABlock(nn.Module):
    """Pre-norm LKA block on NCHW maps: ``x + γ1·Attn(LN(x))``, then ``x + γ2·FFN(LN(x))``; γ initialised to 1e-2.

    Args:
        dim: channels.
        mlp_ratio: hidden width of the FFN relative to ``dim``. Defaults to 4.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-5)
        self.attn = LKASpatialAttention(dim)
        self.ls1 = LayerScale2d(dim, 1e-2)
        self.norm2 = LayerNorm2d(dim, eps=1e-5)
        self.mlp = ConvMixFFN(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale2d(dim, 1e-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # docs/models/msa2net.md §5 LKA block; x: (B, C, H, W)
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


# --------------------------------------------------------------------------------------------------------------------
# DAE-Former dual transformer block (the decoder blocks at 1/16 in the paper variant)
# --------------------------------------------------------------------------------------------------------------------


class EfficientAttention(nn.Module):
    """Efficient attention (Shen et al., WACV 2021) with one head, on NCHW maps: ``out = (V Kᵀ) Q``.

    Keys are soft-maxed over positions and queries over channels, so the cost is linear in the number of pixels.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.keys = nn.Conv2d(dim, dim, 1)
        self.queries = nn.Conv2d(dim, dim, 1)
        self.values = nn.Conv2d(dim, dim, 1)
        self.reprojection = nn.Conv2d(dim, dim, 1)

    fast = True  # DualTransformerBlock calls forward_tokens (no NCHW round trip); False: forward on NCHW maps

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The same attention on tokens ``(B, N, C)``: one fused key/query/value projection, no layout changes."""
        c = tokens.shape[-1]
        weight = torch.cat([self.keys.weight, self.queries.weight, self.values.weight]).flatten(1)
        bias = torch.cat([self.keys.bias, self.queries.bias, self.values.bias])
        k, q, v = F.linear(tokens, weight, bias).split(c, dim=-1)  # (B, N, C) each
        context = k.softmax(dim=1).transpose(1, 2) @ v  # keys over positions; (B, Ck, Cv)
        out = q.softmax(dim=2) @ context  # queries over channels; (B, N, Cv)
        return F.linear(out, self.reprojection.weight.flatten(1), self.reprojection.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k = self.keys(x).reshape(b, c, h * w).softmax(dim=2)  # (B, C, N)
        q = self.queries(x).reshape(b, c, h * w).softmax(dim=1)  # (B, C, N)
        v = self.values(x).reshape(b, c, h * w)  # (B, C, N)
        context = k @ v.transpose(1, 2)  # (B, Ck, Cv)
        out = (context.transpose(1, 2) @ q).reshape(b, c, h, w)  # (B, Cv, H, W)
        return self.reprojection(out)


class ChannelAttention(nn.Module):
    """Transposed (cross-covariance) attention over channels, XCiT-style, with a learnable per-head temperature.

    Args:
        dim: token channels; must be divisible by ``num_heads``.
        num_heads: heads. Defaults to 8 (hard-wired in the official code).
    """

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ChannelAttention dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # (B, N, 3C) -> 3 x (B, heads, C/heads, N)
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h d n", three=3, h=self.num_heads)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)  # (B, h, d, d)
        out = rearrange(attn @ v, "b h d n -> b n (h d)")
        return self.proj(out)


class MixFFN(nn.Module):
    """Token MLP with a depthwise 3x3 on the (H, W) grid: Linear (C->4C) -> dw3x3 -> GELU -> Linear (4C->C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        y = rearrange(self.fc1(x), "b (h w) c -> b c h w", h=h, w=w)
        y = rearrange(self.dwconv(y), "b c h w -> b (h w) c")
        return self.fc2(self.act(y))


class DualTransformerBlock(nn.Module):
    """DAE-Former dual block on tokens: efficient (spatial) attention, MixFFN, channel attention, MixFFN; pre-norm.

    Args:
        dim: token channels (divisible by 8 for the channel attention).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.efficient_attn = EfficientAttention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mix_ffn1 = MixFFN(dim, 4 * dim)
        self.norm3 = nn.LayerNorm(dim)
        self.channel_attn = ChannelAttention(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.mix_ffn2 = MixFFN(dim, 4 * dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # docs/models/msa2net.md §5 DAE-Former block; x: (B, H*W, C)
        h, w = size
        if self.efficient_attn.fast:
            x = x + self.efficient_attn.forward_tokens(self.norm1(x))
        else:
            y = rearrange(self.norm1(x), "b (h w) c -> b c h w", h=h, w=w)
            x = x + rearrange(self.efficient_attn(y), "b c h w -> b (h w) c")
        x = x + self.mix_ffn1(self.norm2(x), size)
        x = x + self.channel_attn(self.norm3(x))
        return x + self.mix_ffn2(self.norm4(x), size)


# --------------------------------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------------------------------


class PatchExpand(nn.Module):
    """Swin-UNet patch expanding: Linear (no bias) to ``scale² · out_dim``, pixel-shuffle by ``scale``, LayerNorm.

    Args:
        dim: input token channels.
        out_dim: output token channels.
        scale: upsampling factor (2 between stages, 4 for the final expand).
    """

    def __init__(self, dim: int, out_dim: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.proj = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int], head: nn.Conv2d | None = None) -> torch.Tensor:
        """Tokens ``(B, H*W, C)`` at ``size`` to ``(B, sH*sW, C')``; with a 1x1 conv ``head``, its NCHW output
        ``(B, classes, sH, sW)`` instead."""
        h, w = size
        s = self.scale
        if head is None:
            # (B, H*W, s*s*C') -> (B, sH*sW, C'), sub-pixel split ordered (p1, p2, c)
            x = rearrange(self.proj(x), "b (h w) (p1 p2 c) -> b (h p1 w p2) c", h=h, w=w, p1=s, p2=s)
            return self.norm(x)
        # LayerNorm and the 1x1 head act per output pixel, so both run before the pixels move: the one copy that
        # puts them in place then carries `classes` channels instead of C'
        y = self.norm(self.proj(x).view(x.shape[0], h, w, s, s, -1))  # (B, H, W, p1, p2, C')
        y = F.linear(y, head.weight.flatten(1), head.bias)  # (B, H, W, p1, p2, classes)
        return y.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], -1, s * h, s * w)


def _init_decoder_weights(module: nn.Module) -> None:
    # Official decoder-layer init: Xavier-uniform Linear/Conv2d weights, zero biases, unit LayerNorms.
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DecoderStage(nn.Module):
    """One decoder stage (official ``MyDecoderLayerLKA`` / ``MyDecoderLayerDAEFormer``).

    With a skip X (encoder map at this stage's resolution): ``G = Linear(tokens)``, ``F = LN(G + MASAG(X, G))`` (or
    ``LN(G + X)`` when ungated), two blocks, then PatchExpand x2 (or the final x4 expand, returning an NCHW feature
    map). Without a skip only the PatchExpand runs (the official 1/32 stage).

    Args:
        dim: channels (decoder tokens, skip and blocks all share it).
        block: ``"dae"`` (DAE-Former dual transformer blocks) or ``"lka"`` (LKA blocks).
        gated: gate the skip with MASAG; False gives the shipped 1/16 stage, ``LN(G + X)``.
        uses_skip: False for the official 1/32 stage, which only runs its PatchExpand.
        final: final stage (x4 expand to an NCHW map of ``dim`` channels) instead of x2 expand to ``dim // 2``.
        legacy_layout: reproduce the official ``.view`` reinterpretation of tokens as NCHW.
        build_unused: also build the modules this configuration never executes (official parameter parity).
    """

    def __init__(
        self,
        dim: int,
        block: str,
        *,
        gated: bool = True,
        uses_skip: bool = True,
        final: bool = False,
        legacy_layout: bool = False,
        build_unused: bool = False,
    ) -> None:
        super().__init__()
        if block not in ("dae", "lka"):
            raise ValueError(f"block must be 'dae' or 'lka', got {block!r}")
        if block == "dae" and dim % 8:
            raise ValueError(f"a DAE stage needs dim divisible by 8 (8-head channel attention), got {dim}")
        if dim % 2:
            raise ValueError(f"dim must be even (PatchExpand halves it), got {dim}")
        self.dim = dim
        self.block = block
        self.gated = gated
        self.uses_skip = uses_skip
        self.final = final
        self.legacy_layout = legacy_layout
        fuse = uses_skip or build_unused
        self.decoder_proj = nn.Linear(dim, dim) if fuse else None
        self.gate = MASAG(dim) if fuse and (gated and uses_skip or build_unused) else None
        self.fuse_norm = nn.LayerNorm(dim) if fuse else None
        if fuse:
            make = DualTransformerBlock if block == "dae" else LKABlock
            self.blocks = nn.ModuleList([make(dim), make(dim)])
        else:
            self.blocks = None
        self.expand = PatchExpand(dim, dim, 4) if final else PatchExpand(dim, dim // 2, 2)
        _init_decoder_weights(self)

    def unused_parameters(self) -> dict[str, str]:
        """Prefixes of the modules built by ``build_unused`` that this stage never runs, with the reason."""
        if not self.uses_skip:
            why = "official skip-less stage: only its PatchExpand runs (built by keep_dead_modules)"
            names = ("decoder_proj", "gate", "fuse_norm", "blocks")
            return {n: why for n in names if getattr(self, n) is not None}
        if not self.gated and self.gate is not None:
            return {"gate": "ungated stage: the official file builds a MASAG it never calls (keep_dead_modules)"}
        return {}

    def _to_image(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # (B, H*W, C) -> (B, C, H, W): a transpose, or the official memory reinterpretation (legacy)
        b, _, c = tokens.shape
        if self.legacy_layout:
            return tokens.reshape(b, c, *size)
        return tokens.transpose(1, 2).reshape(b, c, *size)

    def _to_tokens(self, image: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, H*W, C): the inverse of _to_image
        b, c, h, w = image.shape
        if self.legacy_layout:
            return image.reshape(b, h * w, c)
        return image.flatten(2).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        size: tuple[int, int],
        skip: torch.Tensor | None = None,
        head: nn.Conv2d | None = None,
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Run the stage.

        Args:
            x: decoder tokens ``(B, H*W, C)`` in raster order at ``size``.
            size: ``(H, W)`` of the tokens (and of the skip).
            skip: encoder map ``(B, C, H, W)``, or None for the skip-less 1/32 stage.
            head: final stage only: a 1x1 classifier conv; the stage then returns its logits (the same values as
                ``head(features)``, with the classifier applied before the x4 pixel shuffle).

        Returns:
            ``(tokens (B, 4HW, C/2), (2H, 2W))``, or for the final stage ``(features (B, C, 4H, 4W), (4H, 4W))``
            (logits ``(B, classes, 4H, 4W)`` with ``head``).
        """
        if head is not None and not self.final:
            raise ValueError("head is only taken by the final decoder stage")
        h, w = size
        if skip is not None:
            if not self.uses_skip:
                raise ValueError("this decoder stage was built without a skip (uses_skip=False)")
            b, c = skip.shape[:2]
            g = self._to_image(self.decoder_proj(x), size)  # G: (B, C, H, W)
            # the official code flattens the skip to raster tokens before reinterpreting it like G
            skip_img = self._to_image(skip.flatten(2).transpose(1, 2), size) if self.legacy_layout else skip
            # F = G + MASAG(X, G), docs/models/msa2net.md §2.0
            fused = g + (self.gate(skip_img, g) if self.gated else skip_img)
            fused = self.fuse_norm(fused.permute(0, 2, 3, 1))  # LayerNorm over channels: (B, H, W, C)
            if self.block == "dae":
                # tokens of the (pseudo-)image in its own raster order; the legacy scramble is never undone here
                x = fused.reshape(b, h * w, c)
                for blk in self.blocks:
                    x = blk(x, size)
            else:
                y = fused.permute(0, 3, 1, 2)  # (B, C, H, W)
                for blk in self.blocks:
                    y = blk(y)
                x = self._to_tokens(y.contiguous())
        s = self.expand.scale
        out_size = (s * h, s * w)
        if head is not None:
            return self.expand(x, size, head), out_size
        x = self.expand(x, size)
        if self.final:
            return rearrange(x, "b (h w) c -> b c h w", h=out_size[0], w=out_size[1]), out_size
        return x, out_size


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


class MSA2Net(nn.Module):
    """MSA²Net: MaxViT encoder, MASAG-gated skips, DAE-Former (1/16) and LKA (1/8, 1/4) decoder blocks.

    Unused parameters: none by default. With ``keep_dead_modules=True`` the modules the official forward never
    executes are built but never run (no gradient; DDP needs ``find_unused_parameters=True``);
    :meth:`unused_parameters` lists them.

    Args:
        in_channels: 1 (gray, repeated to 3 channels as in the official forward) or 3.
        num_classes: output logit channels. Defaults to 9 (Synapse).
        decoder: ``"paper"`` (DAE-Former blocks + MASAG at 1/16, the measured model) or ``"shipped"`` (the released
            file: LKA blocks and no gate at 1/16). Defaults to ``"paper"``.
        legacy_layout: reproduce the official ``.view`` reinterpretation of tokens as NCHW (needed for official
            weights). Defaults to False (proper transposes).
        keep_dead_modules: also build the modules the official forward never executes (the 1/32 stage's projection,
            MASAG, norm and blocks, the shipped variant's 1/16 MASAG, the backbone's 1->3 gray conv), for parameter
            parity with the official file. Defaults to False.
        pretrained: load timm's ImageNet-1k weights (``maxvit_rmlp_small_rw_224.sw_in1k``) into the encoder; needs
            network access or a timm cache. Defaults to False.
        img_size: input size the model is built for, an int or (height, width); sides must be multiples of 32 (the
            MaxViT window and grid are side/32). Defaults to 224 (the only size the official model accepts).
        encoder_name: timm MaxViT/MaxxViT model providing the four stage maps; the decoder widths follow it.
            Defaults to ``"maxvit_rmlp_small_rw_224"`` (the paper's); smaller ones only serve tests.
        fast_kernels: run the decoder's fused formulations (MASAG, LKA's dilated depthwise conv, efficient attention
            on tokens); False runs the step-by-step reference code. Same parameters and values up to float rounding.
            Defaults to True.

    Example:
        >>> model = MSA2Net(in_channels=1, num_classes=9)
        >>> model(torch.randn(2, 1, 224, 224)).shape
        torch.Size([2, 9, 224, 224])
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 9,
        decoder: str = "paper",
        legacy_layout: bool = False,
        keep_dead_modules: bool = False,
        pretrained: bool = False,
        img_size: int | Sequence[int] = 224,
        encoder_name: str = DEFAULT_ENCODER,
        fast_kernels: bool = True,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (gray, repeated to RGB) or 3, got {in_channels}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if decoder not in DECODER_VARIANTS:
            raise ValueError(f"decoder must be one of {DECODER_VARIANTS}, got {decoder!r}")
        size = to_pair(img_size, name="img_size")
        check_divisible(size, 32, what="img_size", why="MaxViT window = side/32; the paper uses 224", fix="use")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.decoder_variant = decoder
        self.legacy_layout = legacy_layout
        self.img_size = size

        try:
            self.encoder = timm.create_model(encoder_name, pretrained=pretrained, num_classes=0, img_size=size)
        except OSError as exc:  # no network and no cached weights (huggingface_hub's errors are OSErrors)
            if not pretrained:
                raise
            first = " ".join(str(exc).split())[:200]
            raise ValueError(
                f"pretrained=True: the ImageNet weights of {encoder_name!r} are neither cached nor downloadable "
                f"({type(exc).__name__}: {first}); cache them once with network access (HF_HOME) or set pretrained: "
                "false"
            ) from None
        if not hasattr(self.encoder, "forward_intermediates") or len(getattr(self.encoder, "stages", ())) != 4:
            raise ValueError(f"encoder_name must be a 4-stage timm MaxViT-family model, got {encoder_name!r}")
        # stage maps at 1/4 .. 1/32; the final LayerNorm2d is applied to the last one (forward_intermediates norm=True)
        dims = [info["num_chs"] for info in self.encoder.feature_info[1:5]]
        self.encoder_dims = tuple(dims)
        # the official backbone carries a 1->3 conv it never calls (gray input is repeated instead)
        self.gray_to_rgb = ConvNormAct(1, 3, 1, bias=True) if keep_dead_modules else None

        common = {"legacy_layout": legacy_layout, "build_unused": keep_dead_modules}
        bottleneck_block = "dae" if decoder == "paper" else "lka"
        self.stage32 = DecoderStage(dims[3], bottleneck_block, uses_skip=False, **common)
        self.stage16 = DecoderStage(dims[2], bottleneck_block, gated=decoder == "paper", **common)
        self.stage8 = DecoderStage(dims[1], "lka", **common)
        self.stage4 = DecoderStage(dims[0], "lka", final=True, **common)
        for hi, lo in zip(dims[1:], dims[:-1]):
            if hi // 2 != lo:
                raise ValueError(f"encoder widths must halve from stage to stage, got {dims}")
        self.feature_channels = dims[0]
        self.head = nn.Conv2d(dims[0], num_classes, 1)
        _init_decoder_weights(self.head)
        set_fast_kernels(self, fast_kernels)

    def validate_input_size(self, spatial: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless ``spatial`` is the size the model was built for."""
        if tuple(spatial) != self.img_size:
            raise ValueError(
                f"MSA2Net was built for {self.img_size[0]}x{self.img_size[1]} inputs (its MaxViT window and decoder "
                f"resolutions are fixed at construction), got {tuple(spatial)}; resize the input or build the model "
                f"with img_size={tuple(spatial)} (sides must be multiples of 32)"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder feature map before the 1x1 classifier, ``(B, feature_channels, H, W)``."""
        return self._decode(x)

    def _decode(self, x: torch.Tensor, head: nn.Conv2d | None = None) -> torch.Tensor:
        # features, or with `head` the logits (the final stage applies it before its pixel shuffle)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected input (B, 1 or 3, H, W), got {tuple(x.shape)}")
        self.validate_input_size(tuple(x.shape[2:]))
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)  # gray -> RGB, as the official forward does
        s4, s8, s16, s32 = self.encoder.forward_intermediates(
            x, indices=[1, 2, 3, 4], norm=True, intermediates_only=True
        )
        tokens = s32.flatten(2).transpose(1, 2)  # (B, H/32*W/32, C4), raster order
        tokens, size = self.stage32(tokens, tuple(s32.shape[2:]))
        tokens, size = self.stage16(tokens, size, s16)
        tokens, size = self.stage8(tokens, size, s8)
        out, _ = self.stage4(tokens, size, s4, head=head)
        return out

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """1x1 classifier: features -> logits."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # paper Fig. 1: encoder -> MASAG-gated decoder -> logits at input resolution; forward_head(forward_features(x))
        # computed with the 1x1 classifier before the final pixel shuffle (fewer channels to move)
        return self._decode(x, head=self.head)

    def unused_parameters(self) -> dict[str, str]:
        """Prefixes of the never-executed modules kept by ``keep_dead_modules=True`` (``{}`` otherwise), with why."""
        dead = {}
        if self.gray_to_rgb is not None:
            dead["gray_to_rgb"] = "official backbone's 1->3 gray conv, never called (gray input is repeated)"
        for name in ("stage32", "stage16", "stage8", "stage4"):
            dead.update({f"{name}.{k}": why for k, why in getattr(self, name).unused_parameters().items()})
        return dead


# --------------------------------------------------------------------------------------------------------------------
# Official weights
# --------------------------------------------------------------------------------------------------------------------

# official sub-key prefix -> ours, inside a MASAG (``ag_attn.``)
_MASAG_RENAME = (
    ("multi.local.dconv.0.", "local_context.dw.conv."),
    ("multi.local.dconv.1.", "local_context.dw.bn."),
    ("multi.local.dconv.3.", "local_context.dilated.conv."),
    ("multi.local.dconv.4.", "local_context.dilated.bn."),
    ("multi.local.proj.0.", "local_context.proj.conv."),
    ("multi.local.proj.1.", "local_context.proj.bn."),
    ("multi.global_.proj.0.", "global_context.proj.conv."),
    ("multi.global_.proj.1.", "global_context.proj.bn."),
    ("multi.bn.", "fuse_norm."),
    ("selection.", "selection."),
    ("proj.", "recalibrate.conv."),
    ("bn.", "recalibrate.bn."),
    ("conv_block.0.", "out_proj.conv."),
    ("bn_2.", "out_proj.bn."),
)
# inside an LKA block (``layer_lka_{1,2}.``)
_LKA_RENAME = (
    ("layer_scale_1", "ls1.gamma"),
    ("layer_scale_2", "ls2.gamma"),
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("attn.proj_1.", "attn.proj_in."),
    ("attn.proj_2.", "attn.proj_out."),
    ("attn.spatial_gating_unit.conv0.", "attn.lka.conv_dw."),
    ("attn.spatial_gating_unit.conv_spatial.", "attn.lka.conv_dw_dilated."),
    ("attn.spatial_gating_unit.conv1.", "attn.lka.conv_pw."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv."),
    ("mlp.fc2.", "mlp.fc2."),
)
# inside a DAE-Former block (``tran_layer{1,2}.``)
_DAE_RENAME = (
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("norm3.", "norm3."),
    ("norm4.", "norm4."),
    ("attn.", "efficient_attn."),
    ("channel_attn.", "channel_attn."),
    ("mlp1.dwconv.dwconv.", "mix_ffn1.dwconv."),
    ("mlp1.", "mix_ffn1."),
    ("mlp2.dwconv.dwconv.", "mix_ffn2.dwconv."),
    ("mlp2.", "mix_ffn2."),
)
# inside a decoder layer (``decoder_k.``); each entry: official prefix, our prefix, rename table for the rest
_STAGE_RENAME: tuple[tuple[str, str, tuple[tuple[str, str], ...] | None], ...] = (
    ("x1_linear.", "decoder_proj.", None),
    ("ag_attn_norm.", "fuse_norm.", None),
    ("ag_attn.", "gate.", _MASAG_RENAME),
    ("layer_up.expand.", "expand.proj.", None),
    ("layer_up.norm.", "expand.norm.", None),
    ("tran_layer1.", "blocks.0.", _DAE_RENAME),
    ("tran_layer2.", "blocks.1.", _DAE_RENAME),
    ("layer_lka_1.", "blocks.0.", _LKA_RENAME),
    ("layer_lka_2.", "blocks.1.", _LKA_RENAME),
)
_STAGE_NAMES = {"decoder_3.": "stage32.", "decoder_2.": "stage16.", "decoder_1.": "stage8.", "decoder_0.": "stage4."}


def _rename_by_table(key: str, table: Sequence[tuple[str, str]]) -> str:
    for official, ours in table:
        if key.startswith(official):
            return ours + key[len(official) :]
    raise KeyError(key)


def _rename_stage_key(key: str) -> str:
    """Official decoder-layer key (without the ``decoder_k.`` prefix) -> ours (without the stage prefix)."""
    for official, ours, sub in _STAGE_RENAME:
        if key.startswith(official):
            rest = key[len(official) :]
            return ours + (_rename_by_table(rest, sub) if sub else rest)
    raise KeyError(key)


def official_rename(key: str) -> str:
    """Official full-model ``Msa2Net`` state-dict key -> our :class:`MSA2Net` key (dead modules included)."""
    if key.startswith("backbone.backbone."):
        return "encoder." + key[len("backbone.backbone.") :]
    if key.startswith("backbone.conv.0."):
        return "gray_to_rgb.conv." + key[len("backbone.conv.0.") :]
    if key.startswith("backbone.conv.1."):
        return "gray_to_rgb.bn." + key[len("backbone.conv.1.") :]
    if key.startswith("decoder_0.last_layer."):
        return "head." + key[len("decoder_0.last_layer.") :]
    for official, ours in _STAGE_NAMES.items():
        if key.startswith(official):
            return ours + _rename_stage_key(key[len(official) :])
    raise KeyError(f"unexpected official MSA2Net key {key!r}")


def official_dead_prefixes(variant: str) -> tuple[str, ...]:
    """Official key prefixes of modules the official forward never executes, for ``variant`` (paper / shipped)."""
    if variant not in DECODER_VARIANTS:
        raise ValueError(f"variant must be one of {DECODER_VARIANTS}, got {variant!r}")
    blocks = ("tran_layer1", "tran_layer2") if variant == "paper" else ("layer_lka_1", "layer_lka_2")
    dead = ["backbone.conv", "decoder_3.x1_linear", "decoder_3.ag_attn", "decoder_3.ag_attn_norm"]
    dead += [f"decoder_3.{b}" for b in blocks]
    if variant == "shipped":
        dead.append("decoder_2.ag_attn")
    return tuple(dead)


def _is_under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key.startswith(p + ".") for p in prefixes)


def _detect_variant(state_dict: Mapping[str, torch.Tensor], prefix: str) -> str:
    has_dae = any(k.startswith(prefix + "tran_layer1.") for k in state_dict)
    has_lka = any(k.startswith(prefix + "layer_lka_1.") for k in state_dict)
    if has_dae == has_lka:
        raise ValueError(
            f"cannot tell the decoder variant: expected either {prefix}tran_layer1.* (paper) or {prefix}layer_lka_1.* "
            "(shipped) keys"
        )
    return "paper" if has_dae else "shipped"


@register_official("networks.msa2net.Msa2Net", "networks.msa2net_daeformer_variant.Msa2Net")
def _load_official_msa2net(
    state_dict: Mapping[str, torch.Tensor], num_classes: int = 9, token_mlp_mode: str = "mix_skip", **kwargs: Any
) -> MSA2Net:
    """Official full model -> :class:`MSA2Net` with ``legacy_layout=True``; the variant is read from the keys.

    ``decoder_2.tran_layer1.*`` keys mean the paper variant, ``decoder_2.layer_lka_1.*`` the released file's. Keys
    of never-executed modules are dropped with a warning. ``token_mlp_mode`` is accepted and ignored, as officially.
    Extra keyword arguments (``in_channels``, ``img_size``, ...) go to :class:`MSA2Net`.
    """
    del token_mlp_mode  # unused by the official model too
    variant = _detect_variant(state_dict, "decoder_2.")
    model = MSA2Net(num_classes=num_classes, decoder=variant, legacy_layout=True, **kwargs)
    ours = model.state_dict()
    dead = official_dead_prefixes(variant)

    def rename(key: str) -> str | None:
        new = official_rename(key)
        return None if _is_under(key, dead) and new not in ours else new

    return load_mapped(model, state_dict, rename, dead_keys=dead)


@register_official("networks.masag.MultiScaleGatedAttn")
def _load_official_masag(state_dict: Mapping[str, torch.Tensor], dim: int) -> MASAG:
    """Official ``MultiScaleGatedAttn(dim)`` -> :class:`MASAG`."""
    model = MASAG(dim)
    return load_mapped(model, state_dict, lambda k: _rename_by_table(k, _MASAG_RENAME))


class OfficialDecoderLayer(nn.Module):
    """Adapter with the official decoder-layer signature ``forward(x1, x2=None)`` around a :class:`DecoderStage`.

    ``x1``: tokens ``(B, H*W, C)``; ``x2``: the skip channels-last ``(B, H, W, C)`` or None. Returns tokens, or logits
    ``(B, n_class, 4H, 4W)`` for the last layer, like the official module.
    """

    def __init__(self, stage: DecoderStage, size: tuple[int, int], head: nn.Conv2d | None = None) -> None:
        super().__init__()
        self.stage = stage
        self.size = size
        self.head = head

    def forward(self, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        skip = None if x2 is None else x2.permute(0, 3, 1, 2)  # (B, C, H, W)
        out, _ = self.stage(x1, self.size, skip, head=self.head)
        return out


def _decoder_layer_loader(block: str | None):
    def loader(
        state_dict: Mapping[str, torch.Tensor],
        input_size: Sequence[int],
        in_out_chan: Sequence[int],
        head_count: int = 1,
        token_mlp_mode: str = "mix_skip",
        reduction_ratio: int = 1,
        n_class: int = 9,
        is_last: bool = False,
    ) -> OfficialDecoderLayer:
        del head_count, token_mlp_mode, reduction_ratio  # accepted but unused by the official layers
        if len(set(in_out_chan)) != 1:
            raise ValueError(f"in_out_chan entries must all be equal (as in MSA2Net), got {list(in_out_chan)}")
        dim = int(in_out_chan[0])
        variant = "lka" if block == "lka" else _detect_variant(state_dict, "")
        stage_block = "dae" if variant == "paper" else "lka"
        gated = variant != "shipped"
        stage = DecoderStage(dim, stage_block, gated=gated, final=is_last, legacy_layout=True)
        head = nn.Conv2d(dim, n_class, 1) if is_last else None
        model = OfficialDecoderLayer(stage, to_pair(input_size, name="input_size"), head)
        dead = ("ag_attn",) if not gated else ()

        def rename(key: str) -> str | None:
            if _is_under(key, dead):
                return None
            if key.startswith("last_layer."):
                return "head." + key[len("last_layer.") :]
            return "stage." + _rename_stage_key(key)

        return load_mapped(model, state_dict, rename, dead_keys=dead)

    return loader


register_official("networks.msa2net.MyDecoderLayerLKA")(_decoder_layer_loader("lka"))
# the released file's MyDecoderLayerDAEFormer (shadowed: LKA blocks, MASAG dead) and the paper variant's (DAE blocks +
# MASAG) share a name; the loader tells them apart by their keys
register_official(
    "networks.msa2net.MyDecoderLayerDAEFormer", "networks.msa2net_daeformer_variant.MyDecoderLayerDAEFormer"
)(_decoder_layer_loader(None))


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------

_PAPER = (
    "Kolahi et al., MSA²Net: Multi-scale Adaptive Attention-guided Network for Medical Image Segmentation, BMVC 2024"
)


@register_model(
    "msa2net",
    options_from=MSA2Net,
    paper=_PAPER,
    official_repo="xmindflow/MSA-2Net",
    input_divisor=32,
    default_input_size=(224, 224),
    test_kwargs={"encoder_name": "maxvit_rmlp_pico_rw_256", "img_size": 64},  # same decoder, a small timm MaxViT
    test_input_size=(64, 64),
    size_kwargs=lambda size: {"img_size": size},
)
def msa2net(in_channels: int, num_classes: int, **kwargs: Any) -> MSA2Net:
    """MSA²Net (default: paper decoder, executed modules only, proper token transposes, 224x224).

    Args:
        in_channels: 1 (gray, repeated to RGB) or 3.
        num_classes: output logit channels.
        **kwargs: :class:`MSA2Net` options (``decoder``, ``legacy_layout``, ``keep_dead_modules``, ``pretrained``,
            ``img_size``, ``encoder_name``).
    """
    return MSA2Net(in_channels, num_classes, **kwargs)
