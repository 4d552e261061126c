"""The ``attnseg`` command line. Each subcommand parses and validates its options, then calls one typed function of
the workflow packages. User errors print one line on stderr and exit with code 2, without a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer

__all__ = ["app", "main", "cli_errors", "fail"]

app = typer.Typer(
    name="attnseg",
    help="Attention-based medical image segmentation: exact published models, trained and evaluated with the "
    "field's protocols.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {message}", markup=True)
    raise typer.Exit(code)


def _user_errors() -> tuple[type[BaseException], ...]:
    from attnseg.config import ConfigError
    from attnseg.data.io import ImageReadError
    from attnseg.data.layout import DatasetError
    from attnseg.inference.predictor import RunError
    from attnseg.models.official import OfficialWeightsError

    errors: list[type[BaseException]] = [ConfigError, DatasetError, ImageReadError, OfficialWeightsError, RunError,
                                         FileNotFoundError, KeyError]
    try:
        from attnseg.evaluation.evaluate import EvaluationError

        errors.append(EvaluationError)
    except ImportError:
        pass
    return tuple(errors)


def cli_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the workflow's user-facing errors into one clean line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            fail("interrupted", code=130)
        except Exception as exc:
            if isinstance(exc, _user_errors()):
                message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
                fail(str(message))
            raise

    return wrapper


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the attnseg version and exit.", is_eager=True),
) -> None:
    """Attention-based medical image segmentation."""
    if version:
        from attnseg import __version__

        typer.echo(f"attnseg {__version__}")
        raise typer.Exit()


def _register() -> None:
    from attnseg.cli import commands

    for name, func in commands.COMMANDS.items():
        app.command(name)(cli_errors(func))


_register()


def main() -> None:
    """Console-script entry point."""
    from attnseg.cli.args import join_multi_value_options

    app(args=join_multi_value_options(sys.argv[1:]), prog_name="attnseg")


if __name__ == "__main__":
    sys.exit(main())
