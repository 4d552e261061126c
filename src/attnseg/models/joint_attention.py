"""Spatial attention of "Joint Attention for Medical Image Segmentation", as one unified, switchable formula.

Paper: Mo Zhang, Bin Dong, Quanzheng Li, "Joint Attention for Medical Image Segmentation", IEEE ISBI 2022, pp. 1-5,
DOI 10.1109/ISBI52829.2022.9761624. **No official code and no full text are available**: only the abstract is known.
Everything here follows the project's reconstruction, docs/models/joint_attention.md; its labelled assumptions
(A1-A6 of that page) are cited where they are used. The component mechanisms are exact:

- non-local block, embedded Gaussian: Wang, Girshick, Gupta, He, "Non-local Neural Networks", CVPR 2018,
  arXiv 1711.07971;
- point-wise spatial attention: Zhao et al., "PSANet: Point-wise Spatial Attention Network for Scene Parsing",
  ECCV 2018; official code hszhao/semseg @ 5e5a0ba (``model/psanet.py``, ``lib/psa``);
- term decomposition: Zhu, Cheng, Zhang, Lin, Dai, "An Empirical Study of Spatial Attention Mechanisms in Deep
  Networks", ICCV 2019, arXiv 1904.05873.

Unified formula (docs/models/joint_attention.md, A1). For query (output) position i, key position j and offset
Δij = pos(j) - pos(i)::

    s(i, j) = τ θ(x_i)ᵀ φ(x_j)  +  C(x_i)[Δij]  +  D(x_j)[-Δij]        content, collect, distribute terms
    A(i, j) = softmax_j s(i, j),    y_i = Σ_j A(i, j) g(x_j),    z = x + BN₀(W_z y)

C and D are PSANet's over-complete maps: (2h-1)x(2w-1) logits predicted at every position, one per offset. Named
mechanisms are this formula with terms switched off (the tests check each against a direct implementation):

====================  ==========================  ===============================================
mechanism             active terms                normalisation
====================  ==========================  ===============================================
non-local (self)      content, τ = 1              one softmax
PSANet (point)        collect (and distribute)    one softmax per term, outputs concatenated
joint (default)       content + collect, τ=1/√d   one softmax over the summed logits
====================  ==========================  ===============================================

The joint row is the reconstruction's default, assumption A2 (docs/models/joint_attention.md, A2).

Deviations from PSANet's own head, so that the settings differ only in the attention map: values come from a 1x1
conv ``g`` (PSANet reuses its reduced features), the output is the non-local residual ``x + BN₀(W_z y)`` with BN₀
zero-initialised (PSANet concatenates ``[x, proj(y)]`` to 2C channels), and there is no ``shrink_factor`` (the
DenseUNet bottleneck is already 8x8). The official ``psamask`` C++/CUDA op is replaced by a precomputed relative
index and ``torch.gather``; like ``psamask``, offsets outside the predicted map get logit 0, so a module built for
one feature size runs at any size (exactly PSANet's indexing when the map covers every offset).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from attnseg.layers import ConvBNAct, channel_pool, conv_bn_act, to_pair

__all__ = [
    "ATTENTION_KINDS",
    "FUSIONS",
    "relative_position_index",
    "pointwise_logits",
    "PointwiseMapHead",
    "SpatialGate",
    "UnifiedSpatialAttention",
    "NonLocalBlock",
    "PointwiseSpatialAttention",
    "JointAttention",
    "build_attention",
]

ATTENTION_KINDS = ("joint", "point", "self", "none")
FUSIONS = ("logit", "parallel", "mix")


def _pair_odd(mask_size: int | tuple[int, int]) -> tuple[int, int]:
    return to_pair(mask_size, name="mask_size (2*side-1 of the feature map)", odd=True)


@lru_cache(maxsize=64)
def _relative_position_index(height: int, width: int, mask_h: int, mask_w: int) -> torch.Tensor:
    half_h, half_w = (mask_h - 1) // 2, (mask_w - 1) // 2
    rows = torch.arange(height).repeat_interleave(width)  # (N,) row of each flattened position
    cols = torch.arange(width).repeat(height)
    dh = rows[None, :] - rows[:, None]  # (N, N): [p, o] = row(o) - row(p)
    dw = cols[None, :] - cols[:, None]
    index = (dh + half_h) * mask_w + (dw + half_w)
    inside = (dh.abs() <= half_h) & (dw.abs() <= half_w)
    return torch.where(inside, index, torch.full_like(index, mask_h * mask_w))  # mask_h*mask_w = the zero slot


def relative_position_index(
    height: int, width: int, mask_size: int | tuple[int, int], device: torch.device | str | None = None
) -> torch.Tensor:
    """Channel of an over-complete map holding each pair's offset, for an ``height x width`` feature map.

    Args:
        height: feature-map rows.
        width: feature-map columns.
        mask_size: odd (mask_h, mask_w) of the over-complete map (PSANet: (2h-1, 2w-1) at the training size).
        device: device of the returned tensor. Defaults to CPU.

    Returns:
        Long tensor ``[N, N]`` (N = height*width, row-major): entry [p, o] is the channel of the map predicted at
        position p that holds offset pos(o) - pos(p), i.e. ``(Δh + half_h) * mask_w + (Δw + half_w)``, or
        ``mask_h * mask_w`` (a zero logit) when the offset lies outside the map. Cached per size; do not modify.
    """
    mask_h, mask_w = _pair_odd(mask_size)
    return _relative_position_index(int(height), int(width), mask_h, mask_w).to(device)


def pointwise_logits(maps: torch.Tensor, mask_size: int | tuple[int, int], direction: str = "collect") -> torch.Tensor:
    """Read PSANet's over-complete maps into an ``[N, N]`` logit matrix with one ``gather`` (replaces ``psamask``).

    collect: s[i, j] = C_i[pos(j) - pos(i)] (the map predicted at the query i says where to collect from);
    distribute: s[i, j] = D_j[pos(i) - pos(j)] (the map predicted at the key j says where to send to).

    Args:
        maps: ``[B, mask_h*mask_w, H, W]`` maps predicted at every position.
        mask_size: odd (mask_h, mask_w) of the maps.
        direction: ``"collect"`` or ``"distribute"``.

    Returns:
        ``[B, N, N]`` logits indexed [query i, key j]; offsets outside the map are 0.
    """
    mask_h, mask_w = _pair_odd(mask_size)
    b, m, h, w = maps.shape
    if m != mask_h * mask_w:
        raise ValueError(f"maps have {m} channels but mask_size {mask_size} needs {mask_h * mask_w}")
    if direction not in ("collect", "distribute"):
        raise ValueError(f"direction must be 'collect' or 'distribute', got {direction!r}")
    index = relative_position_index(h, w, (mask_h, mask_w), maps.device)  # (N, N)
    # (B, N, M + 1): the map predicted at each position, plus a zero slot for offsets outside it
    table = torch.cat([maps.flatten(2), maps.new_zeros(b, 1, h * w)], dim=1).transpose(1, 2)
    logits = torch.gather(table, 2, index.expand(b, -1, -1))  # (B, N_pred, N_other)
    return logits if direction == "collect" else logits.transpose(1, 2)


class PointwiseMapHead(nn.Module):
    """PSANet's map predictor: reduce (1x1 conv-BN-ReLU), 1x1 conv-BN-ReLU, 1x1 conv to mask_h*mask_w channels.

    Args:
        channels: input channels C.
        inner_channels: hidden width d (PSANet: 512 for C = 2048).
        mask_size: odd (mask_h, mask_w) of the over-complete map, (2h-1, 2w-1) for an h x w training feature map.
    """

    def __init__(self, channels: int, inner_channels: int, mask_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.mask_size = _pair_odd(mask_size)
        self.reduce = ConvBNAct(channels, inner_channels, 1)
        self.attention = nn.Sequential(
            *conv_bn_act(inner_channels, inner_channels, 1),
            nn.Conv2d(inner_channels, self.mask_size[0] * self.mask_size[1], 1, bias=False),
        )

    def forward(self, x: torch.Tensor, direction: str = "collect") -> torch.Tensor:
        # PSANet Sec. 3.2: over-complete map per position, then the collect / distribute reading -> (B, N, N)
        return pointwise_logits(self.attention(self.reduce(x)), self.mask_size, direction)


class SpatialGate(nn.Module):
    """CBAM's spatial gate σ(BN(conv7x7([max_c x; mean_c x]))) (Woo et al., ECCV 2018): a per-pixel weight in (0, 1).

    Used only by the A6 reading (docs/models/joint_attention.md, A6) of "point-wise attention" as a multiplicative
    per-pixel gate.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = channel_pool(x, order=("max", "mean"))  # (B, 2, H, W), CBAM's order
        return torch.sigmoid(self.norm(self.conv(pooled)))  # (B, 1, H, W)


class UnifiedSpatialAttention(nn.Module):
    """The unified formula with switchable terms and fusions; the named modules below are presets of it.

    s(i, j) = τ θ(x_i)ᵀφ(x_j) + C(x_i)[Δij] + D(x_j)[-Δij];  y_i = Σ_j softmax_j(s)(i, j) g(x_j);
    z = x + BN₀(W_z y) with BN₀'s scale and shift initialised to 0, so the block starts as the identity.

    Fusions of the active terms (the paper's choice is unknown; ``"logit"`` is assumption A2, the others A5;
    docs/models/joint_attention.md, A2 and A5):
    ``"logit"`` one softmax over the summed logits (adding logits multiplies the exp-weights); ``"parallel"`` one
    softmax and one value projection per term, outputs concatenated before W_z (PSANet's bi-directional layout,
    JA-parallel); ``"mix"`` A = σ(λ) softmax(content) + (1 - σ(λ)) softmax(collect + distribute), λ learnable,
    initialised to 0 (JA-mix). ``spatial_gate`` multiplies y by a CBAM spatial gate
    (docs/models/joint_attention.md, A6).

    Args:
        channels: input and output channels C.
        inner_channels: width d of θ, φ, g and of the map heads. Defaults to C // 2 (non-local block).
        content: use the content term θ(x_i)ᵀφ(x_j). Defaults to True.
        collect: use PSANet's collect term. Defaults to False.
        distribute: use PSANet's distribute term. Defaults to False.
        mask_size: odd (mask_h, mask_w) of the collect/distribute maps; (2h-1, 2w-1) covers every offset of an
            h x w feature map; other sizes still run (offsets outside the map get logit 0). Defaults to 15 (8x8).
        fusion: ``"logit"``, ``"parallel"`` or ``"mix"``. Defaults to ``"logit"``.
        scale_content: τ = 1/√d if True (docs/models/joint_attention.md, A4; Transformer-style), else τ = 1 (the
            non-local block). Defaults to True.
        spatial_gate: multiply y by a CBAM spatial gate of x (docs/models/joint_attention.md, A6). Defaults to False.

    Example:
        >>> attn = UnifiedSpatialAttention(64, 32, content=True, collect=True, mask_size=15)
        >>> attn(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
        self,
        channels: int,
        inner_channels: int | None = None,
        *,
        content: bool = True,
        collect: bool = False,
        distribute: bool = False,
        mask_size: int | tuple[int, int] = 15,
        fusion: str = "logit",
        scale_content: bool = True,
        spatial_gate: bool = False,
    ) -> None:
        super().__init__()
        d = channels // 2 if inner_channels is None else int(inner_channels)
        if channels < 1 or d < 1:
            raise ValueError(f"channels and inner_channels must be >= 1, got {channels} and {inner_channels}")
        switches = (("content", content), ("collect", collect), ("distribute", distribute))
        self.terms = tuple(t for t, on in switches if on)
        if not self.terms:
            raise ValueError("at least one of content, collect, distribute must be True (use nn.Identity for none)")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if fusion == "mix" and (not content or not (collect or distribute)):
            raise ValueError("fusion='mix' mixes the content map with a positional map: set content and collect")
        self.fusion = fusion
        self.mask_size = _pair_odd(mask_size)
        self.content_scale = d**-0.5 if scale_content else 1.0
        if content:
            self.theta = nn.Conv2d(channels, d, 1)
            self.phi = nn.Conv2d(channels, d, 1)
        self.collect = PointwiseMapHead(channels, d, self.mask_size) if collect else None
        self.distribute = PointwiseMapHead(channels, d, self.mask_size) if distribute else None
        if fusion == "mix":
            self.mix_logit = nn.Parameter(torch.zeros(()))  # σ(0) = 1/2: equal weight at the start
        n_values = len(self.terms) if fusion == "parallel" else 1
        self.values = nn.ModuleList(nn.Conv2d(channels, d, 1) for _ in range(n_values))  # g
        self.gate = SpatialGate() if spatial_gate else None
        self.out_proj = nn.Conv2d(n_values * d, channels, 1, bias=False)  # W_z
        self.out_norm = nn.BatchNorm2d(channels)  # BN₀
        self.reset_residual()

    def reset_residual(self) -> None:
        """Zero BN₀'s scale and shift so that the block is the identity (non-local block, Sec. 4.1)."""
        nn.init.zeros_(self.out_norm.weight)
        nn.init.zeros_(self.out_norm.bias)

    def term_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each active term's logits ``[B, N, N]`` (query i, key j), keyed by term name."""
        logits = {}
        if "content" in self.terms:
            q = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, d)
            k = self.phi(x).flatten(2)  # (B, d, N)
            logits["content"] = torch.bmm(q, k) * self.content_scale
        if self.collect is not None:
            logits["collect"] = self.collect(x, "collect")
        if self.distribute is not None:
            logits["distribute"] = self.distribute(x, "distribute")
        return logits

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention maps ``[B, N, N]``, each row summing to 1: one map, or one per term for ``"parallel"``."""
        s = self.term_logits(x)
        if self.fusion == "parallel":
            return [v.softmax(dim=-1) for v in s.values()]
        if self.fusion == "mix":
            lam = torch.sigmoid(self.mix_logit)
            positional = sum(v for t, v in s.items() if t != "content").softmax(dim=-1)
            return [lam * s["content"].softmax(dim=-1) + (1 - lam) * positional]
        return [sum(s.values()).softmax(dim=-1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Unified formula (module docstring): z = x + BN₀(W_z Σ_j A(i, j) g(x_j))
        b, _, h, w = x.shape
        maps = self.attention_maps(x)
        ys = [torch.bmm(a, g(x).flatten(2).transpose(1, 2)) for a, g in zip(maps, self.values)]  # (B, N, d) each
        y = torch.cat(ys, dim=-1).transpose(1, 2).reshape(b, -1, h, w)  # (B, n_values*d, H, W)
        if self.gate is not None:
            y = y * self.gate(x)
        return x + self.out_norm(self.out_proj(y))


class NonLocalBlock(UnifiedSpatialAttention):
    """Non-local block, embedded Gaussian (Wang et al. 2018, Eq. 1-3 and 6): the content term alone.

    z_i = x_i + BN₀(W_z Σ_j softmax_j(θ(x_i)ᵀφ(x_j)) g(x_j)); θ, φ, g are 1x1 convs to d = C/2 channels. Exact
    (no reconstruction), without the optional max-pool sub-sampling of φ and g.

    Args:
        channels: input and output channels C.
        inner_channels: d. Defaults to C // 2.
        scale_content: divide θᵀφ by √d (not in the paper). Defaults to False.
    """

    def __init__(self, channels: int, inner_channels: int | None = None, *, scale_content: bool = False) -> None:
        super().__init__(channels, inner_channels, content=True, scale_content=scale_content)


class PointwiseSpatialAttention(UnifiedSpatialAttention):
    """PSANet point-wise spatial attention (Zhao et al. 2018, Eq. 6-9, ``psa_softmax=True``): positional terms.

    collect: y_i = Σ_j softmax_j(C(x_i)[Δij]) g(x_j); with ``distribute`` a second, separately normalised map
    softmax_j(D(x_j)[-Δij]) with its own g, concatenated before W_z (PSANet's bi-directional ``psa_type=2``). The
    maps are exact; the value projection and residual output follow the non-local block (module docstring).

    Args:
        channels: input and output channels C.
        inner_channels: d. Defaults to C // 2.
        mask_size: odd (mask_h, mask_w) of the over-complete map. Defaults to 15 (an 8x8 feature map).
        distribute: add the distribute branch (bi-directional PSA). Defaults to False (collect only).
    """

    def __init__(
        self,
        channels: int,
        inner_channels: int | None = None,
        *,
        mask_size: int | tuple[int, int] = 15,
        distribute: bool = False,
    ) -> None:
        super().__init__(
            channels,
            inner_channels,
            content=False,
            collect=True,
            distribute=distribute,
            mask_size=mask_size,
            fusion="parallel",
        )


class JointAttention(UnifiedSpatialAttention):
    """Joint attention (reconstruction, docs/models/joint_attention.md, A2): content and point-wise positional logits
    in one softmax.

    s(i, j) = θ(x_i)ᵀφ(x_j)/√d + C(x_i)[Δij] (+ D(x_j)[-Δij] if ``distribute``, docs/models/joint_attention.md, A3);
    z = x + BN₀(W_z softmax_j(s) g).
    All of it is reconstructed: the paper's equation is unknown. Alternatives: ``fusion="parallel"`` or ``"mix"``
    (docs/models/joint_attention.md, A5), ``pointwise="gate"`` (docs/models/joint_attention.md, A6: self-attention
    output times a CBAM per-pixel gate instead of PSANet maps).

    Args:
        channels: input and output channels C.
        inner_channels: d. Defaults to C // 2.
        mask_size: odd (mask_h, mask_w) of the over-complete map. Defaults to 15 (an 8x8 feature map).
        distribute: also add PSANet's distribute term. Defaults to False.
        fusion: ``"logit"`` (default), ``"parallel"`` or ``"mix"``.
        pointwise: ``"psa"`` (default) or ``"gate"``.
        scale_content: τ = 1/√d (docs/models/joint_attention.md, A4). Defaults to True.
    """

    def __init__(
        self,
        channels: int,
        inner_channels: int | None = None,
        *,
        mask_size: int | tuple[int, int] = 15,
        distribute: bool = False,
        fusion: str = "logit",
        pointwise: str = "psa",
        scale_content: bool = True,
    ) -> None:
        if pointwise not in ("psa", "gate"):
            raise ValueError(f"pointwise must be 'psa' or 'gate', got {pointwise!r}")
        psa = pointwise == "psa"
        super().__init__(
            channels,
            inner_channels,
            content=True,
            collect=psa,
            distribute=psa and distribute,
            mask_size=mask_size,
            fusion=fusion if psa else "logit",
            scale_content=scale_content,
            spatial_gate=not psa,
        )


def build_attention(
    kind: str, channels: int, inner_channels: int | None = None, mask_size: int | tuple[int, int] = 15, **kwargs
) -> nn.Module:
    """The module for an ablation setting.

    Args:
        kind: ``"joint"`` (JointAttention), ``"point"`` (PointwiseSpatialAttention), ``"self"`` (NonLocalBlock) or
            ``"none"`` (identity).
        channels: feature channels C.
        inner_channels: d. Defaults to C // 2.
        mask_size: over-complete map size for the point-wise terms (ignored by ``"self"``).
        **kwargs: further options of the chosen class (e.g. ``distribute=True``, ``fusion="mix"``).

    Returns:
        A module mapping ``[B, C, H, W]`` to ``[B, C, H, W]``.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")
    if kind == "none":
        return nn.Identity()
    if kind == "self":
        return NonLocalBlock(channels, inner_channels, **kwargs)
    if kind == "point":
        return PointwiseSpatialAttention(channels, inner_channels, mask_size=mask_size, **kwargs)
    return JointAttention(channels, inner_channels, mask_size=mask_size, **kwargs)
