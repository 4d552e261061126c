"""`attnseg bench` / `attnseg models` through the real command-line app."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from attnseg.cli.args import join_multi_value_options
from attnseg.cli.main import app as main_app


class _Runner(CliRunner):
    """Passes arguments through the same ``--input-size H W`` joining as the console script."""

    def invoke(self, app, args, **kwargs):
        return super().invoke(app, join_multi_value_options(list(args)), **kwargs)


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return main_app


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return _Runner()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "unett"], "unknown model 'unett'. Did you mean 'unet'?"),
        (["--model", "unet", "--input-size", "64", "64", "64"], "needs 2 values"),
        (["--model", "unet3d", "--input-size", "64", "64"], "needs 3 values"),
        (["--model", "unet", "--input-size", "8", "8"], "(8, 8)"),  # the model's own size rule
        (["--model", "unet", "--kwargs", "{width: 4}"], "--kwargs must be a JSON object"),
        (["--model", "unet", "--kwargs", "[4]"], "--kwargs must be a JSON object"),
        (["--model", "unet", "--kwargs", '{"widht": 4}'], "has no option 'widht' (did you mean 'width'?)"),
        (["--model", "unet", "--kwargs", '{"width": 4.5}'], "option 'width' takes int, got 4.5 (float)"),
        (
            ["--model", "malunet", "--kwargs", '{"c_list": [8, 16, "24", 32, 48, 64]}'],
            "option 'c_list' takes a list of int, got [8, 16, '24', 32, 48, 64] (list)",
        ),
        (["--model", "unet", "--device", "gpu"], "'gpu' is not a valid torch device"),
        (["--model", "unet", "--device", "mps"], "no mps device"),  # no MPS on Linux: one line, not a traceback
        (["--model", "unet", "--input-size", "64x"], "expects 2 or 3"),
    ],
)
def test_bench_errors_are_one_line_exit_2(app, runner, args, needle) -> None:
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.output


def test_bench_runs_and_writes_json(app, runner, tmp_path) -> None:
    out = tmp_path / "unet.json"
    args = [
        "bench",
        "--model",
        "unet",
        "--input-size",
        "32",
        "48",
        "--in-channels",
        "1",
        "--num-classes",
        "4",
        "--kwargs",
        '{"width": 4}',
        "--runs",
        "1",
        "--warmup",
        "0",
        "--no-memory",
        "--json",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "params (total)" in result.stdout and "FLOPs" in result.stdout
    record = json.loads(out.read_text())
    assert record["input_size"] == [32, 48]
    assert record["model"] == {
        **record["model"],
        "name": "unet",
        "in_channels": 1,
        "num_classes": 4,
        "kwargs": {"width": 4},
    }
    assert record["complexity"]["input_shape"] == [1, 1, 32, 48]
    assert record["params"]["total"] > 0


def test_models_lists_the_registry(app, runner) -> None:
    from attnseg.models.registry import list_models

    result = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in list_models():
        assert name in result.stdout
    assert "96x96x96" in result.stdout  # unet3d's default size, from the registry
    assert f"{len(list_models())} models" in result.stdout
