"""``attnseg convert-dataset``: a public release as distributed -> the canonical dataset layout with named splits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["convert_dataset"]

_NAME_HELP = "isic2017 | isic2018 | tn3k | ddti | acdc | synapse."


def convert_dataset(
    name: Annotated[str, typer.Argument(help=f"Dataset: {_NAME_HELP}", show_default=False)],
    src: Annotated[Path, typer.Argument(help="The release folder as distributed.", show_default=False)],
    dst: Annotated[Path, typer.Argument(help="Dataset folder to create (nnU-Net raw layout).", show_default=False)],
    seed: Annotated[int | None, typer.Option(help="Seed of the seeded splits (default 42).")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing DST once the new one is complete.")
    ] = False,
    workers: Annotated[int, typer.Option("--workers", help="Threads for image conversion.")] = 1,
    max_size: Annotated[
        int | None,
        typer.Option(
            "--max-size",
            help="2D datasets: downsize images whose longer side exceeds this (e.g. 1024 for full-resolution ISIC).",
        ),
    ] = None,
) -> None:
    """Convert a dataset release into DST (images, labels, dataset.json, splits.json); see each split with --fold."""
    from rich.console import Console

    from attnseg.data.conversion import SPLIT_SEED
    from attnseg.data.conversion import convert_dataset as run

    report = run(
        name,
        src,
        dst,
        seed=SPLIT_SEED if seed is None else seed,
        overwrite=overwrite,
        workers=workers,
        max_size=max_size,
    )
    console = Console(highlight=False)
    console.print(
        f"[green]done[/]: {report.dataset} -> {report.root} ({report.num_training} training, "
        f"{report.num_test} test cases)"
    )
    for split, parts in report.splits.items():
        console.print(f"  split {split}: " + ", ".join(f"{k} {v}" for k, v in parts.items()), markup=False)
    for note in report.notes:
        console.print(f"[yellow]note[/]: {note}")
