"""The paper recipes in ``recipes/``: each loads and validates, names a registered model whose factory accepts its
options, trains on a split the matching converter writes, and documents its values."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import attnseg
from attnseg.config import TrainConfig, load_recipe
from attnseg.models.registry import check_input_size, create_model, model_info

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# recipe -> (dataset converter, image channels, label classes incl. background)
EXPECTED = {
    "malunet/isic2018.yaml": ("isic2018", 3, 2),
    "malunet/isic2017.yaml": ("isic2017", 3, 2),
    "mdsa_unet/isic2018.yaml": ("isic2018", 3, 2),
    "mdsa_unet/tn3k.yaml": ("tn3k", 1, 2),
    "mdsa_unet/ddti.yaml": ("ddti", 1, 2),
    "mdsa_unet/acdc.yaml": ("acdc", 1, 4),
    "msa2net/synapse.yaml": ("synapse", 1, 9),
    "msa2net/isic2018.yaml": ("isic2018", 3, 2),
    "salstm/acdc.yaml": ("acdc", 1, 4),
    "lstmsa/acdc.yaml": ("acdc", 1, 4),
    "ja_denseunet/demo.yaml": ("demo", 1, 9),
}
# named splits each converter writes (tests/data/test_conversion.py checks the converters produce them)
SPLITS = {
    "isic2017": {"official", "malunet", "80-10-10", "dlka"},
    "isic2018": {"official", "malunet", "80-10-10", "dlka"},
    "tn3k": {"official", "fold0", "fold1", "fold2", "fold3", "fold4"},
    "ddti": {"80-10-10"},
    "acdc": {"70-10-20", "official"},
    "synapse": {"transunet"},
    "demo": {"fold0"},
}
# cheap to build on CPU: the recipe's input size is checked against the real model
BUILDABLE = {"malunet", "mdsa_unet", "ja_denseunet"}


def test_every_recipe_is_listed():
    # recipes/studies/ holds study files (attnseg study), tested in tests/study/
    found = sorted(str(p.relative_to(RECIPES)) for p in RECIPES.rglob("*.yaml") if p.parent.name != "studies")
    assert found == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_loads_validates_and_fits_its_dataset(name):
    dataset, in_channels, num_classes = EXPECTED[name]
    cfg = load_recipe(RECIPES / name)
    cfg.validate()
    assert cfg.model in attnseg.list_models(), f"{name}: model {cfg.model!r} is not registered"
    assert cfg.model == name.split("/")[0]
    assert cfg.fold in SPLITS[dataset], f"{name}: fold {cfg.fold!r} is not a split of {dataset}"
    assert cfg.geometry == "resize", "the papers resize slices/images to the network input"
    binary = num_classes == 2
    assert (cfg.loss == "bce_dice") == binary or cfg.model == "ja_denseunet"
    assert cfg.iterations is not None or cfg.epochs is not None, "a recipe states its training length"
    assert not cfg.data and not cfg.out, "paths come from the command line"
    # the factory accepts the recipe's options
    factory = model_info(cfg.model).factory
    inspect.signature(factory).bind(in_channels, num_classes, **cfg.model_kwargs)
    if cfg.model in BUILDABLE:
        out_channels = 1 if cfg.loss == "bce_dice" else num_classes
        model = create_model(cfg.model, in_channels, out_channels, **cfg.model_kwargs)
        check_input_size(model, cfg.input_size)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_values_are_commented(name):
    """Every top-level value carries a comment (its source or the stated choice); the header explains the run."""
    text = (RECIPES / name).read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert len(header) >= 3 and any("attnseg train --config" in line for line in header)
    for line in text.splitlines():
        if re.match(r"^[a-z_]+:", line) and not line.startswith("notes:"):
            assert "#" in line, f"{name}: value without a source comment: {line!r}"


def test_recipe_protocol_numbers():
    """Spot checks of values transcribed from the protocols in docs/models/ (a typo here changes the experiment)."""
    malunet = load_recipe(RECIPES / "malunet/isic2018.yaml")
    assert (malunet.optimizer, malunet.lr, malunet.weight_decay, malunet.min_lr) == ("adamw", 1e-3, 1e-2, 1e-5)
    assert (malunet.epochs, malunet.batch_size, malunet.seed, malunet.input_size) == (300, 8, 42, [256, 256])
    assert (malunet.augment.flip, malunet.augment.rotate, malunet.augment.rotate_degrees) == (0.5, 0.5, 180.0)
    msa = load_recipe(RECIPES / "msa2net/synapse.yaml")
    assert msa.lr == pytest.approx(0.05 * 20 / 24, rel=1e-5) and msa.batch_size == 20 and msa.epochs == 700
    assert (msa.optimizer, msa.momentum, msa.weight_decay, msa.scheduler, msa.loss, msa.seed) == (
        "sgd",
        0.9,
        1e-4,
        "poly",
        "boundary_dou",
        1234,
    )
    for model in ("salstm", "lstmsa"):
        c = load_recipe(RECIPES / f"{model}/acdc.yaml")
        assert (c.optimizer, c.lr, c.weight_decay, c.scheduler, c.batch_size, c.epochs, c.slab_size) == (
            "adam",
            1e-4,
            1e-4,
            "poly",
            8,
            200,
            3,
        )
        assert c.model_kwargs == {"backbone": "mtunet"}
    ja = load_recipe(RECIPES / "ja_denseunet/demo.yaml")
    assert (ja.optimizer, ja.lr, ja.batch_size, ja.input_size, ja.scheduler, ja.iterations) == (
        "adam",
        1e-3,
        4,
        [256, 256],
        "constant",
        30000,
    )
    assert load_recipe(RECIPES / "mdsa_unet/acdc.yaml").fold == "70-10-20"


def test_recipe_overrides_like_the_cli():
    """A recipe is a base: command-line values replace its fields (as `attnseg train --config R --epochs 2`)."""
    from attnseg.config import merge_config

    cfg = merge_config(load_recipe(RECIPES / "malunet/isic2018.yaml"), {"epochs": 2, "fold": "official"})
    assert cfg.epochs == 2 and cfg.fold == "official" and cfg.lr == 1e-3
    assert isinstance(cfg, TrainConfig)
