"""Typed config: recipes, overrides, validation, and the resolved config round trip."""

from __future__ import annotations

import pytest
import yaml

from attnseg.config import ConfigError, TrainConfig, config_to_dict, load_recipe, merge_config


def test_resolved_config_round_trips(tmp_path):
    cfg = merge_config(
        TrainConfig(),
        {
            "model": "malunet",
            "input_size": [256, 256],
            "augment": {"rotate": 0.5, "label_shift_range": [-2, 2]},
            "ct_window": [1, 99],
            "fold": 0,
        },
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert load_recipe(tmp_path / "c.yaml") == cfg
    assert cfg.fold == "0" and cfg.augment.rotate == 0.5 and cfg.augment.flip == TrainConfig().augment.flip
    assert cfg.augment.label_shift_range == (-2, 2) and load_recipe(tmp_path / "c.yaml").augment.scale_range == (
        0.85,
        1.25,
    )


def test_unknown_keys_name_the_file_and_key(tmp_path):
    (tmp_path / "r.yaml").write_text("model: unet\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"r.yaml: unknown key\(s\) \['learning_rate'\]"):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "a.yaml").write_text("augment:\n  flips: 0.5\n")
    with pytest.raises(ConfigError, match="augment"):
        load_recipe(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "field,value,flag",
    [
        ("batch_size", 0, "--batch-size"),
        ("optimizer", "lion", "--optimizer"),
        ("input_size", [224], "--input-size"),
        ("slab_size", 2, "slab_size (recipe key)"),
        ("lr", -1.0, "--lr"),
    ],
)
def test_validation_names_the_option(field, value, flag):
    """The library names the config field; the command line names the flag that sets it."""
    from attnseg.cli.main import _user_message

    with pytest.raises(ConfigError, match=f"^{field}: ") as info:
        merge_config(TrainConfig(), {field: value}).validate()
    assert info.value.option == field
    assert _user_message(info.value).startswith(f"{flag}: ")


def test_epochs_and_iterations():
    with pytest.raises(ConfigError, match="either"):
        TrainConfig(iterations=10, epochs=2).validate()
    assert TrainConfig(epochs=3).total_iterations(7) == 21
    assert TrainConfig(iterations=10).total_iterations(7) == 10 and TrainConfig.derived_epochs(10, 7) == 2


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("iterations: abc", "iterations: must be an integer, got 'abc'"),
        ("batch_size: 2.5", "batch_size: must be an integer, got 2.5"),
        ("lr: fast", "lr: must be a number, got 'fast'"),
        ("compile: 1", "compile: must be true or false, got 1"),
        ("input_size: [32, x]", "input_size: must be a list of numbers"),
        ("model_kwargs: [4]", "model_kwargs: must be a mapping"),
        ("augment: {flip: yes}", "augment.flip: must be a number, got True"),
        ("augment: 0.5", "augment: must be a mapping"),
    ],
)
def test_recipe_values_of_the_wrong_kind_name_the_key_and_file(recipe, message, tmp_path):
    """Before, a recipe's ``iterations: abc`` reached ``validate`` and crashed there (TypeError, exit 1)."""
    path = tmp_path / "r.yaml"
    path.write_text(recipe + "\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path).validate()
    assert message in str(info.value) and f"(in {path})" in str(info.value)
    assert load_recipe_ok(tmp_path).lr == 0.05  # ints for floats, null for optional fields: still accepted


def load_recipe_ok(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("lr: 0.05\niterations: null\nweight_decay: 0\nct_clip_hu: [-125, 275]\n")
    return load_recipe(path)
