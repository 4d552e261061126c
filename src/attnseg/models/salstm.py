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
]

_PAPER = "Ji, Ye, Ma, Sparse Coding Inspired LSTM and Self-Attention Integration, IEEE TIP 2024"
_REPO = "yeshunlong/SALSTM"
RELEASED_ATTENTION_SCALE = 1.0 / 88.0  # train.py: attenion_size = 88 * 88, scale = 1 / sqrt(88 * 88)
_VARIANTS = ("salstm", "lstmsa")


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


class BiTransLSTMHead(nn.Module):
    """The released head: two direction networks meeting at the centre slice, concatenated, 1x1 conv to logits.

    Args:
        in_channels: channels of each slice's feature map (64 in the release).
        num_classes: output logit channels.
        hidden_channels: ConvLSTM hidden channels. Defaults to 64.
        variant: ``"salstm"`` or ``"lstmsa"``. Defaults to ``"salstm"``.
        kernel_size: gate conv size. Defaults to 5.
        attention_scale: logit scale of the channel attention. Defaults to the released 1/88.
        step0_shortcut: exact zero-state shortcut of the first step; False runs the official order. Defaults to True.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_channels: int = 64,
        variant: str = "salstm",
        kernel_size: int = 5,
        attention_scale: float = RELEASED_ATTENTION_SCALE,
        step0_shortcut: bool = True,
    ) -> None:
        super().__init__()
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
        m = x.shape[1] // 2
        # docs/models/salstm.md §2 step 3: forward runs (prev ... centre), reverse runs (next ... centre)
        y_fwd = self.forward_net(x[:, : m + 1])
        y_rev = self.reverse_net(x[:, m:].flip(1))
        return self.classifier(torch.cat([y_fwd, y_rev], dim=1))  # docs/models/salstm.md §3.4: [fwd | rev] -> 1x1 conv


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
    return {k: kwargs.pop(k) for k in ("kernel_size", "attention_scale", "step0_shortcut") if k in kwargs}


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
    options_from=(_slice_model, BiTransLSTMHead),  # the head's kernel_size, attention_scale, step0_shortcut
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
            the run's); and the head options ``kernel_size``, ``attention_scale`` (default 1/88), ``step0_shortcut``.
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
            1/88), ``step0_shortcut``.
    """
    return _scale_model("salstm", in_channels, num_classes, **kwargs)


@register_model("lstmsa2d", **_SCALE_ENTRY)
def lstmsa2d(in_channels: int, num_classes: int, **kwargs: Any) -> ScaleContextNet:
    """LSTMSA for 2D images over a scale-space slab (a reconstruction); options and defaults as :func:`salstm2d`."""
    return _scale_model("lstmsa", in_channels, num_classes, **kwargs)
