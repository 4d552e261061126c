"""``attnseg demo``."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["demo_command"]


def demo_command(
    out: Path = typer.Option(Path("attnseg-demo"), "--out", "-o", help="Output folder."),
    iterations: int = typer.Option(400, help="Training iterations (batch 6)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
) -> None:
    """Train a small U-Net on the bundled abdominal CT for a few minutes, evaluate on a held-out scan, write
    summary.json and overlay PNGs."""
    from attnseg.demo import run_demo

    run_demo(out, iterations=iterations, device=device)
