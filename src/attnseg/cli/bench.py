"""``attnseg bench`` and ``attnseg models``: complexity/latency of one model, and the table of registered models.

Both are plain typer command functions; ``attnseg.cli.main`` registers them (``app.command()(bench)``,
``app.command()(models)``). torch, fvcore and the model registry are imported inside the functions so that
``attnseg --help`` stays fast. User errors (unknown model, a size the model cannot take, bad options) print one
``error: ...`` line on stderr and exit with code 2.
"""

from __future__ import annotations

import json as _json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

__all__ = ["bench", "models"]

_USAGE_ERROR = 2


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=_USAGE_ERROR)


def _message(exc: BaseException) -> str:
    # KeyError wraps its message in quotes; show the text itself, on one line.
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split())


def _parse_size(input_size: list[int] | None, rest: list[str] | None) -> list[int] | None:
    """Join ``--input-size 224 224``: click gives the option its first value and leaves the others positional."""
    if not rest:
        return input_size
    text = " ".join(rest)
    try:
        values = [int(r) for r in rest]
    except ValueError:
        _fail(f"unexpected argument(s) {text!r} (--input-size takes integers, e.g. --input-size 224 224)")
    if input_size is None:
        _fail(f"unexpected argument(s) {text!r}; did you mean --input-size {text}?")
    return [*input_size, *values]


def _parse_kwargs(kwargs: str | None) -> dict[str, Any]:
    if not kwargs:
        return {}
    try:
        value = _json.loads(kwargs)
    except _json.JSONDecodeError as exc:
        _fail(f"--kwargs is not valid JSON ({exc.msg}); use e.g. --kwargs '{{\"width\": 16}}'")
    if not isinstance(value, dict):
        _fail("--kwargs must be a JSON object, e.g. --kwargs '{\"width\": 16}'")
    return value


def bench(
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name (see `attnseg models`).")],
    input_size: Annotated[
        list[int] | None,
        typer.Option(
            "--input-size",
            help="Spatial input size: 2 values for 2D models, 3 for 3D (e.g. --input-size 224 224). "
            "Defaults to the model's registered default size.",
            show_default=False,
        ),
    ] = None,
    in_channels: Annotated[int, typer.Option("--in-channels", min=1, help="Input image channels.")] = 3,
    num_classes: Annotated[int, typer.Option("--num-classes", min=1, help="Output channels (logits).")] = 2,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Batch for latency and memory (complexity is per image).")
    ] = 1,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed calls per latency figure.")] = 20,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed calls before timing.")] = 5,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")] = "cpu",
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="torch threads (default: torch's current setting).")
    ] = None,
    memory: Annotated[
        bool, typer.Option("--memory/--no-memory", help="Measure peak memory (CPU: two fresh subprocesses).")
    ] = True,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the full record (figures, methods, versions) here.")
    ] = None,
    kwargs: Annotated[
        str | None, typer.Option("--kwargs", help='Model options as a JSON object, e.g. \'{"width": 16}\'.')
    ] = None,
    size_rest: Annotated[list[str] | None, typer.Argument(hidden=True, show_default=False, metavar="SIZE")] = None,
) -> None:
    """Parameters, MACs, true FLOPs, thop-compatible MACs, latency and peak memory of one model.

    MACs come from fvcore (one fvcore "flop" is one multiply-accumulate), FLOPs from torch's FlopCounterMode
    (2 per multiply-accumulate, counting functional attention that thop misses); complexity is per image (batch 1).
    """
    size = _parse_size(input_size, size_rest)
    options = _parse_kwargs(kwargs)

    from rich.console import Console

    from attnseg.bench.report import render_table, run_benchmark, write_json_atomic

    try:
        record = run_benchmark(
            model,
            input_size=size,
            in_channels=in_channels,
            num_classes=num_classes,
            batch_size=batch_size,
            runs=runs,
            warmup=warmup,
            device=device,
            model_kwargs=options,
            threads=threads,
            memory=memory,
        )
    except (KeyError, ValueError) as exc:
        _fail(_message(exc))
    Console().print(render_table(record))
    if json_path is not None:
        written = write_json_atomic(json_path, record)
        typer.echo(f"wrote {written}")


def models() -> None:
    """Table of every registered model: name, 2D/3D, paper, official repository, default input size."""
    from rich.console import Console
    from rich.table import Table

    from attnseg.models.registry import list_models, model_info

    table = Table(title="attnseg models")
    table.add_column("name", no_wrap=True)  # names are what users copy: never wrapped
    table.add_column("dims", no_wrap=True)
    table.add_column("paper")
    table.add_column("official repo", overflow="fold")
    table.add_column("default input", no_wrap=True)
    names = list_models()
    for name in names:
        info = model_info(name)
        table.add_row(
            name,
            f"{info.spatial_dims}D",
            info.paper or "-",
            info.official_repo or "-",
            "x".join(str(s) for s in info.default_input_size),
        )
    table.caption = f"{len(names)} models; build one with attnseg.models.create_model(name, in_channels, num_classes)"
    Console().print(table)
