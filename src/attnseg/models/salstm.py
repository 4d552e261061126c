"""SALSTM and LSTMSA: LSTM states woven into channel self-attention, as plug-in heads for any backbone.

Paper:
    Z. Ji, S. Ye, X. Ma, "Sparse Coding Inspired LSTM and Self-Attention Integration for Medical Image
    Segmentation", IEEE Transactions on Image Processing 33:6098-6113, 2024. DOI 10.1109/TIP.2024.3482189.
Official code: github.com/yeshunlong/SALSTM at e45f8fa98209fe32872df0d5de9a7b52a25e9a7b
(``code/ACDC/Baseline/model.py``; ACDC with an MT-UNet backbone is the only released setting).

What the released head computes (docs/models/salstm.md §2-§3). Each of K adjacent slices goes through the backbone
(the release: MT-UNet whose 1x1 classifier outputs 64 channels). Two independent direction networks run a one-layer
ConvLSTM (one 5x5 gate conv on ``[x_t; h_{t-1}]``, gates in the order i, f, o, g, zero initial state) towards the
centre slice: previous -> centre and next -> centre. On the centre-step states each direction applies a self-attention
whose tokens are the channels:

- SALSTM: Q = (c + f) / 2, K = (g + h) / 2, V = h (no extra weights);
- LSTMSA: Q = (W_q h + b_q) * (c + f) / 2, K = (W_k h + b_k) * (g + h) / 2, V = (W_v h + b_v) * h;

A = softmax(s * Q K^T) over a C x C matrix, Y = A V. ``[Y_fwd | Y_rev]`` then goes through a 1x1 conv to logits.

Design of this implementation (all choices keep the released model reachable):

- The attention scale ``s`` is an explicit option, ``attention_scale``, defaulting to the released constant
  ``1/88`` (``train.py`` passes ``attenion_size=88*88`` although the maps are 224x224; the class default would
  be ``1/224``). :func:`scale_from_attention_size` converts the official argument.
- The step-0 shortcut (docs/models/salstm.md §8.1) is on by default: the first step starts from ``h = c = 0``, so
  only the input half of the gate conv and only the i, o, g gates are needed (``c_1 = i * g``). It is exact (same
  math; float32 round-off only) and cuts the head's conv work by 31 %. ``step0_shortcut=False`` runs the official
  order (full conv on ``[x; 0]``, forget gate times zero) and is the reference path used by the benchmark and the
  tests.
- The gate convolutions of training steps run in the spectral tile kernel (docs/models/salstm.md §8.2; option
  ``conv_impl``, default ``"auto"``): the same convolutions per 16 x 16 output tile in the discrete Fourier domain,
  about 7x fewer multiply-adds at k = 5, both directions and all steps in one autograd Function with a hand-written
  backward (exact math; float32 round-off at or below the direct conv's). ``conv_impl="direct"`` keeps
  ``F.conv2d``.
- The official LSTMSA sizes its q/k/v maps by the *input* channels, so it only works when input = hidden channels;
  here they are sized by the hidden channels (identical when the two agree, which the release requires).
- Only a one-layer ConvLSTM is provided (the release uses one layer; ``hidden_channels=[64]``).

Plug-in models (``create_model("salstm" | "lstmsa", backbone=...)``):

- Input is a volume slab ``[B, C, K, H, W]`` of K adjacent slices (K = ``slab_size``, odd, >= 3; 3 in the
  release), output the centre slice's logits ``[B, num_classes, H, W]``. The official call style
  ``model(prev, cur, next)`` with three ``[B, C, H, W]`` slices is accepted too.
- Any registry model with the feature interface (``feature_channels``, ``forward_features``, ``forward_head``) is a
  backbone. It is built with ``num_classes = hidden_channels``, so its classifier becomes the 1x1 projection to the
  head width: with ``backbone="mtunet"`` this is exactly the release's ``MTUNet(out_ch=64)`` encoder, and the model
  has the released parameter counts (SALSTM 80,718,392; LSTMSA 80,743,352).
- The K backbone passes are batched into one call of batch ``B*K`` (the release calls the encoder three times).
  This is exact in eval mode; in training, batch-norm statistics are pooled over the ``B*K`` slices instead of
  per slice (docs/models/salstm.md §8.1).
- K > 3: the forward direction runs slices ``0, 1, ..., K//2`` and the reverse direction slices
  ``K-1, K-2, ..., K//2``; both end on the centre slice, whose step states feed the attention. K = 3 is the
  release's ``(prev, cur)`` / ``(next, cur)``.

2D images (``salstm2d`` / ``lstmsa2d``) -- a RECONSTRUCTION, not released code. The paper reports 2D experiments
(ISIC, Synapse) but their code is unreleased (docs/models/salstm.md §3.6). Here the slab is a scale-space of the
backbone's feature map F (computed once): slice ``K//2 +- d`` is F average-pooled by ``2**d`` and bilinearly
upsampled back, so each direction runs coarse to fine, ``F_{2^m}, ..., F_2, F``, and the ConvLSTM memory carries
context from coarser scales into the full-resolution states that form Q, K, V. This uses only the feature interface
(so it works on every backbone), keeps the head and its weights identical to the 3D head, and costs one backbone
pass.
``sequence="repeat"`` gives the literal alternative (the same map as every slice; docs/models/salstm.md §3.6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.layers import check_divisible, padded_size
from attnseg.models.official import load_mapped, register_official
from attnseg.models.registry import create_model, has_feature_interface, register_model, sized_kwargs

__all__ = [
    "ConvLSTMCell",
    "StateSelfAttention",
    "GatedStateSelfAttention",
    "TransLSTM",
    "BiTransLSTMHead",
    "SliceContextNet",
    "ScaleContextNet",
    "scale_from_attention_size",
    "channel_attention",
    "spectral_convlstm",
]

_PAPER = "Ji, Ye, Ma, Sparse Coding Inspired LSTM and Self-Attention Integration, IEEE TIP 2024"
_REPO = "yeshunlong/SALSTM"
RELEASED_ATTENTION_SCALE = 1.0 / 88.0  # train.py: attenion_size = 88 * 88, scale = 1 / sqrt(88 * 88)
_VARIANTS = ("salstm", "lstmsa")
_CONV_IMPLS = ("auto", "spectral", "direct")


def scale_from_attention_size(attention_size: float) -> float:
    """The official attention scale ``1 / sqrt(attenion_size)`` (88*88 in the release, hence 1/88)."""
    if attention_size <= 0:
        raise ValueError(f"attenion_size must be > 0, got {attention_size}")
    return 1.0 / math.sqrt(attention_size)


def channel_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Self-attention whose tokens are the channels: ``softmax(scale * Q K^T) V`` over ``[B, C, H, W]`` maps.

    Each of the ``C x C`` logits is a dot product over the ``H*W`` pixels (docs/models/salstm.md §3.2); cost is
    linear in ``H*W``.

    Args:
        query: ``[B, C, H, W]``.
        key: ``[B, C, H, W]``.
        value: ``[B, C, H, W]``.
        scale: logit multiplier.
    """
    b, c, h, w = query.shape
    # [B, C, H, W] -> [B, C, HW]: channels are tokens, flattened pixels their features
    q, k, v = query.reshape(b, c, h * w), key.reshape(b, c, h * w), value.reshape(b, c, h * w)
    energy = torch.bmm(q, k.transpose(1, 2)) * scale  # [B, C, C]; bmm first, then scale (official order)
    return torch.bmm(torch.softmax(energy, dim=-1), v).reshape(b, c, h, w)


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step with a single gate convolution (docs/models/salstm.md §3.1).

    ``A = conv_k([x; h_{t-1}])`` split into i, f, o, g (that order); ``c_t = f c_{t-1} + i g``,
    ``h_t = o tanh(c_t)``. The conv always has a bias (the official ``bias`` flag is ignored upstream).

    Args:
        in_channels: channels of the input maps x_t.
        hidden_channels: channels of h and c.
        kernel_size: odd size of the gate conv. Defaults to 5.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 5) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number (same-size maps), got {kernel_size}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.conv = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, kernel_size, padding=kernel_size // 2)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None, shortcut: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One step. ``state=None`` is the zero initial state.

        Returns:
            ``(h, c, gates)`` with ``gates`` holding the activations i, f, o, g (f is absent after a shortcut step).
        """
        hc = self.hidden_channels
        if state is None and shortcut:
            # Step-0 shortcut (docs/models/salstm.md §8.1): h_0 = c_0 = 0, so only the input half of the conv and
            # gates i, o, g matter.
            w, bias = self.conv.weight, self.conv.bias
            w_iog = torch.cat([w[:hc, : self.in_channels], w[2 * hc :, : self.in_channels]])
            b_iog = torch.cat([bias[:hc], bias[2 * hc :]])
            a_i, a_o, a_g = F.conv2d(x, w_iog, b_iog, padding=self.conv.padding).chunk(3, dim=1)
            i, o, g = torch.sigmoid(a_i), torch.sigmoid(a_o), torch.tanh(a_g)
            c = i * g
            return o * torch.tanh(c), c, {"i": i, "o": o, "g": g}
        if state is None:  # official order: zeros concatenated and multiplied through
            zeros = x.new_zeros(x.shape[0], hc, *x.shape[2:])
            state = (zeros, zeros)
        h_prev, c_prev = state
        # docs/models/salstm.md §3.1: gates from one conv over [x_t ; h_{t-1}], split i, f, o, g
        # (Per-gate activations after chunk: its backward is a single cat, the leanest in memory.)
        a_i, a_f, a_o, a_g = self.conv(torch.cat([x, h_prev], dim=1)).chunk(4, dim=1)
        i, f, o, g = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o), torch.tanh(a_g)
        c = c_prev * f + i * g
        return o * torch.tanh(c), c, {"i": i, "f": f, "o": o, "g": g}


class StateSelfAttention(nn.Module):
    """SALSTM attention: Q = (c+f)/2, K = (g+h)/2, V = h from the last step's states; no parameters
    (docs/models/salstm.md §3.2).

    Args:
        scale: multiplier of the ``C x C`` logits. Defaults to the released 1/88.
    """

    def __init__(self, scale: float = RELEASED_ATTENTION_SCALE) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(
        self, h: torch.Tensor, c: torch.Tensor, gates: Mapping[str, torch.Tensor], official_order: bool = False
    ) -> torch.Tensor:
        # docs/models/salstm.md §3.2: fixed linear combinations of the LSTM states as Q, K, V
        if official_order:
            return channel_attention((c + gates["f"]) / 2, (gates["g"] + h) / 2, h, self.scale)
        # The two halvings are powers of two, so folding them into the scale is bit-exact and saves two passes.
        return channel_attention(c + gates["f"], gates["g"] + h, h, self.scale / 4)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


class GatedStateSelfAttention(nn.Module):
    """LSTMSA attention: per-pixel linear maps of h, gated by the SALSTM state combinations
    (docs/models/salstm.md §3.3).

    Args:
        channels: hidden channels C (the maps are C -> C with bias).
        scale: multiplier of the ``C x C`` logits. Defaults to the released 1/88.
    """

    def __init__(self, channels: int, scale: float = RELEASED_ATTENTION_SCALE) -> None:
        super().__init__()
        self.scale = float(scale)
        self.q_proj = nn.Linear(channels, channels)
        self.k_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)

    def forward(
        self, h: torch.Tensor, c: torch.Tensor, gates: Mapping[str, torch.Tensor], official_order: bool = False
    ) -> torch.Tensor:
        # docs/models/salstm.md §3.3: Q = P_q(h) (c+f)/2, K = P_k(h) (g+h)/2, V = P_v(h) h; one fused 1x1 conv for
        # the three maps
        ch = self.q_proj.in_features  # a module constant, so ONNX export keeps the fused kernel's shape static
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]).view(3 * ch, ch, 1, 1)
        bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        p_q, p_k, p_v = F.conv2d(h, weight, bias).chunk(3, dim=1)
        if official_order:
            return channel_attention(p_q * ((c + gates["f"]) / 2), p_k * ((gates["g"] + h) / 2), p_v * h, self.scale)
        # Halvings folded into the scale (bit-exact: powers of two).
        return channel_attention(p_q * (c + gates["f"]), p_k * (gates["g"] + h), p_v * h, self.scale / 4)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


class TransLSTM(nn.Module):
    """One direction network: a ConvLSTM over a slice sequence, then state self-attention on the last step.

    Args:
        in_channels: channels of the slice feature maps.
        hidden_channels: ConvLSTM hidden channels.
        variant: ``"salstm"`` (parameter-free attention) or ``"lstmsa"`` (gated projections).
        kernel_size: gate conv size. Defaults to 5.
        attention_scale: logit scale. Defaults to the released 1/88.
        step0_shortcut: skip the zero-state half of the first step (exact) and fold the attention's halvings into
            its scale (bit-exact); False follows the official order of operations. Defaults to True.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        variant: str = "salstm",
        kernel_size: int = 5,
        attention_scale: float = RELEASED_ATTENTION_SCALE,
        step0_shortcut: bool = True,
    ) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
        self.step0_shortcut = step0_shortcut
        self.cell = ConvLSTMCell(in_channels, hidden_channels, kernel_size)
        self.attention: nn.Module = (
            StateSelfAttention(attention_scale)
            if variant == "salstm"
            else GatedStateSelfAttention(hidden_channels, attention_scale)
        )

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq``: ``[B, T, C, H, W]`` with T >= 2, ordered towards the target slice (last)."""
        state = None
        for t in range(seq.shape[1]):
            h, c, gates = self.cell(seq[:, t], state, shortcut=self.step0_shortcut)
            state = (h, c)
        # docs/models/salstm.md §3.2/3.3: Q, K, V from the final step's h, c and gates
        return self.attention(h, c, gates, official_order=not self.step0_shortcut)


# ----------------------------------------------------------------------------------------------------------------
# Spectral tile kernel of the ConvLSTM (docs/models/salstm.md §8.2): the same convolutions, computed per tile in the
# discrete Fourier domain. Exact in real arithmetic; float32 round-off is at or below that of the direct conv.
#
# Overlap-save tiling: the map is cut into L x L output tiles; tile (ty, tx) reads the N x N window (N = L + k - 1)
# of the zero-padded input at (ty L, tx L). A k x k "same" cross-correlation of a window is, on its first L x L
# outputs, its N-point circular cross-correlation, i.e. irfft2(conj(W_hat) * X_hat), W_hat the N x N DFT of the
# zero-padded kernel. Per frequency bin the channel mixing is one complex [O x C] @ [C x tiles] product, so a gate
# conv costs about 4 N (N/2 + 1) / L^2 real MACs per output and channel pair (3.4 at k = 5, L = 16) instead of
# k^2 = 25. All transforms are small real GEMMs with fixed DFT matrices (no torch.fft: its CPU path allocates hidden
# temporaries, and fresh memory is what costs most on a loaded machine), all products are real batched GEMMs
# (complex numbers as (re, im) pairs), and every scratch buffer comes from a per-call workspace that the backward
# pass reuses.
#
# Layouts (D = 2 directions, T = B * ny * nx tiles):
#   activations of the recurrence, "tile layout":  [L, L, D, channels, B, ny, nx]   (pixel (n1, n2) of each tile)
#   spectra of inputs / states / gate outputs:     [N, N/2 + 1, D, channels, T, 2]  (bin-major, (re, im) pairs)
#   weight spectra (saved):                        [2 (re, im), N * (N/2 + 1), D, 4 hc, C + hc]
# Gate rows are reordered to (g, i, o, f): tanh on the first block, sigmoid on the rest, and the first step needs
# only the leading 3 hc rows (the step-0 shortcut).

_SPECTRAL_CACHE: dict[tuple[Any, ...], dict[str, torch.Tensor]] = {}


def _dft_matrices(n: int, tile: int, k: int, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """The fixed real matrices of the tile transforms (computed in float64, cached per size, dtype and device)."""
    key = (n, tile, k, dtype, str(device))
    if key in _SPECTRAL_CACHE:
        return _SPECTRAL_CACHE[key]
    f64, nh = torch.float64, n // 2 + 1
    idx, half = torch.arange(n, dtype=f64), torch.arange(nh, dtype=f64)
    th1 = 2 * math.pi * torch.outer(idx, idx) / n  # [k1, n1]
    th2 = 2 * math.pi * torch.outer(idx, half) / n  # [n2, k2]
    weight = torch.full((nh,), 2.0, dtype=f64)  # Hermitian weights of the half spectrum
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    u = torch.arange(k, dtype=f64)
    # conj(W_hat): cross-correlation (conv2d) = irfft2(conj(W_hat) X_hat)
    ph = (
        2
        * math.pi
        * ((idx.view(n, 1, 1, 1) * u.view(1, 1, k, 1) + half.view(1, nh, 1, 1) * u.view(1, 1, 1, k)) % n)
        / n
    )
    mats = {
        # forward DFT of a window: along n1 -> rows (re, im) x k1; along n2 -> columns (cos, sin) x k2
        "rows": torch.cat([th1.cos(), -th1.sin()]),
        "cols": torch.cat([th2.cos(), th2.sin()], dim=1),
        # inverse DFT kept to the L x L output tile: along k1 -> rows (cos, sin) x n1; along (re, im) x k2 -> n2
        "inv_rows": torch.cat([th1[:, :tile].t().cos(), th1[:, :tile].t().sin()]),
        "inv_cols": torch.cat([th2[:tile].cos() * weight, -th2[:tile].sin() * weight], dim=1) / (n * n),
        # kernel spectra: bins x taps, real and imaginary part
        "w_re": ph.cos().reshape(n * nh, k * k),
        "w_im": ph.sin().reshape(n * nh, k * k),
    }
    out = {name: m.to(dtype=dtype, device=device).contiguous() for name, m in mats.items()}
    out.update({name + "_t": m.t().contiguous() for name, m in list(out.items())})
    _SPECTRAL_CACHE[key] = out
    return out


class _TileGeometry:
    """Tiling of an H x W map into L x L output tiles read from N x N windows."""

    def __init__(self, batch: int, height: int, width: int, k: int, tile: int) -> None:
        self.B, self.H, self.W, self.k, self.L = batch, height, width, k, tile
        self.N = tile + k - 1
        self.Nh = self.N // 2 + 1
        self.bins = self.N * self.Nh
        self.p = k // 2
        self.ny, self.nx = -(-height // tile), -(-width // tile)
        self.T = batch * self.ny * self.nx
        self.exact = self.ny * tile == height and self.nx * tile == width
        # padded maps: one extra tile row and column hold the right / bottom halo (L >= k - 1)
        self.Hp, self.Wp = (self.ny + 1) * tile, (self.nx + 1) * tile


class _Workspace:
    """Named scratch buffers of one forward + backward call (first-touched once, then reused)."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self.dtype, self.device = dtype, device

    def get(self, name: str, shape: Sequence[int], zero: bool = False, reserve: int = 0) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel:
            size = max(numel, reserve)
            buf = (torch.zeros if zero else torch.empty)(size, dtype=self.dtype, device=self.device)
            self.buffers[name] = buf
        return buf[:numel].view(*shape)


def _tile_view(t: torch.Tensor) -> torch.Tensor:
    """Tile layout ``[L, L, D, ch, B, ny, nx]`` seen as ``[B, D, ch, ny, L, nx, L]``."""
    return t.permute(4, 2, 3, 5, 0, 6, 1)


def _to_tiles(x: torch.Tensor, g: _TileGeometry, out: torch.Tensor, ws: _Workspace) -> torch.Tensor:
    """``[B, D, ch, H, W]`` -> tile layout; pixels beyond H, W (when L does not divide them) are zero."""
    b, d, ch = x.shape[:3]
    if g.exact:
        _tile_view(out).copy_(x.view(b, d, ch, g.ny, g.L, g.nx, g.L))
        return out
    full = ws.get("to_tiles", (b, d, ch, g.ny * g.L, g.nx * g.L))
    full[..., : g.H, : g.W].copy_(x)
    full[..., g.H :, :].zero_()
    full[..., : g.H, g.W :].zero_()
    _tile_view(out).copy_(full.view(b, d, ch, g.ny, g.L, g.nx, g.L))
    return out


def _from_tiles(t: torch.Tensor, g: _TileGeometry, ws: _Workspace) -> torch.Tensor:
    """Tile layout -> a new ``[B, D, ch, H, W]`` tensor."""
    v = _tile_view(t)
    b, d, ch = v.shape[:3]
    out = torch.empty(b, d, ch, g.H, g.W, dtype=t.dtype, device=t.device)
    if g.exact:
        out.view(b, d, ch, g.ny, g.L, g.nx, g.L).copy_(v)
        return out
    full = ws.get("from_tiles", (b, d, ch, g.ny * g.L, g.nx * g.L))
    full.view(b, d, ch, g.ny, g.L, g.nx, g.L).copy_(v)
    return out.copy_(full[..., : g.H, : g.W])


def _window_spectra(padded: torch.Tensor, g: _TileGeometry, m: dict[str, torch.Tensor], ws: _Workspace, tag: str):
    """2D DFT of every N x N window of zero-padded maps ``[Q, Hp, Wp]``, as two real GEMMs.

    Returns ``[2 (re, im of the n1 transform), N (k1), Q, ny, nx, 2 (cos, sin of the n2 transform), Nh (k2)]``;
    :func:`_combine_spectra` turns it into complex spectra.
    """
    q, n = padded.shape[0], g.N
    windows = ws.get(tag + "_win", (n, q, g.ny, g.nx, n))
    grid = padded.unfold(1, n, g.L).unfold(2, n, g.L)[:, : g.ny, : g.nx]  # [Q, ny, nx, n1, n2]
    windows.copy_(grid.permute(3, 0, 1, 2, 4))  # [n1, Q, ny, nx, n2]
    rows = ws.get(tag + "_rows", (2 * n, q * g.ny * g.nx * n))
    torch.mm(m["rows"], windows.view(n, -1), out=rows)
    parts = ws.get(tag + "_parts", (2 * n * q * g.ny * g.nx, 2 * g.Nh))
    torch.mm(rows.view(-1, n), m["cols"], out=parts)
    return parts.view(2, n, q, g.ny, g.nx, 2, g.Nh)


def _combine_spectra(parts: torch.Tensor, spectrum: torch.Tensor, spectrum_i: torch.Tensor) -> None:
    """``parts`` permuted to ``[2 (re, im), 2 (cos, sin), *dest]``: X = (P_re + Q_im) + i (P_im - Q_re) into
    ``spectrum[..., 0 / 1]``, and i X into ``spectrum_i`` (the products take both, avoiding a complex multiply)."""
    torch.add(parts[0, 0], parts[1, 1], out=spectrum[..., 0])
    torch.sub(parts[1, 0], parts[0, 1], out=spectrum[..., 1])
    torch.neg(spectrum[..., 1], out=spectrum_i[..., 0])
    spectrum_i[..., 1].copy_(spectrum[..., 0])


def _spectra_grad_to_parts(a: torch.Tensor, b: torch.Tensor, parts: torch.Tensor) -> None:
    """Adjoint of :func:`_combine_spectra` for a spectrum gradient dX = a - i b ((re, im) pairs)."""
    torch.add(a[..., 0], b[..., 1], out=parts[0, 0])
    parts[1, 1].copy_(parts[0, 0])
    torch.sub(a[..., 1], b[..., 0], out=parts[1, 0])
    torch.neg(parts[1, 0], out=parts[0, 1])


def _window_spectra_adjoint(
    parts: torch.Tensor, g: _TileGeometry, m: dict[str, torch.Tensor], ws: _Workspace, tag: str
):
    """Adjoint of :func:`_window_spectra`: overlap-adds the window gradients into ``[Q, Hp, Wp]`` (a scratch view)."""
    n, tile, q = g.N, g.L, parts.shape[2]
    rows = ws.get(tag + "_rows", (2 * n * q * g.ny * g.nx, n))
    torch.mm(parts.reshape(-1, 2 * g.Nh), m["cols_t"], out=rows)
    win = ws.get(tag + "_win", (n, q * g.ny * g.nx * n))
    torch.mm(m["rows_t"], rows.view(2 * n, -1), out=win)
    win = win.view(n, q, g.ny, g.nx, n)
    acc = ws.get(tag + "_pad", (q, g.Hp, g.Wp))
    halo = n - tile

    def at(r0: int, c0: int) -> torch.Tensor:  # the tile grid of acc shifted by (r0, c0), as [n1, Q, ny, nx, n2]
        block = acc[:, r0 : r0 + g.ny * tile, c0 : c0 + g.nx * tile]
        return block.unflatten(2, (g.nx, tile)).unflatten(1, (g.ny, tile)).permute(2, 0, 1, 3, 4)

    at(0, 0).copy_(win[:tile, :, :, :, :tile])
    acc[:, g.ny * tile :, :].zero_()
    acc[:, : g.ny * tile, g.nx * tile :].zero_()
    at(tile, 0)[:halo].add_(win[tile:, :, :, :, :tile])
    at(0, tile)[..., :halo].add_(win[:tile, :, :, :, tile:])
    at(tile, tile)[:halo, ..., :halo].add_(win[tile:, :, :, :, tile:])
    return acc


def _inverse_to_tiles(
    spectrum: torch.Tensor, g: _TileGeometry, m: dict[str, torch.Tensor], ws: _Workspace, cols: int, out: torch.Tensor
) -> None:
    """Inverse DFT of gate spectra ``[N (k1), Nh * cols * 2]`` ((re, im) pairs) to the tile layout ``[L, L, cols]``."""
    tile, nh = g.L, g.Nh
    ab = ws.get("inv_ab", (2 * tile, nh * cols * 2))
    torch.mm(m["inv_rows"], spectrum, out=ab)  # k1 -> n1: [(cos | sin), n1] x (k2, cols, re/im)
    ab = ab.view(2, tile, nh, cols, 2)
    z = ws.get("inv_z", (tile, 2, nh, cols))  # complex rows: Z = sum_k1 Y e^{+i theta}, as (re, im) planes
    torch.sub(ab[0, ..., 0], ab[1, ..., 1], out=z[:, 0])
    torch.add(ab[0, ..., 1], ab[1, ..., 0], out=z[:, 1])
    torch.bmm(m["inv_cols"].expand(tile, tile, 2 * nh), z.view(tile, 2 * nh, cols), out=out.view(tile, tile, cols))


def _inverse_to_tiles_adjoint(
    grad: torch.Tensor, g: _TileGeometry, m: dict[str, torch.Tensor], ws: _Workspace, cols: int, out: torch.Tensor
) -> None:
    """Adjoint of :func:`_inverse_to_tiles`: tile-layout gradient ``[L, L, cols]`` -> ``out`` ``[N, Nh * cols * 2]``."""
    tile, nh = g.L, g.Nh
    dz = ws.get("inv_z", (tile, 2, nh, cols))
    torch.bmm(m["inv_cols_t"].expand(tile, 2 * nh, tile), grad.view(tile, tile, cols), out=dz.view(tile, 2 * nh, cols))
    dab = ws.get("inv_ab", (2, tile, nh, cols, 2))
    dab[0, ..., 0].copy_(dz[:, 0])
    dab[0, ..., 1].copy_(dz[:, 1])
    dab[1, ..., 0].copy_(dz[:, 1])
    torch.neg(dz[:, 0], out=dab[1, ..., 1])
    torch.mm(m["inv_rows_t"], dab.view(2 * tile, -1), out=out)


def _times_i(spectrum: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """i X for spectra stored as (re, im) pairs."""
    torch.neg(spectrum[..., 1], out=out[..., 0])
    out[..., 1].copy_(spectrum[..., 0])
    return out


def _pairs(t: torch.Tensor) -> torch.Tensor:
    """``[..., T, 2]`` -> ``[..., 2T]`` (re, im interleaved columns)."""
    return t.flatten(-2)


class _SpectralConvLSTM(torch.autograd.Function):
    """Both directions of the one-layer ConvLSTM from a zero state, spectral tile kernel; returns the last step's
    ``h``, ``c + f`` and ``g + h`` (the attention inputs), each ``[B, D, hc, H, W]``.

    Inputs: ``seq`` ``[B, D, S, C, H, W]`` (S >= 2 steps per direction), ``weight`` ``[D, 4 hc, C + hc, k, k]`` and
    ``bias`` ``[D, 4 hc]`` with gate rows in the order (g, i, o, f), and the tile side ``L``.
    """

    @staticmethod
    def forward(ctx: Any, seq: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tile: int):  # noqa: D102
        b_, d_, s_, c_, h_, w_ = seq.shape
        o_, cin, k = weight.shape[1], weight.shape[2], weight.shape[-1]
        hc = o_ // 4
        g = _TileGeometry(b_, h_, w_, k, tile)
        n, nh, bins, t_ = g.N, g.Nh, g.bins, g.T
        dt, dev = seq.dtype, seq.device
        m = _dft_matrices(n, tile, k, dt, dev)
        ws = _Workspace(dt, dev)
        # kernel spectra, re and im: [bins, D, O, C + hc]
        w_spec = torch.empty(2, bins, d_, o_, cin, dtype=dt, device=dev)
        taps = weight.reshape(d_ * o_ * cin, k * k).t()
        torch.mm(m["w_re"], taps, out=w_spec[0].view(bins, -1))
        torch.mm(m["w_im"], taps, out=w_spec[1].view(bins, -1))
        w_re, w_im = w_spec[0].view(bins * d_, o_, cin), w_spec[1].view(bins * d_, o_, cin)
        # spectra of all input windows (every step of both directions in one pass): [S, bins, D, C, T, 2]
        padded = ws.get("x_pad", (s_, d_, c_, b_, g.Hp, g.Wp), zero=True)
        padded[..., g.p : g.p + h_, g.p : g.p + w_].copy_(seq.permute(2, 1, 3, 0, 4, 5))
        parts = _window_spectra(padded.view(-1, g.Hp, g.Wp), g, m, ws, "x")
        x_spec = torch.empty(s_, bins, d_, c_, t_, 2, dtype=dt, device=dev)
        x_spec_i = ws.get("x_spec_i", x_spec.shape)
        dest = (s_, n, nh, d_, c_, b_, g.ny, g.nx, 2)
        _combine_spectra(
            parts.view(2, n, s_, d_, c_, b_, g.ny, g.nx, 2, nh).permute(0, 8, 2, 1, 9, 3, 4, 5, 6, 7),
            x_spec.view(dest),
            x_spec_i.view(dest),
        )
        h_spec = torch.empty(max(s_ - 1, 1), bins, d_, hc, t_, 2, dtype=dt, device=dev)
        h_spec_i = ws.get("h_spec_i", h_spec.shape)
        cols_max = d_ * o_ * t_
        gates, tanh_cs, cs = [], [], []
        h = seq.new_empty(0)  # h_{s-1}, in tile layout
        for s in range(s_):
            rows = 3 * hc if s == 0 else o_  # step 0: h = c = 0, only g, i, o from the input half
            y = ws.get("y", (bins * d_, rows, 2 * t_), reserve=bins * cols_max * 2)
            xr = _pairs(x_spec[s].view(bins * d_, c_, t_, 2))
            xi = _pairs(x_spec_i[s].view(bins * d_, c_, t_, 2))
            torch.bmm(w_re[:, :rows, :c_], xr, out=y).baddbmm_(w_im[:, :rows, :c_], xi)
            if s > 0:  # the recurrent half: spectra of h_{s-1}
                hp = ws.get("h_pad", (d_, hc, b_, g.Hp, g.Wp), zero=True)
                interior = hp[..., g.p : g.p + g.ny * tile, g.p : g.p + g.nx * tile]
                interior.view(d_, hc, b_, g.ny, tile, g.nx, tile).copy_(h.permute(2, 3, 4, 5, 0, 6, 1))
                if not g.exact:
                    hp[..., g.p + h_ :, :].zero_()
                    hp[..., :, g.p + w_ :].zero_()
                hparts = _window_spectra(hp.view(-1, g.Hp, g.Wp), g, m, ws, "h")
                hdest = (n, nh, d_, hc, b_, g.ny, g.nx, 2)
                _combine_spectra(
                    hparts.view(2, n, d_, hc, b_, g.ny, g.nx, 2, nh).permute(0, 7, 1, 8, 2, 3, 4, 5, 6),
                    h_spec[s - 1].view(hdest),
                    h_spec_i[s - 1].view(hdest),
                )
                y.baddbmm_(w_re[:, :, c_:], _pairs(h_spec[s - 1].view(bins * d_, hc, t_, 2)))
                y.baddbmm_(w_im[:, :, c_:], _pairs(h_spec_i[s - 1].view(bins * d_, hc, t_, 2)))
            cols = d_ * rows * t_
            a = torch.empty(tile, tile, d_, rows, b_, g.ny, g.nx, dtype=dt, device=dev)
            ws.get("inv_ab", (1,), reserve=2 * tile * nh * cols_max * 2)
            ws.get("inv_z", (1,), reserve=tile * 2 * nh * cols_max)
            _inverse_to_tiles(y.view(n, nh * cols * 2), g, m, ws, cols, a)
            a.add_(bias[:, :rows].reshape(1, 1, d_, rows, 1, 1, 1))
            a[:, :, :, :hc].tanh_()
            a[:, :, :, hc:].sigmoid_()
            gg, ii, oo = a[:, :, :, :hc], a[:, :, :, hc : 2 * hc], a[:, :, :, 2 * hc : 3 * hc]
            if s == 0:
                c = torch.mul(ii, gg)
            else:
                ff = a[:, :, :, 3 * hc :]
                c = torch.mul(ff, cs[-1]).addcmul_(ii, gg)
            tc = torch.tanh(c)
            h = torch.mul(oo, tc, out=ws.get("h", tc.shape)) if s < s_ - 1 else torch.mul(oo, tc)
            gates.append(a)
            tanh_cs.append(tc)
            cs.append(c)
        outputs = tuple(_from_tiles(t, g, ws) for t in (h, torch.add(cs[-1], ff), torch.add(gg, h)))
        ctx.geometry, ctx.dims, ctx.workspace = g, (s_, c_, o_, cin, k, hc), ws
        ctx.save_for_backward(w_spec, x_spec, h_spec, *gates, *tanh_cs, *cs[:-1])
        return outputs

    @staticmethod
    def backward(ctx: Any, d_h: torch.Tensor | None, d_q: torch.Tensor | None, d_k: torch.Tensor | None):  # noqa: D102
        g, (s_, c_, o_, cin, k, hc), ws = ctx.geometry, ctx.dims, ctx.workspace
        w_spec, x_spec, h_spec, *rest = ctx.saved_tensors
        ctx.workspace = None  # scratch is released with this call (a retained graph rebuilds it)
        if ws is None:
            ws = _Workspace(w_spec.dtype, w_spec.device)
            _times_i(x_spec, ws.get("x_spec_i", x_spec.shape))
            _times_i(h_spec, ws.get("h_spec_i", h_spec.shape))
        gates, tanh_cs, c_prev = rest[:s_], rest[s_ : 2 * s_], [None, *rest[2 * s_ :]]
        n, nh, bins, t_, tile = g.N, g.Nh, g.bins, g.T, g.L
        b_, d_ = g.B, w_spec.shape[2]
        dt, dev = w_spec.dtype, w_spec.device
        m = _dft_matrices(n, tile, k, dt, dev)
        x_spec_i, h_spec_i = ws.get("x_spec_i", x_spec.shape), ws.get("h_spec_i", h_spec.shape)
        w_re, w_im = w_spec[0].view(bins * d_, o_, cin), w_spec[1].view(bins * d_, o_, cin)
        need_x = ctx.needs_input_grad[0]
        tshape = (tile, tile, d_, hc, b_, g.ny, g.nx)

        def tiles_or_none(grad: torch.Tensor | None, name: str) -> torch.Tensor | None:
            return None if grad is None else _to_tiles(grad, g, ws.get(name, tshape), ws)

        dk = tiles_or_none(d_k, "d_k")
        dq = tiles_or_none(d_q, "d_q")
        dh = ws.get("d_h", tshape)
        if d_h is None:
            dh.zero_()
        else:
            _to_tiles(d_h, g, dh, ws)
        if dk is not None:
            dh.add_(dk)  # k = g + h
        dc = ws.get("d_c", tshape)
        if dq is None:
            dc.zero_()
        else:
            dc.copy_(dq)  # q = c + f
        d_bias = torch.zeros(d_, o_, dtype=dt, device=dev)
        # frequency-domain weight gradients (re, im): steps >= 1 (all rows), step 0 (rows g, i, o) and recurrent half
        dwx = [torch.empty(bins * d_, o_, c_, dtype=dt, device=dev) for _ in range(2)]
        dwh = [torch.empty(bins * d_, o_, hc, dtype=dt, device=dev) for _ in range(2)]
        dwx0: list[torch.Tensor] = []
        x_parts = ws.get("x_parts", (2, n, s_, d_, c_, b_, g.ny, g.nx, 2, nh)) if need_x else None
        t1, t2 = ws.get("t1", tshape), ws.get("t2", tshape)
        for s in range(s_ - 1, -1, -1):
            a, tc = gates[s], tanh_cs[s]
            rows = a.shape[3]
            gg, ii, oo = a[:, :, :, :hc], a[:, :, :, hc : 2 * hc], a[:, :, :, 2 * hc : 3 * hc]
            da = ws.get("d_a", a.shape)
            # h = o tanh(c); c = f c_prev + i g
            torch.mul(dh, tc, out=da[:, :, :, 2 * hc : 3 * hc])
            torch.mul(dh, oo, out=t1)
            torch.mul(tc, tc, out=t2)
            t1.mul_(t2.neg_().add_(1)).add_(dc)  # dL/dc
            torch.mul(t1, gg, out=da[:, :, :, hc : 2 * hc])
            torch.mul(t1, ii, out=da[:, :, :, :hc])
            if s == s_ - 1 and dk is not None:
                da[:, :, :, :hc].add_(dk)
            if s > 0:
                torch.mul(t1, c_prev[s], out=da[:, :, :, 3 * hc :])
                if s == s_ - 1 and dq is not None:
                    da[:, :, :, 3 * hc :].add_(dq)
                torch.mul(t1, a[:, :, :, 3 * hc :], out=dc)
            # through the activations: tanh' = 1 - g^2, sigmoid' = s (1 - s)
            torch.mul(gg, gg, out=t2)
            da[:, :, :, :hc].mul_(t2.neg_().add_(1))
            sg = a[:, :, :, hc:]
            t3 = ws.get("t3", sg.shape)
            torch.sub(sg, torch.mul(sg, sg, out=t3), out=t3)
            da[:, :, :, hc:].mul_(t3)
            d_bias[:, :rows] += da.sum(dim=(0, 1, 4, 5, 6))
            cols = d_ * rows * t_
            dy = ws.get("y", (n, nh * cols * 2))
            _inverse_to_tiles_adjoint(da, g, m, ws, cols, dy)
            dy = dy.view(bins * d_, rows, 2 * t_)
            xr = _pairs(x_spec[s].view(bins * d_, c_, t_, 2))
            xi = _pairs(x_spec_i[s].view(bins * d_, c_, t_, 2))
            if s == 0:  # rows g, i, o only; a scratch buffer no longer needed
                buf = ws.get("inv_ab", (2, bins * d_, rows, c_))
                dwx0 = [buf[0], buf[1]]
                torch.bmm(dy, xr.transpose(1, 2), out=dwx0[0])
                torch.bmm(dy, xi.transpose(1, 2), out=dwx0[1])
            else:
                beta = 0 if s == s_ - 1 else 1
                torch.baddbmm(dwx[0], dy, xr.transpose(1, 2), beta=beta, out=dwx[0])
                torch.baddbmm(dwx[1], dy, xi.transpose(1, 2), beta=beta, out=dwx[1])
            if need_x:  # dX = W^H dY = (w_re^T dY) - i (w_im^T dY)
                ax, bx = ws.get("ax", (bins * d_, c_, 2 * t_)), ws.get("bx", (bins * d_, c_, 2 * t_))
                torch.bmm(w_re[:, :rows, :c_].transpose(1, 2), dy, out=ax)
                torch.bmm(w_im[:, :rows, :c_].transpose(1, 2), dy, out=bx)
                sd = (n, nh, d_, c_, b_, g.ny, g.nx, 2)
                _spectra_grad_to_parts(ax.view(sd), bx.view(sd), x_parts.permute(0, 8, 2, 1, 9, 3, 4, 5, 6, 7)[:, :, s])
            if s > 0:  # the recurrent half: weight gradient and dL/dh_{s-1}
                hr = _pairs(h_spec[s - 1].view(bins * d_, hc, t_, 2))
                hi = _pairs(h_spec_i[s - 1].view(bins * d_, hc, t_, 2))
                beta = 0 if s == s_ - 1 else 1
                torch.baddbmm(dwh[0], dy, hr.transpose(1, 2), beta=beta, out=dwh[0])
                torch.baddbmm(dwh[1], dy, hi.transpose(1, 2), beta=beta, out=dwh[1])
                ah, bh = ws.get("ah", (bins * d_, hc, 2 * t_)), ws.get("bh", (bins * d_, hc, 2 * t_))
                torch.bmm(w_re[:, :, c_:].transpose(1, 2), dy, out=ah)
                torch.bmm(w_im[:, :, c_:].transpose(1, 2), dy, out=bh)
                hparts = ws.get("h_parts", (2, n, d_, hc, b_, g.ny, g.nx, 2, nh))
                sd = (n, nh, d_, hc, b_, g.ny, g.nx, 2)
                _spectra_grad_to_parts(ah.view(sd), bh.view(sd), hparts.permute(0, 7, 1, 8, 2, 3, 4, 5, 6))
                acc = _window_spectra_adjoint(hparts.view(2, n, d_ * hc * b_, g.ny, g.nx, 2, nh), g, m, ws, "h")
                inner = acc.view(d_, hc, b_, g.Hp, g.Wp)[..., g.p : g.p + g.ny * tile, g.p : g.p + g.nx * tile]
                dh.permute(2, 3, 4, 5, 0, 6, 1).copy_(inner.unflatten(4, (g.nx, tile)).unflatten(3, (g.ny, tile)))
                if not g.exact:  # beyond H, W: zero padding, not part of h
                    v = _tile_view(dh)
                    r, cc = g.H - (g.ny - 1) * tile, g.W - (g.nx - 1) * tile
                    v[:, :, :, -1, r:].zero_()
                    v[..., -1, cc:].zero_()
        # back from bins to the k x k taps
        d_w = torch.mm(m["w_re_t"], dwx[0].view(bins, -1)).addmm_(m["w_im_t"], dwx[1].view(bins, -1))
        d_w0 = torch.mm(m["w_re_t"], dwx0[0].reshape(bins, -1)).addmm_(m["w_im_t"], dwx0[1].reshape(bins, -1))
        d_w.view(k * k, d_, o_, c_)[:, :, : 3 * hc] += d_w0.view(k * k, d_, 3 * hc, c_)
        d_wh = torch.mm(m["w_re_t"], dwh[0].view(bins, -1)).addmm_(m["w_im_t"], dwh[1].view(bins, -1))
        d_weight = torch.cat([d_w.t().reshape(d_, o_, c_, k, k), d_wh.t().reshape(d_, o_, hc, k, k)], dim=2)
        d_seq = None
        if need_x:
            acc = _window_spectra_adjoint(x_parts.view(2, n, s_ * d_ * c_ * b_, g.ny, g.nx, 2, nh), g, m, ws, "x")
            inner = acc.view(s_, d_, c_, b_, g.Hp, g.Wp)[..., g.p : g.p + g.H, g.p : g.p + g.W]
            d_seq = inner.permute(3, 1, 0, 2, 4, 5).contiguous()
        return d_seq, d_weight, d_bias, None


def spectral_convlstm(
    seq: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tile: int = 16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ConvLSTM from a zero state over ``seq`` ``[B, D, S, C, H, W]`` (D independent directions, S >= 2 steps),
    spectral tile kernel (docs/models/salstm.md §8.2).

    Args:
        seq: input maps, float32 or float64.
        weight: gate convs ``[D, 4 hc, C + hc, k, k]``, gate rows in the order (g, i, o, f), odd k.
        bias: ``[D, 4 hc]``, same row order.
        tile: output tile side L (>= k - 1); windows are L + k - 1 wide.

    Returns:
        ``(h, c + f, g + h)`` of the last step, each ``[B, D, hc, H, W]``.
    """
    if seq.dim() != 6 or seq.shape[2] < 2:
        raise ValueError(f"expected [B, D, S >= 2, C, H, W], got {tuple(seq.shape)}")
    k = weight.shape[-1]
    if tile < k - 1:
        raise ValueError(f"tile {tile} must be >= kernel_size - 1 = {k - 1}")
    return _SpectralConvLSTM.apply(seq, weight, bias, tile)


class BiTransLSTMHead(nn.Module):
    """The released head: two direction networks meeting at the centre slice, concatenated, 1x1 conv to logits.

    Args:
        in_channels: channels of each slice's feature map (64 in the release).
        num_classes: output logit channels.
        hidden_channels: ConvLSTM hidden channels. Defaults to 64.
        variant: ``"salstm"`` or ``"lstmsa"``. Defaults to ``"salstm"``.
        kernel_size: gate conv size. Defaults to 5.
        attention_scale: logit scale of the channel attention. Defaults to the released 1/88.
        step0_shortcut: exact zero-state shortcut of the first step; False runs the official order (direct convs,
            the reference path). Defaults to True.
        conv_impl: how the gate convolutions are computed when ``step0_shortcut`` is on: ``"spectral"`` (the
            spectral tile kernel, docs/models/salstm.md §8.2: same math, about 7x fewer multiply-adds at k = 5),
            ``"direct"`` (``F.conv2d``), or ``"auto"`` (default: spectral for CPU training steps, float32 or
            float64, ``kernel_size >= 5``, ``hidden_channels >= 32`` and at least 80 x 80 pixels per batch; direct
            otherwise). Tracing, scripting, ``torch.compile``, ONNX export and autocast always take the direct path.
    """

    spectral_tile = 16  # output tile side L of the spectral kernel (windows of L + kernel_size - 1)
    spectral_max_pixels = 2 * 224 * 224  # batch items per kernel call: bounds its scratch memory

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_channels: int = 64,
        variant: str = "salstm",
        kernel_size: int = 5,
        attention_scale: float = RELEASED_ATTENTION_SCALE,
        step0_shortcut: bool = True,
        conv_impl: str = "auto",
    ) -> None:
        super().__init__()
        if conv_impl not in _CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {_CONV_IMPLS}, got {conv_impl!r}")
        self.conv_impl = conv_impl
        for name, value in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("hidden_channels", hidden_channels),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not attention_scale > 0:
            raise ValueError(f"attention_scale must be > 0 (released: 1/88), got {attention_scale}")
        self.variant = variant
        kw = dict(
            variant=variant, kernel_size=kernel_size, attention_scale=attention_scale, step0_shortcut=step0_shortcut
        )
        self.forward_net = TransLSTM(in_channels, hidden_channels, **kw)
        self.reverse_net = TransLSTM(in_channels, hidden_channels, **kw)
        self.classifier = nn.Conv2d(2 * hidden_channels, num_classes, 1)

    @property
    def step0_shortcut(self) -> bool:
        return self.forward_net.step0_shortcut

    @step0_shortcut.setter
    def step0_shortcut(self, value: bool) -> None:
        self.forward_net.step0_shortcut = self.reverse_net.step0_shortcut = bool(value)

    def forward(self, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
        """``x``: slice features ``[B, K, C, H, W]`` (K odd >= 3), or the official ``head(prev, cur, next)``."""
        if more:
            x = torch.stack([x, *more], dim=1)
        if x.dim() != 5 or x.shape[1] < 3 or x.shape[1] % 2 == 0:
            raise ValueError(f"expected slice features [B, K, C, H, W] with odd K >= 3, got {tuple(x.shape)}")
        if self.uses_spectral_kernel(x):
            return self._forward_spectral(x)
        m = x.shape[1] // 2
        # docs/models/salstm.md §2 step 3: forward runs (prev ... centre), reverse runs (next ... centre)
        y_fwd = self.forward_net(x[:, : m + 1])
        y_rev = self.reverse_net(x[:, m:].flip(1))
        return self.classifier(torch.cat([y_fwd, y_rev], dim=1))  # docs/models/salstm.md §3.4: [fwd | rev] -> 1x1 conv

    def uses_spectral_kernel(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` on ``x`` (``[B, K, C, H, W]``) takes the spectral tile kernel (see ``conv_impl``)."""
        if not self.step0_shortcut or self.conv_impl == "direct":
            return False
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False
        if torch.onnx.is_in_onnx_export() or torch.is_autocast_enabled(x.device.type):
            return False
        if x.dtype not in (torch.float32, torch.float64) or self.classifier.weight.dtype != x.dtype:
            return False
        if self.conv_impl == "spectral":
            return True
        # auto: where it measured faster (benchmarks/results/salstm.md): CPU training steps of the released width on
        # maps of at least ~80 x 80 pixels per call; inference (no autograd) gains little and keeps the direct convs
        cell = self.forward_net.cell
        pixels = x.shape[0] * x.shape[-2] * x.shape[-1]
        return (
            x.device.type == "cpu"
            and torch.is_grad_enabled()
            and cell.conv.kernel_size[0] >= 5
            and cell.hidden_channels >= 32
            and pixels >= 80 * 80
        )

    def _forward_spectral(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with both directions' ConvLSTM in one spectral-kernel call (docs/models/salstm.md §8.2)."""
        b, k, _, h, w = x.shape
        m = k // 2
        nets = (self.forward_net, self.reverse_net)
        hc = self.forward_net.cell.hidden_channels
        # [B, 2, m + 1, C, H, W]: forward (prev ... centre) and reverse (next ... centre), the same order as forward()
        order = torch.tensor([*range(m + 1), *range(k - 1, m - 1, -1)], device=x.device)
        seq = x.index_select(1, order).reshape(b, 2, m + 1, *x.shape[2:])
        rows = torch.cat(
            [torch.arange(3 * hc, 4 * hc), torch.arange(hc), torch.arange(2 * hc, 3 * hc), torch.arange(hc, 2 * hc)]
        ).to(x.device)  # (i, f, o, g) -> (g, i, o, f)
        weight = torch.stack([n.cell.conv.weight for n in nets]).index_select(1, rows)
        bias = torch.stack([n.cell.conv.bias for n in nets]).index_select(1, rows)
        chunk = max(1, self.spectral_max_pixels // (h * w))
        tile = max(self.spectral_tile, weight.shape[-1] - 1)
        parts = [spectral_convlstm(seq[i : i + chunk], weight, bias, tile) for i in range(0, b, chunk)]
        hs, q, kk = (torch.cat(t) if len(parts) > 1 else t[0] for t in zip(*parts))  # [B, 2, hc, H, W] each
        attention = [n.attention for n in nets]
        if isinstance(attention[0], GatedStateSelfAttention):
            # docs/models/salstm.md §3.3, both directions in one product: [2, 3 hc, hc] @ [B, 2, hc, H W]
            proj_w = torch.stack([torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]) for a in attention])
            proj_b = torch.stack([torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]) for a in attention])
            p = torch.matmul(proj_w, hs.reshape(b, 2, hc, h * w)) + proj_b.unsqueeze(-1)
            p_q, p_k, p_v = p.view(b, 2, 3 * hc, h, w).chunk(3, dim=2)
            q, kk, v = p_q * q, p_k * kk, p_v * hs
        else:
            v = hs  # docs/models/salstm.md §3.2
        # (c + f)(g + h) with the halvings folded into the scale (bit-exact), as in the direct fast path
        if attention[0].scale == attention[1].scale:
            y = channel_attention(*(t.reshape(b * 2, hc, h, w) for t in (q, kk, v)), attention[0].scale / 4)
            y = y.view(b, 2 * hc, h, w)
        else:
            y = torch.cat([channel_attention(q[:, d], kk[:, d], v[:, d], attention[d].scale / 4) for d in (0, 1)], 1)
        return self.classifier(y)  # [fwd | rev] -> 1x1 conv


def _check_backbone(backbone: nn.Module, name: str) -> None:
    if not has_feature_interface(backbone):
        raise ValueError(
            f"backbone {name!r} lacks the feature interface (feature_channels, forward_features, forward_head); "
            "pick a registry model that implements it, e.g. 'unet' or 'mtunet'"
        )


def _backbone_unused_parameters(backbone: nn.Module) -> dict[str, str]:
    declared = getattr(backbone, "unused_parameters", None)
    return {f"backbone.{prefix}": why for prefix, why in declared().items()} if callable(declared) else {}


def _validate_backbone_size(backbone: nn.Module, spatial: tuple[int, ...]) -> None:
    validate = getattr(backbone, "validate_input_size", None)
    if callable(validate):
        validate(tuple(spatial))


def _build_backbone(
    backbone: str | nn.Module,
    in_channels: int,
    hidden_channels: int,
    backbone_kwargs: Mapping[str, Any] | None,
    input_size: Sequence[int] | None = None,
) -> nn.Module:
    if isinstance(backbone, nn.Module):
        net = backbone
        name = type(backbone).__name__
    else:
        if backbone in ("salstm", "lstmsa", "salstm2d", "lstmsa2d"):
            raise ValueError(f"backbone must be a segmentation network, not the head model {backbone!r}")
        name = backbone
        # The backbone's classifier becomes the projection to the head width (release: MTUNet(out_ch=64)).
        kwargs = dict(backbone_kwargs or {})
        if input_size is not None:  # a backbone built for one size (MT-UNet's img_size) is built for this one
            kwargs = sized_kwargs(backbone, input_size, kwargs)
        net = create_model(backbone, in_channels, hidden_channels, **kwargs)
    _check_backbone(net, name)
    return net


class SliceContextNet(nn.Module):
    """Backbone on each of K adjacent slices + :class:`BiTransLSTMHead`, predicting the centre slice.

    Unused parameters: the backbone's, if it declares any (:meth:`unused_parameters`); the default ``"mtunet"``
    backbone keeps the official never-called axial output Linears for the released parameter count.

    Args:
        backbone: a feature-interface model whose ``forward_head`` outputs ``in_channels`` of the head
            (built by the factories with ``num_classes=hidden_channels``).
        head: the bidirectional head.
        slab_size: K, odd, >= 3.
    """

    def __init__(self, backbone: nn.Module, head: BiTransLSTMHead, slab_size: int = 3) -> None:
        super().__init__()
        if slab_size < 3 or slab_size % 2 == 0:
            raise ValueError(f"slab_size must be odd and >= 3 (3 in the release), got {slab_size}")
        _check_backbone(backbone, type(backbone).__name__)
        self.backbone = backbone
        self.head = head
        self.slab_size = slab_size  # read by the data pipeline to feed adjacent slices

    def validate_input_size(self, spatial: tuple[int, ...]) -> None:
        if len(spatial) == 3:
            if spatial[0] != self.slab_size:
                raise ValueError(f"this model takes slabs of {self.slab_size} slices, got {spatial[0]} ({spatial})")
            spatial = spatial[1:]
        if len(spatial) != 2:
            raise ValueError(f"expected (H, W) or (K, H, W), got {spatial}")
        _validate_backbone_size(self.backbone, spatial)

    def unused_parameters(self) -> dict[str, str]:
        """Prefixes of parameters the forward never uses: the backbone's declared ones, under ``backbone.``."""
        return _backbone_unused_parameters(self.backbone)

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of every slice, batched into one call: ``[B, C, K, H, W] -> [B, K, C', H, W]``."""
        b, c, k, h, w = x.shape
        flat = x.transpose(1, 2).reshape(b * k, c, h, w)  # [B*K, C, H, W], slices of a sample adjacent
        feats = self.backbone.forward_head(self.backbone.forward_features(flat))
        return feats.reshape(b, k, *feats.shape[1:])

    def forward(self, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
        """``x``: slab ``[B, C, K, H, W]``; or the official call ``model(prev, cur, next)`` with ``[B, C, H, W]``."""
        if more:
            x = torch.stack([x, *more], dim=2)
        if x.dim() != 5 or x.shape[2] != self.slab_size:
            raise ValueError(
                f"expected a slab [B, C, {self.slab_size}, H, W] of adjacent slices (model.slab_size), "
                f"got {tuple(x.shape)}"
            )
        self.validate_input_size(tuple(x.shape[-2:]))
        return self.head(self.slice_features(x))


class ScaleContextNet(nn.Module):
    """2D reconstruction: the head runs over a scale-space slab of one backbone feature map (see module docstring).

    Unused parameters: the backbone's, if it declares any (:meth:`unused_parameters`; none for the default ``"unet"``).

    Slice ``K//2 +- d`` of the slab is the feature map average-pooled by ``2**d`` and bilinearly upsampled to full
    size; the centre is the map itself. ``sequence="repeat"`` uses the map itself for every slice.

    Args:
        backbone: a feature-interface model whose ``forward_head`` outputs the head's ``in_channels``.
        head: the bidirectional head.
        slab_size: K, odd, >= 3; the coarsest level is pooled by ``2**(K//2)``.
        sequence: ``"pyramid"`` (default) or ``"repeat"``.
    """

    def __init__(
        self, backbone: nn.Module, head: BiTransLSTMHead, slab_size: int = 3, sequence: str = "pyramid"
    ) -> None:
        super().__init__()
        if slab_size < 3 or slab_size % 2 == 0:
            raise ValueError(f"slab_size must be odd and >= 3, got {slab_size}")
        if sequence not in ("pyramid", "repeat"):
            raise ValueError(f"sequence must be 'pyramid' or 'repeat', got {sequence!r}")
        _check_backbone(backbone, type(backbone).__name__)
        self.backbone = backbone
        self.head = head
        # pseudo-slices built inside the model; not ``slab_size``, which tells the data pipeline to feed slabs
        self.levels = slab_size
        self.sequence = sequence
        self.divisor = 2 ** (slab_size // 2) if sequence == "pyramid" else 1

    def validate_input_size(self, spatial: tuple[int, ...]) -> None:
        why = f"scale pyramid of {self.levels} levels"
        try:
            check_divisible(spatial, self.divisor, what=f"{self.head.variant.upper()} 2D input", why=why, ndim=2)
        except ValueError as err:
            if len(spatial) == 2:  # the padded size must suit the backbone too: otherwise say what it needs
                try:
                    _validate_backbone_size(self.backbone, padded_size(spatial, self.divisor))
                except ValueError as backbone_err:
                    raise ValueError(f"{err}; the backbone rejects that too: {backbone_err}") from None
            raise
        _validate_backbone_size(self.backbone, spatial)

    def unused_parameters(self) -> dict[str, str]:
        """Prefixes of parameters the forward never uses: the backbone's declared ones, under ``backbone.``."""
        return _backbone_unused_parameters(self.backbone)

    def scale_slab(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, K, C, H, W]``: coarse-to-fine scale space, symmetric around the map itself."""
        m = self.levels // 2
        if self.sequence == "repeat":
            return feats.unsqueeze(1).expand(-1, self.levels, -1, -1, -1)
        levels = [feats]
        for d in range(1, m + 1):
            pooled = F.avg_pool2d(feats, 2**d)
            levels.append(F.interpolate(pooled, size=feats.shape[-2:], mode="bilinear", align_corners=False))
        order = [levels[abs(m - k)] for k in range(self.levels)]  # distance from the centre = coarseness
        return torch.stack(order, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a 2D batch [B, C, H, W], got {tuple(x.shape)}")
        self.validate_input_size(tuple(x.shape[-2:]))
        feats = self.backbone.forward_head(self.backbone.forward_features(x))
        # Reconstruction (module docstring): scale-space slab in place of adjacent slices
        return self.head(self.scale_slab(feats))


def _head_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs.pop(k) for k in ("kernel_size", "attention_scale", "step0_shortcut", "conv_impl") if k in kwargs}


def _backbone_and_head(
    variant: str,
    in_channels: int,
    num_classes: int,
    backbone: str | nn.Module,
    backbone_kwargs: Mapping[str, Any] | None,
    hidden_channels: int,
    input_size: Sequence[int] | None,
    options: dict[str, Any],
) -> tuple[nn.Module, BiTransLSTMHead]:
    head_kw = _head_kwargs(options)
    if options:
        raise ValueError(f"unknown option(s) {sorted(options)}; pass backbone options as backbone_kwargs={{...}}")
    net = _build_backbone(backbone, in_channels, hidden_channels, backbone_kwargs, input_size)
    return net, BiTransLSTMHead(hidden_channels, num_classes, hidden_channels, variant=variant, **head_kw)


def _slice_model(
    variant: str,
    in_channels: int,
    num_classes: int,
    backbone: str | nn.Module = "mtunet",
    backbone_kwargs: Mapping[str, Any] | None = None,
    slab_size: int = 3,
    hidden_channels: int = 64,
    input_size: Sequence[int] | None = None,
    **options: Any,
) -> SliceContextNet:
    """The slab model of ``variant``; the options are documented at :func:`salstm`."""
    net, head = _backbone_and_head(
        variant, in_channels, num_classes, backbone, backbone_kwargs, hidden_channels, input_size, options
    )
    return SliceContextNet(net, head, slab_size)


def _scale_model(
    variant: str,
    in_channels: int,
    num_classes: int,
    backbone: str | nn.Module = "unet",
    backbone_kwargs: Mapping[str, Any] | None = None,
    slab_size: int = 3,
    hidden_channels: int = 64,
    sequence: str = "pyramid",
    input_size: Sequence[int] | None = None,
    **options: Any,
) -> ScaleContextNet:
    """The 2D scale-space model of ``variant``; the options are documented at :func:`salstm2d`."""
    net, head = _backbone_and_head(
        variant, in_channels, num_classes, backbone, backbone_kwargs, hidden_channels, input_size, options
    )
    return ScaleContextNet(net, head, slab_size, sequence)


# ----------------------------------------------------------------------------------------------------------------
# Official weights: model.SALSTM / model.LSTMSA (encoder=MTUNet(64) for the release, or Identity for head fixtures)


def _official_head_rename(key: str) -> str | None:
    parts = key.split(".")
    if parts[0] in ("forward_net", "reverse_net"):
        if parts[1] == "cell0":
            return ".".join([parts[0], "cell", *parts[2:]])
        if parts[1] == "attention" and parts[2] in ("q_matrix", "k_matrix", "v_matrix"):
            return ".".join([parts[0], "attention", parts[2][0] + "_proj", *parts[3:]])
        return None
    if parts[0] == "conv":
        return ".".join(["classifier", *parts[1:]])
    return None


def _load_official(
    variant: str,
    state_dict: dict[str, torch.Tensor],
    input_channels: int = 64,
    hidden_channels: Sequence[int] = (64,),
    kernel_size: int = 5,
    bias: bool = True,
    num_classes: int = 4,
    attenion_size: float = 224 * 224,
    **extra: Any,
) -> nn.Module:
    if extra.get("encoder") is not None and not isinstance(extra.get("encoder"), str):
        raise ValueError("pass the encoder's weights in the state dict (keys 'encoder.*'), not an encoder module")
    extra.pop("encoder", None)
    if extra:
        raise ValueError(f"unknown official constructor argument(s) {sorted(extra)}")
    if len(hidden_channels) != 1:
        raise ValueError(f"only a one-layer ConvLSTM is supported (the release uses [64]), got {list(hidden_channels)}")
    del bias  # the official cell ignores it: its conv always has a bias
    hidden = int(hidden_channels[0])
    if variant == "lstmsa" and input_channels != hidden:
        raise ValueError(f"official LSTMSA needs input_channels == hidden_channels, got {input_channels}, {hidden}")
    head = BiTransLSTMHead(
        input_channels,
        num_classes,
        hidden,
        variant=variant,
        kernel_size=kernel_size,
        attention_scale=scale_from_attention_size(attenion_size),
    )
    if not any(k.startswith("encoder.") for k in state_dict):
        # Head-only state dict (encoder = Identity, as in the fixtures): returns the head itself.
        return load_mapped(head, state_dict, lambda k: _rename_prefixed(k, "lstmlayer.", "", _official_head_rename))
    from attnseg.models.mtunet import MTUNet, official_mtunet_rename

    # Full release: MTUNet(out_ch=input_channels) encoder, official window padding.
    backbone = MTUNet(in_channels=1, num_classes=input_channels, window_padding="official")
    model = SliceContextNet(backbone, head, slab_size=3)

    def rename(key: str) -> str | None:
        if key.startswith("encoder."):
            ours = official_mtunet_rename(key[len("encoder.") :])
            return None if ours is None else "backbone." + ours
        return _rename_prefixed(key, "lstmlayer.", "head.", _official_head_rename)

    return load_mapped(model, state_dict, rename)


def _rename_prefixed(key: str, official_prefix: str, our_prefix: str, inner: Any) -> str | None:
    if not key.startswith(official_prefix):
        return None
    ours = inner(key[len(official_prefix) :])
    return None if ours is None else our_prefix + ours


@register_official("model.SALSTM")
def _load_official_salstm(state_dict: dict[str, torch.Tensor], **kwargs: Any) -> nn.Module:
    """``model.SALSTM(input_channels, hidden_channels, kernel_size, bias, num_classes, attenion_size, encoder)``."""
    return _load_official("salstm", state_dict, **kwargs)


@register_official("model.LSTMSA")
def _load_official_lstmsa(state_dict: dict[str, torch.Tensor], **kwargs: Any) -> nn.Module:
    """``model.LSTMSA(input_channels, hidden_channels, kernel_size, bias, num_classes, attenion_size, encoder)``."""
    return _load_official("lstmsa", state_dict, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Registered factories

# CPU-sized configurations for the conformance suite: the default backbones (MT-UNet; U-Net), narrow and small.
# input_divisor is the default backbone's (MT-UNet takes only img_size, a multiple of 32; U-Net: multiples of 16).
_TEST_SLICE = {"backbone_kwargs": {"img_size": 64, "stem_channels": 8, "embed_dim": 16}, "hidden_channels": 8}
_TEST_SCALE = {"backbone_kwargs": {"width": 8}, "hidden_channels": 8}


def _backbone_for_size(size: tuple[int, ...]) -> dict[str, Any]:
    """The named backbone is built for the input size (a no-op for backbones that take any valid size)."""
    return {"input_size": tuple(size)}


# Registry entries shared by SALSTM and LSTMSA: slab models on MT-UNet; 2D reconstructions on U-Net.
_SLICE_ENTRY: dict[str, Any] = dict(
    paper=_PAPER,
    official_repo=_REPO,
    input_divisor=32,
    default_input_size=(224, 224),
    tags=("slab",),
    test_kwargs=_TEST_SLICE,
    test_input_size=(64, 64),
    size_kwargs=_backbone_for_size,
    options_from=(_slice_model, BiTransLSTMHead),  # the head's kernel_size, attention_scale, step0_shortcut, ...
)
_SCALE_ENTRY: dict[str, Any] = dict(
    paper=_PAPER + " (2D variant: reconstruction)",
    official_repo=_REPO,
    input_divisor=16,
    default_input_size=(224, 224),
    test_kwargs=_TEST_SCALE,
    test_input_size=(32, 32),
    size_kwargs=_backbone_for_size,
    options_from=(_scale_model, BiTransLSTMHead),
)


@register_model("salstm", **_SLICE_ENTRY)
def salstm(in_channels: int, num_classes: int, **kwargs: Any) -> SliceContextNet:
    """SALSTM on a slab of adjacent slices; ``backbone="mtunet"`` (default) is the released ACDC model.

    Args:
        in_channels: image channels.
        num_classes: logit channels.
        **kwargs: ``backbone``, a registry name (or module) with the feature interface (default ``"mtunet"``, the
            release); ``backbone_kwargs``, extra options for the backbone factory; ``slab_size``, K adjacent slices
            (odd, >= 3; default 3); ``hidden_channels``, the width of the backbone output and ConvLSTM (default 64);
            ``input_size``, builds a named backbone for that slice size (MT-UNet's ``img_size``; the trainer passes
            the run's); and the head options ``kernel_size``, ``attention_scale`` (default 1/88), ``step0_shortcut``,
            ``conv_impl`` (default ``"auto"``).
    """
    return _slice_model("salstm", in_channels, num_classes, **kwargs)


@register_model("lstmsa", **_SLICE_ENTRY)
def lstmsa(in_channels: int, num_classes: int, **kwargs: Any) -> SliceContextNet:
    """LSTMSA on a slab of adjacent slices; options and defaults as :func:`salstm` (``"mtunet"``: the release)."""
    return _slice_model("lstmsa", in_channels, num_classes, **kwargs)


@register_model("salstm2d", **_SCALE_ENTRY)
def salstm2d(in_channels: int, num_classes: int, **kwargs: Any) -> ScaleContextNet:
    """SALSTM for 2D images over a scale-space slab of the backbone features (a reconstruction; see module doc).

    Args:
        in_channels: image channels.
        num_classes: logit channels.
        **kwargs: ``backbone``, a registry name (or module) with the feature interface (default ``"unet"``);
            ``backbone_kwargs``, extra options for the backbone factory; ``slab_size``, pseudo-slices K (odd, >= 3;
            the coarsest level is pooled by ``2**(K//2)``; default 3); ``hidden_channels``, the width of the backbone
            output and ConvLSTM (default 64); ``input_size``, as for :func:`salstm`; ``sequence``, ``"pyramid"``
            (scale space, default) or ``"repeat"``
            (the same map as every slice); and the head options ``kernel_size``, ``attention_scale`` (default
            1/88), ``step0_shortcut``, ``conv_impl`` (default ``"auto"``).
    """
    return _scale_model("salstm", in_channels, num_classes, **kwargs)


@register_model("lstmsa2d", **_SCALE_ENTRY)
def lstmsa2d(in_channels: int, num_classes: int, **kwargs: Any) -> ScaleContextNet:
    """LSTMSA for 2D images over a scale-space slab (a reconstruction); options and defaults as :func:`salstm2d`."""
    return _scale_model("lstmsa", in_channels, num_classes, **kwargs)
