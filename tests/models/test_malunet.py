"""MALUNet: official equivalence, exact parameter counts, loader strictness, conformance checks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from official_fixtures import load_case
from safetensors.torch import load_file, save_file

from attnseg.models import create_model, from_official, list_models, model_info
from attnseg.models.malunet import (
    ChannelAttentionBridge,
    DilatedGatedAttention,
    InvertedExternalAttention,
    MALUNet,
    SpatialAttentionBridge,
)
from attnseg.models.official import OfficialWeightsError
from attnseg.models.registry import check_input_size, has_feature_interface

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "malunet"
CASES = ["default_256", "default_224_b2"]
OFFICIAL_CLASS = "models.malunet.MALUNet"


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _fixture(case: str) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    meta, sd, (x,), y = load_case("malunet", case)
    return meta, sd, x, torch.from_numpy(y)


def _run(model: torch.nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(x)
    return torch.sigmoid(out) if kind == "probabilities" else out


# ---------------------------------------------------------------- official equivalence


@pytest.mark.parametrize("case", CASES)
def test_official_equivalence(case: str) -> None:
    meta, sd, x, expected = _fixture(case)
    model = from_official(meta["official_class"], sd, **meta["constructor_kwargs"])
    assert not model.training
    out = _run(model, x, meta["output"]["kind"])  # official output = sigmoid probabilities; ours = logits
    assert out.shape == expected.shape
    diff = (out - expected).abs().max().item()
    assert diff <= meta["tolerance_suggestion"], f"{case}: max abs diff {diff}"


def test_official_equivalence_fails_with_tied_memories() -> None:
    # Negative control: the fixture memories are independent; tying them (M_v = M_k^T, the official CPU alias)
    # must move the output far beyond tolerance, so the equivalence test really checks both memories.
    meta, sd, x, expected = _fixture("default_256")
    tied = dict(sd)
    for k in sd:
        if k.endswith("linear_0.weight"):
            tied[k.replace("linear_0", "linear_1")] = sd[k].permute(1, 0, 2).contiguous()
    model = from_official(OFFICIAL_CLASS, tied, **meta["constructor_kwargs"])
    diff = (_run(model, x, "probabilities") - expected).abs().max().item()
    assert diff > 100 * meta["tolerance_suggestion"]


def test_bare_class_name_and_dataparallel_prefix() -> None:
    meta, sd, x, expected = _fixture("default_256")
    wrapped = {f"module.{k}": v for k, v in sd.items()}  # official train.py saves a DataParallel model
    model = from_official("MALUNet", wrapped, num_classes=1, input_channels=3)
    assert (_run(model, x, "probabilities") - expected).abs().max().item() <= meta["tolerance_suggestion"]


def test_loader_is_strict() -> None:
    _, sd, _, _ = _fixture("default_256")
    missing = {k: v for k, v in sd.items() if k != "encoder4.1.gau.cw.bias"}
    with pytest.raises(OfficialWeightsError, match="not filled"):
        from_official(OFFICIAL_CLASS, missing)
    extra = dict(sd, **{"encoder4.1.extra.weight": torch.zeros(1)})
    with pytest.raises(OfficialWeightsError, match="unused"):
        from_official(OFFICIAL_CLASS, extra)
    with pytest.raises(OfficialWeightsError, match="mismatch"):
        from_official(OFFICIAL_CLASS, sd, c_list=[8, 16, 24, 32, 48, 96])
    no_bridge = {k: v for k, v in sd.items() if not k.startswith("scab.")}
    assert _n_params(from_official(OFFICIAL_CLASS, no_bridge, bridge=False)) == 177_943 - 16_614


def test_loader_accepts_tied_checkpoint() -> None:
    # An official model trained on CPU saves linear_1.weight as a permuted view of linear_0.weight; torch.load keeps
    # the alias. Ours copies each into its own parameter, so they can be trained independently afterwards.
    _, sd, x, _ = _fixture("default_256")
    tied = dict(sd)
    for k in sd:
        if k.endswith("linear_0.weight"):
            tied[k.replace("linear_0", "linear_1")] = tied[k].permute(1, 0, 2)
    buf = io.BytesIO()
    torch.save(tied, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded["encoder4.0.linear_1.weight"].data_ptr() == loaded["encoder4.0.linear_0.weight"].data_ptr()
    model = from_official(OFFICIAL_CLASS, loaded)
    iea = model.encoder[3].iea
    assert torch.equal(iea.memory_value.weight, iea.memory_key.weight.permute(1, 0, 2))
    assert iea.memory_value.weight.data_ptr() != iea.memory_key.weight.data_ptr()

    # Alias-aware savers (safetensors' save_model) keep only one of the two: the other is its transpose.
    only_key = {k: v for k, v in tied.items() if not k.endswith("linear_1.weight")}
    with pytest.warns(UserWarning, match="tied IEA memories"):
        model2 = from_official(OFFICIAL_CLASS, only_key)
    assert torch.equal(_run(model, x, "logits"), _run(model2, x, "logits"))


# ---------------------------------------------------------------- parameter counts


def test_param_count_exact() -> None:
    model = create_model("malunet", in_channels=3, num_classes=1)
    assert _n_params(model) == 177_943
    # Component counts from the measured breakdown (docs/models/malunet.md §2.7).
    assert [_n_params(InvertedExternalAttention(c)) for c in (24, 32, 48)] == [5_832, 10_336, 23_184]
    assert _n_params(DilatedGatedAttention(24, 32)) == 4_936
    assert _n_params(DilatedGatedAttention(64, 48)) == 22_816
    assert _n_params(ChannelAttentionBridge([8, 16, 24, 32, 48])) == 16_515
    assert _n_params(SpatialAttentionBridge()) == 99
    gn = sum(_n_params(m) for m in model.modules() if isinstance(m, torch.nn.GroupNorm))
    assert gn == 2_912


def test_thop_count_matches_paper() -> None:
    # The paper's "0.175M params, 0.083 GFLOPs" are thop 0.1.1's numbers at 256x256. thop counts parameters only of
    # modules it has a rule for, and it has none for nn.GroupNorm, so the 2,912 GroupNorm affine parameters are
    # dropped: 177,943 - 2,912 = 175,031. Its "FLOPs" are MACs of convs/linears/avg-pools (functional ops such as
    # F.interpolate, GELU and softmax count 0), which is why our upsampling stays functional like the official one.
    thop = pytest.importorskip("thop")
    model = create_model("malunet", in_channels=3, num_classes=1)
    macs, params = thop.profile(model, inputs=(torch.randn(1, 3, 256, 256),), verbose=False)
    assert int(params) == 175_031
    assert int(macs) == 82_972_800
    assert _n_params(model) - int(params) == 2_912


# ---------------------------------------------------------------- conformance


def test_registered_with_metadata() -> None:
    assert "malunet" in list_models()
    info = model_info("malunet")
    assert info.input_divisor == 32 and info.default_input_size == (256, 256)
    assert info.official_repo == "JCruan519/MALUNet"
    assert "Args:" in (MALUNet.__doc__ or "")
    model = create_model("malunet")
    assert has_feature_interface(model) and model.feature_channels == 8


@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 1), (3, 4)])
def test_forward_shape_non_square(in_channels: int, num_classes: int) -> None:
    model = create_model("malunet", in_channels=in_channels, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 64, 96))
    assert out.shape == (2, num_classes, 64, 96)
    assert torch.isfinite(out).all()


def test_logits_not_probabilities() -> None:
    meta, sd, x, _ = _fixture("default_256")
    logits = _run(from_official(OFFICIAL_CLASS, sd), x, "logits")
    assert logits.min() < 0 < logits.max() and logits.abs().max() > 1  # would be in (0, 1) with a sigmoid inside


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = create_model("malunet", in_channels=3, num_classes=2)
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


def test_batch_independence_and_determinism() -> None:
    torch.manual_seed(0)
    model = create_model("malunet").eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        batch = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
        again = model(x)
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)
    assert torch.equal(batch, again)
    assert not torch.allclose(batch[0], batch[1])  # input-dependent


def test_inference_and_autograd_pooling_paths_agree() -> None:
    # Without autograd the max-pool runs PyTorch's channels-last CPU kernel, with autograd the NCHW one (a speed
    # choice, see benchmarks/bench_malunet.py); both must give bitwise-identical outputs.
    torch.manual_seed(0)
    model = create_model("malunet").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fast = model(x)
    assert torch.equal(fast, model(x).detach())


def test_same_seed_same_init_and_memory_init() -> None:
    torch.manual_seed(3)
    a = create_model("malunet").state_dict()
    torch.manual_seed(3)
    b = create_model("malunet").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    iea = InvertedExternalAttention(48)
    # Untied official init: M_v starts as a copy of M_k^T, std sqrt(2 / C) (docs/models/malunet.md, B1), in separate
    # storage.
    assert torch.equal(iea.memory_value.weight, iea.memory_key.weight.permute(1, 0, 2))
    assert iea.memory_value.weight.data_ptr() != iea.memory_key.weight.data_ptr()
    assert abs(iea.memory_key.weight.std().item() - (2 / 48) ** 0.5) < 0.02


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"c_list": [8, 16, 24, 32, 48]}, "c_list"),
        ({"c_list": [8, 16, 24, 32, 48, 62]}, "multiple of 4"),
        ({"split_att": "mlp"}, "split_att"),
        ({"bridge": "yes"}, "bridge"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("malunet", in_channels=3, num_classes=1, **kwargs)
    with pytest.raises(ValueError, match="num_classes"):
        MALUNet(num_classes=0)


@pytest.mark.parametrize("shape", [(1, 3, 67, 71), (1, 3, 240, 256), (1, 3, 16, 32), (3, 64, 64)])
def test_wrong_input_size_is_a_clear_error(shape: tuple[int, ...]) -> None:
    model = create_model("malunet").eval()
    with pytest.raises(ValueError, match="multiples of 32|B, C, H, W"):
        model(torch.randn(*shape))
    with pytest.raises(ValueError, match="input_divisor=32"):
        check_input_size(model, (67, 71))
    check_input_size(model, (224, 320))


def test_feature_interface_consistent() -> None:
    meta, sd, x, _ = _fixture("default_256")
    model = from_official(OFFICIAL_CLASS, sd)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
        via_head = model.forward_head(feats)
    assert feats.shape == (1, model.feature_channels, 256, 256)
    # Head (1x1 conv) and bilinear upsampling commute exactly in real arithmetic; only rounding differs.
    torch.testing.assert_close(via_head, logits, atol=2e-5, rtol=0)


def test_split_att_conv_is_the_linear_as_a_1x1_conv() -> None:
    torch.manual_seed(0)
    fc = ChannelAttentionBridge([4, 8, 12, 16, 20], "fc")
    conv = ChannelAttentionBridge([4, 8, 12, 16, 20], "conv")
    sd = {
        k: (v.unsqueeze(-1) if k.startswith("stage_fc") and k.endswith("weight") else v)
        for k, v in fc.state_dict().items()
    }
    conv.load_state_dict(sd)
    xs = [torch.randn(2, c, s, s) for c, s in zip([4, 8, 12, 16, 20], [32, 16, 8, 4, 2])]
    for a, b in zip(fc(xs), conv(xs)):
        torch.testing.assert_close(a, b)
        assert a.shape[2:] == (1, 1)


def test_inverted_external_attention_matches_oracle() -> None:
    # Hand-written oracle of the double normalisation (softmax over pixels, then L1 over the 4C memory slots).
    torch.manual_seed(0)
    iea = InvertedExternalAttention(8).eval()
    for p in iea.norm.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(2, 8, 4, 6)
    with torch.no_grad():
        q = torch.einsum("oc,bchw->bohw", iea.proj_in.weight[:, :, 0, 0], x) + iea.proj_in.bias[:, None, None]
        q = q.flatten(2)  # [B, C, N]
        logits = torch.einsum("sc,bcn->bsn", iea.memory_key.weight[:, :, 0], q)
        a = torch.exp(logits - logits.amax(-1, keepdim=True))
        a = a / a.sum(-1, keepdim=True)
        a = a / (a.sum(1, keepdim=True) + 1e-9)
        r = torch.einsum("cs,bsn->bcn", iea.memory_value.weight[:, :, 0], a).reshape(2, 8, 4, 6)
        r = torch.einsum("oc,bchw->bohw", iea.proj_out.weight[:, :, 0, 0], r)
        expected = torch.nn.functional.gelu(iea.norm(r) + x)
        torch.testing.assert_close(iea(x), expected, atol=1e-5, rtol=1e-5)


def test_save_load_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("malunet", in_channels=3, num_classes=2, split_att="conv").eval()
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    build = model.attnseg_build
    rebuilt = create_model(build["name"], build["in_channels"], build["num_classes"], **build["kwargs"]).eval()
    rebuilt.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_bf16_autocast_finite() -> None:
    model = create_model("malunet").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out.float()).all()


def test_bench_reports_exact_and_thop_compatible_counts(tmp_path):
    """`attnseg bench --model malunet` (the paper's 256x256): 177,943 parameters; thop-compatible 175,031."""
    pytest.importorskip("thop")
    from typer.testing import CliRunner

    from attnseg.cli.args import join_multi_value_options
    from attnseg.cli.main import app

    out = tmp_path / "malunet.json"
    args = [
        "bench",
        "--model",
        "malunet",
        "--input-size",
        "256",
        "256",
        "--num-classes",
        "1",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--no-memory",
        "--json",
        str(out),
    ]
    result = CliRunner().invoke(app, join_multi_value_options(args))
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["params"]["total"] == 177_943
    assert record["complexity"]["params_thop"] == 175_031
    assert record["complexity"]["macs_thop"] == 82_972_800  # the paper's "0.083 GFLOPs" are thop MACs


# ---------------------------------------------------------------- fast vs reference CPU path


def _values_and_grads(model: MALUNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    model.train().zero_grad(set_to_none=True)
    out = model(x)
    # a loss that weights pixels unequally, so every upsampling / pooling position carries its own gradient
    (out * torch.linspace(-1.0, 2.0, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk_bytes", [None, 1 << 20], ids=["whole_batch", "batch_chunks"])
def test_fast_path_matches_reference_values_and_gradients(chunk_bytes: int | None, monkeypatch) -> None:
    from attnseg.models.malunet import ConvStage

    torch.manual_seed(0)
    model = create_model("malunet", in_channels=3, num_classes=2)
    assert model.impl == "fast"
    x = torch.randn(4, 3, 64, 96)  # batch >= 4: the fast backward kernels are used from there on
    calls: list[int] = []
    model.encoder[0].conv.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    if chunk_bytes is not None:  # the 3 -> 8 conv's 16-channel blocked output is 768 KiB per float64 sample
        monkeypatch.setattr(ConvStage, "chunk_bytes", chunk_bytes)
        # float64: a rounding change of a float32 chunk would flip near-tied max-pool windows and move gradients
        model, x = model.double(), x.double()
    out_f, gx_f, g_f = _values_and_grads(model, x)
    assert calls == ([4] if chunk_bytes is None else [1, 1, 1, 1])
    out_r, gx_r, g_r = _values_and_grads(model.set_impl("reference"), x)
    assert torch.equal(out_f, out_r)  # the fast path changes only backward kernels (and no-grad pooling)
    scale = max(g.abs().max() for g in g_r.values())  # IEA proj_in biases have an exactly-zero true gradient
    for name in g_r:
        torch.testing.assert_close(g_f[name], g_r[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
    torch.testing.assert_close(gx_f, gx_r, rtol=1e-4, atol=1e-5 * gx_r.abs().max())
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model.set_impl("fast").eval()(x))


def test_fast_path_pieces_against_torch_ops() -> None:
    # Each replaced op against the PyTorch op it stands for, including max-pool ties (first maximum of the window).
    from attnseg.models.malunet import SAB, _pool2, _up2

    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 6).round()  # rounded: many tied maxima in the 2x2 windows; batch 4: fast kernels
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    g = torch.randn(4, 3, 4, 3)
    _pool2(a).backward(g)
    torch.nn.functional.max_pool2d(b, 2).backward(g)
    assert torch.equal(a.grad, b.grad)
    with torch.no_grad():
        assert torch.equal(_pool2(x), torch.nn.functional.max_pool2d(x, 2))
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    g = torch.randn(4, 3, 16, 12)
    _up2(a).backward(g)
    torch.nn.functional.interpolate(b, scale_factor=2.0, mode="bilinear", align_corners=True).backward(g)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)
    sab = SAB()
    z = torch.randn(4, 5, 16, 20)
    grads = []
    for impl in ("fast", "reference"):
        sab.impl = impl
        sab.zero_grad(set_to_none=True)
        zz = z.clone().requires_grad_(True)
        (sab(zz) * torch.randn(4, 1, 16, 20, generator=torch.Generator().manual_seed(1))).sum().backward()
        grads.append([zz.grad, sab.conv.weight.grad, sab.conv.bias.grad])
    for f, r in zip(*grads):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-5 * r.abs().max())
    with pytest.raises(ValueError, match="impl"):
        create_model("malunet", impl="faster")
