"""DenseUNet (2D DenseUNet-167) and Joint Attention DenseUNet.

Paper: Mo Zhang, Bin Dong, Quanzheng Li, "Joint Attention for Medical Image Segmentation", IEEE ISBI 2022, pp. 1-5,
DOI 10.1109/ISBI52829.2022.9761624. No official code or full text exists; see docs/models/joint_attention.md.

Backbone: the first author's own TensorFlow DenseUNet in github.com/moliqingcha/DACN @ a4f54bd (``denseunet.py``,
``ops.py``; DACN, MICCAI 2020, same authors), an H-DenseUNet-style 2D DenseUNet-167 (Li et al., TMI 2018). Layers
are post-activation conv-BN-ReLU ("CBR"), bias-free except the BN-free stem, Glorot-uniform initialisation, no
pretraining. For a 256x256 input: stem 3x(3x3 conv 96, the first with stride 2) 128² -> 3x3 max-pool 64² -> dense
blocks of 6/12/36/24 layers (growth 48, each layer CBR 1x1 -> 192, CBR 3x3 -> 48) with transitions CBR 1x1 (x0.5)
+ 3x3 avg-pool stride 2 -> CBR 1x1 -> 2112 at 8² -> five decoder stages of bilinear x2 (align_corners), addition of
the skip (block3, block2, block1, stem, none) and CBR 3x3 (768, 384, 96, 96, 64) -> 1x1 classifier.

Joint Attention DenseUNet (reconstruction, docs/models/joint_attention.md, A3b): one attention module from
``joint_attention.py`` on the bottleneck (after the 1x1 -> 2112, before up1), or after any decoder stage via
``attention_positions``.

Deviations from the author's TF code, none of which matter for training from scratch (no weights were released):

- the classifier is a plain 1x1 conv with bias; the TF code also passes it through BN + ReLU (non-negative logits,
  an apparent accident): ``classifier_bn_relu=True`` restores it;
- stride-2 convs and 3x3 pools pad symmetrically (PyTorch) where TF "SAME" pads only bottom/right: same output
  sizes, features shifted by one pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.layers import ConvBNAct, check_divisible, to_pair
from attnseg.models.joint_attention import ATTENTION_KINDS, build_attention
from attnseg.models.registry import register_model

__all__ = ["DenseLayer", "DenseBlock", "TransitionLayer", "UpStage", "DenseUNet"]

# Every "CBR" below is the author's ``ops.conv2d`` default: bias-free conv, BN (momentum 0.1 = TF decay 0.9), ReLU,
# i.e. ``attnseg.layers.ConvBNAct``.


class DenseLayer(nn.Module):
    """Dense layer: CBR 1x1 -> bn_size*growth, CBR 3x3 -> growth, concatenated to the input (DenseNet-B, post-act)."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.bottleneck = ConvBNAct(in_channels, bn_size * growth_rate, 1)
        self.conv = ConvBNAct(bn_size * growth_rate, growth_rate, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.bottleneck(x))], dim=1)  # (B, C + growth, H, W)


class DenseBlock(nn.Sequential):
    """``num_layers`` dense layers; output channels = in_channels + num_layers * growth_rate."""

    def __init__(self, in_channels: int, num_layers: int, growth_rate: int, bn_size: int) -> None:
        super().__init__(*(DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size) for i in range(num_layers)))
        self.out_channels = in_channels + num_layers * growth_rate


class TransitionLayer(nn.Sequential):
    """Transition: CBR 1x1 (compression) then 3x3 average pool, stride 2 (padding excluded from the mean, as TF)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvBNAct(in_channels, out_channels, 1), nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        )


class UpStage(nn.Module):
    """Decoder stage: bilinear x2 (align_corners), add the skip if any, CBR 3x3."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return self.conv(x if skip is None else x + skip)  # additive skip (docs/models/joint_attention.md §2 table)


class DenseUNet(nn.Module):
    """2D DenseUNet (default: DenseUNet-167 of the author's code) with optional joint / point / self attention.

    Args:
        in_channels: image channels.
        num_classes: output logit channels.
        growth_rate: dense-layer growth k. Defaults to 48.
        block_layers: layers per dense block (one entry per block, >= 1 block). Defaults to (6, 12, 36, 24).
        stem_channels: width of the three stem convs (and of the last two decoder stages). Defaults to 96.
        bn_size: dense-layer bottleneck width in multiples of k. Defaults to 4.
        compression: transition width factor. Defaults to 0.5.
        head_channels: width of the full-resolution stage (``feature_channels``). Defaults to 64.
        classifier_bn_relu: reproduce the author's BN + ReLU after the classifier (non-negative logits).
            Defaults to False.
        attention: ``"joint"``, ``"point"``, ``"self"`` or ``"none"`` (see ``joint_attention.py``). Defaults to none.
        attention_positions: where to insert it: ``"bottleneck"`` and/or ``"up1"`` ... ``"up<n>"`` (after that
            decoder stage; n = number of blocks). Defaults to ("bottleneck",).
        attention_channels: inner width d of the attention, capped at C // 2 (docs/models/joint_attention.md,
            A4: 256 at the 2112-ch bottleneck). Defaults to 256.
        input_size: (H, W) the point-wise maps are sized for: (2h-1)x(2w-1) for the h x w feature map at each
            position (other sizes still run). Defaults to 256.
        attention_kwargs: extra options for the attention class (e.g. ``{"distribute": True}``, ``{"fusion":
            "mix"}``). Defaults to None.

    Example:
        >>> model = DenseUNet(3, 2, growth_rate=8, block_layers=(2, 2, 2, 2), stem_channels=16, head_channels=16,
        ...                   attention="joint", input_size=64)
        >>> model(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 2, 64, 64])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        growth_rate: int = 48,
        block_layers: Sequence[int] = (6, 12, 36, 24),
        stem_channels: int = 96,
        bn_size: int = 4,
        compression: float = 0.5,
        head_channels: int = 64,
        classifier_bn_relu: bool = False,
        attention: str = "none",
        attention_positions: str | Sequence[str] = ("bottleneck",),
        attention_channels: int = 256,
        input_size: int | Sequence[int] = 256,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        block_layers = tuple(int(n) for n in block_layers)
        for name, value in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("growth_rate", growth_rate),
            ("stem_channels", stem_channels),
            ("bn_size", bn_size),
            ("head_channels", head_channels),
            ("attention_channels", attention_channels),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not block_layers or min(block_layers) < 1:
            raise ValueError(f"block_layers must be a non-empty sequence of ints >= 1, got {block_layers}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        n = len(block_layers)
        self.input_divisor = 2 ** (n + 1)  # stride-2 stem, max-pool, n - 1 transitions
        self._divisor_reason = f"input_divisor={self.input_divisor}: stride-2 stem, max-pool and {n - 1} transitions"
        positions = (attention_positions,) if isinstance(attention_positions, str) else tuple(attention_positions)
        valid_positions = ("bottleneck", *(f"up{k}" for k in range(1, n + 1)))
        if attention != "none" and (not positions or any(p not in valid_positions for p in positions)):
            raise ValueError(f"attention_positions must be a non-empty subset of {valid_positions}, got {positions}")
        size = to_pair(input_size, name="input_size")
        check_divisible(size, self.input_divisor, what="input_size", why=self._divisor_reason, fix="use")

        # Encoder (docs/models/joint_attention.md §2 table):
        # stem -> max-pool -> [dense block -> transition] x (n-1) -> block n -> 1x1
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_channels, stem_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_channels, stem_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        skip_channels = [stem_channels]
        channels = stem_channels
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, num_layers in enumerate(block_layers):
            block = DenseBlock(channels, num_layers, growth_rate, bn_size)
            self.blocks.append(block)
            channels = block.out_channels
            if i < n - 1:
                skip_channels.append(channels)
                channels_out = max(1, int(channels * compression))
                self.transitions.append(TransitionLayer(channels, channels_out))
                channels = channels_out
        self.bottleneck = ConvBNAct(channels, skip_channels[-1], 1)  # widen to the deepest skip for the addition

        # Decoder: stage k adds skip n-k and narrows to the next skip's width; the last stage has no skip
        self.decoder = nn.ModuleList(
            UpStage(skip_channels[n - 1 - k], skip_channels[max(n - 2 - k, 0)]) for k in range(n)
        )
        self.head_stage = UpStage(stem_channels, head_channels)
        self.feature_channels = head_channels
        classifier = [nn.Conv2d(head_channels, num_classes, 1, bias=not classifier_bn_relu)]
        if classifier_bn_relu:
            classifier += [nn.BatchNorm2d(num_classes), nn.ReLU(inplace=True)]
        self.classifier = nn.Sequential(*classifier)

        # Attention at the chosen positions, maps sized for the feature map there at `input_size`
        self.attention_kind = attention
        self.attention = nn.ModuleDict()
        if attention != "none":
            widths = {"bottleneck": skip_channels[-1]}
            widths.update({f"up{k + 1}": skip_channels[max(n - 2 - k, 0)] for k in range(n)})
            for p in positions:
                stride = self.input_divisor // (1 if p == "bottleneck" else 2 ** int(p[2:]))
                mask = tuple(2 * (s // stride) - 1 for s in size)
                c = widths[p]
                self.attention[p] = build_attention(
                    attention, c, max(1, min(attention_channels, c // 2)), mask, **(attention_kwargs or {})
                )
        self._init_weights()

    def _init_weights(self) -> None:
        # Glorot-uniform weights and zero biases: TF-contrib defaults used by the author's code
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.attention.values():
            if hasattr(m, "reset_residual"):
                m.reset_residual()

    def validate_input_size(self, spatial: tuple[int, ...]) -> None:
        check_divisible(spatial, self.input_divisor, what="DenseUNet input", why=self._divisor_reason, ndim=2)

    def _attend(self, position: str, x: torch.Tensor) -> torch.Tensor:
        return self.attention[position](x) if position in self.attention else x

    def forward_encoder(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Skips fine to coarse (stem, block 1 ... block n-1) and the bottleneck, last."""
        x = self.stem(x)  # (B, stem, H/2, W/2)
        features = [x]
        x = self.pool(x)  # (B, stem, H/4, W/4)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.transitions):
                features.append(x)
                x = self.transitions[i](x)
        features.append(self.bottleneck(x))  # (B, deepest skip width, H/2^(n+1), W/2^(n+1))
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.validate_input_size(tuple(x.shape[2:]))
        *skips, x = self.forward_encoder(x)
        x = self._attend("bottleneck", x)  # docs/models/joint_attention.md, A3b: attention on the bottleneck by default
        for k, stage in enumerate(self.decoder):
            x = self._attend(f"up{k + 1}", stage(x, skips[-1 - k]))
        return self.head_stage(x)  # (B, head_channels, H, W)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_PAPER = "Zhang, Dong, Li, Joint Attention for Medical Image Segmentation, ISBI 2022 (reconstruction; no code)"
# CPU-friendly widths for tests, demos and ablations (about 60 k parameters, 0.06 % of the default).
SMALL_KWARGS: dict[str, Any] = {
    "growth_rate": 8,
    "block_layers": (2, 2, 2, 2),
    "stem_channels": 16,
    "head_channels": 16,
}


def _maps_for_size(size: tuple[int, ...]) -> dict[str, Any]:
    """The joint attention's point-wise maps are sized for the input (``input_size``, PSANet's (2h-1)x(2w-1))."""
    return {"input_size": tuple(size)}


@register_model(
    "denseunet",
    options_from=DenseUNet,
    paper=_PAPER,
    official_repo="moliqingcha/DACN",
    input_divisor=32,
    default_input_size=(256, 256),
    test_kwargs=SMALL_KWARGS,
    test_input_size=(64, 64),
)
def denseunet(in_channels: int, num_classes: int, **kwargs: Any) -> DenseUNet:
    """2D DenseUNet-167 of the author's code; width/depth kwargs as in :class:`DenseUNet` (no attention)."""
    if kwargs.get("attention", "none") != "none":
        raise ValueError("denseunet has no attention; use ja_denseunet(attention=...)")
    return DenseUNet(in_channels, num_classes, **kwargs)


@register_model(
    "ja_denseunet",
    options_from=DenseUNet,
    paper=_PAPER,
    input_divisor=32,
    default_input_size=(256, 256),
    test_kwargs={**SMALL_KWARGS, "input_size": 64},
    test_input_size=(64, 64),
    size_kwargs=_maps_for_size,
)
def ja_denseunet(in_channels: int, num_classes: int, attention: str = "joint", **kwargs: Any) -> DenseUNet:
    """Joint Attention DenseUNet; ``attention="joint"|"point"|"self"|"none"`` is the paper's ablation."""
    return DenseUNet(in_channels, num_classes, attention=attention, **kwargs)


@register_model("denseunet_small", paper=_PAPER, input_divisor=32, default_input_size=(64, 64), options_from=DenseUNet)
def denseunet_small(in_channels: int, num_classes: int, **kwargs: Any) -> DenseUNet:
    """Small DenseUNet for CPU (``SMALL_KWARGS``, any of which may be overridden)."""
    return denseunet(in_channels, num_classes, **{**SMALL_KWARGS, **kwargs})


@register_model(
    "ja_denseunet_small",
    options_from=DenseUNet,
    paper=_PAPER,
    input_divisor=32,
    default_input_size=(64, 64),
    size_kwargs=_maps_for_size,
)
def ja_denseunet_small(in_channels: int, num_classes: int, attention: str = "joint", **kwargs: Any) -> DenseUNet:
    """Small Joint Attention DenseUNet for CPU; point-wise maps sized for 64x64 inputs unless ``input_size`` is set."""
    return ja_denseunet(in_channels, num_classes, attention, **{**SMALL_KWARGS, "input_size": 64, **kwargs})
