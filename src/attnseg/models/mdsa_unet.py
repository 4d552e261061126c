"""MDSA-UNet: Multi-Scale Dynamic Sparse Attention UNet.

Paper:
    Xiang Li, Chong Fu, Qun Wang, Wenchao Zhang, Chen Ye, Junxin Chen, Chiu-Wing Sham, "Multi-Scale Dynamic Sparse
    Attention UNet for Medical Image Segmentation", IEEE Journal of Biomedical and Health Informatics 29(9):6754-6766,
    2025. DOI 10.1109/JBHI.2025.3555805.

    @article{li2025mdsaunet,
      title   = {Multi-Scale Dynamic Sparse Attention {UNet} for Medical Image Segmentation},
      author  = {Li, Xiang and Fu, Chong and Wang, Qun and Zhang, Wenchao and Ye, Chen and Chen, Junxin and
                 Sham, Chiu-Wing},
      journal = {IEEE Journal of Biomedical and Health Informatics},
      volume  = {29}, number = {9}, pages = {6754--6766}, year = {2025},
      doi     = {10.1109/JBHI.2025.3555805}}

Official code: github.com/NEU-LX/MDSA-UNet at commit d71b6fbc28c2af010391ff6cf24874fb64e7b7d1 (``MDSAUNet.py``,
``bra_legacy.py``). The repository has no LICENSE file and ships no weights. This file is an independent
re-implementation (docs/models/mdsa_unet.md); ``from_official("MDSAUNet.MDSAUNet", state_dict, **kwargs)`` loads
official state dicts, and the official-equivalence fixtures prove the match.

Released architecture (the default here, 6,576,225 parameters at the default constructor; the paper states 6.65 M):
EDM downsampling (strides 4/2/2) -> MDSA blocks (top-k 1/4/16 regions on a 7x7 region grid) -> EUF fusion x2 ->
1x1 classifier at stride 4 -> bilinear x4. Output: logits. The quirks of the released code that change outputs are
kept by default because they define the model the weights were trained with:

- Q = K = V = the multi-scale aggregator output (no q/k/v projections).
- Region routing scores are the negative squared distance of L2-normalised region means, i.e. cosine ranking;
  routing is hard (``torch.topk``) and detached. With Q = K, every region's top-1 region is itself, so top-k = 1
  stages are plain window attention.
- Attention scale is ``C ** -0.5`` (full stage width, inherited from BiFormer), not ``head_dim ** -0.5``
  (``qk_scale`` overrides it).
- Element-wise ``nn.Dropout(0.1)`` on both residual branches where the code's argument says drop-path
  (``residual_dropout="drop_path"`` switches to stochastic depth).
- Context-GLU MLP: ``fc2(GELU(LN(dwconv3x3(fc1 x) * fc1 x)))``.
- A 1-channel input is repeated to 3 channels before the stem.

Deviations from the official code (none changes outputs where the official code runs and returns the input size):

- Input sizes: the official code asserts divisibility (multiples of 112 at ``n_win=7``) and silently returns a
  larger output for sides 112k-3..112k-1. Here :meth:`MDSAUNet.validate_input_size` raises a ``ValueError`` naming
  the nearest valid sizes, and ``n_win="auto"`` (fixed region size, grid chosen per input) makes e.g. 256x256 work.
- EUF resizes when height *or* width differ (the official code compares heights only and would fail at the concat).
- Two numerically equivalent attention paths: ``attn_impl="reference"`` follows the official computation step by
  step (K/V built by concatenating A with itself, gather over a broadcast view); ``attn_impl="fast"`` (default)
  skips routing for top-k = 1 (window attention), runs one masked dense attention over all tokens where the routed
  regions are a large share of few tokens (the released top-16-of-49 stage), otherwise gathers each routed region
  once with K and V sharing storage, calls ``F.scaled_dot_product_attention`` with the explicit ``C ** -0.5`` scale,
  keeps feature maps channels-last and runs the 5x5 / 7x7 depthwise convs with the backward of
  :func:`attnseg.layers.same_conv2d`.
  The fast top-k = 1 path assumes the mathematically guaranteed self-route; the reference path reproduces
  ``torch.topk``'s tie-break when two regions have identical (cosine = 1) descriptors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, trunc_normal_
from torch import nn

from attnseg.layers import ConvBNAct, conv_bn_act, init_conv_fan_out_, same_conv2d
from attnseg.models.official import load_mapped, register_official
from attnseg.models.registry import register_model

__all__ = [
    "route_regions",
    "region_partition",
    "MultiScaleAggregator",
    "MDSA",
    "MultiScaleDynamicSparseAttention",
    "ContextGLU",
    "MDSABlock",
    "MDSAStage",
    "EDM",
    "EUF",
    "MDSAUNet",
    "mdsa_unet",
    "mdsa_unet_test",
]

AttnImpl = Literal["fast", "reference"]
_ATTN_IMPLS = ("fast", "reference")


# ----------------------------------------------------------------------------------------------------------------
# Region routing helpers
# ----------------------------------------------------------------------------------------------------------------


def region_partition(a: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Split a channels-last map into a ``grid`` of non-overlapping regions, region-major.

    Args:
        a: ``[B, H, W, C]`` map; ``H`` and ``W`` divisible by the grid.
        grid: regions per side ``(n_h, n_w)``.

    Returns:
        ``[B, n_h * n_w, (H / n_h) * (W / n_w), C]``, regions in row-major order, tokens row-major inside a region.
    """
    return rearrange(a, "b (nh rh) (nw rw) c -> b (nh nw) (rh rw) c", nh=grid[0], nw=grid[1])


def route_regions(a: torch.Tensor, grid: tuple[int, int], topk: int) -> torch.Tensor:
    """Coarse region-to-region routing of MDSA (docs/models/mdsa_unet.md §2.1 (d)): the indices of the ``topk`` most
    similar regions.

    The order of operations follows the official code so that near-ties resolve identically: region mean (over the
    region's rows, then columns), detach, L2-normalise, score = -(|x|^2 + |y|^2 - 2 x.y) (cosine ranking), topk.

    Args:
        a: ``[B, H, W, C]`` aggregator output (Q = K, so one descriptor per region serves both sides).
        grid: regions per side ``(n_h, n_w)``.
        topk: regions kept per region.

    Returns:
        ``[B, n_h * n_w, topk]`` int64 region indices (region-major numbering), best first.
    """
    regions = rearrange(a.detach(), "b (nh rh) (nw rw) c -> b (nh nw) rh rw c", nh=grid[0], nw=grid[1])
    desc = F.normalize(regions.mean(dim=(2, 3)), dim=-1)  # [B, n, C] unit region descriptors
    sq = (desc * desc).sum(dim=-1)  # [B, n]
    score = -(sq.unsqueeze(2) + sq.unsqueeze(1) - 2 * (desc @ desc.transpose(1, 2)))  # [B, n, n]
    return torch.topk(score, k=topk, dim=-1).indices


# ----------------------------------------------------------------------------------------------------------------
# Blocks, small to large
# ----------------------------------------------------------------------------------------------------------------


class MultiScaleAggregator(nn.Module):
    """Multi-scale aggregation before attention (the paper's "multi-scale aggregation"; code: ``Aggregator``).

    1x1 conv, then four channel groups: identity, depthwise 3x3 / 5x5 / 7x7 each followed by a pointwise conv, every
    group BatchNorm + ReLU, concatenated and mixed by a 1x1 conv.

    Args:
        dim: channels ``C`` (divisible by 4).
    """

    kernel_sizes = (3, 5, 7)

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"MultiScaleAggregator dim must be divisible by 4 (four channel groups), got {dim}")
        g = dim // 4
        self.proj = nn.Conv2d(dim, dim, 1)
        self.norm0 = nn.BatchNorm2d(g)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(g, g, k, padding=k // 2, groups=g, bias=False),  # depthwise k x k
                *conv_bn_act(g, g, 1),  # pointwise, BN, ReLU
            )
            for k in self.kernel_sizes
        )
        self.out_proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, fast_backward: bool = False) -> torch.Tensor:
        """Map ``[B, C, H, W]`` to ``[B, C, H, W]`` (memory format preserved); ``fast_backward``: the depthwise
        convs through :func:`attnseg.layers.same_conv2d` (same values, faster CPU backward)."""
        p = self.proj(x)
        groups = p.chunk(4, dim=1)  # 4 x [B, C/4, H, W]
        outs = [F.relu(self.norm0(groups[0]))]
        for branch, g in zip(self.branches, groups[1:]):
            dw = same_conv2d(g, branch[0]) if fast_backward else branch[0](g)
            outs.append(branch[1:](dw))
        return self.out_proj(torch.cat(outs, dim=1))


class MDSA(nn.Module):
    """MDSA attention (docs/models/mdsa_unet.md §2.1): multi-scale aggregation, coarse region routing, fine attention,
    LCE, projection.

    Args:
        dim: channels ``C``.
        num_heads: attention heads (``C / base_dim`` in the released model).
        topk: routed regions per region (1 = window attention).
        qk_scale: attention logit scale; ``None`` = ``C ** -0.5`` (released model, full width, not head dim).
        attn_impl: ``"fast"`` (default) or ``"reference"``; equal outputs, see the module docstring.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        topk: int,
        qk_scale: float | None = None,
        attn_impl: AttnImpl = "fast",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if attn_impl not in _ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {_ATTN_IMPLS}, got {attn_impl!r}")
        self.dim, self.num_heads, self.topk = dim, num_heads, topk
        self.scale = float(qk_scale) if qk_scale is not None else dim**-0.5
        self.attn_impl: AttnImpl = attn_impl
        self.aggregator = MultiScaleAggregator(dim)
        self.lce = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)  # local context enhancement (BiFormer's LePE)
        self.proj = nn.Linear(dim, dim)  # the code's ``wo``

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Attend within routed regions.

        Args:
            x: ``[B, H, W, C]`` normalised tokens.
            grid: regions per side ``(n_h, n_w)``; ``H``, ``W`` divisible by it.

        Returns:
            ``[B, H, W, C]``.
        """
        # docs/models/mdsa_unet.md §2.1 (a)-(b): Q = K = V = A, the multi-scale aggregation of the input (no q/k/v
        # projections).
        fast = self.attn_impl == "fast"
        a = self.aggregator(x.permute(0, 3, 1, 2), fast).permute(0, 2, 3, 1)  # [B, H, W, C] (view if channels-last)
        if not fast:
            out = self._attend_reference(a, grid)
        else:
            out = self._attend_fast(a, grid)
        # docs/models/mdsa_unet.md §2.1 (g)-(h): LCE = depthwise 5x5 on V as a 2-D map, added before the output
        # projection.
        a2d = a.permute(0, 3, 1, 2)
        lce = (same_conv2d(a2d, self.lce) if fast else self.lce(a2d)).permute(0, 2, 3, 1)
        return self.proj(lce.add_(out))  # in place on the conv output (its backward does not need it)

    def _attend_reference(self, a: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        # The official computation, step by step (docs/models/mdsa_unet.md §2.1 (c)-(f)), materialised copies included.
        b, h, w, c = a.shape
        n, k, m = grid[0] * grid[1], self.topk, self.num_heads
        q = region_partition(a, grid)  # [B, n, t, C]
        t = q.shape[2]
        kv = torch.cat([q, q], dim=-1)  # [B, n, t, 2C]: the code's K/V pair, K = V = A
        idx = route_regions(a, grid, k)  # [B, n, k]
        kv_sel = torch.gather(  # [B, n, k, t, 2C]: gather over a broadcast view, as the code does
            kv.unsqueeze(1).expand(-1, n, -1, -1, -1),
            dim=2,
            index=idx.view(b, n, k, 1, 1).expand(-1, -1, -1, t, 2 * c),
        )
        k_sel, v_sel = kv_sel.split([c, c], dim=-1)
        qh = rearrange(q, "b n t (m d) -> (b n) m t d", m=m)
        kh = rearrange(k_sel, "b n k t (m d) -> (b n) m (k t) d", m=m)
        vh = rearrange(v_sel, "b n k t (m d) -> (b n) m (k t) d", m=m)
        attn = ((qh * self.scale) @ kh.transpose(-2, -1)).softmax(dim=-1)  # [(B n), m, t, k t]
        o = attn @ vh  # [(B n), m, t, d]
        rh, rw = h // grid[0], w // grid[1]
        return rearrange(o, "(b nh nw) m (rh rw) d -> b (nh rh) (nw rw) (m d)", b=b, nh=grid[0], rh=rh, rw=rw)

    def _attend_fast(self, a: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        # Same maths: one region-major copy of A, K and V share storage, SDPA with the explicit scale.
        b, h, w, c = a.shape
        n, m = grid[0] * grid[1], self.num_heads
        q = region_partition(a, grid)  # [B, n, t, C] (the only copy of A)
        t = q.shape[2]
        qh = q.reshape(b * n, t, m, c // m).transpose(1, 2)  # [(B n), m, t, d] (a view: q is contiguous here)
        if self.topk >= n:
            # Every region routes to all regions: dense attention over the whole map (key order is irrelevant).
            kv = q.reshape(b, n * t, m, c // m).transpose(1, 2)  # [B, m, n t, d]
            o = F.scaled_dot_product_attention(kv, kv, kv, scale=self.scale).view(b, m, n, t, c // m)
            o = o.transpose(1, 2).reshape(b * n, m, t, c // m)
        elif self.topk == 1:
            # Q = K makes each region its own top-1 (cosine 1): plain non-overlapping window attention.
            o = F.scaled_dot_product_attention(qh, qh, qh, scale=self.scale)  # [(B n), m, t, d]
        elif _masked_routing_pays(n, t, self.topk):
            # Routing to a large share of few regions: one dense attention over all tokens with non-routed regions
            # masked out (exp(-inf) = 0, the same sum) beats gathering k copies into many tiny attention problems.
            idx = route_regions(a, grid, self.topk)  # [B, n, k]
            routed = (idx.unsqueeze(-1) == torch.arange(n, device=a.device)).sum(2) > 0  # [B, n, n] region pairs
            mask = routed[:, :, None, :, None].expand(b, n, t, n, t).reshape(b, 1, n * t, n * t)
            kv = q.reshape(b, n * t, m, c // m).transpose(1, 2)  # [B, m, n t, d], region-major tokens
            o = F.scaled_dot_product_attention(kv, kv, kv, attn_mask=mask, scale=self.scale).view(b, m, n, t, c // m)
            o = o.transpose(1, 2).reshape(b * n, m, t, c // m)
        else:
            idx = route_regions(a, grid, self.topk)  # [B, n, k]
            batch = torch.arange(b, device=a.device).view(b, 1, 1)
            kv = q[batch, idx]  # [B, n, k, t, C]: each routed region copied once, shared by K and V
            kv = kv.view(b * n, self.topk * t, m, c // m).transpose(1, 2)  # [(B n), m, k t, d] view
            o = F.scaled_dot_product_attention(qh, kv, kv, scale=self.scale)  # [(B n), m, t, d]
        rh, rw = h // grid[0], w // grid[1]
        return rearrange(o, "(b nh nw) m (rh rw) d -> b (nh rh) (nw rw) (m d)", b=b, nh=grid[0], rh=rh, rw=rw)


def _masked_routing_pays(regions: int, tokens: int, topk: int) -> bool:
    """Whether masked dense attention is cheaper than gathered routed attention (docs/models/mdsa_unet.md §8): it
    computes ``regions / topk`` times the scores, in one large problem instead of ``regions`` small ones, which pays
    up to 4x the scores and about 1024 tokens (the released 14x14 stage, top-16 of 49 regions)."""
    return 4 * topk >= regions and regions * tokens <= 1024


MultiScaleDynamicSparseAttention = MDSA  # descriptive name of MDSA-UNet's Multi-scale Dynamic Sparse Attention


class ContextGLU(nn.Module):
    """Context-GLU MLP of the MDSA block (docs/models/mdsa_unet.md §2.2): ``fc2(GELU(LN(dwconv3x3(u) * u)))``
    with ``u = fc1(x)``.

    Args:
        dim: channels ``C``.
        hidden_dim: hidden width ``D`` (``mlp_ratio * C``).
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)  # default eps 1e-5, as released
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, H, W, C]`` to ``[B, H, W, C]``."""
        u = self.fc1(x)  # [B, H, W, D]
        g = self.dwconv(u.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) * u  # context gate, [B, H, W, D]
        return self.fc2(self.act(self.norm(g)))


class MDSABlock(nn.Module):
    """MDSA transformer block (docs/models/mdsa_unet.md §2): CPE, pre-norm MDSA attention, pre-norm Context-GLU,
    residuals.

    Args:
        dim: channels ``C``.
        num_heads: attention heads.
        topk: routed regions per region.
        mlp_ratio: Context-GLU hidden width / ``C``.
        drop_rate: residual-branch drop rate (0.1 in the released model).
        residual_dropout: ``"dropout"`` (released: element-wise ``nn.Dropout``) or ``"drop_path"`` (stochastic
            depth, what the code's argument name suggests).
        qk_scale: attention scale, ``None`` = ``C ** -0.5``.
        attn_impl: ``"fast"`` or ``"reference"``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        topk: int,
        mlp_ratio: float = 2.0,
        drop_rate: float = 0.1,
        residual_dropout: Literal["dropout", "drop_path"] = "dropout",
        qk_scale: float | None = None,
        attn_impl: AttnImpl = "fast",
    ) -> None:
        super().__init__()
        self.cpe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)  # conditional positional encoding
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MDSA(dim, num_heads, topk, qk_scale=qk_scale, attn_impl=attn_impl)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ContextGLU(dim, int(mlp_ratio * dim))
        self.drop = nn.Dropout(drop_rate) if residual_dropout == "dropout" else DropPath(drop_rate)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Map ``[B, C, H, W]`` to ``[B, C, H, W]``; ``grid`` = regions per side."""
        x = self.cpe(x).add_(x)  # x + CPE(x), in place on the conv output
        x = x.permute(0, 2, 3, 1)  # [B, H, W, C] (a view when x is channels-last)
        x = self._residual(x, self.attn(self.norm1(x), grid))
        x = self._residual(x, self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)  # [B, C, H, W]

    def _residual(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """``x + drop(branch)``; ``branch`` is a fresh Linear output that this may overwrite."""
        if isinstance(self.drop, nn.Dropout) and self.training and 0 < self.drop.p < 1:
            # nn.Dropout's own draw (Bernoulli(1 - p) on a tensor like the branch: the same mask for a seed), then
            # scale, multiply and add in one pass instead of three.
            keep = torch.empty_like(branch).bernoulli_(1 - self.drop.p)
            return torch.addcmul(x, branch, keep, value=1 / (1 - self.drop.p))
        return self.drop(branch).add_(x)


class MDSAStage(nn.Sequential):
    """A stack of MDSA blocks sharing one region grid."""

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        for block in self:
            x = block(x, grid)
        return x


class EDM(nn.Module):
    """Enhanced downsampling merging (docs/models/mdsa_unet.md §3): strided conv branch + full-resolution conv/max-pool
    branch, summed.

    Args:
        in_channels: input channels.
        out_channels: output channels (the auxiliary branch is ``out_channels // 8`` wide).
        kernel_size: conv and max-pool kernel.
        stride: downsampling factor.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        k, p, aux = kernel_size, kernel_size // 2, out_channels // 8
        self.main = ConvBNAct(in_channels, out_channels, k, stride=stride, padding=p, bias=True)
        self.aux = nn.Sequential(
            *conv_bn_act(in_channels, aux, k, padding=p, bias=True, act=False),
            nn.MaxPool2d(k, stride, p),  # no activation before the pool, as released
            *conv_bn_act(aux, out_channels, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C_in, H, W]`` to ``[B, C_out, H/s, W/s]`` (ceil)."""
        return self.main(x) + self.aux(x)


class EUF(nn.Module):
    """Enhanced upsampling fusion (docs/models/mdsa_unet.md §3): upsample the deeper map, concat the skip, two conv
    branches summed.

    Args:
        in_channels: deeper-map channels.
        skip_channels: skip channels.
        out_channels: output channels (the auxiliary branch is ``out_channels // 8`` wide).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        cat, aux = in_channels + skip_channels, out_channels // 8
        self.main = ConvBNAct(cat, out_channels, 1, bias=True)
        self.aux = nn.Sequential(
            *conv_bn_act(cat, aux, 3, bias=True, act=False),
            *conv_bn_act(aux, out_channels, 1, bias=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """Fuse deeper ``[B, C_in, h, w]`` with ``skip`` ``[B, C_skip, H, W]`` into ``[B, C_out, H, W]``.

        ``fast``: the main branch's 1x1 conv on the deeper map before the upsampling, and the convs on ``[up, skip]``
        as two convs summed instead of one on the concatenation (same values, fewer FLOPs and copies; see
        docs/models/mdsa_unet.md §3).
        """
        size = skip.shape[-2:]
        if not fast:
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            y = torch.cat([x, skip], dim=1)  # concatenated once (the code does it per branch)
            return self.main(y) + self.aux(y)
        c = x.shape[1]
        conv, bn, act = self.main
        # a 1x1 conv commutes with bilinear resizing: run the deeper map's share before the upsampling
        main = conv._conv_forward(x, conv.weight[:, :c], None)
        if x.shape[-2:] != size:
            main = F.interpolate(main, size=size, mode="bilinear", align_corners=False)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        main = act(bn(conv._conv_forward(skip, conv.weight[:, c:], conv.bias).add_(main)))
        aux_conv, *aux_rest = self.aux
        aux = aux_conv._conv_forward(x, aux_conv.weight[:, :c], None)  # conv(cat[x, skip]) = conv(x) + conv(skip)
        aux = aux.add_(aux_conv._conv_forward(skip, aux_conv.weight[:, c:], aux_conv.bias))
        for layer in aux_rest:
            aux = layer(aux)
        return main + aux


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def _as_list(name: str, value: Sequence[int] | Sequence[float], length: int) -> list:
    values = list(value)
    if len(values) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(values)}: {values}")
    return values


class MDSAUNet(nn.Module):
    """MDSA-UNet, the released architecture (NEU-LX/MDSA-UNet ``MDSAUNet``) with its constructor options.

    Region grid (the ``n_win`` rule). Every MDSA block partitions its feature map into a grid of regions, the same
    grid at every stage. Two modes:

    - ``n_win=<int>`` (default 7, released): a fixed ``n_win x n_win`` grid, so regions grow with the input (at
      224 they are 8/4/2 pixels at strides 4/8/16; at 448, 16/8/4). Valid sides make every stage side a multiple of
      ``n_win`` and the stride-4 side times 4 equal the input side: multiples of 112 at ``n_win=7``, of 128 at 8.
    - ``n_win="auto"``: the region *size* is fixed instead, ``region_size`` tokens per side at the first (stride-4)
      stage (default 8, the released geometry at 224), and the grid is chosen **per forward** from the input:
      ``n_h = ceil(H / 4) / region_size`` (likewise ``n_w``). Valid sides are multiples of ``4 * region_size``
      (32 by default: 224 -> 7x7, 256 -> 8x8, 512 -> 16x16) with at least ``max(topks)`` regions (an error names
      the fix otherwise). Per-forward choice keeps what the trained weights saw (tokens per region and routed
      tokens per query, 64 at every stage by default) identical at any input size; the weights do not depend on
      the grid. At 224 it equals the released model exactly; elsewhere it differs from ``n_win=7`` (a 448 input
      gets a 14x14 grid of 8x8-token regions instead of the released 7x7 grid of 16x16-token regions), so keep
      ``n_win=7`` and multiples of 112 to reproduce the released model's outputs.

    Args:
        num_classes: output logit channels (the code's ``n_class``). Defaults to 1.
        dims: ``[stem input channels, stage widths...]``. Defaults to ``(3, 128, 320, 512)``. A 1-channel input is
            repeated to 3 channels when ``dims[0] == 3`` (released behaviour).
        patch_kernel_sizes: EDM kernel per stage. Defaults to ``(7, 3, 3)``.
        patch_strides: EDM stride per stage. Defaults to ``(4, 2, 2)``.
        depths: MDSA blocks per encoder stage, then per decoder stage (``2 * blocks - 1`` entries). Defaults to
            ``(1, 1, 1, 1, 1)``.
        topks: routed regions per encoder stage; the decoder uses them reversed without the deepest. Defaults to
            ``(1, 4, 16)``.
        n_win: regions per side (int), or ``"auto"`` for a fixed region size (see above). Defaults to 7.
        base_dim: channels per attention head (heads = width / base_dim). Defaults to 32.
        mlp_ratios: Context-GLU width ratio per encoder stage (decoder: reversed, without the deepest). Defaults to
            ``(2, 2, 2)``.
        blocks: number of encoder stages, ``len(dims) - 1``. Defaults to 3.
        region_size: first-stage region side in tokens when ``n_win="auto"``. Defaults to 8.
        drop_rate: residual-branch drop rate. Defaults to 0.1 (released).
        residual_dropout: ``"dropout"`` (released, element-wise) or ``"drop_path"``. Defaults to ``"dropout"``.
        qk_scale: attention scale; ``None`` (default) = ``width ** -0.5`` as released.
        attn_impl: ``"fast"`` (default) or ``"reference"`` (the official computation step by step).

    Example:
        >>> model = MDSAUNet(num_classes=1)
        >>> model(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 1, 224, 224])
    """

    input_divisor = 112  # released n_win=7: stage maps at strides 4/8/16 split into 7x7 regions (see region_grid)

    def __init__(
        self,
        num_classes: int = 1,
        dims: Sequence[int] = (3, 128, 320, 512),
        patch_kernel_sizes: Sequence[int] = (7, 3, 3),
        patch_strides: Sequence[int] = (4, 2, 2),
        depths: Sequence[int] = (1, 1, 1, 1, 1),
        topks: Sequence[int] = (1, 4, 16),
        n_win: int | Literal["auto"] = 7,
        base_dim: int = 32,
        mlp_ratios: Sequence[float] = (2, 2, 2),
        blocks: int = 3,
        region_size: int = 8,
        drop_rate: float = 0.1,
        residual_dropout: Literal["dropout", "drop_path"] = "dropout",
        qk_scale: float | None = None,
        attn_impl: AttnImpl = "fast",
    ) -> None:
        super().__init__()
        if blocks < 2:
            raise ValueError(f"blocks (encoder stages) must be >= 2, got {blocks}")
        dims = _as_list("dims", dims, blocks + 1)
        kernels = _as_list("patch_kernel_sizes", patch_kernel_sizes, blocks)
        strides = _as_list("patch_strides", patch_strides, blocks)
        depths = _as_list("depths", depths, 2 * blocks - 1)
        topks = _as_list("topks", topks, blocks)
        mlp_ratios = _as_list("mlp_ratios", mlp_ratios, blocks)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if dims[0] < 1:
            raise ValueError(f"dims[0] (input channels) must be >= 1, got {dims[0]}")
        if base_dim < 1:
            raise ValueError(f"base_dim must be >= 1, got {base_dim}")
        for w in dims[1:]:
            if w < 8 or w % 4 or w % base_dim:
                raise ValueError(
                    f"every stage width in dims must be >= 8 (EDM/EUF auxiliary width C // 8), a multiple of 4 "
                    f"(aggregator groups) and of base_dim={base_dim} (heads); got dims={dims}"
                )
        if any(k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"patch_kernel_sizes must be odd and >= 1, got {kernels}")
        if any(s < 1 for s in strides):
            raise ValueError(f"patch_strides must be >= 1, got {strides}")
        if any(d < 1 for d in depths):
            raise ValueError(f"depths must be >= 1, got {depths}")
        if any(k < 1 for k in topks):
            raise ValueError(f"topks must be >= 1, got {topks}")
        if any(r <= 0 for r in mlp_ratios):
            raise ValueError(f"mlp_ratios must be > 0, got {mlp_ratios}")
        if n_win != "auto" and (isinstance(n_win, bool) or not isinstance(n_win, int) or n_win < 1):
            raise ValueError(f"n_win must be a positive int or 'auto', got {n_win!r}")
        if isinstance(n_win, int) and n_win * n_win < max(topks):
            raise ValueError(f"n_win={n_win} gives {n_win * n_win} regions, fewer than max(topks)={max(topks)}")
        if region_size < 1:
            raise ValueError(f"region_size must be >= 1, got {region_size}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        if residual_dropout not in ("dropout", "drop_path"):
            raise ValueError(f"residual_dropout must be 'dropout' or 'drop_path', got {residual_dropout!r}")
        if attn_impl not in _ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {_ATTN_IMPLS}, got {attn_impl!r}")

        self.num_classes = num_classes
        self.in_channels = dims[0]
        self.dims = dims
        self.kernels, self.strides = kernels, strides
        self.topks = topks
        self.n_win = n_win
        self.region_size = region_size
        self.feature_channels = dims[1]
        block_kw = dict(drop_rate=drop_rate, residual_dropout=residual_dropout, qk_scale=qk_scale, attn_impl=attn_impl)

        def stage(width: int, depth: int, topk: int, ratio: float) -> MDSAStage:
            return MDSAStage(*(MDSABlock(width, width // base_dim, topk, ratio, **block_kw) for _ in range(depth)))

        widths = dims[1:]
        self.downsamples = nn.ModuleList(EDM(dims[i], dims[i + 1], kernels[i], strides[i]) for i in range(blocks))
        self.encoder_stages = nn.ModuleList(stage(widths[i], depths[i], topks[i], mlp_ratios[i]) for i in range(blocks))
        rev_w, rev_k, rev_r = widths[::-1], topks[::-1], mlp_ratios[::-1]
        dec_depths = depths[blocks:]  # the code hands depths[blocks-1:] to the decoder and reads entries 1..
        self.fusions = nn.ModuleList(EUF(rev_w[i], rev_w[i + 1], rev_w[i + 1]) for i in range(blocks - 1))
        self.decoder_stages = nn.ModuleList(
            stage(rev_w[i + 1], dec_depths[i], rev_k[i + 1], rev_r[i + 1]) for i in range(blocks - 1)
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.apply(_init_weights)
        self._attn_impl = attn_impl

    # ---- attention path --------------------------------------------------------------------------------------

    @property
    def attn_impl(self) -> AttnImpl:
        """The attention path in use: ``"fast"`` or ``"reference"``."""
        return self._attn_impl

    def set_attn_impl(self, attn_impl: AttnImpl) -> MDSAUNet:
        """Switch every MDSA block to ``attn_impl`` (``"fast"`` or ``"reference"``); returns ``self``."""
        if attn_impl not in _ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {_ATTN_IMPLS}, got {attn_impl!r}")
        for m in self.modules():
            if isinstance(m, MDSA):
                m.attn_impl = attn_impl
        self._attn_impl = attn_impl
        return self

    # ---- input sizes and region grid -------------------------------------------------------------------------

    def stage_sizes(self, spatial: Sequence[int]) -> list[tuple[int, int]]:
        """Feature-map sizes ``(h, w)`` of the encoder stages for an input of size ``spatial``."""
        h, w = int(spatial[0]), int(spatial[1])
        sizes = []
        for k, s in zip(self.kernels, self.strides):
            h, w = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
            sizes.append((h, w))
        return sizes

    def region_grid(self, spatial: Sequence[int]) -> tuple[int, int]:
        """Regions per side ``(n_h, n_w)`` used by every MDSA block for an input of size ``spatial``.

        Raises:
            ValueError: if the input size is invalid (see :meth:`validate_input_size`).
        """
        self.validate_input_size(tuple(spatial))
        return self._grid(self.stage_sizes(spatial)[0])

    def _grid(self, first: tuple[int, int]) -> tuple[int, int]:
        if self.n_win == "auto":
            return first[0] // self.region_size, first[1] // self.region_size
        return self.n_win, self.n_win

    def _size_problem(self, spatial: tuple[int, ...]) -> str | None:
        if len(spatial) != 2:
            return f"MDSA-UNet is 2D; got a {len(spatial)}D input size {tuple(spatial)}"
        if min(spatial) < 1:
            return f"input sides must be positive, got {tuple(spatial)}"
        sizes = self.stage_sizes(spatial)
        if sizes[0][0] * self.strides[0] != spatial[0] or sizes[0][1] * self.strides[0] != spatial[1]:
            return f"input sides must be multiples of the stem stride {self.strides[0]} (logits at input size)"
        if self.n_win == "auto":
            r = self.region_size
            if sizes[0][0] % r or sizes[0][1] % r:
                return f"the stride-{self.strides[0]} map {sizes[0]} must be a multiple of region_size={r}"
        grid = self._grid(sizes[0])
        for h, w in sizes:
            if h % grid[0] or w % grid[1]:
                return f"every stage map {sizes} must be divisible by the {grid[0]}x{grid[1]} region grid"
        if grid[0] * grid[1] < max(self.topks):
            return f"the {grid[0]}x{grid[1]} region grid has fewer regions than max(topks)={max(self.topks)}"
        return None

    def _nearest_valid_sides(self, side: int) -> list[int]:
        below = next((s for s in range(side - 1, 0, -1) if self._size_problem((s, s)) is None), None)
        above = next((s for s in range(side + 1, 64 * side + 4096) if self._size_problem((s, s)) is None), None)
        return [s for s in (below, above) if s is not None]

    def validate_input_size(self, spatial: tuple[int, ...]) -> None:
        """Raise ``ValueError`` naming the rule and the nearest valid sides if ``spatial`` is not a valid input.

        Args:
            spatial: ``(H, W)``.
        """
        problem = self._size_problem(tuple(int(s) for s in spatial))
        if problem is None:
            return
        hint = ""
        if len(spatial) == 2 and min(spatial) >= 1:
            near = sorted({s for side in spatial for s in self._nearest_valid_sides(int(side))})
            hint = f"; nearest valid sides: {', '.join(map(str, near))}"
        if self.n_win == "auto":
            mode, fix = f"n_win='auto', region_size={self.region_size}", ""
        else:
            mode, fix = f"n_win={self.n_win}", " (or build with n_win='auto' to choose the region grid per input)"
        raise ValueError(f"MDSA-UNet ({mode}) cannot take input size {tuple(spatial)}: {problem}{hint}{fix}")

    # ---- forward -----------------------------------------------------------------------------------------------

    def forward_encoder(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Encoder stage outputs (fine to coarse) and the region grid used."""
        self.validate_input_size(tuple(x.shape[-2:]))
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.repeat(1, 3, 1, 1)  # released behaviour: grey images repeated to RGB
        if self._attn_impl == "fast":
            x = x.contiguous(memory_format=torch.channels_last)  # NHWC token views without copies
        grid = self._grid(self.stage_sizes(x.shape[-2:])[0])
        feats = []
        for down, stage in zip(self.downsamples, self.encoder_stages):
            x = stage(down(x), grid)
            feats.append(x)
        return feats, grid

    def forward_decoder(self, feats: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """Decoder output at the first stage's stride (``[B, dims[1], H/4, W/4]``) from the encoder outputs."""
        x = feats[-1]
        for i, (fuse, stage) in enumerate(zip(self.fusions, self.decoder_stages)):
            x = stage(fuse(x, feats[-2 - i], fast=self._attn_impl == "fast"), grid)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder features bilinearly upsampled to the input size, ``[B, dims[1], H, W]``.

        The 1x1 classifier and the bilinear upsampling commute (both linear, interpolation weights sum to 1), so
        ``forward_head(forward_features(x))`` equals ``forward(x)`` up to float round-off.
        """
        size = x.shape[-2:]
        y = self.forward_decoder(*self.forward_encoder(x))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Classifier on features from :meth:`forward_features`: ``[B, num_classes, H, W]`` logits."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, H, W]`` for images ``[B, dims[0] or 1, H, W]``."""
        # docs/models/mdsa_unet.md §1: encoder (EDM + MDSA), decoder (EUF + MDSA), 1x1 head at stride 4, bilinear to the
        # input size.
        size = x.shape[-2:]
        y = self.head(self.forward_decoder(*self.forward_encoder(x)))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False).contiguous()


def _init_weights(m: nn.Module) -> None:
    """Official initialisation (MDSAUNet.py): trunc-normal(0.02) Linear, unit norms, He-fan-out convs, zero biases."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        init_conv_fan_out_(m)


# ----------------------------------------------------------------------------------------------------------------
# Official weights
# ----------------------------------------------------------------------------------------------------------------

_OFFICIAL_BLOCK_RENAMES = (
    ("pos_embed.", "cpe."),
    ("attn.lepe.", "attn.lce."),
    ("attn.wo.", "attn.proj."),
    ("mlp.dwconv3x3.", "mlp.dwconv."),
    ("mlp.norm1.", "mlp.norm."),
)
_AGG_BRANCH_PARTS = {"conv1": 0, "pointwise_conv": 1}


def _official_to_ours(key: str) -> str | None:
    """Official ``MDSAUNet`` state-dict key -> our key."""
    parts = key.split(".")
    if parts[0] == "cls":
        return "head." + ".".join(parts[1:])
    if parts[:2] == ["encoder", "edms"]:
        branch = {"patch_embed": "main", "aux_conv": "aux"}[parts[3]]
        return ".".join(["downsamples", parts[2], branch, *parts[4:]])
    if parts[:2] == ["decoder", "eufs"]:
        branch = {"EUF": "main", "aux_conv": "aux"}[parts[3]]
        return ".".join(["fusions", parts[2], branch, *parts[4:]])
    if parts[1] == "layers" and parts[3] == "block":  # <encoder|decoder>.layers.i.block.j.<rest>
        prefix = f"{parts[0]}_stages.{parts[2]}.{parts[4]}."
        rest = ".".join(parts[5:])
        for old, new in _OFFICIAL_BLOCK_RENAMES:
            if rest.startswith(old):
                rest = new + rest[len(old) :]
        if rest.startswith("attn.aggregator."):
            sub = rest[len("attn.aggregator.") :].split(".")
            if sub[0] in ("norm1", "norm2", "norm3"):  # BN of branch i -> branches.(i-1).2
                rest = f"attn.aggregator.branches.{int(sub[0][-1]) - 1}.2." + ".".join(sub[1:])
            elif sub[0] in ("agg1", "agg2", "agg3"):
                rest = f"attn.aggregator.branches.{int(sub[0][-1]) - 1}.{_AGG_BRANCH_PARTS[sub[1]]}." + ".".join(
                    sub[2:]
                )
        return prefix + rest
    return None


@register_official("MDSAUNet.MDSAUNet")
def _load_official_mdsa_unet(
    state_dict: dict[str, torch.Tensor],
    n_class: int = 1,
    dims: Sequence[int] = (3, 128, 320, 512),
    patch_kernel_sizes: Sequence[int] = (7, 3, 3),
    patch_strides: Sequence[int] = (4, 2, 2),
    depths: Sequence[int] = (1, 1, 1, 1, 1),
    topks: Sequence[int] = (1, 4, 16),
    n_win: int = 7,
    base_dim: int = 32,
    mlp_ratios: Sequence[float] = (2, 2, 2),
    blocks: int = 3,
    **options: object,
) -> MDSAUNet:
    """Build :class:`MDSAUNet` from the official constructor arguments and load an official state dict strictly.

    Args:
        state_dict: the official ``MDSAUNet.state_dict()``.
        n_class, dims, patch_kernel_sizes, patch_strides, depths, topks, n_win, base_dim, mlp_ratios, blocks: the
            official constructor arguments (same defaults).
        **options: extra options of ours (e.g. ``attn_impl``).

    Returns:
        The model with the official weights.
    """
    model = MDSAUNet(
        num_classes=n_class,
        dims=dims,
        patch_kernel_sizes=patch_kernel_sizes,
        patch_strides=patch_strides,
        depths=depths,
        topks=topks,
        n_win=n_win,
        base_dim=base_dim,
        mlp_ratios=mlp_ratios,
        blocks=blocks,
        **options,
    )  # type: ignore[arg-type]
    return load_mapped(model, state_dict, _official_to_ours)


# ----------------------------------------------------------------------------------------------------------------
# Registered factories
# ----------------------------------------------------------------------------------------------------------------

_PAPER = "Li et al., MDSA-UNet, IEEE JBHI 29(9) 2025, doi:10.1109/JBHI.2025.3555805"
_REPO = "NEU-LX/MDSA-UNet"


def _build(in_channels: int, num_classes: int, dims: Sequence[int], **kwargs: object) -> MDSAUNet:
    dims = list(dims)
    # A grey image keeps the released 3-channel stem (repeated inside forward) so official/RGB weights still load.
    dims[0] = 3 if in_channels == 1 else in_channels
    return MDSAUNet(num_classes=num_classes, dims=dims, **kwargs)  # type: ignore[arg-type]


def _auto_grid_off_112(size: tuple[int, ...]) -> dict[str, object]:
    """The released 7x7 region grid takes multiples of 112; any other size gets the fixed-region-size grid."""
    return {} if all(s % 112 == 0 for s in size) else {"n_win": "auto"}


@register_model(
    "mdsa_unet",
    options_from=MDSAUNet,
    paper=_PAPER,
    official_repo=_REPO,
    input_divisor=112,
    default_input_size=(224, 224),
    tags=("2d",),
    test_kwargs={"dims": (3, 32, 64, 96), "base_dim": 16},  # the mdsa_unet_test widths
    test_input_size=(112, 112),
    size_kwargs=_auto_grid_off_112,
)
def mdsa_unet(
    in_channels: int = 3,
    num_classes: int = 1,
    dims: Sequence[int] = (3, 128, 320, 512),
    **kwargs: object,
) -> MDSAUNet:
    """The released MDSA-UNet (6,576,225 parameters at ``num_classes=1``); ``n_win="auto"`` for any multiple of 32.

    Args:
        in_channels: image channels (1 is repeated to 3 as released).
        num_classes: logit channels.
        dims: ``[stem input, stage widths...]``; ``dims[0]`` is replaced by ``in_channels``.
        **kwargs: any other :class:`MDSAUNet` option.
    """
    return _build(in_channels, num_classes, dims, **kwargs)


@register_model(
    "mdsa_unet_test",
    options_from=MDSAUNet,
    paper=_PAPER + " (tiny test variant, the fixtures' configuration)",
    official_repo=_REPO,
    input_divisor=112,
    default_input_size=(224, 224),
    tags=("2d", "test"),
    test_input_size=(112, 112),
    size_kwargs=_auto_grid_off_112,
)
def mdsa_unet_test(
    in_channels: int = 3,
    num_classes: int = 1,
    dims: Sequence[int] = (3, 32, 64, 96),
    base_dim: int = 16,
    **kwargs: object,
) -> MDSAUNet:
    """Tiny MDSA-UNet for CI (widths 32/64/96, head dim 16; 287,377 parameters at ``num_classes=1``)."""
    return _build(in_channels, num_classes, dims, base_dim=base_dim, **kwargs)
