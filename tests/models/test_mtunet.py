"""MT-UNet: exact parameter counts, loop oracles for the vectorised parts, official key mapping, interface."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnseg.models import create_model, from_official
from attnseg.models.mtunet import (
    ExternalAttention,
    GaussianWeighting,
    LocalGlobalGaussianAttention,
    MTUNet,
    WindowAttention,
    official_mtunet_rename,
)

COUNTS = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "official" / "salstm" / "mtunet_param_count.json").read_text()
)
SMALL = dict(img_size=64, stem_channels=8, embed_dim=16)
DEAD = 3_806_720  # never-executed official axial output Linears


def _n(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_param_counts_released() -> None:
    with torch.device("meta"):  # shapes only: no allocation or init of the 79M parameters
        assert _n(create_model("mtunet", 1, 4)) == COUNTS["param_counts"]["mtunet_out_ch4"] == 79_075_064
        assert _n(MTUNet(1, 64)) == COUNTS["param_counts"]["mtunet_out_ch64"] == 79_078_964
        assert _n(MTUNet(1, 4, unused_params=False)) == 79_075_064 - DEAD


@pytest.fixture(scope="module")
def small() -> MTUNet:
    torch.manual_seed(0)
    return MTUNet(1, 3, **SMALL).eval()


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("num_classes", [1, 4])
def test_forward_shape_small(in_channels: int, num_classes: int) -> None:
    model = MTUNet(in_channels, num_classes, **SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 64, 64))
    assert out.shape == (2, num_classes, 64, 64) and torch.isfinite(out).all()


def test_feature_interface_and_gray_repeat(small: MTUNet) -> None:
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = small(x)
        feats = small.forward_features(x)
        torch.testing.assert_close(small.forward_head(feats), out, rtol=0, atol=0)
        # Upstream repeats a gray image to 3 channels: feeding the 3 copies gives the same logits.
        torch.testing.assert_close(small(x.repeat(1, 3, 1, 1)), out, rtol=1e-6, atol=1e-6)
    assert feats.shape == (2, small.feature_channels, 64, 64) and small.feature_channels == 8


def test_gradients_reach_every_executed_param() -> None:
    torch.manual_seed(1)
    model = MTUNet(1, 2, **SMALL)
    model(torch.randn(2, 1, 64, 64)).square().mean().backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    assert no_grad and all(".axial.out_unused." in n for n in no_grad)  # dead upstream, kept for the count
    # the declaration lists exactly these: one prefix per MTM (10), covering every gradient-less parameter
    declared = model.unused_parameters()
    assert len(declared) == 10 and all(reason for reason in declared.values())
    assert no_grad == {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[0] in declared}
    with torch.device("meta"):  # at the released size the declared prefixes hold the documented dead count
        full = MTUNet(1, 4)
    dead = full.unused_parameters()
    assert sum(p.numel() for n, p in full.named_parameters() if n.rsplit(".", 1)[0] in dead) == DEAD
    lean = MTUNet(1, 2, unused_params=False, **SMALL)
    assert lean.unused_parameters() == {}
    lean(torch.randn(2, 1, 64, 64)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lean.parameters())


def test_input_size_and_ill_args(small: MTUNet) -> None:
    with pytest.raises(ValueError, match="64x64"):
        small(torch.randn(1, 1, 96, 96))
    with pytest.raises(ValueError, match="224"):
        MTUNet(1, 4, img_size=224, stem_channels=8, embed_dim=16).validate_input_size((256, 256))
    with pytest.raises(ValueError, match="img_size"):
        MTUNet(1, 4, img_size=100)
    with pytest.raises(ValueError, match="embed_dim"):
        MTUNet(1, 4, embed_dim=20)
    with pytest.raises(ValueError, match="window_padding"):
        MTUNet(1, 4, **SMALL, window_padding="reflect")


# ---------------------------------------------------------------- oracles for the vectorised / fused parts


def _gaussian_loop(rows, cols, v, shift, bias):
    """GaussianTrans (docs/models/salstm.md §4.1), one grid cell at a time."""
    out = torch.zeros_like(v)
    p, q = v.shape[1], v.shape[2]
    for r in range(p):
        for c in range(q):
            d_row = torch.tensor([(j - c) ** 2 for j in range(q)], dtype=v.dtype)
            d_col = torch.tensor([(i - r) ** 2 for i in range(p)], dtype=v.dtype)
            a_row = torch.softmax(rows[:, r, c] - (shift * d_row + bias), dim=-1)  # [B, q]
            a_col = torch.softmax(cols[:, c, r] - (shift * d_col + bias), dim=-1)  # [B, p]
            out[:, r, c] = (a_row[..., None] * v[:, r]).sum(1) + (a_col[..., None] * v[:, :, c]).sum(1)
    return out


def test_gaussian_weighting_matches_loop_and_bias_is_inert() -> None:
    torch.manual_seed(2)
    g = GaussianWeighting().double()
    rows, cols, v = torch.randn(2, 5, 5, 5).double(), torch.randn(2, 5, 5, 5).double(), torch.randn(2, 5, 5, 7).double()
    with torch.no_grad():
        expected = _gaussian_loop(rows, cols, v, g.shift, g.bias)
        torch.testing.assert_close(g(rows, cols, v), expected, rtol=1e-12, atol=1e-12)
        g.bias.add_(5.0)  # a constant inside both softmaxes: no effect (docs/models/salstm.md §7, item 15)
        torch.testing.assert_close(g(rows, cols, v), expected, rtol=1e-12, atol=1e-12)
        g.shift.add_(1.0)
        assert not torch.allclose(g(rows, cols, v), expected)


def test_window_attention_matches_manual_multihead() -> None:
    torch.manual_seed(3)
    attn = WindowAttention(16).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    heads, hd = 8, 2
    q, k, v = (lin(x).view(2, 3, 16, heads, hd) for lin in (attn.q, attn.k, attn.v))
    scores = torch.einsum("bwnhd,bwmhd->bwhnm", q, k) / math.sqrt(hd)
    ctx = torch.einsum("bwhnm,bwmhd->bwnhd", scores.softmax(-1), v).reshape(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), attn.proj(ctx), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_compiled_window_attention_gradients() -> None:
    """Inductor's gradients of a window attention on [B, p, q, N, C] agree with float64 as eager's do (with a 6-D
    SDPA inside they were off by 100 %: the regression this guards)."""
    import torch._dynamo

    torch.manual_seed(0)
    attn = WindowAttention(64)
    x0 = torch.randn(2, 2, 3, 16, 64, dtype=torch.float64)
    w = torch.randn(2, 2, 3, 16, 64, dtype=torch.float64)

    def grads(module: torch.nn.Module, fn, dtype: torch.dtype) -> list[torch.Tensor]:
        module.zero_grad(set_to_none=True)
        x = x0.to(dtype, copy=True).requires_grad_()
        (fn(x).double() * w).sum().backward()
        return [x.grad.double()] + [p.grad.double() for p in module.parameters()]

    ref = attn.double()
    g64 = grads(ref, ref, torch.float64)
    fp32 = WindowAttention(64)
    fp32.load_state_dict(attn.state_dict())
    torch._dynamo.reset()
    compiled = grads(fp32, torch.compile(fp32, backend="inductor"), torch.float32)
    for got, want in zip(compiled, g64):
        # k.bias gets no gradient (a softmax is shift-invariant): the absolute bound covers it
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()) + 1e-6)


def test_external_attention_matches_manual() -> None:
    torch.manual_seed(4)
    ea = ExternalAttention(16).double()
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64)
    t = ea.expand(x.reshape(2, 15, 16)).view(2, 15, 32, 2)  # 32 heads of 16/8 = 2 channels
    a = ea.memory_key(t).softmax(dim=1)  # over the 15 tokens
    a = a / (1e-9 + a.sum(-1, keepdim=True))  # over the 64 memory slots
    expected = ea.proj(ea.memory_value(a).reshape(2, 15, 64)).view(2, 3, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(ea(x), expected, rtol=1e-12, atol=1e-12)


def test_window_padding_official_corner_copy() -> None:
    x = torch.arange(1 * 6 * 6 * 2, dtype=torch.float32).view(1, 6, 6, 2)
    zeros = LocalGlobalGaussianAttention(2)._pad(x)
    official = LocalGlobalGaussianAttention(2, window_padding="official")._pad(x)
    assert zeros.shape == official.shape == (1, 8, 8, 2)
    torch.testing.assert_close(zeros[:, :6, :6], x)
    assert zeros[:, 6:].abs().sum() == 0 and zeros[:, :, 6:].abs().sum() == 0
    torch.testing.assert_close(official[:, 6:, 6:], x[:, 4:, 4:])  # bottom-right corner block copied
    assert official[:, 6:, :6].abs().sum() == 0 and official[:, :6, 6:].abs().sum() == 0  # strips stay zero
    # Sides that are multiples of 4 are not padded: both modes agree exactly.
    torch.manual_seed(5)
    a = LocalGlobalGaussianAttention(8)
    b = LocalGlobalGaussianAttention(8, window_padding="official")
    b.load_state_dict(a.state_dict())
    y = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(a(y), b(y), rtol=0, atol=0)
        y7 = torch.randn(1, 7, 7, 8)
        assert not torch.allclose(a(y7), b(y7))


def test_lgg_sa_upsampling_is_align_corners_bilinear() -> None:
    """With the local path zeroed, the output is the fused x4 bilinear (align_corners) upsampling of the grid."""
    torch.manual_seed(6)
    m = LocalGlobalGaussianAttention(8).double()
    with torch.no_grad():
        m.window_attn.proj.weight.zero_()
        m.window_attn.proj.bias.zero_()
        x = torch.randn(1, 8, 8, 8, dtype=torch.float64)
        # local tokens are 0, so the pooled grid is 0 and the axial values are the v bias everywhere
        expected_grid = m.axial.v.bias.expand(1, 2, 2, 8) * 2  # row + column weighted sums of a constant
        up = F.interpolate(expected_grid.permute(0, 3, 1, 2), scale_factor=4, mode="bilinear", align_corners=True)
        expected = m.fuse(torch.cat([up, torch.zeros_like(up)], 1)).permute(0, 2, 3, 1)
        torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- official key names


def _official_double_conv(prefix: str) -> list[str]:
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = [
        f"{prefix}conv.0.conv.weight",
        f"{prefix}conv.1.conv.weight",
        f"{prefix}conv1.weight",
        f"{prefix}conv1.bias",
    ]
    for sub in ("conv.0.bn", "conv.1.bn", "bn"):
        keys += [f"{prefix}{sub}.{b}" for b in bn]
    return keys


def _official_ea(prefix: str) -> list[str]:
    keys = [f"{prefix}{ln}.{w}" for ln in ("SlayerNorm", "ElayerNorm") for w in ("weight", "bias")]
    for mod in ("win_atten.attention", "global_atten"):
        for lin in ("query_layer", "key_layer", "value_layer", "out"):
            keys += [f"{prefix}CSAttention.{mod}.{lin}.{w}" for w in ("weight", "bias")]
    keys += [f"{prefix}CSAttention.dlightconv.linear.{w}" for w in ("weight", "bias")]
    keys += [f"{prefix}CSAttention.gaussiantrans.bias", f"{prefix}CSAttention.gaussiantrans.shift"]
    keys += [f"{prefix}CSAttention.queeze.{w}" for w in ("weight", "bias")]
    keys += [
        f"{prefix}EAttention.{lin}.{w}"
        for lin in ("query_liner", "linear_0", "linear_1", "proj")
        for w in ("weight", "bias")
    ]
    return keys


def official_mtunet_keys() -> list[str]:
    """The official ``encoder.MTUNet`` state-dict keys, listed from its module tree (docs/models/salstm.md §4.1)."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["stem.position_embedding", "stem.trans_dim.conv.weight"] + [f"stem.trans_dim.bn.{b}" for b in bn]
    for i in (1, 2, 3):
        keys += _official_double_conv(f"stem.model.res{i}.")
        keys += _official_double_conv(f"decoder_stem.block.res{i}.")
        keys += [f"decoder_stem.block.trans{i}.{w}" for w in ("weight", "bias")]
    for i in (0, 1):
        keys += _official_ea(f"encoder.{i}.block.0.") + _official_ea(f"encoder.{i}.block.1.")
        keys += [f"encoder.{i}.block.2.conv.weight"] + [f"encoder.{i}.block.2.bn.{b}" for b in bn]
        keys += _official_ea(f"bottleneck.{i}.")
    keys += [f"decoder.0.block.{j}.{w}" for j in (0, 1) for w in ("weight", "bias")]
    keys += _official_ea("decoder.0.block.2.") + _official_ea("decoder.0.block.3.")
    keys += [f"decoder.1.block.0.{w}" for w in ("weight", "bias")]
    keys += _official_ea("decoder.1.block.1.") + _official_ea("decoder.1.block.2.")
    keys += ["SegmentationHead.weight", "SegmentationHead.bias"]
    return keys


def test_official_rename_is_a_bijection_onto_our_keys(small: MTUNet) -> None:
    official = official_mtunet_keys()
    ours = [official_mtunet_rename(k) for k in official]
    assert len(set(ours)) == len(official)
    assert set(ours) == set(small.state_dict())


@pytest.mark.slow
def test_official_loader_full_size_roundtrip_and_forward() -> None:
    """Load an official-named state dict (values from one of our models) and check it reproduces that model."""
    torch.manual_seed(7)
    src = MTUNet(1, 4, window_padding="official").eval()
    ours = src.state_dict()
    sd = {k: ours[official_mtunet_rename(k)].clone() for k in official_mtunet_keys()}
    loaded = from_official("encoder.MTUNet", sd, out_ch=4)
    x = torch.randn(1, 1, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x), rtol=0, atol=0)
        assert loaded(x).shape == (1, 4, 224, 224)
