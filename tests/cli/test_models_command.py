"""``attnseg models``: the list fits an 80-column terminal; ``attnseg models NAME`` prints the passport."""

from __future__ import annotations

from typer.testing import CliRunner

from attnseg.cli.main import app
from attnseg.models.registry import list_models

runner = CliRunner()


def test_the_list_fits_80_columns_and_names_every_model_in_full():
    result = runner.invoke(app, ["models"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name in list_models():
        assert any(f"│ {name} " in line for line in lines), name  # never wrapped or cut
    assert "MDSA-UNet" in result.output and "MALUNet" in result.output  # the short paper column


def test_a_models_passport_lists_its_options_with_defaults():
    result = runner.invoke(app, ["models", "mdsa_unet"], env={"COLUMNS": "100"}, terminal_width=100)
    assert result.exit_code == 0, result.output
    text = result.output
    for expected in ("https://github.com/NEU-LX/MDSA-UNet", "n_win = 7", "region_size = 8", "mdsa_unet_test", "112"):
        assert expected in text, expected
    unet = runner.invoke(app, ["models", "unet"], env={"COLUMNS": "100"}, terminal_width=100).output
    assert "width = 32" in unet and "dropout = 0.0" in unet


def test_an_unknown_model_name_is_a_user_error():
    result = runner.invoke(app, ["models", "mdsa_unte"])
    assert result.exit_code == 2
    assert "unknown model 'mdsa_unte'. Did you mean 'mdsa_unet'?" in result.output
