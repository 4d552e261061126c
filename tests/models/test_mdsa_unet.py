"""MDSA-UNet: official equivalence, released configuration, region-grid rule, fast vs reference attention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from official_fixtures import load_case

from attnseg.models import create_model, from_official, list_models
from attnseg.models.mdsa_unet import (
    EUF,
    MDSAUNet,
    MultiScaleDynamicSparseAttention,
    _masked_routing_pays,
    region_partition,
    route_regions,
)
from attnseg.models.official import OfficialWeightsError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "mdsa_unet"
CASES = ["small_224", "small_336_b2"]


def _tiny(**kwargs) -> MDSAUNet:
    torch.manual_seed(0)
    return create_model("mdsa_unet_test", in_channels=3, num_classes=2, **kwargs)


def _load_case(case: str) -> tuple[dict, dict, torch.Tensor, np.ndarray]:
    meta, sd, (x,), expected = load_case("mdsa_unet", case)
    return meta, sd, x, expected


# ---- official equivalence ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "attn_impl"),
    [
        ("small_224", "fast"),
        ("small_336_b2", "fast"),
        ("small_224", "reference"),
        pytest.param("small_336_b2", "reference", marks=pytest.mark.slow),
    ],
)
def test_official_equivalence(case: str, attn_impl: str) -> None:
    meta, sd, x, expected = _load_case(case)
    model = from_official(meta["official_class"], sd, attn_impl=attn_impl, **meta["constructor_kwargs"])
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == meta["param_count"]
    with torch.no_grad():
        y = model(x)
    assert meta["output"]["kind"] == "logits"
    assert tuple(y.shape) == tuple(meta["output"]["shape"])
    diff = np.abs(y.numpy() - expected).max()
    assert diff <= meta["tolerance_suggestion"], f"max abs diff {diff} > {meta['tolerance_suggestion']}"


def test_official_bare_class_name_and_strict_load() -> None:
    meta, sd, _, _ = _load_case("small_224")
    kwargs = meta["constructor_kwargs"]
    model = from_official("MDSAUNet", sd, **kwargs)
    assert isinstance(model, MDSAUNet)
    broken = dict(sd)
    broken.pop("encoder.layers.1.block.0.attn.aggregator.agg2.pointwise_conv.weight")
    with pytest.raises(OfficialWeightsError):
        from_official("MDSAUNet", broken, **kwargs)
    extra = dict(sd, **{"encoder.layers.0.block.0.attn.qkv.weight": torch.zeros(3, 3)})
    with pytest.raises(OfficialWeightsError):
        from_official("MDSAUNet", extra, **kwargs)


# ---- released configuration -----------------------------------------------------------------------------------


def test_registered_and_param_counts() -> None:
    assert {"mdsa_unet", "mdsa_unet_test"} <= set(list_models())
    model = create_model("mdsa_unet", in_channels=3, num_classes=1)
    assert sum(p.numel() for p in model.parameters()) == 6_576_225  # docs/models/mdsa_unet.md §0, official code
    assert all(p.requires_grad for p in model.parameters())
    assert sum(b.numel() for n, b in model.named_buffers() if "num_batches" not in n) == 8_835 - 35  # BN stats
    acdc = create_model("mdsa_unet", in_channels=1, num_classes=4)
    assert sum(p.numel() for p in acdc.parameters()) == 6_576_612  # docs/models/mdsa_unet.md §1: n_class=4
    # Submodule counts of docs/models/mdsa_unet.md §5.1.
    assert sum(p.numel() for p in model.downsamples[2].parameters()) == 1_694_912
    assert sum(p.numel() for p in model.encoder_stages[2].parameters()) == 1_931_648
    assert sum(p.numel() for p in model.fusions[0].parameters()) == 580_600
    assert sum(p.numel() for p in model.decoder_stages[1].parameters()) == 129_632
    heads = [s[0].attn.num_heads for s in [*model.encoder_stages, *model.decoder_stages]]
    topks = [s[0].attn.topk for s in [*model.encoder_stages, *model.decoder_stages]]
    assert heads == [4, 10, 16, 10, 4] and topks == [1, 4, 16, 4, 1]
    assert model.encoder_stages[0][0].attn.scale == pytest.approx(128**-0.5)  # full width, not head_dim


def test_official_init_scheme() -> None:
    model = create_model("mdsa_unet", in_channels=3, num_classes=1)
    conv = model.fusions[0].aux[0]  # 832 -> 40, 3x3: std = sqrt(2 / (9 * 40))
    assert conv.weight.std().item() == pytest.approx((2 / (9 * 40)) ** 0.5, rel=0.02)
    assert torch.all(conv.bias == 0)
    fc = model.encoder_stages[2][0].mlp.fc1
    assert fc.weight.std().item() == pytest.approx(0.02, rel=0.02) and torch.all(fc.bias == 0)
    assert torch.all(model.encoder_stages[0][0].norm1.weight == 1)
    assert isinstance(model.encoder_stages[0][0].drop, torch.nn.Dropout) and model.encoder_stages[0][0].drop.p == 0.1


def test_forward_shapes_grey_repeat_and_every_param_gets_grad() -> None:
    model = _tiny(drop_rate=0.0).train()
    x = torch.randn(1, 3, 112, 224)
    y = model(x)
    assert y.shape == (1, 2, 112, 224) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    grey = torch.randn(1, 1, 112, 112)
    with torch.no_grad():
        assert torch.equal(model(grey), model(grey.repeat(1, 3, 1, 1)))
    assert create_model("mdsa_unet_test", in_channels=1, num_classes=1).downsamples[0].main[0].in_channels == 3


# ---- input sizes and the region grid --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(256, 256), (221, 221), (224, 230), (100, 112)])
def test_invalid_input_size_raises_clear_error(size: tuple[int, int]) -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="nearest valid sides"):
        model.validate_input_size(size)
    with pytest.raises(ValueError, match="cannot take input size"):
        model(torch.randn(1, 3, *size))


def test_auto_region_grid_rule() -> None:
    model = _tiny(n_win="auto")
    assert model.region_grid((224, 224)) == (7, 7)
    assert model.region_grid((256, 256)) == (8, 8)
    assert model.region_grid((448, 448)) == (14, 14)
    assert model.region_grid((224, 320)) == (7, 10)
    assert _tiny(n_win="auto", region_size=4).region_grid((256, 256)) == (16, 16)
    with pytest.raises(ValueError, match="fewer regions than max"):
        model.validate_input_size((96, 96))  # 3x3 grid < topk 16
    with pytest.raises(ValueError, match="multiple of region_size"):
        model.validate_input_size((240, 240))  # 60 not a multiple of 8
    assert _tiny().region_grid((448, 448)) == (7, 7)  # fixed grid: the released rule


def test_auto_grid_equals_fixed_models_with_same_weights() -> None:
    auto = _tiny(n_win="auto").eval()
    x224, x256 = torch.randn(1, 3, 224, 224), torch.randn(1, 3, 256, 256)
    for n_win, x in [(7, x224), (8, x256)]:
        fixed = _tiny(n_win=n_win).eval()
        fixed.load_state_dict(auto.state_dict())
        with torch.no_grad():
            assert torch.equal(auto(x), fixed(x))


# ---- fast vs reference attention ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "hw", "grid", "topk"),
    [
        (1, (8, 8), (2, 2), 1),
        (2, (12, 12), (3, 3), 1),
        (3, (12, 12), (3, 3), 2),
        (2, (12, 18), (3, 3), 4),
        (1, (16, 16), (4, 4), 7),
        (2, (8, 12), (2, 3), 6),  # topk = all regions: dense path
        (2, (14, 14), (7, 7), 16),  # the released deepest stage: masked dense attention
        (2, (28, 28), (7, 7), 4),  # the released middle stage: gathered regions
        (1, (56, 56), (7, 7), 16),  # 3136 tokens: gathered regions
    ],
)
def test_attention_paths_agree_outputs_and_gradients(batch, hw, grid, topk) -> None:
    n, t = grid[0] * grid[1], hw[0] * hw[1] // (grid[0] * grid[1])
    if 1 < topk < n:  # both fast routed paths are exercised
        assert _masked_routing_pays(n, t, topk) == ((hw, topk) in {((12, 18), 4), ((16, 16), 7), ((14, 14), 16)})
    torch.manual_seed(batch * 100 + topk)
    # float64: the paths sum in different orders, and float32 bias gradients (sums over every pixel) show it
    attn = MultiScaleDynamicSparseAttention(dim=32, num_heads=2, topk=topk).double().train()  # BN batch statistics
    x = torch.randn(batch, *hw, 32, dtype=torch.float64)
    results = {}
    for impl in ("fast", "reference"):
        attn.attn_impl = impl
        attn.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = attn(xi, grid)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        grads = {n: p.grad.clone() for n, p in attn.named_parameters()}
        results[impl] = (out.detach(), xi.grad.clone(), grads)
    (o_f, g_f, p_f), (o_r, g_r, p_r) = results["fast"], results["reference"]
    torch.testing.assert_close(o_f, o_r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_f, g_r, rtol=1e-10, atol=1e-12)
    scale = max(g.abs().max().item() for g in p_r.values())
    for name in p_r:
        torch.testing.assert_close(p_f[name], p_r[name], rtol=1e-9, atol=1e-12 * scale, msg=name)


@pytest.mark.parametrize(("batch", "size"), [(1, (112, 112)), (2, (224, 112))])
def test_model_paths_agree_outputs_and_gradients(batch: int, size: tuple[int, int]) -> None:
    # float64: EDM's max-pool picks its argmax per window, and float32 round-off differences between the two paths
    # can flip a near-tie and move one pixel's gradient (max-abs diffs ~1e-3 that float64 shows are round-off).
    model = _tiny(drop_rate=0.0).double().train()
    x = torch.randn(batch, 3, *size, dtype=torch.float64)
    outs, grads = {}, {}
    for impl in ("fast", "reference"):
        model.set_attn_impl(impl).zero_grad()
        y = model(x)
        y.square().mean().backward()
        outs[impl] = y.detach()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.testing.assert_close(outs["fast"], outs["reference"], rtol=1e-10, atol=1e-10)
    # Biases followed by train-mode BN have zero true gradient, so compare against the global gradient scale.
    scale = max(g.abs().max().item() for g in grads["reference"].values())
    for name, g in grads["reference"].items():
        torch.testing.assert_close(grads["fast"][name], g, rtol=1e-8, atol=1e-10 * scale, msg=name)


@pytest.mark.parametrize(("deep", "skip"), [((7, 5), (13, 9)), ((6, 6), (12, 12)), ((8, 8), (8, 8))])
def test_euf_fast_form_equals_the_concatenation(deep: tuple[int, int], skip: tuple[int, int]) -> None:
    # the fast form resizes after the deeper map's 1x1 conv and splits the convs over [up, skip]: equal in exact
    # arithmetic at any resize factor (bilinear weights sum to 1), so float64 must agree to round-off, gradients too
    torch.manual_seed(0)
    euf = EUF(12, 8, 16).double().train()
    for p in euf.parameters():
        p.data.normal_()  # non-trivial biases and BN affines
    inputs = [torch.randn(2, 12, *deep, dtype=torch.float64), torch.randn(2, 8, *skip, dtype=torch.float64)]
    outs, grads = [], []
    for fast in (False, True):
        xs = [t.clone().requires_grad_() for t in inputs]
        y = euf(*xs, fast=fast)
        weights = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        g = torch.autograd.grad((y * weights).sum(), xs + list(euf.parameters()))
        outs.append(y.detach())
        grads.append(g)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    scale = max(g.abs().max().item() for g in grads[0])
    for (name, _), g_fast, g_ref in zip([("x", 0), ("skip", 0), *euf.named_parameters()], grads[1], grads[0]):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-12 * scale, msg=name)


def test_model_paths_agree_float32_eval() -> None:
    model = _tiny().eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fast = model(x)
        ref = model.set_attn_impl("reference")(x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_routing_is_cosine_ranking_and_self_first() -> None:
    torch.manual_seed(1)
    a = torch.randn(2, 12, 12, 16) + torch.randn(2, 1, 1, 16)  # shared offset: regions differ only slightly
    grid = (3, 3)
    idx = route_regions(a, grid, 4)
    assert idx.shape == (2, 9, 4)
    assert torch.equal(idx[..., 0], torch.arange(9).expand(2, 9))  # Q = K: every region routes to itself first
    desc = region_partition(a.double(), grid).mean(2)
    cos = torch.nn.functional.cosine_similarity(desc.unsqueeze(2), desc.unsqueeze(1), dim=-1)
    assert torch.equal(idx, cos.topk(4, dim=-1).indices)


def test_qk_scale_and_residual_dropout_options() -> None:
    base = _tiny().eval()
    x = torch.randn(1, 3, 112, 112)
    head_scale = _tiny(qk_scale=16**-0.5).eval()
    head_scale.load_state_dict(base.state_dict())
    path = _tiny(residual_dropout="drop_path").eval()
    path.load_state_dict(base.state_dict())
    with torch.no_grad():
        assert not torch.allclose(base(x), head_scale(x))  # the released C^-1/2 scale matters
        assert torch.equal(base(x), path(x))  # residual drop is inactive in eval


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dims": (3, 32, 64)},
        {"dims": (3, 36, 64, 96)},
        {"topks": (1, 4)},
        {"depths": (1, 1, 1)},
        {"n_win": 0},
        {"n_win": "big"},
        {"n_win": 3},  # 9 regions < topk 16
        {"region_size": 0},
        {"attn_impl": "flash"},
        {"residual_dropout": "stochastic"},
        {"drop_rate": 1.0},
        {"patch_kernel_sizes": (7, 2, 3)},
        {"blocks": 1},
    ],
)
def test_invalid_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        create_model("mdsa_unet_test", in_channels=3, num_classes=1, **kwargs)
    if "attn_impl" in kwargs:
        with pytest.raises(ValueError):
            _tiny().set_attn_impl(kwargs["attn_impl"])


def test_fvcore_macs_of_the_reference_path_equal_the_official_count():
    """fvcore counts the released model at 4,501,320,320 MACs (docs/models/mdsa_unet.md §5.2); the reference path
    uses the same matmuls.

    The fast path's SDPA is invisible to fvcore (reported as skipped by ``attnseg bench``), so the check uses the
    reference path; FlopCounterMode counts both paths' attention (see tests/bench).
    """
    pytest.importorskip("fvcore")
    from attnseg.bench.complexity import fvcore_macs

    model = create_model("mdsa_unet", in_channels=3, num_classes=1, attn_impl="reference").eval()
    macs, _ = fvcore_macs(model, [torch.zeros(1, 3, 224, 224)])
    assert macs == 4_501_320_320


@pytest.mark.parametrize("residual_dropout", ["dropout", "drop_path"])
def test_block_residual_draws_the_dropout_masks_of_nn_dropout(residual_dropout: str) -> None:
    # The fused residual (Bernoulli draw + one multiply-add) must reproduce x + Dropout(branch) bit for bit from the
    # same seed, so seeded training runs match the released code's masks.
    from attnseg.models.mdsa_unet import MDSABlock

    block = MDSABlock(16, 2, 1, drop_rate=0.3, residual_dropout=residual_dropout).train()
    x, branch = torch.randn(2, 5, 6, 16), torch.randn(2, 5, 6, 16)
    torch.manual_seed(7)
    fused = block._residual(x, branch.clone())
    torch.manual_seed(7)
    plain = x + block.drop(branch)
    assert torch.equal(fused, plain)
    assert (fused == x).float().mean().item() == pytest.approx(0.3, abs=0.1 if residual_dropout == "dropout" else 0.5)
    block.eval()
    assert torch.equal(block._residual(x, branch.clone()), x + branch)
