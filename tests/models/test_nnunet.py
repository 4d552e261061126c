"""nnU-Net baselines: the planned topology against nnU-Net's published plans and planning rule, the networks against
``dynamic_network_architectures`` built directly, the ResEnc M layout, nnU-Net's defaults and the input-size check.

Expected topologies are written out by hand from the rule in docs/models/nnunet.md §2 (pool an axis while it is
>= 8 voxels, an axis pooled alone needs >= 12, features 32 doubling capped at 512 in 2D / 320 in 3D) and from the
plans nnU-Net's documentation prints (Hippocampus 3d_fullres / 3d_lowres, Isensee et al. 2021, supplement §6.2).
"""

from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from safetensors.torch import load_file, save_file
from torch import nn

from attnseg.models import create_model, model_info
from attnseg.models.nnunet import RESENC_M_BLOCKS, NnUNetPlain, NnUNetResEnc, plan_topology
from attnseg.models.registry import check_input_size, sized_kwargs

S1_2D, S2_2D = (1, 1), (2, 2)
S1_3D, S2_3D = (1, 1, 1), (2, 2, 2)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _reference(cls: type, in_channels: int, num_classes: int, plan: dict, ndim: int, **blocks) -> nn.Module:
    """The network as nnU-Net's get_network_from_plans builds it: the plans' arch_kwargs, then network.initialize."""
    net = cls(
        input_channels=in_channels,
        n_stages=plan["n_stages"],
        features_per_stage=list(plan["features_per_stage"]),
        conv_op=nn.Conv2d if ndim == 2 else nn.Conv3d,
        kernel_sizes=[list(k) for k in plan["kernel_sizes"]],
        strides=[list(s) for s in plan["strides"]],
        num_classes=num_classes,
        conv_bias=True,
        norm_op=nn.InstanceNorm2d if ndim == 2 else nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
        **blocks,
    )
    net.apply(net.initialize)
    return net


# ------------------------------------------------------------------------------------------- planned topology


def test_2d_512_is_nnunets_eight_stage_plan() -> None:
    plan = plan_topology((512, 512), 2)
    assert plan["n_stages"] == 8
    assert plan["features_per_stage"] == (32, 64, 128, 256, 512, 512, 512, 512)
    assert plan["strides"] == (S1_2D,) + (S2_2D,) * 7
    assert plan["kernel_sizes"] == ((3, 3),) * 8
    assert plan["pools_per_axis"] == (7, 7) and plan["divisor"] == (128, 128)  # bottleneck 4x4


@pytest.mark.parametrize(
    "size,n_stages,features",
    [
        ((256, 256), 7, (32, 64, 128, 256, 512, 512, 512)),
        ((128, 128), 6, (32, 64, 128, 256, 512, 512)),
        ((96, 96, 96), 5, (32, 64, 128, 256, 320)),  # 96 -> 6 after four poolings; 6 < 8 stops
        ((128, 128, 128), 6, (32, 64, 128, 256, 320, 320)),
    ],
)
def test_isotropic_sizes(size: tuple[int, ...], n_stages: int, features: tuple[int, ...]) -> None:
    plan = plan_topology(size)
    one, two = (S1_2D, S2_2D) if len(size) == 2 else (S1_3D, S2_3D)
    assert plan["n_stages"] == n_stages and plan["features_per_stage"] == features
    assert plan["strides"] == (one,) + (two,) * (n_stages - 1)
    assert plan["divisor"] == (2 ** (n_stages - 1),) * len(size)


def test_3d_128_is_nnunets_six_stage_plan() -> None:
    plan = plan_topology((128, 128, 128), 3)
    assert plan["n_stages"] == 6
    assert plan["features_per_stage"] == (32, 64, 128, 256, 320, 320)
    assert plan["strides"] == (S1_3D,) + (S2_3D,) * 5
    assert plan["kernel_sizes"] == ((3, 3, 3),) * 6


@pytest.mark.parametrize(
    "patch,pools",
    [((40, 56, 40), (3, 3, 3)), ((20, 28, 20), (2, 2, 2))],  # nnU-Net's documented Hippocampus plans
)
def test_hippocampus_plans_from_nnunets_documentation(patch: tuple[int, ...], pools: tuple[int, ...]) -> None:
    plan = plan_topology(patch)
    assert plan["pools_per_axis"] == pools
    assert plan["strides"] == (S1_3D,) + (S2_3D,) * pools[0]
    assert plan["kernel_sizes"] == ((3, 3, 3),) * (pools[0] + 1)
    assert plan["padded_size"] == patch  # already divisible: nnU-Net keeps the patch


def test_anisotropic_size_pools_each_axis_while_it_stays_at_least_4() -> None:
    # 40 -> 20 -> 10 -> 5 (stops: 5 < 8); 192 -> ... -> 6 and 160 -> ... -> 5 after five poolings
    plan = plan_topology((40, 192, 160))
    assert plan["n_stages"] == 6
    assert plan["strides"] == (S1_3D, S2_3D, S2_3D, S2_3D, (1, 2, 2), (1, 2, 2))
    assert plan["pools_per_axis"] == (3, 5, 5) and plan["divisor"] == (8, 32, 32)
    assert plan["features_per_stage"] == (32, 64, 128, 256, 320, 320)


def test_an_axis_pooled_alone_needs_three_times_the_minimum() -> None:
    # (32, 256): after three joint poolings (4, 32), axis 1 goes on alone while >= 12: 32 -> 16 -> 8, then stops
    # at 8 (a lone axis at 8 < 12 is not pooled, though 8 >= 2 * 4 would allow it for two axes)
    plan = plan_topology((32, 256))
    assert plan["strides"] == (S1_2D, S2_2D, S2_2D, S2_2D, (1, 2), (1, 2))
    assert plan["pools_per_axis"] == (3, 5)
    assert plan_topology((8, 4))["n_stages"] == 1  # one axis, 8 < 12
    assert plan_topology((8, 8))["strides"] == (S1_2D, S2_2D)  # two axes at 8: pooled to 4


def test_spacing_gives_kernel_1_and_late_pooling_along_a_coarse_axis() -> None:
    # thick slices (5 mm vs 1.5625 mm in plane): the slice axis is pooled only once in-plane spacing reaches 3.125
    plan = plan_topology((20, 256, 224), spacing=(5.0, 1.5625, 1.5625))
    assert plan["strides"] == (S1_3D, (1, 2, 2), S2_3D, S2_3D, (1, 2, 2), (1, 2, 2))
    assert plan["kernel_sizes"] == ((1, 3, 3),) + ((3, 3, 3),) * 5
    assert plan["divisor"] == (4, 32, 32)


def test_non_divisible_size_pads_as_nnunet_and_plans_the_same() -> None:
    plan = plan_topology((100, 100))  # 100 -> 50 -> 25 -> 13 -> 7: four poolings
    assert plan["divisor"] == (16, 16) and plan["padded_size"] == (112, 112)
    assert plan_topology((112, 112))["strides"] == plan["strides"]
    # sides shrink to ceil(side / 2): 30 -> 15 -> 8 -> 4 is three poolings (rounding down would stop at 7)
    assert plan_topology((30, 30))["pools_per_axis"] == (3, 3)
    assert plan_topology((30, 30))["padded_size"] == (32, 32)


def test_plan_options_and_errors() -> None:
    assert plan_topology((512, 512), max_features=256)["features_per_stage"][-1] == 256
    assert plan_topology((64, 64), base_features=8)["features_per_stage"] == (8, 16, 32, 64, 128)
    assert plan_topology((512, 512), max_pools=3)["pools_per_axis"] == (3, 3)
    with pytest.raises(ValueError, match="not 3"):
        plan_topology((64, 64), 3)
    with pytest.raises(ValueError, match="spacing"):
        plan_topology((64, 64), spacing=(1.0, 0.0))


# ------------------------------------------------------------------------------------------- built networks


def test_plain_unet_equals_the_package_network_built_from_the_same_plan() -> None:
    plan = plan_topology((64, 48), base_features=8)
    ours = create_model("nnunet_plain", 2, 3, input_size=(64, 48), base_features=8).eval()
    reference = _reference(PlainConvUNet, 2, 3, plan, 2, n_conv_per_stage=2, n_conv_per_stage_decoder=2).eval()
    assert _n_params(ours) == _n_params(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)  # nnU-Net's key names, aliases included
    x = torch.randn(2, 2, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


def test_resenc_equals_the_package_network_built_from_the_same_plan() -> None:
    size = (16, 32, 32)
    plan = plan_topology(size, base_features=4)
    ours = create_model("nnunet_resenc_3d", 1, 2, input_size=size, base_features=4).eval()
    reference = _reference(
        ResidualEncoderUNet, 1, 2, plan, 3, n_blocks_per_stage=[1, 3, 4, 6], n_conv_per_stage_decoder=1
    ).eval()
    assert plan["n_stages"] == 4 and _n_params(ours) == _n_params(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name,size,cls,blocks",
    [
        ("nnunet_plain", (512, 512), PlainConvUNet, {"n_conv_per_stage": 2, "n_conv_per_stage_decoder": 2}),
        ("nnunet_plain_3d", (128, 128, 128), PlainConvUNet, {"n_conv_per_stage": 2, "n_conv_per_stage_decoder": 2}),
        (
            "nnunet_resenc",
            (512, 512),
            ResidualEncoderUNet,
            {"n_blocks_per_stage": [1, 3, 4, 6, 6, 6, 6, 6], "n_conv_per_stage_decoder": 1},
        ),
        (
            "nnunet_resenc_3d",
            (128, 128, 128),
            ResidualEncoderUNet,
            {"n_blocks_per_stage": [1, 3, 4, 6, 6, 6], "n_conv_per_stage_decoder": 1},
        ),
    ],
)
def test_full_size_parameter_count_equals_the_package_network(name, size, cls, blocks) -> None:
    with torch.device("meta"):  # full nnU-Net widths, no memory: only the shapes matter
        ours = create_model(name, 1, 2, input_size=size)
        reference = _reference(cls, 1, 2, plan_topology(size), len(size), **blocks)
    assert _n_params(ours) == _n_params(reference)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in reference.named_parameters()]


def test_resenc_m_block_layout_and_one_conv_per_decoder_stage() -> None:
    assert RESENC_M_BLOCKS[:8] == (1, 3, 4, 6, 6, 6, 6, 6)
    with torch.device("meta"):
        resenc = create_model("nnunet_resenc", 1, 2, input_size=(512, 512))
        plain = create_model("nnunet_plain", 1, 2, input_size=(512, 512))
    assert [len(stage.blocks) for stage in resenc.encoder.stages] == [1, 3, 4, 6, 6, 6, 6, 6]
    assert all(isinstance(b, BasicBlockD) for stage in resenc.encoder.stages for b in stage.blocks)
    assert [len(stage.convs) for stage in resenc.decoder.stages] == [1] * 7
    assert [len(stage[0].convs) for stage in plain.encoder.stages] == [2] * 8
    assert [len(stage.convs) for stage in plain.decoder.stages] == [2] * 7
    # truncated to the stage count
    with torch.device("meta"):
        small = create_model("nnunet_resenc", 1, 2, input_size=(64, 64))
    assert [len(stage.blocks) for stage in small.encoder.stages] == [1, 3, 4, 6, 6]


def test_nnunet_defaults_norm_nonlin_bias_dropout_and_init() -> None:
    torch.manual_seed(0)
    model = create_model("nnunet_resenc", 1, 2, input_size=(64, 64))
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(m.affine and m.eps == 1e-5 and not m.track_running_stats for m in norms)
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(m.negative_slope == 0.01 and m.inplace for m in acts)
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(m.bias is None or torch.count_nonzero(m.bias) == 0 for m in convs)  # He init: zero bias
    assert all(m.bias is not None for m in model.encoder.stem.modules() if isinstance(m, nn.Conv2d))  # conv_bias
    big = model.encoder.stages[4].blocks[1].conv1.conv.weight  # 512 -> 512, 3x3: fan_in 4608
    expected_std = (2 / (1 + 0.01**2) / big[0].numel()) ** 0.5  # kaiming_normal_(a=0.01)
    assert abs(big.std().item() / expected_std - 1) < 0.02
    for block in (m for m in model.modules() if isinstance(m, BasicBlockD)):  # init_last_bn_before_add_to_0
        assert torch.count_nonzero(block.conv2.norm.weight) == 0 and torch.count_nonzero(block.conv2.norm.bias) == 0
    plain = create_model("nnunet_plain", 1, 2, input_size=(64, 64))
    assert all(torch.all(m.weight == 1) for m in plain.modules() if isinstance(m, nn.InstanceNorm2d))


def test_anisotropic_3d_network_pools_each_axis() -> None:
    size = (40, 192, 160)
    model = create_model("nnunet_plain_3d", 1, 2, input_size=size, base_features=2).eval()
    assert [tuple(s) for s in model.encoder.strides] == [S1_3D, S2_3D, S2_3D, S2_3D, (1, 2, 2), (1, 2, 2)]
    assert model.divisor == (8, 32, 32)
    with torch.no_grad():
        features = model.encoder(torch.randn(1, 1, *size))
    assert [tuple(f.shape[2:]) for f in features][-1] == (5, 6, 5)  # every axis >= 4 in the bottleneck
    with torch.no_grad():
        assert model(torch.randn(1, 1, *size)).shape == (1, 2, *size)
    with pytest.raises(ValueError, match=r"8x32x32.*48x192x160, i\.e\. \(48, 192, 160\)"):
        model.validate_input_size((44, 192, 160))
    check_input_size(model, (48, 192, 160))


def test_bad_size_raises_naming_a_valid_size() -> None:
    model = create_model("nnunet_plain", 1, 2, input_size=(128, 128), base_features=4)
    with pytest.raises(ValueError, match=r"multiples of 32x32.*pad to 128x160, i\.e\. \(128, 160\)") as info:
        model(torch.zeros(1, 1, 128, 150))
    assert "planned for 128x128" in str(info.value)
    model.validate_input_size((128, 160))
    with pytest.raises(ValueError, match=r"single voxel.*64x32"):
        model.validate_input_size((32, 32))  # 32/32 = a 1x1 bottleneck: instance norm cannot run
    with pytest.raises(ValueError, match="2D"):
        model.validate_input_size((128, 128, 128))


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match=r"too small.*8x8"):
        create_model("nnunet_plain", 1, 2, input_size=(4, 4))
    with pytest.raises(ValueError, match="nnunet_\\*_3d"):
        create_model("nnunet_plain", 1, 2, input_size=(64, 64, 64))
    with pytest.raises(ValueError, match="n_stages must be between 2 and 5"):
        create_model("nnunet_plain", 1, 2, input_size=(64, 64), n_stages=6)
    with pytest.raises(ValueError, match="features_per_stage needs 5"):
        create_model("nnunet_plain", 1, 2, input_size=(64, 64), features_per_stage=(8, 16))


def test_overrides_fewer_stages_own_widths_and_nnunet_plans_given_directly() -> None:
    model = create_model("nnunet_plain", 1, 2, input_size=(64, 64), n_stages=3, features_per_stage=(4, 8, 16))
    assert model.divisor == (4, 4) and model.feature_channels == 4
    assert [c.out_channels for c in model.decoder.transpconvs] == [8, 4]
    # a plans file's pool_op_kernel_sizes / conv_kernel_sizes reproduce the spacing-aware plan
    spaced = plan_topology((20, 64, 64), spacing=(5.0, 1.5625, 1.5625), base_features=2)
    from_spacing = NnUNetPlain(1, 2, (20, 64, 64), spacing=(5.0, 1.5625, 1.5625), base_features=2)
    given = NnUNetPlain(
        1,
        2,
        (20, 64, 64),
        strides=[list(s) for s in spaced["strides"]],
        kernel_sizes=[list(k) for k in spaced["kernel_sizes"]],
        base_features=2,
    )
    assert given.topology["strides"] == from_spacing.topology["strides"] == spaced["strides"]
    assert given.encoder.stages[0][0].convs[0].conv.kernel_size == (1, 3, 3)
    given.load_state_dict(from_spacing.state_dict(), strict=True)


def test_deep_supervision_option_returns_nnunets_list() -> None:
    torch.manual_seed(0)
    single = NnUNetResEnc(1, 2, (32, 32), base_features=4).eval()
    deep = NnUNetResEnc(1, 2, (32, 32), base_features=4, deep_supervision=True).eval()
    deep.load_state_dict(single.state_dict())
    assert set(single.unused_parameters()) == {"decoder.seg_layers.0", "decoder.seg_layers.1"}
    assert deep.unused_parameters() == {}
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        outputs = deep(x)
        assert [tuple(o.shape[2:]) for o in outputs] == [(32, 32), (16, 16), (8, 8)]
        torch.testing.assert_close(outputs[0], single(x), rtol=0, atol=0)


def test_state_dict_has_each_tensor_once_and_round_trips(tmp_path) -> None:
    model = create_model("nnunet_resenc", 1, 2, input_size=(32, 32), base_features=4).eval()
    sd = model.state_dict()
    assert not any(".all_modules." in k or k.startswith("decoder.encoder.") for k in sd)
    assert len({v.data_ptr() for v in sd.values()}) == len(sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    torch.manual_seed(1)
    other = create_model("nnunet_resenc", 1, 2, input_size=(32, 32), base_features=4).eval()
    other.load_state_dict(load_file(str(tmp_path / "w.safetensors")), strict=True)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_registry_entries_and_size_options() -> None:
    assert sized_kwargs("nnunet_plain", (96, 160)) == {"input_size": (96, 160)}
    assert sized_kwargs("nnunet_resenc", (96, 160)) == {"input_size": (96, 160)}
    for name, dims in [("nnunet_plain", 2), ("nnunet_resenc", 2), ("nnunet_plain_3d", 3), ("nnunet_resenc_3d", 3)]:
        info = model_info(name)
        assert info.spatial_dims == dims and info.official_repo == "MIC-DKFZ/nnUNet"
        assert info.onnx_export and info.torch_compile
        assert plan_topology(info.default_input_size)["divisor"] == (info.input_divisor,) * dims
    model = create_model("nnunet_plain", 1, 2, **sized_kwargs("nnunet_plain", (96, 160), {"base_features": 4}))
    # four joint poolings (6x10); 10 alone would need >= 12 for a fifth
    assert model.planned_size == (96, 160) and model.divisor == (16, 16)
