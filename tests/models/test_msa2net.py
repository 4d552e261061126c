"""MSA²Net: official module fixtures, full-model key listings, parameter counts, layout semantics, interface."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from official_fixtures import load_case
from torch import nn

from attnseg.models import create_model, from_official, model_info
from attnseg.models.msa2net import (
    DecoderStage,
    MSA2Net,
    official_dead_prefixes,
    official_rename,
    set_fast_kernels,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "official" / "msa2net"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
# a small timm MaxViT (widths 32/64/128/256) keeps forward/backward tests cheap; the decoder is the same code
SMALL = {"encoder_name": "maxvit_rmlp_pico_rw_256", "img_size": 64}

ENCODER_PARAMS = 64_126_044
EXECUTED = {"paper": 76_606_666, "shipped": 71_013_299}
WITH_DEAD = {"paper": 112_767_981, "shipped": 93_660_877}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the CI box has 2 shared cores; two intra-op threads under contention are ~30x slower than one
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _load_case(case: str):
    return load_case("msa2net", case)


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------------------------------
# official equivalence
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_official_fixture(case: str) -> None:
    meta, sd, inputs, ref = _load_case(case)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = from_official(meta["official_class"], sd, **meta["constructor_kwargs"])
    with torch.no_grad():
        out = model.eval()(*inputs)
    assert out.shape == tuple(meta["output"]["shape"])
    diff = np.abs(out.numpy() - ref).max()
    assert diff <= meta["tolerance_suggestion"], f"{case}: max abs diff {diff}"
    dropped = [str(w.message) for w in caught if "never executes" in str(w.message)]
    if case == "decoder_dae_shipped_c32_14":
        # the shipped class builds a MASAG it never calls: its keys are dropped, loudly
        assert dropped and "ag_attn" in dropped[0]
        assert _n_params(model) == meta["param_count"] - 13_191  # the 32-channel MASAG
    else:
        assert not dropped
        assert _n_params(model) == meta["param_count"]


@pytest.mark.parametrize("case", ["decoder_lka_c32_14", "decoder_dae_paper_c32_14"])
def test_fixture_needs_legacy_layout(case: str) -> None:
    # negative control: with proper transposes the same weights give a different output
    meta, sd, inputs, ref = _load_case(case)
    model = from_official(meta["official_class"], sd, **meta["constructor_kwargs"])
    model.stage.legacy_layout = False
    with torch.no_grad():
        out = model(*inputs)
    assert np.abs(out.numpy() - ref).max() > 100 * meta["tolerance_suggestion"]


def _random_official_state_dict(listing: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k in listing["keys"]:
        shape = tuple(k["shape"])
        if k["dtype"] == "int64":
            sd[k["key"]] = torch.randint(0, 100, shape, generator=g)
        else:
            sd[k["key"]] = torch.rand(shape, generator=g) + 0.5  # positive: valid BN running_var too
    return sd


@pytest.mark.parametrize("variant", ["paper", "shipped"])
def test_full_model_key_listing(variant: str) -> None:
    listing = json.loads((FIXTURES / f"keys_{variant}.json").read_text())
    sd = _random_official_state_dict(listing)
    with pytest.warns(UserWarning, match="never executes") as caught:
        model = from_official(listing["official_class"], sd, **listing["constructor_kwargs"])
    assert isinstance(model, MSA2Net) and model.decoder_variant == variant and model.legacy_layout
    # exactly the keys the official forward never ran are dropped; every executed key is consumed
    dead = official_dead_prefixes(variant)
    dropped = {k["key"] for k in listing["keys"] if any(k["key"].startswith(p + ".") for p in dead)}
    never_used = {k["key"] for k in listing["keys"] if not k["used_in_forward"]}
    assert dropped == never_used
    message = " ".join(str(w.message) for w in caught)
    assert f"dropped {len(never_used)} official keys" in message
    ours = model.state_dict()
    assert len(ours) == listing["num_keys"] - len(never_used)
    for key, tensor in sd.items():
        if key not in never_used:
            assert torch.equal(ours[official_rename(key)], tensor), key
    assert _n_params(model) == EXECUTED[variant] == listing["param_count_used"]
    assert _n_params(model.encoder) == ENCODER_PARAMS


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["paper", "shipped"])
def test_keep_dead_modules_matches_official_count_and_loads_every_key(variant: str) -> None:
    listing = json.loads((FIXTURES / f"keys_{variant}.json").read_text())
    sd = _random_official_state_dict(listing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may be dropped
        model = from_official(listing["official_class"], sd, keep_dead_modules=True, **listing["constructor_kwargs"])
    assert _n_params(model) == WITH_DEAD[variant] == listing["param_count_total"]
    assert len(model.state_dict()) == listing["num_keys"]


# ---------------------------------------------------------------------------------------------------------------------
# registry, construction, parameter counts
# ---------------------------------------------------------------------------------------------------------------------


def test_registered_default_is_paper_variant_executed_only() -> None:
    info = model_info("msa2net")
    assert info.official_repo == "xmindflow/MSA-2Net" and info.default_input_size == (224, 224)
    model = create_model("msa2net", in_channels=1, num_classes=9)
    assert isinstance(model, MSA2Net)
    assert model.decoder_variant == "paper" and not model.legacy_layout
    assert _n_params(model) == EXECUTED["paper"]
    assert _n_params(model.encoder) == ENCODER_PARAMS
    # the never-executed modules are absent
    assert model.gray_to_rgb is None and model.stage32.gate is None and model.stage32.blocks is None
    assert model.feature_channels == 96


@pytest.mark.parametrize("decoder", ["paper", "shipped"])
@pytest.mark.parametrize("keep_dead", [False, True])
def test_parameter_counts(decoder: str, keep_dead: bool) -> None:
    # built on the meta device: counting needs shapes only
    with torch.device("meta"):
        model = MSA2Net(in_channels=1, num_classes=9, decoder=decoder, keep_dead_modules=keep_dead)
    expected = WITH_DEAD[decoder] if keep_dead else EXECUTED[decoder]
    assert _n_params(model) == expected
    assert _n_params(model.encoder) == ENCODER_PARAMS


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_channels": 2}, "in_channels"),
        ({"num_classes": 0}, "num_classes"),
        ({"decoder": "dae"}, "decoder"),
        ({"img_size": 100}, "multiples of 32"),
        ({"img_size": (64, 64, 64)}, "img_size"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict, match: str) -> None:
    args = {"in_channels": 1, "num_classes": 3, **SMALL, **kwargs}
    with pytest.raises(ValueError, match=match):
        MSA2Net(**args)


def test_decoder_stage_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="block"):
        DecoderStage(32, "swin")
    with pytest.raises(ValueError, match="divisible by 8"):
        DecoderStage(12, "dae")
    with pytest.raises(ValueError, match="even"):
        DecoderStage(7, "lka")


# ---------------------------------------------------------------------------------------------------------------------
# behaviour (small encoder)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model() -> MSA2Net:
    torch.manual_seed(0)
    return MSA2Net(in_channels=1, num_classes=4, **SMALL)


def test_wrong_input_size_raises_clear_error(small_model: MSA2Net) -> None:
    with pytest.raises(ValueError, match="built for 64x64"):
        small_model(torch.randn(1, 1, 96, 96))
    with pytest.raises(ValueError, match="1 or 3"):
        small_model(torch.randn(1, 2, 64, 64))


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    for decoder in ("paper", "shipped"):
        model = MSA2Net(in_channels=1, num_classes=4, decoder=decoder, **SMALL).train()
        model(torch.randn(2, 1, 64, 64)).square().mean().backward()
        # (a per-head constant in MaxViT's rel-pos MLP output bias is softmax-invariant, so only presence is checked)
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"{decoder}: no gradient for {missing[:5]}"
        assert model.unused_parameters() == {}


@pytest.mark.parametrize("decoder", ["paper", "shipped"])
def test_kept_dead_modules_are_declared_unused(decoder: str) -> None:
    # keep_dead_modules=True builds what the official forward never runs: unused_parameters() must name exactly the
    # parameters that get no gradient (DDP reads it to enable find_unused_parameters)
    torch.manual_seed(0)
    model = MSA2Net(in_channels=1, num_classes=4, decoder=decoder, keep_dead_modules=True, **SMALL).train()
    model(torch.randn(2, 1, 64, 64)).square().mean().backward()
    declared = model.unused_parameters()
    expected = {"gray_to_rgb", "stage32.decoder_proj", "stage32.gate", "stage32.fuse_norm", "stage32.blocks"}
    assert set(declared) == expected | ({"stage16.gate"} if decoder == "shipped" else set())
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    under = {n for n, _ in model.named_parameters() if any(n.startswith(p + ".") for p in declared)}
    assert no_grad == under and all(reason for reason in declared.values())


def test_gray_input_repeated_batch_independent_feature_interface(small_model: MSA2Net) -> None:
    model = small_model.eval()
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 4, 64, 64)
        assert torch.allclose(out, model(x.repeat(1, 3, 1, 1)), atol=1e-6)
        single = model(x[1:2])
        assert torch.allclose(out[1:2], single, atol=1e-5)
        feats = model.forward_features(x)
        assert feats.shape == (3, model.feature_channels, 64, 64)
        assert torch.equal(model.forward_head(feats), out)


@pytest.mark.parametrize("legacy", [False, True])
def test_non_square_size(legacy: bool) -> None:
    torch.manual_seed(0)
    model = MSA2Net(
        in_channels=3, num_classes=2, legacy_layout=legacy, encoder_name=SMALL["encoder_name"], img_size=(64, 96)
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 2, 64, 96) and torch.isfinite(out).all()


def test_legacy_layout_changes_the_function(small_model: MSA2Net) -> None:
    legacy = MSA2Net(in_channels=1, num_classes=4, legacy_layout=True, **SMALL).eval()
    legacy.load_state_dict(small_model.state_dict())
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert (legacy(x) - small_model.eval()(x)).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# layout round trip (docs/models/msa2net.md §2.2): gate -> 0, norm/blocks/projection -> identity
# ---------------------------------------------------------------------------------------------------------------------


class _ZeroGate(nn.Module):
    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class _IdentityBlock(nn.Module):
    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        return x


def _stripped_stage(block: str, legacy: bool) -> DecoderStage:
    stage = DecoderStage(16, block, legacy_layout=legacy).eval()
    stage.gate = _ZeroGate()
    stage.fuse_norm = nn.Identity()
    stage.decoder_proj = nn.Identity()
    stage.blocks = nn.ModuleList([_IdentityBlock(), _IdentityBlock()])
    return stage


@pytest.mark.parametrize("block", ["lka", "dae"])
@pytest.mark.parametrize("legacy", [False, True])
def test_layout_round_trip(block: str, legacy: bool) -> None:
    torch.manual_seed(0)
    b, c, h, w = 2, 16, 4, 6
    tokens = torch.randn(b, h * w, c)
    skip = torch.randn(b, c, h, w)
    stage = _stripped_stage(block, legacy)
    with torch.no_grad():
        out, size = stage(tokens, (h, w), skip)
        if legacy and block == "dae":
            # the official DAE stage never undoes the reinterpretation: tokens come out as T(x)
            scrambled = tokens.reshape(b, c, h, w).permute(0, 2, 3, 1).reshape(b, h * w, c)
            expected = stage.expand(scrambled, (h, w))
            assert not torch.allclose(out, stage.expand(tokens, (h, w)))
        else:
            expected = stage.expand(tokens, (h, w))
    assert size == (2 * h, 2 * w)
    assert torch.equal(out, expected)


# ---------------------------------------------------------------------------------------------------------------------
# other input sizes with the paper's encoder (slow on a busy CPU)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_paper_encoder_at_256() -> None:
    model = MSA2Net(in_channels=1, num_classes=9, img_size=256).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 256, 256))
    assert out.shape == (1, 9, 256, 256) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------------------------
# fast kernels vs the reference code (docs/models/msa2net.md, "Performance")
# ---------------------------------------------------------------------------------------------------------------------


def _perturb_norms(module: nn.Module) -> None:
    # non-trivial BatchNorm statistics and affine terms, so that the eval-mode folding is exercised
    g = torch.Generator().manual_seed(3)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(0.3 * torch.randn(m.bias.shape, generator=g))


@pytest.mark.parametrize("block, legacy", [("lka", False), ("lka", True), ("dae", False)])
@pytest.mark.parametrize("train, batch", [(False, 2), (True, 2), (True, 4)])
def test_fast_kernels_match_reference(block: str, legacy: bool, train: bool, batch: int) -> None:
    torch.manual_seed(0)
    # 28x30 >= 28x28: the polyphase dilated conv is used; training at batch 4: same_conv2d's backward for LKA's convs
    dim, h, w = 16, 28, 30
    stage = DecoderStage(dim, block, legacy_layout=legacy)
    with torch.no_grad():
        _perturb_norms(stage)
        for blk in stage.blocks:
            for name in ("ls1", "ls2"):
                if hasattr(blk, name):
                    getattr(blk, name).gamma.fill_(0.5)
    ref = copy.deepcopy(stage)
    set_fast_kernels(ref, False)
    assert stage.gate.fast and not ref.gate.fast
    tokens = torch.randn(batch, h * w, dim)
    skip = torch.randn(batch, dim, h, w)
    outs, grads = [], []
    for model in (stage, ref):
        model.train(train)
        x, s = tokens.clone().requires_grad_(True), skip.clone().requires_grad_(True)
        out, _ = model(x, (h, w), s)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad, s.grad] + [p.grad for p in model.parameters()])
    scale = outs[1].abs().max()
    assert (outs[0] - outs[1]).abs().max() <= 1e-5 * scale
    # gradients that are zero up to rounding (the keys' bias under a softmax over positions) get an absolute floor
    floor = 1e-5 * max(float(b.abs().max()) for b in grads[1])
    for a, b in zip(*grads, strict=True):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + floor
    # the gate's fast eval path folds BatchNorm: a wrong statistic would show
    if not train:
        with torch.no_grad():
            stage.gate.fuse_norm.running_mean.add_(1.0)
            moved, _ = stage(tokens, (h, w), skip)
        assert (moved - outs[0]).abs().max() > 1e-3 * scale


@pytest.mark.parametrize("block", ["lka", "dae"])
def test_final_stage_with_the_head_equals_the_head_on_its_features(block: str) -> None:
    # the classifier runs before the final x4 pixel shuffle (it and LayerNorm act per pixel): same logits and gradients
    # as head(features), float64, at a non-square size
    torch.manual_seed(3)
    dim, h, w = 16, 6, 5
    stage = DecoderStage(dim, block, final=True).double().train()
    head = nn.Conv2d(dim, 3, 1).double()
    with torch.no_grad():
        _perturb_norms(stage)
        stage.expand.norm.weight.normal_()
        stage.expand.norm.bias.normal_()
    tokens = torch.randn(2, h * w, dim, dtype=torch.float64)
    skip = torch.randn(2, dim, h, w, dtype=torch.float64)
    outs, grads = [], []
    for fused in (True, False):
        x, s = tokens.clone().requires_grad_(True), skip.clone().requires_grad_(True)
        if fused:
            out, size = stage(x, (h, w), s, head=head)
        else:
            features, size = stage(x, (h, w), s)
            out = head(features)
        assert size == (4 * h, 4 * w) and out.shape == (2, 3, 4 * h, 4 * w)
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=torch.float64)).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad, s.grad] + [p.grad.clone() for p in [*stage.parameters(), *head.parameters()]])
        stage.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    scale = max(float(g.abs().max()) for g in grads[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11 * scale)
    with pytest.raises(ValueError, match="only taken by the final"):
        DecoderStage(dim, block)(tokens.float(), (h, w), skip.float(), head=head.float())


def test_pretrained_weights_that_cannot_be_fetched_are_named(monkeypatch):
    import timm

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise FileNotFoundError("cannot find the requested files in the local cache")
        raise AssertionError("only the pretrained build is under test")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ValueError, match=r"pretrained=True: the ImageNet weights of .* set pretrained: false"):
        create_model("msa2net", 3, 2, pretrained=True)
