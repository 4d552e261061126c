"""The subcommands, by name (registered on the typer app by ``attnseg.cli.main``)."""

from __future__ import annotations

from attnseg.cli.bench import bench, models
from attnseg.cli.check_data import check_data_command
from attnseg.cli.convert import convert_dataset
from attnseg.cli.convert_weights import convert_weights_command
from attnseg.cli.demo import demo_command
from attnseg.cli.evaluate import evaluate
from attnseg.cli.export import export_command
from attnseg.cli.predict import predict_command
from attnseg.cli.serve import serve_command
from attnseg.cli.train import train_command

COMMANDS = {
    "demo": demo_command,
    "train": train_command,
    "predict": predict_command,
    "serve": serve_command,
    "evaluate": evaluate,
    "bench": bench,
    "models": models,
    "check-data": check_data_command,
    "convert-dataset": convert_dataset,
    "convert-weights": convert_weights_command,
    "export": export_command,
}
