"""MT-UNet (Mixed Transformer U-Net), the backbone of the SALSTM/LSTMSA release.

Paper:
    H. Wang, S. Xie, L. Lin, Y. Iwamoto, X.-H. Han, Y.-W. Chen, R. Tong, "Mixed Transformer U-Net for Medical
    Image Segmentation", ICASSP 2022. arXiv:2111.04734. Official code: github.com/Dootmaan/MT-UNet.
Version reproduced: the copy shipped as ``code/ACDC/Baseline/encoder.py`` in github.com/yeshunlong/SALSTM at
e45f8fa98209fe32872df0d5de9a7b52a25e9a7b (docs/models/salstm.md §4.1), with exactly its parameter count:
79,075,064 for ``MTUNet(4)`` and 79,078,964 for ``MTUNet(64)`` (the SALSTM encoder), at 224x224.

Layout: a conv stem (three residual double convs with max pooling, skips S0-S2) -> 1x1 projection and a learned
position embedding on the 28x28 tokens -> two encoder stages of two Mixed Transformer Modules (MTM) each, with
2x2 stride-2 conv downsampling (skips T0, T1) -> two bottleneck MTMs at 7x7 -> two transformer decoder stages
-> a conv decoder back to 224x224 with 64 channels -> 1x1 classifier. An MTM is pre-norm
``x + LGG-SA(LN(x))``, ``x + EA(LN(x))``: Local-Global Gaussian-weighted self-attention (8-head attention in 4x4
windows; window pooling to one token per window; single-head axial attention on that grid with a learned Gaussian
distance penalty; x4 bilinear upsampling and a 1x1 fusion with the local map) and multi-head External Attention.

Differences from the official code, and the option that restores each:

- The Gaussian-weighted axial step is vectorised (two softmaxes and two einsums) instead of a Python loop over
  the grid cells (268 iterations per forward); same math (docs/models/salstm.md §8.1).
- Window padding (14 -> 16 and 7 -> 8 sides): the official code zero-pads but also copies the input's bottom-right
  corner block into the padded corner, leaving the bottom and right strips zero (docs/models/salstm.md §7, item
  17). The default here is plain zero padding; ``window_padding="official"`` reproduces the corner copy (used by
  the official loader).
- Kept for the exact parameter count and weight compatibility, but with no effect (as upstream): the axial
  attention's output Linear, never called (3,806,720 parameters over the 10 MTMs; ``unused_params=False`` drops
  it), and the Gaussian ``bias``, a constant inside a softmax (its gradient is zero).
- Any ``in_channels``: 1-channel inputs are repeated to 3 channels as upstream (so the stem keeps the official 3
  input channels); other counts get a stem of that width. ``img_size`` (multiple of 32) sizes the position
  embedding; the release is 224 and the model only takes that size. ``stem_channels`` / ``embed_dim`` shrink the
  network for tests (release: 64 / 256).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.layers import ConvNormAct, check_divisible
from attnseg.models.official import load_mapped, register_official
from attnseg.models.registry import register_model

__all__ = [
    "ResidualDoubleConv",
    "WindowAttention",
    "WindowPooling",
    "AxialScores",
    "GaussianWeighting",
    "LocalGlobalGaussianAttention",
    "ExternalAttention",
    "MixedTransformerModule",
    "MTUNet",
    "official_mtunet_rename",
]

_PAPER = "Wang et al., Mixed Transformer U-Net for Medical Image Segmentation, ICASSP 2022 (arXiv:2111.04734)"
_WINDOW = 4  # side of the local attention windows
_HEADS = 8  # heads of the window attention (the external attention uses 4x as many)
_MEMORY = 64  # external-attention memory slots (256 // 4 upstream)
_TEST_KWARGS = {"img_size": 64, "stem_channels": 8, "embed_dim": 16}  # CPU-sized, for the conformance suite


class ResidualDoubleConv(nn.Module):
    """Two 3x3 conv-BN (ReLU after the first); the residual branch is a 1x1 conv-BN of the second conv's output.

    The conv-BN(-ReLU) blocks are timm's ``ConvNormAct`` (bias-free convs, except the residual 1x1), named
    ``conv`` / ``bn`` inside as in the official code.

    Args:
        cin: input channels.
        cout: output channels.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, 3, padding=1)
        self.conv2 = ConvNormAct(cout, cout, 3, padding=1, apply_act=False)
        self.res = ConvNormAct(cout, cout, 1, bias=True, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # docs/models/salstm.md §4.1 DoubleConv: z = conv2(conv1(x)); relu(z + BN(conv1x1(z)))
        z = self.conv2(self.conv1(x))
        return F.relu(z + self.res(z))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window: tokens ``[..., N, C]`` -> ``[..., N, C]``.

    Args:
        dim: channels.
        num_heads: heads (head size ``dim // num_heads``, scale ``head_size ** -0.5``). Defaults to 8.
    """

    def __init__(self, dim: int, num_heads: int = _HEADS) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # LGG-SA local branch (docs/models/salstm.md §4.1 CSA, window branch)
        *lead, n, c = x.shape
        # [..., N, C] -> [windows, heads, N, C/heads]: 4-D; with a 6-D SDPA here inductor's CPU backward of this block
        # returned wrong gradients (torch 2.14.1; tests/models/test_mtunet.py::test_compiled_window_attention_gradients)
        x = x.reshape(-1, n, c)
        lins = (self.q, self.k, self.v)
        q, k, v = (lin(x).view(-1, n, self.num_heads, c // self.num_heads).transpose(1, 2) for lin in lins)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(*lead, n, c))


class WindowPooling(nn.Module):
    """One token per window: softmax weights over the window's positions from its mean token ("DlightConv").

    Args:
        dim: channels.
        window_tokens: tokens per window (16 for 4x4 windows).
    """

    def __init__(self, dim: int, window_tokens: int = _WINDOW * _WINDOW) -> None:
        super().__init__()
        self.score = nn.Linear(dim, window_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, p, q, N, C] -> [B, p, q, C]: weighted sum over the N window positions
        weights = torch.softmax(self.score(x.mean(dim=-2)), dim=-1)
        return (x * weights.unsqueeze(-1)).sum(dim=-2)


class AxialScores(nn.Module):
    """Single-head axial scores on the pooled grid: unscaled row scores, column scores and the values.

    Args:
        dim: channels.
        unused_params: keep the official output Linear, which the official forward never calls. Defaults to True.
    """

    def __init__(self, dim: int, unused_params: bool = True) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out_unused = nn.Linear(dim, dim) if unused_params else None  # dead upstream; kept for the count

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # docs/models/salstm.md §4.1 axial branch:
        # rows[b, r, c, j] = q[r, c].k[r, j]; cols[b, c, r, i] = q[r, c].k[i, c]
        q, k = self.q(x), self.k(x)
        rows = q @ k.transpose(-1, -2)  # [B, p, q, q]
        cols = q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2)  # [B, q, p, p]
        return rows, cols, self.v(x)


class GaussianWeighting(nn.Module):
    """Axial attention with a learned Gaussian penalty on the distance to the query cell, vectorised.

    For cell (r, c): row weights ``softmax_j(rows[r, c, j] - shift (j - c)^2 - bias)`` and column weights
    ``softmax_i(cols[c, r, i] - shift (i - r)^2 - bias)``; output = row-weighted values of row r plus column-weighted
    values of column c. ``bias`` cancels in the softmax (kept for weight compatibility).
    """

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(-torch.randn(1).abs())
        self.shift = nn.Parameter(torch.randn(1).abs())

    def forward(self, rows: torch.Tensor, cols: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # docs/models/salstm.md §4.1 GaussianTrans, all grid cells at once instead of the official loop
        p, q = v.shape[1], v.shape[2]
        idx_q = torch.arange(q, device=v.device, dtype=v.dtype)
        idx_p = torch.arange(p, device=v.device, dtype=v.dtype)
        dist_q = (idx_q[None, :] - idx_q[:, None]) ** 2  # [c, j]
        dist_p = (idx_p[None, :] - idx_p[:, None]) ** 2  # [r, i]
        a_row = torch.softmax(rows - (self.shift * dist_q + self.bias), dim=-1)  # [B, r, c, j]
        a_col = torch.softmax(cols - (self.shift * dist_p + self.bias), dim=-1)  # [B, c, r, i]
        return torch.einsum("brcj,brjd->brcd", a_row, v) + torch.einsum("bcri,bicd->brcd", a_col, v)


class LocalGlobalGaussianAttention(nn.Module):
    """LGG-SA, MT-UNet's Local-Global Gaussian-weighted Self-Attention.

    Window attention (local) + Gaussian-weighted axial attention over pooled windows (global).

    Args:
        dim: channels.
        window_padding: ``"zeros"`` or ``"official"`` (zeros plus the official bottom-right corner copy).
            Defaults to "zeros".
        unused_params: keep the never-called axial output Linear (official count). Defaults to True.
    """

    def __init__(self, dim: int, window_padding: str = "zeros", unused_params: bool = True) -> None:
        super().__init__()
        self.window_padding = window_padding
        self.window_attn = WindowAttention(dim)
        self.window_pool = WindowPooling(dim)
        self.axial = AxialScores(dim, unused_params)
        self.gaussian = GaussianWeighting()
        self.fuse = nn.Conv2d(2 * dim, dim, 1)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ph, pw = -h % _WINDOW, -w % _WINDOW
        if ph == 0 and pw == 0:
            return x
        padded = F.pad(x, (0, 0, 0, pw, 0, ph))
        if self.window_padding == "official" and ph and pw:
            # Official quirk: the input's bottom-right ph x pw block is copied into the padded corner only.
            padded = padded.clone()
            padded[:, h:, w:] = x[:, h - ph :, w - pw :]
        return padded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # MT-UNet LGG-SA (docs/models/salstm.md §4.1 CSA); x: [B, H, W, C]
        b, h, w, c = x.shape
        xp = self._pad(x)
        p, q = xp.shape[1] // _WINDOW, xp.shape[2] // _WINDOW
        # [B, H', W', C] -> [B, p, q, 16, C]: 4x4 windows, row-major inside each window
        win = xp.view(b, p, _WINDOW, q, _WINDOW, c).transpose(2, 3).reshape(b, p, q, _WINDOW * _WINDOW, c)
        win = self.window_attn(win)
        local = win.view(b, p, q, _WINDOW, _WINDOW, c).transpose(2, 3).reshape(b, p * _WINDOW, q * _WINDOW, c)
        grid = self.gaussian(*self.axial(self.window_pool(win)))  # [B, p, q, C]
        up = F.interpolate(grid.permute(0, 3, 1, 2), scale_factor=_WINDOW, mode="bilinear", align_corners=True)
        fused = self.fuse(torch.cat([up, local.permute(0, 3, 1, 2)], dim=1))  # [global_up | local]
        return fused[:, :, :h, :w].permute(0, 2, 3, 1)


class ExternalAttention(nn.Module):
    """Multi-head external attention: 32 heads of ``dim/8`` channels against 64 learned memory slots.

    Args:
        dim: channels (a multiple of 8).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_heads = 4 * _HEADS
        head = 4 * dim // self.num_heads
        self.expand = nn.Linear(dim, 4 * dim)
        self.memory_key = nn.Linear(head, _MEMORY)
        self.memory_value = nn.Linear(_MEMORY, head)
        self.proj = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # MT-UNet EA (docs/models/salstm.md §4.1 MEA): softmax over tokens, then normalise over the memory slots
        b, h, w, c = x.shape
        t = self.expand(x.reshape(b, h * w, c)).view(b, h * w, self.num_heads, -1).transpose(1, 2)  # [B, 32, N, d]
        attn = torch.softmax(self.memory_key(t), dim=-2)
        attn = attn / (1e-9 + attn.sum(dim=-1, keepdim=True))
        out = self.memory_value(attn).transpose(1, 2).reshape(b, h * w, 4 * c)
        return self.proj(out).view(b, h, w, c)


class MixedTransformerModule(nn.Module):
    """MTM: ``x + LGG-SA(LN(x))`` then ``x + EA(LN(x))`` on ``[B, H, W, C]`` (no MLP).

    Args:
        dim: channels.
        window_padding: see :class:`LocalGlobalGaussianAttention`. Defaults to "zeros".
        unused_params: keep the never-called axial output Linear. Defaults to True.
    """

    def __init__(self, dim: int, window_padding: str = "zeros", unused_params: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.lgg_sa = LocalGlobalGaussianAttention(dim, window_padding, unused_params)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ea = ExternalAttention(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # MT-UNet MTM (docs/models/salstm.md §4.1 EA-module)
        x = x + self.lgg_sa(self.norm1(x))
        return x + self.ea(self.norm2(x))


class _ConvStem(nn.Module):
    def __init__(self, cin: int, s: int, e: int, tokens: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            [ResidualDoubleConv(cin, s), ResidualDoubleConv(s, 2 * s), ResidualDoubleConv(2 * s, 4 * s)]
        )
        self.proj = ConvNormAct(4 * s, e, kernel_size=1, padding=0)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, e))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for level in self.levels:
            x = level(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.proj(x)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2) + self.pos_embed  # [B, HW, C] + learned position embedding
        return tokens.view(b, h, w, c), skips


class _EncoderStage(nn.Module):
    def __init__(self, dim: int, **mtm: Any) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([MixedTransformerModule(dim, **mtm) for _ in range(2)])
        self.down = ConvNormAct(dim, 2 * dim, kernel_size=2, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            x = block(x)
        skip = x.permute(0, 3, 1, 2)  # [B, H, W, C] -> [B, C, H, W]
        return self.down(skip).permute(0, 2, 3, 1), skip


class _DecoderStage(nn.Module):
    def __init__(self, dim: int, reduce: bool, **mtm: Any) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.reduce = nn.Conv2d(dim, dim // 2, 1) if reduce else None
        width = dim // 2 if reduce else dim
        self.blocks = nn.ModuleList([MixedTransformerModule(width, **mtm) for _ in range(2)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.up(x), skip], dim=1)  # [up | skip]
        if self.reduce is not None:
            x = self.reduce(x)
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        return x.permute(0, 3, 1, 2)


class _ConvDecoder(nn.Module):
    def __init__(self, cin: int, s: int) -> None:
        super().__init__()
        self.ups = nn.ModuleList(
            [
                nn.ConvTranspose2d(cin, 4 * s, 2, stride=2),
                nn.ConvTranspose2d(4 * s, 2 * s, 2, 2),
                nn.ConvTranspose2d(2 * s, s, 2, stride=2),
            ]
        )
        self.levels = nn.ModuleList(
            [ResidualDoubleConv(8 * s, 4 * s), ResidualDoubleConv(4 * s, 2 * s), ResidualDoubleConv(2 * s, s)]
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for up, level, skip in zip(self.ups, self.levels, reversed(skips)):
            x = level(torch.cat([skip, up(x)], dim=1))  # [skip | up]
        return x


class MTUNet(nn.Module):
    """Mixed Transformer U-Net with the attnseg feature interface.

    Unused parameters: with ``unused_params=True`` (the default, for the official parameter count and weight
    compatibility) every Mixed Transformer Module keeps the axial attention's output Linear (``*.axial.out_unused``),
    which the official forward never calls, so it never receives a gradient; :meth:`unused_parameters` lists them
    (DDP then needs ``find_unused_parameters=True``). ``unused_params=False`` drops them and the list is empty.

    Args:
        in_channels: image channels; 1-channel inputs are repeated to 3 as upstream.
        num_classes: logit channels (4 for ACDC; 64 as the SALSTM encoder).
        img_size: the (square) input side, a multiple of 32; sizes the position embedding. Defaults to 224.
        stem_channels: first conv width (release 64). Defaults to 64.
        embed_dim: first transformer width, a multiple of 8 (release 256). Defaults to 256.
        window_padding: ``"zeros"`` or ``"official"`` (corner-copy quirk). Defaults to "zeros".
        unused_params: keep the 3,806,720 never-executed official parameters (exact count). Defaults to True.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        img_size: int = 224,
        stem_channels: int = 64,
        embed_dim: int = 256,
        window_padding: str = "zeros",
        unused_params: bool = True,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        check_divisible((img_size,), 32, what="img_size", why="three poolings + two strided convs", fix="use")
        if stem_channels < 1:
            raise ValueError(f"stem_channels must be >= 1, got {stem_channels}")
        if embed_dim < 8 or embed_dim % 8:
            raise ValueError(f"embed_dim must be a positive multiple of 8 (8 attention heads), got {embed_dim}")
        if window_padding not in ("zeros", "official"):
            raise ValueError(f"window_padding must be 'zeros' or 'official', got {window_padding!r}")
        s, e = stem_channels, embed_dim
        self.img_size = img_size
        self.in_channels = in_channels
        self.repeat_gray = in_channels == 1  # official: a 1-channel image is repeated to 3 channels
        mtm = dict(window_padding=window_padding, unused_params=unused_params)
        self.stem = _ConvStem(3 if self.repeat_gray else in_channels, s, e, (img_size // 8) ** 2)
        self.encoder = nn.ModuleList([_EncoderStage(e, **mtm), _EncoderStage(2 * e, **mtm)])
        self.bottleneck = nn.ModuleList([MixedTransformerModule(4 * e, **mtm) for _ in range(2)])
        self.decoder = nn.ModuleList([_DecoderStage(4 * e, reduce=True, **mtm), _DecoderStage(2 * e, False, **mtm)])
        self.conv_decoder = _ConvDecoder(2 * e, s)
        self.classifier = nn.Conv2d(s, num_classes, 1)
        self.feature_channels = s

    def validate_input_size(self, spatial: tuple[int, ...]) -> None:
        if tuple(spatial) != (self.img_size, self.img_size):
            raise ValueError(
                f"MT-UNet takes only {self.img_size}x{self.img_size} inputs (learned position embedding of "
                f"{(self.img_size // 8) ** 2} tokens), got {tuple(spatial)}; resize to {self.img_size} or build with "
                f"img_size=<side, multiple of 32>"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.validate_input_size(tuple(x.shape[2:]))
        if self.repeat_gray:
            x = x.expand(-1, 3, -1, -1)
        # docs/models/salstm.md §4.1 table, top to bottom
        x, conv_skips = self.stem(x)  # [B, H/8, W/8, e]
        skips = []
        for stage in self.encoder:
            x, skip = stage(x)
            skips.append(skip)
        for block in self.bottleneck:
            x = block(x)
        x = x.permute(0, 3, 1, 2)  # [B, 4e, H/32, W/32]
        for stage, skip in zip(self.decoder, reversed(skips)):
            x = stage(x, skip)
        return self.conv_decoder(x, conv_skips)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def unused_parameters(self) -> dict[str, str]:
        """Prefixes of the parameters the forward never uses (the kept official axial output Linears), with why."""
        reason = "official axial output Linear, never called upstream; kept for the parameter count (unused_params)"
        return {
            f"{name}.out_unused": reason
            for name, module in self.named_modules()
            if isinstance(module, AxialScores) and module.out_unused is not None
        }


# ----------------------------------------------------------------------------------------------------------------
# Official weights (encoder.MTUNet of the SALSTM release)

_PREFIX_RENAMES = [
    (r"^stem\.model\.res(\d)\.", lambda m: f"stem.levels.{int(m[1]) - 1}."),
    (r"^stem\.trans_dim\.", "stem.proj."),
    (r"^stem\.position_embedding$", "stem.pos_embed"),
    (r"^encoder\.(\d)\.block\.2\.", r"encoder.\1.down."),
    (r"^encoder\.(\d)\.block\.([01])\.", r"encoder.\1.blocks.\2."),
    (r"^decoder\.0\.block\.0\.", "decoder.0.up."),
    (r"^decoder\.0\.block\.1\.", "decoder.0.reduce."),
    (r"^decoder\.0\.block\.([23])\.", lambda m: f"decoder.0.blocks.{int(m[1]) - 2}."),
    (r"^decoder\.1\.block\.0\.", "decoder.1.up."),
    (r"^decoder\.1\.block\.([12])\.", lambda m: f"decoder.1.blocks.{int(m[1]) - 1}."),
    (r"^decoder_stem\.block\.trans(\d)\.", lambda m: f"conv_decoder.ups.{int(m[1]) - 1}."),
    (r"^decoder_stem\.block\.res(\d)\.", lambda m: f"conv_decoder.levels.{int(m[1]) - 1}."),
    (r"^SegmentationHead\.", "classifier."),
]
_INNER_RENAMES = [
    # inside the transformer modules
    (r"\.SlayerNorm\.", ".norm1."),
    (r"\.ElayerNorm\.", ".norm2."),
    (r"\.CSAttention\.win_atten\.attention\.", ".lgg_sa.window_attn."),
    (r"\.CSAttention\.dlightconv\.linear\.", ".lgg_sa.window_pool.score."),
    (r"\.CSAttention\.global_atten\.", ".lgg_sa.axial."),
    (r"\.CSAttention\.gaussiantrans\.", ".lgg_sa.gaussian."),
    (r"\.CSAttention\.queeze\.", ".lgg_sa.fuse."),
    (r"\.EAttention\.query_liner\.", ".ea.expand."),
    (r"\.EAttention\.linear_0\.", ".ea.memory_key."),
    (r"\.EAttention\.linear_1\.", ".ea.memory_value."),
    (r"\.EAttention\.proj\.", ".ea.proj."),
    (r"\.window_attn\.(query|key|value)_layer\.", lambda m: f".window_attn.{m[1][0]}."),
    (r"\.window_attn\.out\.", ".window_attn.proj."),
    (r"\.axial\.(query|key|value)_layer\.", lambda m: f".axial.{m[1][0]}."),
    (r"\.axial\.out\.", ".axial.out_unused."),
    # residual double convs and conv-BN-ReLU blocks
    (r"\.conv\.0\.", ".conv1."),
    (r"\.conv\.1\.", ".conv2."),
]
_LEAF = re.compile(r"^(stem\.levels|conv_decoder\.levels)\.(\d)\.(conv1|bn)\.")


def official_mtunet_rename(key: str) -> str:
    """Official ``encoder.MTUNet`` state-dict key -> our :class:`MTUNet` key."""
    for pattern, repl in _PREFIX_RENAMES:
        key = re.sub(pattern, repl, key)
    # The double conv's residual 1x1 conv/BN are official 'conv1'/'bn' at its top level: rename before '.conv.0.'.
    m = _LEAF.match(key)
    if m:
        key = f"{m[1]}.{m[2]}.res.{'conv' if m[3] == 'conv1' else 'bn'}." + key[m.end() :]
    for pattern, repl in _INNER_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


@register_official("encoder.MTUNet")
def _load_official_mtunet(state_dict: dict[str, torch.Tensor], out_ch: int = 4) -> MTUNet:
    """``encoder.MTUNet(out_ch)`` of the SALSTM release (1- or 3-channel 224x224 input)."""
    model = MTUNet(in_channels=1, num_classes=out_ch, window_padding="official")
    return load_mapped(model, state_dict, official_mtunet_rename)


def _square_img_size(size: tuple[int, ...]) -> dict[str, Any]:
    """MT-UNet's position embedding is built for one square side (``img_size``)."""
    return {"img_size": size[0]} if len(size) == 2 and size[0] == size[1] else {}


@register_model(
    "mtunet",
    options_from=MTUNet,
    paper=_PAPER,
    official_repo="Dootmaan/MT-UNet",
    input_divisor=32,
    default_input_size=(224, 224),
    test_kwargs=_TEST_KWARGS,
    test_input_size=(64, 64),
    size_kwargs=_square_img_size,
)
def mtunet(in_channels: int, num_classes: int, **kwargs: Any) -> MTUNet:
    """MT-UNet as released with SALSTM (224x224; 79,075,064 parameters at 4 classes).

    Args:
        in_channels: image channels.
        num_classes: logit channels.
        **kwargs: :class:`MTUNet` options (``img_size``, ``stem_channels``, ``embed_dim``, ``window_padding``,
            ``unused_params``).
    """
    return MTUNet(in_channels, num_classes, **kwargs)
