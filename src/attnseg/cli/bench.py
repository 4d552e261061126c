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


def models(
    name: str | None = typer.Argument(None, help="A model name: print its passport (paper, code, sizes, options)."),
) -> None:
    """The registered models (a table that fits 80 columns), or one model's passport with ``attnseg models NAME``.

    ONNX export and torch.compile are checked for every model by the conformance tests.
    """
    from rich.console import Console
    from rich.table import Table

    from attnseg.models.registry import list_models, model_info

    console = Console()
    if name is not None:
        console.print(_passport(name))
        return
    table = Table(title="attnseg models", expand=False)
    table.add_column("name", no_wrap=True)  # names are what users copy: never wrapped
    table.add_column("dims", no_wrap=True)
    table.add_column("input", no_wrap=True)
    table.add_column("onnx/jit", no_wrap=True)
    table.add_column("paper", no_wrap=True, overflow="ellipsis", max_width=22)
    names = list_models()
    for n in names:
        info = model_info(n)
        table.add_row(
            n,
            f"{info.spatial_dims}D",
            "x".join(str(s) for s in info.default_input_size),
            f"{'yes' if info.onnx_export else 'no'}/{'yes' if info.torch_compile else 'no'}",
            _short_paper(info.paper),
        )
    table.caption = f"{len(names)} models; `attnseg models NAME` prints one model's passport"
    console.print(table)


def _short_paper(paper: str) -> str:
    """The title part of a citation: the segment after "et al.", else the first of several words (authors are
    single names), else the citation."""
    parts = [p.strip() for p in paper.split(",")]
    for i, part in enumerate(parts[:-1]):
        if part.endswith("et al."):
            return parts[i + 1]
    return next((p for p in parts if " " in p), paper or "-")


def _passport(name: str):
    """A rich table of what the registry knows about ``name``, with its options and their defaults."""
    import inspect

    from rich.table import Table

    from attnseg.models.registry import list_models, model_info, model_options

    info = model_info(name)
    table = Table(title=f"attnseg models {name}", show_header=False, expand=False)
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", overflow="fold")
    module = info.factory.__module__
    variants = [n for n in list_models() if n != name and model_info(n).factory.__module__ == module]
    options = model_options(name)
    listed = (
        "not listed (the factory takes **kwargs)"
        if options is None
        else "\n".join(k if v is inspect.Parameter.empty else f"{k} = {v!r}" for k, v in options.items()) or "none"
    )
    doc = (inspect.getdoc(info.factory) or "").split("\n\n")[0]
    rows = [
        ("paper", info.paper or "-"),
        ("official code", f"https://github.com/{info.official_repo}" if info.official_repo else "none released"),
        ("module", f"{module} (its docstring is the passport: BibTeX, deviations)"),
        ("summary", doc or "-"),
        ("variants", ", ".join(variants) or "-"),
        ("dims", f"{info.spatial_dims}D"),
        ("default input", "x".join(str(s) for s in info.default_input_size)),
        ("input divisor", str(info.input_divisor)),
        ("built for the run's size", "yes (size_kwargs)" if info.size_kwargs else "no (takes any valid size)"),
        ("onnx export / compile", f"{'yes' if info.onnx_export else 'no'} / {'yes' if info.torch_compile else 'no'}"),
        ("tags", ", ".join(info.tags) or "-"),
        ("options", listed),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table
