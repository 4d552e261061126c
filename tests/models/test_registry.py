"""Registry contract: names, factories, logits shape, errors, and the feature interface."""

from __future__ import annotations

import pytest
import torch

import attnseg
from attnseg.models.registry import (
    check_input_size,
    ddp_safe,
    has_feature_interface,
    model_info,
    register_model,
    sized_kwargs,
)


def test_public_api_lists_and_builds():
    names = attnseg.list_models()
    assert {"unet", "unet3d", "malunet", "mdsa_unet", "msa2net", "salstm", "lstmsa", "ja_denseunet"} <= set(names)
    assert names == sorted(names) and set(attnseg.list_models("unet")) >= {"unet", "unet3d", "mtunet"}


@pytest.mark.parametrize("name,shape", [("unet", (2, 1, 32, 48)), ("unet3d", (1, 2, 16, 32, 16))])
def test_baselines_return_logits_at_input_resolution(name, shape):
    torch.manual_seed(0)
    model = attnseg.create_model(name, in_channels=shape[1], num_classes=4, width=4).eval()
    x = torch.randn(shape)
    y = model(x)
    assert y.shape == (shape[0], 4, *shape[2:]) and torch.isfinite(y).all()
    assert not torch.allclose(y, model(torch.randn(shape)))  # depends on the input
    assert torch.allclose(model.forward_head(model.forward_features(x)), y)
    assert has_feature_interface(model) and model.attnseg_build["kwargs"] == {"width": 4}


def test_width_changes_parameter_count():
    small = sum(p.numel() for p in attnseg.create_model("unet", 1, 2, width=4).parameters())
    large = sum(p.numel() for p in attnseg.create_model("unet", 1, 2, width=8).parameters())
    assert 3.5 < large / small < 4.1  # conv weights scale with width^2


def test_unknown_name_duplicate_name_and_bad_args():
    with pytest.raises(KeyError, match="Did you mean 'malunet'"):
        model_info("malunte")
    with pytest.raises(ValueError, match="already registered"):
        register_model("unet")(lambda i, n: None)
    with pytest.raises(ValueError, match="in_channels"):
        attnseg.create_model("unet", 0, 2)
    with pytest.raises(ValueError, match="num_classes"):
        attnseg.create_model("unet", 1, 0)


def test_input_size_validation_is_clear():
    model = attnseg.create_model("unet", 1, 2, width=4)
    with pytest.raises(ValueError, match=r"multiples of 16.*\(32, 48\)"):
        check_input_size(model, (30, 40))
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.zeros(1, 1, 30, 40))


def test_capability_flags_test_configuration_and_ddp_safe():
    info = model_info("unet")
    assert info.onnx_export and info.torch_compile and info.test_kwargs == {"width": 8}
    assert info.test_input_size == (32, 32) and info.default_input_size == (224, 224)
    assert model_info("denseunet_small").test_input_size == model_info("denseunet_small").default_input_size
    with pytest.raises(ValueError, match="not 3D"):
        register_model("_wrong_test_size", spatial_dims=3, test_input_size=(8, 8))(lambda i, n: None)
    assert "_wrong_test_size" not in attnseg.list_models()
    assert ddp_safe(attnseg.create_model("unet", 1, 2, width=4))
    small = {"img_size": 64, "stem_channels": 8, "embed_dim": 16}
    assert not ddp_safe(attnseg.create_model("mtunet", 1, 2, **small))  # keeps the official never-called Linears
    assert ddp_safe(attnseg.create_model("mtunet", 1, 2, unused_params=False, **small))


@pytest.mark.parametrize("name", [n for n in attnseg.list_models() if model_info(n).size_kwargs is not None])
def test_models_built_for_a_size_are_built_for_any_valid_size(name):
    """``sized_kwargs`` supplies the size options (img_size, n_win, input_size): no hand-written kwargs needed."""
    info = model_info(name)
    side = 128 if name.startswith("mdsa_unet") else 96  # a size none of them is built for by default
    size = (side,) * info.spatial_dims
    sized = info.size_kwargs(size)
    base = {k: v for k, v in info.test_kwargs.items() if k not in sized}
    if name in ("salstm", "lstmsa"):  # the small MT-UNet backbone without its size
        base["backbone_kwargs"] = {k: v for k, v in base["backbone_kwargs"].items() if k != "img_size"}
    if name in ("msa2net", "mtunet", "mdsa_unet", "salstm", "lstmsa"):  # built for one size: refuse others
        with pytest.raises(ValueError):
            check_input_size(attnseg.create_model(name, 1, 2, **base), size)
    model = attnseg.create_model(name, 1, 2, **sized_kwargs(name, size, base)).eval()
    check_input_size(model, size)
    slab = (model.slab_size,) if getattr(model, "slab_size", None) else ()
    with torch.no_grad():
        assert model(torch.randn(1, 1, *slab, *size)).shape == (1, 2, *size)
    assert model.attnseg_build["kwargs"].items() >= sized.items()  # recorded, so a run rebuilds the same model
    assert sized_kwargs(name, size, {**base, **sized, "x": 1})["x"] == 1  # given options win
