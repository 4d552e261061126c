"""nnU-Net's own U-Nets as baselines: the default ``PlainConvUNet`` and the residual-encoder "ResEnc M" preset.

Papers: F. Isensee, P. F. Jaeger, S. A. A. Kohl, J. Petersen, K. H. Maier-Hein, "nnU-Net: a self-configuring method
for deep learning-based biomedical image segmentation", Nature Methods 18(2), 203-211, 2021, DOI
10.1038/s41592-020-01008-z (the default U-Net and its rule-based topology); F. Isensee, T. Wald, C. Ulrich,
M. Baumgartner, S. Roy, K. Maier-Hein, P. F. Jaeger, "nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical
Image Segmentation", MICCAI 2024, LNCS 15009, pp. 488-498, DOI 10.1007/978-3-031-72114-4_47, arXiv:2404.09556 (the
residual-encoder presets M/L/XL).

Official code: https://github.com/MIC-DKFZ/nnUNet (the planner that sets the topology, read at commit
``0e495086eb108ff79afe106291e8c15bd2f2bc3a``) and https://github.com/MIC-DKFZ/dynamic-network-architectures (the
networks). The networks are **not** re-implemented: :class:`NnUNetPlain` and :class:`NnUNetResEnc` subclass the
package's ``PlainConvUNet`` and ``ResidualEncoderUNet`` (a dependency of attnseg, version 0.4.x, the one nnU-Net v2
itself uses), so their ``state_dict`` keys are those of nnU-Net's checkpoints (``network_weights``). Only the
planning rule is written here, from the description in docs/models/nnunet.md (no nnU-Net code is copied).

@article{isensee2021nnunet,
  title={nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation},
  author={Isensee, Fabian and Jaeger, Paul F. and Kohl, Simon A. A. and Petersen, Jens and Maier-Hein, Klaus H.},
  journal={Nature Methods}, volume={18}, number={2}, pages={203--211}, year={2021},
  doi={10.1038/s41592-020-01008-z}}

@inproceedings{isensee2024nnunetrevisited,
  title={nnU-Net Revisited: A Call for Rigorous Validation in {3D} Medical Image Segmentation},
  author={Isensee, Fabian and Wald, Tassilo and Ulrich, Constantin and Baumgartner, Michael and Roy, Saikat and
          Maier-Hein, Klaus and Jaeger, Paul F.},
  booktitle={Medical Image Computing and Computer Assisted Intervention (MICCAI) 2024}, series={LNCS},
  volume={15009}, pages={488--498}, year={2024}, doi={10.1007/978-3-031-72114-4_47}}

Topology (:func:`plan_topology`, docs/models/nnunet.md §2), planned for the input size as nnU-Net's experiment planner
does for its patch size: stage 0 has stride 1; each further stage halves every axis that is still at least
2 x 4 voxels (nnU-Net's minimum bottleneck edge of 4), and an axis pooled alone must be at least 3 x 4 voxels. Features
32, 64, ... doubling, capped at 512 (2D) / 320 (3D); 3x3(x3) kernels; two convs per stage in encoder and decoder
(plain) or ResEnc M's 1, 3, 4, 6, 6, ... residual blocks per encoder stage and one conv per decoder stage. Instance
norm (affine, eps 1e-5), LeakyReLU(0.01, inplace), conv bias, no dropout, transposed-conv upsampling, concatenated
skips; He init (``InitWeights_He(1e-2)``), plus zero-initialised last norm of every residual block for ResEnc.
Input sides must be multiples of the product of the strides along each axis (e.g. 64 for a plan of 256x256), and the
bottleneck must have more than one voxel; other sizes raise a ``ValueError`` naming a valid size.

Registry names: ``nnunet_plain`` / ``nnunet_resenc`` (2D) and ``nnunet_plain_3d`` / ``nnunet_resenc_3d`` (3D). The
ResEnc M, L and XL presets differ only in their GPU-memory budget, i.e. in the patch size nnU-Net picks; for a given
input size the three plan the same network, so "M" here means the M block layout at the size you train with. All four
names are built for the run's size by the trainer (``size_kwargs``); by themselves for 256x256 / 128x128x128.

Deviations from nnU-Net (each with the option that restores nnU-Net's behaviour):

- **No voxel spacing.** nnU-Net plans from the patch size *and* the voxel spacing: along an axis whose spacing is
  two or more times the finest one (e.g. thick slices) it uses kernel size 1 and postpones pooling until the
  in-plane spacing has caught up. attnseg models only know the input size, so by default every axis counts as
  equally spaced (kernels 3 everywhere, pooling only limited by the size). Restore: ``spacing=(z, y, x)`` (the
  spacing of the preprocessed data) plans as nnU-Net does, or give nnU-Net's plans directly with
  ``strides=`` / ``kernel_sizes=`` (the ``pool_op_kernel_sizes`` / ``conv_kernel_sizes`` of ``nnUNetPlans.json``).
- **No deep supervision.** nnU-Net trains with deep supervision (a list of logits, highest resolution first);
  attnseg's trainer trains a single output, so the network returns the full-resolution logits only. Restore:
  ``deep_supervision=True`` (``forward`` then returns nnU-Net's list, which attnseg's trainer and exporter do not
  take; for your own training loop). The lower-resolution segmentation heads are built either way, as the package
  does, so nnU-Net checkpoints load strictly; without deep supervision they are declared in ``unused_parameters``.
- **The size is not padded.** nnU-Net rounds its patch size up to a multiple of the total stride; here the network is
  planned for ``input_size`` as given (the rounded-up size plans the same network) and inputs that are not multiples
  raise. No flag: pad the input (the error names the size).
- **Each tensor once in the state dict.** The package registers every tensor of a conv block twice (``conv`` and
  ``all_modules.0``, ...) and the encoder again under ``decoder.encoder``, so nnU-Net's ``network_weights`` list
  them twice; safetensors refuses that. ``state_dict()`` keeps the first name only; loading fills the other names in,
  so nnU-Net's checkpoints and ours both load strictly. No flag needed.
- nnU-Net v2 does not cap the number of poolings (its planners pass ``max_numpool=999999``); ``max_pools`` caps the
  poolings per axis if wanted (default none, as nnU-Net).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from attnseg.models.registry import register_model

__all__ = [
    "RESENC_M_BLOCKS",
    "plan_topology",
    "NnUNetPlain",
    "NnUNetResEnc",
    "nnunet_plain",
    "nnunet_plain_3d",
    "nnunet_resenc",
    "nnunet_resenc_3d",
]

# nnU-Net's planner constants (Isensee et al. 2021; docs/models/nnunet.md §2)
BASE_FEATURES = 32  # features of the first stage, doubled per stage
MAX_FEATURES = {2: 512, 3: 320}  # cap of the features per stage
MIN_FEATURE_MAP_SIZE = 4  # smallest edge of a pooled axis in the bottleneck
# ResEnc M encoder: residual blocks per stage (Isensee et al. 2024); stages past the list keep 6
RESENC_M_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
PLAIN_CONVS_PER_STAGE = 2  # the default U-Net: two convs per stage, encoder and decoder
RESENC_DECODER_CONVS = 1  # ResEnc presets: one conv per decoder stage

_PAPER = "Isensee et al., nnU-Net, Nature Methods 2021 (doi:10.1038/s41592-020-01008-z)"
_PAPER_RESENC = "Isensee et al., nnU-Net Revisited (ResEnc M), MICCAI 2024 (doi:10.1007/978-3-031-72114-4_47)"


def _ints(values: Sequence[int], what: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if any(v < 1 for v in out):
        raise ValueError(f"{what} must be positive, got {out}")
    return out


def _show(size: Sequence[int]) -> str:
    return "x".join(str(s) for s in size)


def plan_topology(
    input_size: Sequence[int],
    spatial_dims: int | None = None,
    max_features: int | None = None,
    *,
    spacing: Sequence[float] | None = None,
    base_features: int = BASE_FEATURES,
    min_feature_map_size: int = MIN_FEATURE_MAP_SIZE,
    max_pools: int | None = None,
) -> dict[str, Any]:
    """The U-Net topology nnU-Net's experiment planner chooses for a patch of ``input_size`` voxels.

    The rule (docs/models/nnunet.md §2): starting from ``input_size``, each round pools (stride 2) every axis whose
    current side is at least ``2 * min_feature_map_size`` and whose current spacing is less than twice the finest
    spacing among those axes; a round that would pool a single axis needs that side to be at least
    ``3 * min_feature_map_size``; planning stops when no axis can be pooled. A side shrinks to ``ceil(side / 2)``.
    An axis gets kernel size 3 from the first round in which its spacing is within 2x of the finest one (before, 1);
    the bottleneck always has kernel 3. With isotropic spacing (the default) every kernel is 3.

    Args:
        input_size: the patch (input) size, 2 or 3 sides.
        spatial_dims: 2 or 3; checked against ``len(input_size)``. Defaults to ``len(input_size)``.
        max_features: cap of the features per stage. Defaults to nnU-Net's 512 (2D) / 320 (3D).
        spacing: voxel spacing per axis, in the order of ``input_size``. Defaults to isotropic.
        base_features: features of the first stage. Defaults to nnU-Net's 32.
        min_feature_map_size: smallest bottleneck edge of a pooled axis. Defaults to nnU-Net's 4.
        max_pools: cap of the poolings per axis. Defaults to none (nnU-Net v2 passes 999999).

    Returns:
        ``n_stages``, ``features_per_stage``, ``strides`` and ``kernel_sizes`` (one tuple per stage, stage 0 has
        stride 1), ``pools_per_axis``, ``divisor`` (per axis: the product of the strides, the factor every input side
        must be a multiple of) and ``padded_size`` (``input_size`` rounded up to it, nnU-Net's patch size).

    Example:
        >>> plan_topology((512, 512))["features_per_stage"]
        (32, 64, 128, 256, 512, 512, 512, 512)
    """
    size = _ints(input_size, "input_size")
    ndim = len(size) if spatial_dims is None else int(spatial_dims)
    if ndim not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {ndim}")
    if len(size) != ndim:
        raise ValueError(f"input_size {size} has {len(size)} sides, not {ndim}")
    if spacing is None:
        current_spacing = [1.0] * ndim
    else:
        current_spacing = [float(s) for s in spacing]
        if len(current_spacing) != ndim or any(not s > 0 for s in current_spacing):
            raise ValueError(f"spacing must be {ndim} positive values, got {tuple(spacing)}")
    cap = MAX_FEATURES[ndim] if max_features is None else int(max_features)
    if cap < 1 or base_features < 1 or min_feature_map_size < 1:
        raise ValueError("max_features, base_features and min_feature_map_size must be >= 1")

    current = list(size)
    pools = [0] * ndim
    kernel = [1] * ndim
    strides: list[tuple[int, ...]] = [(1,) * ndim]
    kernels: list[tuple[int, ...]] = []
    while True:
        large = [a for a in range(ndim) if current[a] >= 2 * min_feature_map_size]
        if not large:
            break
        finest = min(current_spacing[a] for a in large)
        axes = [a for a in large if current_spacing[a] / finest < 2]
        if max_pools is not None:
            axes = [a for a in axes if pools[a] < max_pools]
        if not axes or (len(axes) == 1 and current[axes[0]] < 3 * min_feature_map_size):
            break
        finest_all = min(current_spacing)
        kernel = [3 if k == 3 or current_spacing[a] / finest_all < 2 else 1 for a, k in enumerate(kernel)]
        kernels.append(tuple(kernel))
        strides.append(tuple(2 if a in axes else 1 for a in range(ndim)))
        for a in axes:
            pools[a] += 1
            current_spacing[a] *= 2
            current[a] = -(-current[a] // 2)
    kernels.append((3,) * ndim)  # the bottleneck

    n_stages = len(strides)
    divisor = tuple(2**p for p in pools)
    return {
        "n_stages": n_stages,
        "features_per_stage": tuple(min(cap, base_features * 2**i) for i in range(n_stages)),
        "strides": tuple(strides),
        "kernel_sizes": tuple(kernels),
        "pools_per_axis": tuple(pools),
        "divisor": divisor,
        "padded_size": tuple(-(-s // d) * d for s, d in zip(size, divisor)),
    }


def _per_stage(value: Any, n_stages: int, what: str, ndim: int) -> tuple[tuple[int, ...], ...]:
    """One ``ndim``-tuple per stage from nnU-Net's nested lists (a number stands for the same value on every axis)."""
    stages = tuple(tuple(int(v) for v in s) if isinstance(s, Sequence) else (int(s),) * ndim for s in value)
    if len(stages) != n_stages:
        raise ValueError(f"{what} needs {n_stages} entries (one per stage), got {len(stages)}")
    if any(len(s) != ndim or min(s) < 1 for s in stages):
        raise ValueError(f"{what} needs {ndim} positive values per stage, got {stages}")
    return stages


def _resolve_topology(
    input_size: Sequence[int],
    spatial_dims: int,
    *,
    n_stages: int | None,
    features_per_stage: Sequence[int] | None,
    strides: Sequence[Any] | None,
    kernel_sizes: Sequence[Any] | None,
    spacing: Sequence[float] | None,
    base_features: int,
    max_features: int | None,
    max_pools: int | None,
) -> dict[str, Any]:
    """The plan for ``input_size`` with the user's overrides applied (fewer stages, own widths, own strides)."""
    size = _ints(input_size, "input_size")
    if len(size) != spatial_dims:
        other = "nnunet_*_3d" if len(size) == 3 else "the 2D nnunet_* names"
        raise ValueError(f"input_size {size} is {len(size)}D but this model is {spatial_dims}D; use {other}")
    plan = plan_topology(
        size,
        spatial_dims,
        max_features,
        spacing=spacing,
        base_features=base_features,
        max_pools=max_pools,
    )
    if strides is not None:  # nnU-Net's pool_op_kernel_sizes, taken as given
        stride_list = _per_stage(strides, len(strides), "strides", spatial_dims)
        count = len(stride_list)
        kernel_list = (
            _per_stage(kernel_sizes, count, "kernel_sizes", spatial_dims)
            if kernel_sizes is not None
            else ((3,) * spatial_dims,) * count
        )
    else:
        if plan["n_stages"] < 2:
            need = (2 * MIN_FEATURE_MAP_SIZE,) * spatial_dims
            raise ValueError(
                f"input_size {_show(size)} is too small for a U-Net: nnU-Net pools an axis only while its side is "
                f">= {2 * MIN_FEATURE_MAP_SIZE}; use {_show(need)}, i.e. {need}"
            )
        count = plan["n_stages"] if n_stages is None else int(n_stages)
        if not 2 <= count <= plan["n_stages"]:
            raise ValueError(
                f"n_stages must be between 2 and {plan['n_stages']}, the stages nnU-Net plans for {_show(size)}; "
                f"got {count}"
            )
        stride_list = plan["strides"][:count]
        kernel_list = (
            _per_stage(kernel_sizes, count, "kernel_sizes", spatial_dims)
            if kernel_sizes is not None
            else plan["kernel_sizes"][:count]
        )
    if n_stages is not None and int(n_stages) != count:
        raise ValueError(f"n_stages={n_stages} contradicts the {count} strides given")
    if count < 2:
        raise ValueError(f"a U-Net needs at least 2 stages, got strides for {count}")
    if features_per_stage is None:
        cap = MAX_FEATURES[spatial_dims] if max_features is None else int(max_features)
        features = tuple(min(cap, base_features * 2**i) for i in range(count))
    else:
        features = _ints(features_per_stage, "features_per_stage")
        if len(features) != count:
            raise ValueError(f"features_per_stage needs {count} entries (one per stage), got {len(features)}")
    divisor = tuple(math.prod(s[a] for s in stride_list) for a in range(spatial_dims))
    return {
        "n_stages": count,
        "features_per_stage": features,
        "strides": stride_list,
        "kernel_sizes": kernel_list,
        "divisor": divisor,
        "input_size": size,
    }


def _common_kwargs(spatial_dims: int) -> dict[str, Any]:
    """nnU-Net's fixed choices (Isensee et al. 2021): instance norm, LeakyReLU, conv bias, no dropout."""
    return {
        "conv_op": nn.Conv2d if spatial_dims == 2 else nn.Conv3d,
        "conv_bias": True,
        "norm_op": nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": nn.LeakyReLU,
        "nonlin_kwargs": {"inplace": True},  # negative slope 0.01, PyTorch's default
    }


def _drop_aliases(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for alias in module._state_aliases:
        state_dict.pop(prefix + alias, None)


def _fill_aliases(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    for alias, name in module._state_aliases.items():
        if prefix + alias not in state_dict and prefix + name in state_dict:
            state_dict[prefix + alias] = state_dict[prefix + name]


class _PlannedUNet:
    """The attnseg interface shared by both networks (input-size check, feature interface, unused heads)."""

    spatial_dims: int
    divisor: tuple[int, ...]
    planned_size: tuple[int, ...]
    feature_channels: int
    encoder: nn.Module
    decoder: nn.Module

    def _finish(self, topology: dict[str, Any]) -> None:
        self.spatial_dims = len(topology["divisor"])
        self.divisor = topology["divisor"]
        self.planned_size = topology["input_size"]
        self.topology = topology
        self.feature_channels = int(topology["features_per_stage"][0])
        self.apply(self.initialize)  # nnU-Net's init (network.apply(network.initialize))
        # The package registers every tensor of a conv block twice (``conv`` and ``all_modules.0``, ...) and the whole
        # encoder again under ``decoder.encoder``. state_dict() keeps the first name of each tensor only (safetensors
        # refuses shared tensors); loading fills the other names in, so nnU-Net's checkpoints (all names) and ours
        # both load strictly.
        first: dict[int, str] = {}
        self._state_aliases: dict[str, str] = {}
        for name, tensor in self.state_dict(keep_vars=True).items():
            if id(tensor) in first:
                self._state_aliases[name] = first[id(tensor)]
            else:
                first[id(tensor)] = name
        self.register_state_dict_post_hook(_drop_aliases)
        self.register_load_state_dict_pre_hook(_fill_aliases)

    @property
    def deep_supervision(self) -> bool:
        return bool(self.decoder.deep_supervision)

    def validate_input_size(self, spatial: tuple[int, ...]) -> None:
        size = tuple(int(s) for s in spatial)
        n = self.spatial_dims
        if len(size) != n:
            raise ValueError(f"nnU-Net input must be {n}D, got a {len(size)}D size {size}")
        if all(s >= d and s % d == 0 for s, d in zip(size, self.divisor)):
            if math.prod(s // d for s, d in zip(size, self.divisor)) > 1:
                return
            larger = (2 * self.divisor[0], *self.divisor[1:])
            raise ValueError(
                f"nnU-Net input {size}: the bottleneck would be a single voxel (instance norm needs more); "
                f"use a larger side, e.g. {_show(larger)}, i.e. {larger}"
            )
        valid = tuple(max(d, -(-s // d) * d) for s, d in zip(size, self.divisor))
        if all(v == d for v, d in zip(valid, self.divisor)):
            valid = (2 * valid[0], *valid[1:])
        raise ValueError(
            f"nnU-Net input {size}: sides must be multiples of {_show(self.divisor)} per axis (the product of the "
            f"strides planned for {_show(self.planned_size)}); pad to {_show(valid)}, i.e. {valid}"
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder stage's output (before the segmentation head), as ``UNetDecoder`` computes it."""
        skips = self.encoder(x)
        dec = self.decoder
        below = skips[-1]
        for s, (up, stage) in enumerate(zip(dec.transpconvs, dec.stages)):
            below = stage(torch.cat((up(below), skips[-(s + 2)]), 1))
        return below

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder.seg_layers[-1](features)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.validate_input_size(tuple(x.shape[2:]))
        if self.deep_supervision:  # nnU-Net's list of logits, highest resolution first
            return self.decoder(self.encoder(x))
        return self.forward_head(self.forward_features(x))

    def unused_parameters(self) -> dict[str, str]:
        if self.deep_supervision:
            return {}
        reason = (
            "nnU-Net's deep-supervision head at a lower resolution: built so that nnU-Net checkpoints load, used "
            "only with deep_supervision=True"
        )
        return {f"decoder.seg_layers.{i}": reason for i in range(len(self.decoder.seg_layers) - 1)}


class NnUNetPlain(_PlannedUNet, PlainConvUNet):
    """nnU-Net's default U-Net (``PlainConvUNet``), planned for ``input_size`` as nnU-Net's planner does.

    Args:
        in_channels: input channels.
        num_classes: output logit channels.
        input_size: the input (patch) size the topology is planned for, 2 or 3 sides.
        spatial_dims: 2 or 3. Defaults to ``len(input_size)``.
        n_stages: keep only the first stages of the plan (2 .. planned). Defaults to the plan.
        features_per_stage: features of each stage. Defaults to 32 doubling, capped at 512 (2D) / 320 (3D).
        base_features: first-stage features when ``features_per_stage`` is not given. Defaults to 32.
        max_features: the cap. Defaults to 512 (2D) / 320 (3D).
        strides: per-stage strides taken as given (nnU-Net's ``pool_op_kernel_sizes``). Defaults to the plan.
        kernel_sizes: per-stage kernel sizes (nnU-Net's ``conv_kernel_sizes``). Defaults to the plan.
        spacing: voxel spacing per axis, planned for as nnU-Net does. Defaults to isotropic.
        max_pools: cap of the poolings per axis. Defaults to none (as nnU-Net v2).
        n_conv_per_stage: convs per encoder stage. Defaults to 2.
        n_conv_per_stage_decoder: convs per decoder stage. Defaults to 2.
        deep_supervision: return nnU-Net's list of logits. Defaults to False (one output).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        input_size: Sequence[int],
        spatial_dims: int | None = None,
        *,
        n_stages: int | None = None,
        features_per_stage: Sequence[int] | None = None,
        base_features: int = BASE_FEATURES,
        max_features: int | None = None,
        strides: Sequence[Any] | None = None,
        kernel_sizes: Sequence[Any] | None = None,
        spacing: Sequence[float] | None = None,
        max_pools: int | None = None,
        n_conv_per_stage: int | Sequence[int] = PLAIN_CONVS_PER_STAGE,
        n_conv_per_stage_decoder: int | Sequence[int] = PLAIN_CONVS_PER_STAGE,
        deep_supervision: bool = False,
    ) -> None:
        dims = len(tuple(input_size)) if spatial_dims is None else int(spatial_dims)
        topology = _resolve_topology(
            input_size,
            dims,
            n_stages=n_stages,
            features_per_stage=features_per_stage,
            strides=strides,
            kernel_sizes=kernel_sizes,
            spacing=spacing,
            base_features=base_features,
            max_features=max_features,
            max_pools=max_pools,
        )
        count = topology["n_stages"]
        super().__init__(
            input_channels=in_channels,
            n_stages=count,
            features_per_stage=list(topology["features_per_stage"]),
            kernel_sizes=[list(k) for k in topology["kernel_sizes"]],
            strides=[list(s) for s in topology["strides"]],
            n_conv_per_stage=n_conv_per_stage if isinstance(n_conv_per_stage, int) else list(n_conv_per_stage),
            num_classes=num_classes,
            n_conv_per_stage_decoder=(
                n_conv_per_stage_decoder
                if isinstance(n_conv_per_stage_decoder, int)
                else list(n_conv_per_stage_decoder)
            ),
            deep_supervision=bool(deep_supervision),
            **_common_kwargs(dims),
        )
        self._finish(topology)


class NnUNetResEnc(_PlannedUNet, ResidualEncoderUNet):
    """nnU-Net's residual-encoder U-Net (``ResidualEncoderUNet``) with the ResEnc M block layout, planned for
    ``input_size`` as nnU-Net's planner does.

    Args:
        in_channels: input channels.
        num_classes: output logit channels.
        input_size: the input (patch) size the topology is planned for, 2 or 3 sides.
        spatial_dims: 2 or 3. Defaults to ``len(input_size)``.
        n_stages: keep only the first stages of the plan (2 .. planned). Defaults to the plan.
        features_per_stage: features of each stage. Defaults to 32 doubling, capped at 512 (2D) / 320 (3D).
        base_features: first-stage features when ``features_per_stage`` is not given. Defaults to 32.
        max_features: the cap. Defaults to 512 (2D) / 320 (3D).
        strides: per-stage strides taken as given (nnU-Net's ``pool_op_kernel_sizes``). Defaults to the plan.
        kernel_sizes: per-stage kernel sizes (nnU-Net's ``conv_kernel_sizes``). Defaults to the plan.
        spacing: voxel spacing per axis, planned for as nnU-Net does. Defaults to isotropic.
        max_pools: cap of the poolings per axis. Defaults to none (as nnU-Net v2).
        n_blocks_per_stage: residual blocks per encoder stage. Defaults to ResEnc M's (1, 3, 4, 6, 6, ...) cut to
            the stage count.
        n_conv_per_stage_decoder: convs per decoder stage. Defaults to 1.
        deep_supervision: return nnU-Net's list of logits. Defaults to False (one output).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        input_size: Sequence[int],
        spatial_dims: int | None = None,
        *,
        n_stages: int | None = None,
        features_per_stage: Sequence[int] | None = None,
        base_features: int = BASE_FEATURES,
        max_features: int | None = None,
        strides: Sequence[Any] | None = None,
        kernel_sizes: Sequence[Any] | None = None,
        spacing: Sequence[float] | None = None,
        max_pools: int | None = None,
        n_blocks_per_stage: int | Sequence[int] | None = None,
        n_conv_per_stage_decoder: int | Sequence[int] = RESENC_DECODER_CONVS,
        deep_supervision: bool = False,
    ) -> None:
        dims = len(tuple(input_size)) if spatial_dims is None else int(spatial_dims)
        topology = _resolve_topology(
            input_size,
            dims,
            n_stages=n_stages,
            features_per_stage=features_per_stage,
            strides=strides,
            kernel_sizes=kernel_sizes,
            spacing=spacing,
            base_features=base_features,
            max_features=max_features,
            max_pools=max_pools,
        )
        count = topology["n_stages"]
        if n_blocks_per_stage is None:
            blocks: int | list[int] = [
                RESENC_M_BLOCKS[i] if i < len(RESENC_M_BLOCKS) else RESENC_M_BLOCKS[-1] for i in range(count)
            ]
        else:
            blocks = n_blocks_per_stage if isinstance(n_blocks_per_stage, int) else list(n_blocks_per_stage)
        super().__init__(
            input_channels=in_channels,
            n_stages=count,
            features_per_stage=list(topology["features_per_stage"]),
            kernel_sizes=[list(k) for k in topology["kernel_sizes"]],
            strides=[list(s) for s in topology["strides"]],
            n_blocks_per_stage=blocks,
            num_classes=num_classes,
            n_conv_per_stage_decoder=(
                n_conv_per_stage_decoder
                if isinstance(n_conv_per_stage_decoder, int)
                else list(n_conv_per_stage_decoder)
            ),
            deep_supervision=bool(deep_supervision),
            **_common_kwargs(dims),
        )
        self._finish(topology)


def _size_kwargs(size: tuple[int, ...]) -> dict[str, Any]:
    return {"input_size": tuple(size)}


_DEFAULT_2D = (256, 256)
_DEFAULT_3D = (128, 128, 128)
# CPU-sized test configurations: the planning path at a small size and width. The 3D size is anisotropic, so the
# last stage pools only two axes (strides 1,2,2) and the input check is per axis.
_TEST_2D = {"input_size": (32, 32), "base_features": 8}
_TEST_3D = {"input_size": (16, 32, 32), "base_features": 4}


@register_model(
    "nnunet_plain",
    options_from=NnUNetPlain,
    paper=_PAPER,
    official_repo="MIC-DKFZ/nnUNet",
    input_divisor=64,  # at the default 256x256: six poolings
    default_input_size=_DEFAULT_2D,
    tags=("baseline", "nnunet"),
    test_kwargs=_TEST_2D,
    test_input_size=(32, 32),
    size_kwargs=_size_kwargs,
)
def nnunet_plain(
    in_channels: int, num_classes: int, input_size: Sequence[int] = _DEFAULT_2D, **kwargs: Any
) -> NnUNetPlain:
    """nnU-Net's 2D default U-Net planned for ``input_size``; options as in :class:`NnUNetPlain`."""
    return NnUNetPlain(in_channels, num_classes, input_size, spatial_dims=2, **kwargs)


@register_model(
    "nnunet_plain_3d",
    options_from=NnUNetPlain,
    spatial_dims=3,
    paper=_PAPER,
    official_repo="MIC-DKFZ/nnUNet",
    input_divisor=32,  # at the default 128^3: five poolings
    default_input_size=_DEFAULT_3D,
    tags=("baseline", "nnunet"),
    test_kwargs=_TEST_3D,
    test_input_size=(16, 32, 32),
    size_kwargs=_size_kwargs,
)
def nnunet_plain_3d(
    in_channels: int, num_classes: int, input_size: Sequence[int] = _DEFAULT_3D, **kwargs: Any
) -> NnUNetPlain:
    """nnU-Net's 3D full-resolution U-Net planned for ``input_size``; options as in :class:`NnUNetPlain`."""
    return NnUNetPlain(in_channels, num_classes, input_size, spatial_dims=3, **kwargs)


@register_model(
    "nnunet_resenc",
    options_from=NnUNetResEnc,
    paper=_PAPER_RESENC,
    official_repo="MIC-DKFZ/nnUNet",
    input_divisor=64,
    default_input_size=_DEFAULT_2D,
    tags=("baseline", "nnunet"),
    test_kwargs=_TEST_2D,
    test_input_size=(32, 32),
    size_kwargs=_size_kwargs,
)
def nnunet_resenc(
    in_channels: int, num_classes: int, input_size: Sequence[int] = _DEFAULT_2D, **kwargs: Any
) -> NnUNetResEnc:
    """nnU-Net ResEnc M, 2D, planned for ``input_size``; options as in :class:`NnUNetResEnc`."""
    return NnUNetResEnc(in_channels, num_classes, input_size, spatial_dims=2, **kwargs)


@register_model(
    "nnunet_resenc_3d",
    options_from=NnUNetResEnc,
    spatial_dims=3,
    paper=_PAPER_RESENC,
    official_repo="MIC-DKFZ/nnUNet",
    input_divisor=32,
    default_input_size=_DEFAULT_3D,
    tags=("baseline", "nnunet"),
    test_kwargs=_TEST_3D,
    test_input_size=(16, 32, 32),
    size_kwargs=_size_kwargs,
)
def nnunet_resenc_3d(
    in_channels: int, num_classes: int, input_size: Sequence[int] = _DEFAULT_3D, **kwargs: Any
) -> NnUNetResEnc:
    """nnU-Net ResEnc M, 3D full resolution, planned for ``input_size``; options as in :class:`NnUNetResEnc`."""
    return NnUNetResEnc(in_channels, num_classes, input_size, spatial_dims=3, **kwargs)
