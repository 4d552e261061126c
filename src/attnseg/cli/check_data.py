"""``attnseg check-data``: every problem of a dataset folder in one table (:mod:`attnseg.data.check`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["check_data_command"]

# The defaults of attnseg.data.check.Tolerances, spelled here so that --help does not import numpy
# (tests/data/test_check_data.py keeps them equal).
SPACING_TOL, ORIGIN_TOL, DIRECTION_TOL = 1e-3, 1e-3, 1e-5


def check_data_command(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (nnU-Net v2 raw layout).", show_default=False)],
    spacing_tol: Annotated[
        float,
        typer.Option("--spacing-tol", min=0.0, help="Relative spacing difference allowed between a case's files."),
    ] = SPACING_TOL,
    origin_tol: Annotated[
        float,
        typer.Option("--origin-tol", min=0.0, help="Distance in mm allowed between the origins of a case's files."),
    ] = ORIGIN_TOL,
    direction_tol: Annotated[
        float,
        typer.Option(
            "--direction-tol", min=0.0, help="Largest difference allowed between direction cosines (float noise)."
        ),
    ] = DIRECTION_TOL,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Threads reading files (default: min(4, CPUs)).", min=1)
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the findings as JSON to this file.", show_default=False)
    ] = None,
    headers_only: Annotated[
        bool,
        typer.Option(
            "--headers-only", help="Layout and geometry only: skip label values, NaN/Inf, intensities, truncation."
        ),
    ] = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Read every file again; neither use nor update the cache.")
    ] = False,
) -> None:
    """Check a dataset: dataset.json, file pairing, readability, geometry, label values, NaN, splits.json.

    Prints every problem at once (errors, then warnings) and exits with code 2 when there are errors, 0 otherwise.
    Never writes into the dataset; per-file results are cached in ~/.cache/attnseg/check-data ($XDG_CACHE_HOME).
    `attnseg train` runs the same check before it writes anything.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from attnseg.config import ConfigError
    from attnseg.data.check import Tolerances, check_dataset
    from attnseg.io import write_json

    if json_out is not None and dataset.resolve() in json_out.resolve().parents:
        raise ConfigError(
            f"--json {json_out}: lies inside the dataset {dataset}; check-data never writes into a dataset"
        )
    tolerances = Tolerances(spacing=spacing_tol, origin=origin_tol, direction=direction_tol)
    report = check_dataset(dataset, tolerances=tolerances, workers=workers, voxels=not headers_only, cache=not no_cache)
    console = Console(highlight=False)
    if report.findings:
        table = Table(title=f"check-data {dataset}", title_justify="left", show_lines=False)
        table.add_column("severity", no_wrap=True)
        table.add_column("case", overflow="fold")
        table.add_column("file", overflow="fold")
        table.add_column("problem", overflow="fold", ratio=1)
        for f in report.findings:
            severity = "[bold red]error[/]" if f.severity == "error" else "[yellow]warning[/]"
            table.add_row(severity, Text(f.case or "-"), Text(f.file), Text(f.problem))  # names are not markup
        console.print(table)
    if json_out is not None:
        write_json(json_out, report.to_dict())
    colour = "red" if report.errors else "yellow" if report.warnings else "green"
    timing = f" ({report.seconds:.2f} s; {report.files_read} file(s) read, {report.files_cached} from the cache)"
    console.print(f"[{colour}]{report.summary()}[/]{timing}")
    if report.errors:
        raise typer.Exit(2)
