"""``attnseg bench`` and ``attnseg models``: complexity/latency of one model, and the table of registered models.

Both are plain typer command functions; ``attnseg.cli.main`` registers them (``app.command()(bench)``,
``app.command()(models)``). torch, fvcore and the model registry are imported inside the functions so that
``attnseg --help`` stays fast. User errors (unknown model, a size the model cannot take, bad options) print one
``error: ...`` line on stderr and exit with code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["bench", "models"]


def bench(
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name (see `attnseg models`).")],
    input_size: Annotated[
        str | None,
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
        str | None, typer.Option("--kwargs", help="Model options as a JSON object, e.g. '{\"width\": 16}'.")
    ] = None,
) -> None:
    """Parameters, MACs, true FLOPs, thop-compatible MACs, latency and peak memory of one model.

    MACs come from fvcore (one fvcore "flop" is one multiply-accumulate), FLOPs from torch's FlopCounterMode
    (2 per multiply-accumulate, counting functional attention that thop misses); complexity is per image (batch 1).
    """
    from rich.console import Console

    from attnseg.bench.report import render_table, run_benchmark
    from attnseg.cli.args import parse_json_kwargs, parse_size
    from attnseg.config import ConfigError
    from attnseg.io import write_json
    from attnseg.runs import refuse_reserved

    try:
        size = parse_size(input_size)
        options = parse_json_kwargs(kwargs, "--kwargs")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if json_path is not None:
        refuse_reserved(json_path, "--json")
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
    Console().print(render_table(record))
    if json_path is not None:
        written = write_json(json_path, record)
        typer.echo(f"wrote {written}")


def models() -> None:
    """Table of every registered model: name, 2D/3D, paper, official repository, default input size, and whether
    ONNX export and torch.compile work (checked for every model by the conformance tests)."""
    from rich.console import Console
    from rich.table import Table

    from attnseg.models.registry import list_models, model_info

    table = Table(title="attnseg models")
    table.add_column("name", no_wrap=True)  # names are what users copy: never wrapped
    table.add_column("dims", no_wrap=True)
    table.add_column("paper")
    table.add_column("official repo", overflow="fold")
    table.add_column("default input", no_wrap=True)
    table.add_column("onnx/compile", no_wrap=True)
    names = list_models()
    for name in names:
        info = model_info(name)
        table.add_row(
            name,
            f"{info.spatial_dims}D",
            info.paper or "-",
            info.official_repo or "-",
            "x".join(str(s) for s in info.default_input_size),
            f"{'yes' if info.onnx_export else 'no'}/{'yes' if info.torch_compile else 'no'}",
        )
    table.caption = f"{len(names)} models; build one with attnseg.models.create_model(name, in_channels, num_classes)"
    Console().print(table)
