"""The ``attnseg`` command line. Each subcommand parses and validates its options, then calls one typed function of
the workflow packages. User errors (:class:`attnseg.errors.AttnsegError`) print one line on stderr and exit with code
2, without a traceback; any other exception is a bug and is reported as an internal error (exit 1)."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any

import typer

# timm's model modules call torch.jit.interface at import, which torch >= 2.9 deprecates: two lines of noise before
# every command's own output that no user can act on
warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)

__all__ = ["app", "main", "cli_errors", "fail", "internal_error"]

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
    from rich.markup import escape

    # the message is text, not markup: "attnseg[dicom]" must print as written
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", markup=True)
    raise typer.Exit(code)


def internal_error(exc: BaseException) -> None:
    """Report an exception that is not a user error as the bug it is: traceback, place, how to report; exit 1."""
    import traceback

    from attnseg import __version__

    traceback.print_exception(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (raised at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    sys.stderr.write(
        f"internal error: {type(exc).__name__}: {exc}{where}\n"
        f"This is a bug in attnseg {__version__}, not in your input. Please report it with the command "
        "you ran and the output above.\n"
    )
    raise typer.Exit(1)


def _user_message(exc: BaseException) -> str:
    """A user error's message, with configuration fields spelled as the flags that set them."""
    from attnseg.cli.train import TRAIN_FLAGS
    from attnseg.config import ConfigError

    if isinstance(exc, ConfigError):
        return exc.render(
            lambda field: f"--{field.replace('_', '-')}" if field in TRAIN_FLAGS else f"{field} (recipe key)"
        )
    return str(exc)


def cli_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """The error policy (:mod:`attnseg.errors`): a user error prints one line and exits with code 2; any other
    exception is an internal error (traceback, place, exit 1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from attnseg.errors import AttnsegError

        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            fail("interrupted", code=130)
        except AttnsegError as exc:
            fail(_user_message(exc))
        except Exception as exc:
            internal_error(exc)

    return wrapper


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the attnseg version and exit.", is_eager=True),
) -> None:
    """Attention-based medical image segmentation."""
    if version:
        from attnseg import __version__

        typer.echo(f"attnseg {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:  # options but no command
        typer.echo(ctx.get_help())
        raise typer.Exit(2)


def _register() -> None:
    from attnseg.cli import commands

    for name, func in commands.COMMANDS.items():
        app.command(name)(cli_errors(func))

    from attnseg.cli.study import STUDY_COMMANDS

    study_app = typer.Typer(
        name="study",
        help="Cross-validated comparison of models: `study run` trains and evaluates, `study report` summarises.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )
    for name, func in STUDY_COMMANDS.items():
        study_app.command(name)(cli_errors(func))
    app.add_typer(study_app, name="study")


_register()


def main() -> int:
    """Console-script entry point. A command line click cannot parse (an unknown option, a missing value, a value
    out of range) is a user error like any other: one line naming it, exit 2, instead of click's framed box."""
    from attnseg.allocator import tune_allocator
    from attnseg.cli.args import join_multi_value_options
    from attnseg.errors import AttnsegError

    try:
        tune_allocator()  # keep freed activations in the heap between steps (see attnseg.allocator)
    except AttnsegError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    try:
        result = app(args=join_multi_value_options(sys.argv[1:]), prog_name="attnseg", standalone_mode=False)
    except typer.Abort:  # Ctrl-C at a prompt
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as exc:
        # click's UsageError (typer vendors click, so the class is matched by its interface): exit code 2
        if getattr(exc, "exit_code", None) != 2 or not callable(getattr(exc, "format_message", None)):
            raise
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "attnseg"
        sys.stderr.write(f"error: {exc.format_message()} (see `{where} --help`)\n")
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
