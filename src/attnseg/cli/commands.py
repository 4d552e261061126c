"""The subcommands, by name (registered on the typer app by ``attnseg.cli.main``)."""

from __future__ import annotations

from attnseg.cli.train import train_command

COMMANDS = {
    "train": train_command,
}
