"""``attnseg export``."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["export_command"]


def export_command(
    run: Path = typer.Option(..., "--run", "-r", help="Run directory written by `attnseg train`."),
    output: Path = typer.Option(..., "--output", "-o", help="The .onnx file to write (a .json sidecar goes beside)."),
    checkpoint: str = typer.Option("best", help="best | last."),
    opset: int = typer.Option(17, help="ONNX opset."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare onnxruntime with PyTorch after export."),
) -> None:
    """Export the trained network to ONNX (logits out, dynamic batch) plus a JSON sidecar with the preprocessing."""
    from rich.console import Console

    from attnseg.config import ConfigError
    from attnseg.export import export_onnx, sidecar_path_for

    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint must be best or last, got {checkpoint!r}")
    sidecar = export_onnx(run, output, checkpoint=checkpoint, opset=opset, check=check)
    diff = sidecar["onnxruntime_max_abs_diff"]
    checked = f"onnxruntime max |diff| {diff:.2e}" if diff is not None else "not checked: onnxruntime missing"
    if not check:
        checked = "not checked: --no-check"
    Console().print(f"[green]exported[/] {output} ({checked}); sidecar {sidecar_path_for(output)}")
