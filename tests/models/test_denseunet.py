"""DenseUNet / Joint Attention DenseUNet: architecture against the documented table, counts, interface, conformance.

There is no official code for the paper, hence no official fixtures. The backbone is checked against the layer
table of docs/models/joint_attention.md §2 (shapes at 256x256 on the meta device, no compute) and against a
parameter count derived by hand from that table; the attention modules' own tests are in ``test_joint_attention.py``.
"""

from __future__ import annotations

import pytest
import torch

from attnseg.models import create_model, list_models
from attnseg.models.denseunet import SMALL_KWARGS, DenseUNet, TransitionLayer, UpStage
from attnseg.models.joint_attention import JointAttention, NonLocalBlock, PointwiseSpatialAttention
from attnseg.models.registry import check_input_size, has_feature_interface, model_info

VARIANTS = ("joint", "point", "self", "none")
# Default (DenseUNet-167, 3 -> 2 classes, bottleneck attention with d = 256 and a 15x15 map for 256x256 inputs)
DEFAULT_PARAMS = {"joint": 51_672_770, "point": 50_590_914, "self": 51_007_938, "none": 48_840_258}
SMALL_PARAMS = {"joint": 63_042, "point": 61_986, "self": 62_066, "none": 59_906}


def hand_count(in_ch: int, n_cls: int, k: int, layers: tuple[int, ...], stem: int, bn: int, head: int) -> int:
    """Parameters of the table in docs/models/joint_attention.md §2.

    Bias-free CBR convs (+2 BN params per channel), biased BN-free stem.
    """
    total = (9 * in_ch + 1) * stem + 2 * (9 * stem * stem + stem)
    c, skips = stem, [stem]
    for i, n in enumerate(layers):
        for _ in range(n):
            total += c * bn * k + 2 * bn * k + 9 * bn * k * k + 2 * k
            c += k
        if i < len(layers) - 1:
            skips.append(c)
            total += c * (c // 2) + 2 * (c // 2)
            c //= 2
    total += c * skips[-1] + 2 * skips[-1]  # bottleneck 1x1
    outs = skips[-2::-1] + [stem]  # decoder widths: next skip's, then the stem's
    for cin, cout in zip(skips[::-1], outs):
        total += 9 * cin * cout + 2 * cout
    return total + 9 * stem * head + 2 * head + head * n_cls + n_cls


def meta_model(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):  # full-size models without allocating or initialising 50 M weights
        return create_model(name, 3, 2, **kwargs)


def small(attention: str = "joint", **kwargs) -> DenseUNet:
    return create_model("ja_denseunet_small", 3, 2, attention=attention, **kwargs)


# ------------------------------------------------------------------------------------------------ architecture
def test_registered() -> None:
    for name in ("denseunet", "ja_denseunet", "denseunet_small", "ja_denseunet_small"):
        assert name in list_models()
    assert model_info("ja_denseunet").input_divisor == 32
    assert model_info("denseunet").official_repo == "moliqingcha/DACN"


def test_default_shapes_match_documented_table() -> None:
    # docs/models/joint_attention.md §2 for a 256x256x3 input: conv1 128²x96, block1 64²x384, block2 32²x768,
    # block3 16²x2112, bottleneck 8²
    model = meta_model("ja_denseunet")
    x = torch.empty(1, 3, 256, 256, device="meta")
    shapes = [tuple(f.shape[1:]) for f in model.forward_encoder(x)]
    assert shapes == [(96, 128, 128), (384, 64, 64), (768, 32, 32), (2112, 16, 16), (2112, 8, 8)]
    assert [t[0][0].out_channels for t in model.transitions] == [192, 384, 1056]
    assert model.blocks[-1].out_channels == 2208
    assert [s.conv[0].out_channels for s in model.decoder] == [768, 384, 96, 96]
    assert tuple(model.forward_features(x).shape) == (1, 64, 256, 256) and model.feature_channels == 64
    assert tuple(model(x).shape) == (1, 2, 256, 256)


@pytest.mark.parametrize("attention", VARIANTS)
def test_default_param_counts(attention: str) -> None:
    model = meta_model("ja_denseunet", attention=attention)
    assert sum(p.numel() for p in model.parameters()) == DEFAULT_PARAMS[attention]


def test_backbone_count_matches_hand_count_and_docs() -> None:
    model = meta_model("denseunet")
    n = sum(p.numel() for p in model.parameters())
    assert n == DEFAULT_PARAMS["none"] == hand_count(3, 2, 48, (6, 12, 36, 24), 96, 4, 64)
    decoder = ("decoder", "head", "classifier")
    encoder = sum(p.numel() for name, p in model.named_parameters() if not name.startswith(decoder))
    # docs/models/joint_attention.md §8: 48.8 M, encoder 31.1 M
    assert round(n / 1e6, 1) == 48.8 and round(encoder / 1e6, 1) == 31.1
    s = create_model("denseunet_small", 1, 4)
    assert sum(p.numel() for p in s.parameters()) == hand_count(1, 4, 8, (2, 2, 2, 2), 16, 4, 16)


def test_joint_module_count_by_hand() -> None:
    # theta, phi, g: C*d + d each; W_z: d*C; BN0: 2C; map head: C*d + 2d + d*d + 2d + d*M; C=2112, d=256, M=15*15
    c, d, m = 2112, 256, 225
    joint = 3 * (c * d + d) + d * c + 2 * c + (c * d + 2 * d + d * d + 2 * d + d * m)
    assert DEFAULT_PARAMS["joint"] - DEFAULT_PARAMS["none"] == joint
    head = c * d + 2 * d + d * d + 2 * d + d * m
    assert DEFAULT_PARAMS["self"] - DEFAULT_PARAMS["none"] == joint - head
    assert DEFAULT_PARAMS["point"] - DEFAULT_PARAMS["none"] == joint - 2 * (c * d + d)  # no theta, phi


@pytest.mark.parametrize("attention", VARIANTS)
def test_small_variants_build_and_count(attention: str) -> None:
    model = small(attention)
    assert sum(p.numel() for p in model.parameters()) == SMALL_PARAMS[attention]
    expected = {"joint": JointAttention, "point": PointwiseSpatialAttention, "self": NonLocalBlock}
    if attention == "none":
        assert len(model.attention) == 0
    else:
        assert type(model.attention["bottleneck"]) is expected[attention]


def test_map_sizes_follow_position_and_input_size() -> None:
    # docs/models/joint_attention.md §4.2: 8x8 -> 15x15 = 225 maps, 16x16 -> 961, 32x32 -> 3969 channels
    # (for 256x256 inputs)
    model = meta_model("ja_denseunet", attention="point", attention_positions=("bottleneck", "up1", "up2"))
    assert {p: m.mask_size for p, m in model.attention.items()} == {
        "bottleneck": (15, 15),
        "up1": (31, 31),
        "up2": (63, 63),
    }
    assert model.attention["up1"].collect.attention[3].out_channels == 961
    assert model.attention["up2"].values[0].in_channels == 384  # the 32x32 stage has 384 channels
    assert small("joint", input_size=(128, 64)).attention["bottleneck"].mask_size == (7, 3)


def test_attention_inner_width_is_capped() -> None:
    model = meta_model("ja_denseunet", attention="self", attention_positions=("bottleneck", "up3"))
    # docs/models/joint_attention.md, A4: d = 256 at the 2112-channel bottleneck
    assert model.attention["bottleneck"].theta.out_channels == 256
    assert model.attention["up3"].theta.out_channels == 48  # C/2 below the cap (96 channels)


# -------------------------------------------------------------------------------------------------- behaviour
def test_forward_shape() -> None:
    model = create_model("ja_denseunet_small", 1, 4)
    out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 4, 64, 64) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # input-dependent
    with torch.device("meta"):
        binary = create_model("ja_denseunet", 3, 1)
    assert tuple(binary(torch.empty(2, 3, 64, 96, device="meta")).shape) == (2, 1, 64, 96)


def test_attention_starts_as_identity() -> None:
    # zero-initialised residual: with the backbone's weights, every variant equals the plain DenseUNet at init
    torch.manual_seed(0)
    plain = create_model("denseunet_small", 3, 2).eval()
    x = torch.randn(2, 3, 64, 64)
    reference = plain(x)
    for attention, positions in (("joint", ("bottleneck", "up2")), ("point", "bottleneck"), ("self", "bottleneck")):
        model = small(attention, attention_positions=positions).eval()
        missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
        assert not unexpected and missing and all(k.startswith("attention.") for k in missing)
        torch.testing.assert_close(model(x), reference)
        assert not torch.allclose(model(x), plain(x + 1e-2))  # and the comparison can fail


@pytest.mark.parametrize("attention", VARIANTS)
def test_every_parameter_gets_a_gradient(attention: str) -> None:
    model = small(attention, attention_positions=("bottleneck", "up1"))
    with torch.no_grad():
        for m in model.attention.values():
            m.out_norm.weight.fill_(1.0)  # open the zero-initialised residual branch
    x = torch.randn(2, 3, 64, 64)
    torch.nn.functional.cross_entropy(model(x), torch.randint(0, 2, (2, 64, 64))).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient for {dead}"


def test_feature_interface_consistent() -> None:
    model = small("joint").eval()
    assert has_feature_interface(model) and model.feature_channels == SMALL_KWARGS["head_channels"]
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.feature_channels, 64, 64)
    torch.testing.assert_close(model.forward_head(feats), model(x))


def test_batch_independence_in_eval() -> None:
    model = small("joint", attention_kwargs={"distribute": True}).eval()
    with torch.no_grad():
        model.attention["bottleneck"].out_norm.weight.fill_(1.0)
    x = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(model(x)[1:2], model(x[1:2]), rtol=1e-4, atol=1e-5)


def test_classifier_quirk_flag() -> None:
    default = small("none")
    assert default.classifier[0].bias is not None and len(default.classifier) == 1
    quirk = small("none", classifier_bn_relu=True)
    assert quirk.classifier[0].bias is None and isinstance(quirk.classifier[1], torch.nn.BatchNorm2d)
    assert (quirk(torch.randn(2, 3, 64, 64)) >= 0).all()  # the author's logits pass through ReLU


def test_glorot_init_and_zero_biases() -> None:
    torch.manual_seed(0)
    conv = create_model("denseunet", 3, 2, growth_rate=48, block_layers=(1,)).blocks[0][0].bottleneck[0]
    bound = (6 / (conv.in_channels + conv.out_channels)) ** 0.5  # 96 -> 192, 1x1
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    stem = create_model("denseunet_small", 3, 2).stem[0]
    assert torch.count_nonzero(stem.bias) == 0


def _identity_cbr(stage: torch.nn.Module) -> None:
    """Make a 1-channel CBR pass positive values through (centre tap 1, BN in eval with mean 0, var 1 - eps)."""
    conv, bn = stage[0], stage[1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0
        bn.running_var.fill_(1.0 - bn.eps)
    stage.eval()


def test_up_stage_is_bilinear_align_corners_plus_skip() -> None:
    stage = UpStage(1, 1)
    _identity_cbr(stage.conv)
    x = torch.tensor([[[[0.0, 3.0], [6.0, 9.0]]]])
    skip = torch.full((1, 1, 4, 4), 10.0)
    # align_corners: the 2 input samples map to the 4 output corners; rows/cols step by 1/3 of the input gap
    row = torch.tensor([0.0, 1.0, 2.0, 3.0])
    expected = (row[None, :] + 2 * row[:, None] + 10.0)[None, None]
    torch.testing.assert_close(stage(x, skip), expected)


def test_transition_average_excludes_padding() -> None:
    t = TransitionLayer(1, 1)
    _identity_cbr(t[0])
    out = t(torch.ones(1, 1, 6, 6))  # TF "SAME" average pooling divides by the valid count: ones stay ones
    torch.testing.assert_close(out, torch.ones(1, 1, 3, 3))


def test_depth_is_configurable() -> None:
    model = create_model("denseunet", 3, 2, growth_rate=4, block_layers=(1, 2), stem_channels=8, head_channels=8)
    assert model.input_divisor == 8
    assert model(torch.randn(1, 3, 24, 16)).shape == (1, 2, 24, 16)


# ------------------------------------------------------------------------------------------------------ errors
def test_wrong_input_size_raises_clear_error() -> None:
    model = small("joint")
    with pytest.raises(ValueError, match="input_divisor=32.*64, 64"):
        model(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match="2D"):
        check_input_size(model, (64, 64, 64))
    check_input_size(model, (96, 128))  # any multiple of 32, also off the size the maps were built for


@pytest.mark.parametrize(
    "kwargs",
    [
        {"growth_rate": 0},
        {"block_layers": ()},
        {"block_layers": (2, 0)},
        {"compression": 0.0},
        {"attention": "cross"},
        {"attention": "joint", "attention_positions": ("up9",)},
        {"attention": "joint", "attention_positions": ()},
        {"attention": "joint", "input_size": 48},
        {"attention": "joint", "attention_kwargs": {"fusion": "sum"}},
    ],
)
def test_invalid_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DenseUNet(3, 2, **{**SMALL_KWARGS, **kwargs})


def test_plain_denseunet_refuses_attention() -> None:
    with pytest.raises(ValueError, match="ja_denseunet"):
        create_model("denseunet", 3, 2, attention="joint")
