"""``attnseg train``."""

from __future__ import annotations

from pathlib import Path

import typer

from attnseg.cli.args import parse_json_kwargs, parse_size

__all__ = ["train_command", "TRAIN_FLAGS"]

# TrainConfig fields that `attnseg train` sets from a flag of the same name (``input_size`` <- ``--input-size``);
# the others are recipe keys only.
TRAIN_FLAGS = frozenset(
    {
        "model",
        "data",
        "out",
        "fold",
        "iterations",
        "epochs",
        "batch_size",
        "input_size",
        "lr",
        "optimizer",
        "scheduler",
        "loss",
        "val_every",
        "save_val_predictions",
        "seed",
        "device",
        "amp",
        "channels_last",
        "compile",
        "geometry",
        "num_workers",
        "model_kwargs",
    }
)


def train_command(
    model: str | None = typer.Option(None, "--model", "-m", help="Registered model name (see `attnseg models`)."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Dataset folder (nnU-Net raw layout)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory to create (or continue)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML recipe; flags override its values."),
    fold: str | None = typer.Option(None, help="Split name in splits.json (0 = fold0; 'all' = every case)."),
    iterations: int | None = typer.Option(None, help="Total optimiser steps (or give --epochs)."),
    epochs: int | None = typer.Option(None, help="Epochs (an epoch = one pass over the training samples)."),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", help="Batch size per process."),
    input_size: str | None = typer.Option(None, "--input-size", help="Network input size: H W (2D) or D H W."),
    lr: float | None = typer.Option(None, help="Base learning rate."),
    optimizer: str | None = typer.Option(None, help="sgd | adam | adamw."),
    scheduler: str | None = typer.Option(None, help="poly | cosine | constant."),
    loss: str | None = typer.Option(None, help="dice_ce | bce_dice | ce_dice_0.4_0.6 | boundary_dou | ce | bce."),
    val_every: int | None = typer.Option(
        None,
        "--val-every",
        help="Validate every N steps (default: per epoch, less often if validating would cost over 10 % of training).",
    ),
    save_val_predictions: bool | None = typer.Option(
        None,
        "--save-val-predictions/--no-save-val-predictions",
        help="Keep the best checkpoint's validation label maps in RUN/validation/.",
    ),
    seed: int | None = typer.Option(None, help="Random seed (init, sampling, augmentation)."),
    device: str | None = typer.Option(None, help="auto | cpu | cuda | cuda:N | mps."),
    amp: str | None = typer.Option(None, help="Mixed precision: none | bf16 (CUDA or CPU) | fp16 (CUDA)."),
    channels_last: bool | None = typer.Option(
        None, "--channels-last/--no-channels-last", help="Channels-last memory format (NHWC / NDHWC)."
    ),
    compile: bool | None = typer.Option(None, "--compile/--no-compile", help="torch.compile the model (inductor)."),
    geometry: str | None = typer.Option(None, help="spacing (reorient+resample+crop) | resize (papers')."),
    num_workers: int | None = typer.Option(
        None,
        "--num-workers",
        help="Data-loading worker processes (default: 0 on CPU, else CPUs per process - 1, at most 4).",
    ),
    model_kwargs: str | None = typer.Option(None, "--model-kwargs", help="Model options as JSON."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a model on a dataset; writes checkpoints (last, best on validation), logs and the resolved config."""
    from rich.console import Console

    from attnseg.config import ConfigError, TrainConfig, load_recipe, load_run_config, merge_config
    from attnseg.runs import RunDir
    from attnseg.training import distributed as ddp
    from attnseg.training.trainer import train

    try:
        size = parse_size(input_size)
        kwargs = parse_json_kwargs(model_kwargs, "--model-kwargs")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cfg = TrainConfig()
    if resume and out is not None and config is None and not RunDir(out).config_path.exists():
        raise ConfigError(f"{out}: no run to resume here (no {RunDir(out).config_path.name})", option="out")
    if resume and out is not None and config is None:
        cfg = load_run_config(RunDir(out).config_path)  # a resumed run continues with its own resolved config
    elif config is not None:
        cfg = load_recipe(config, cfg)
    overrides = {
        "model": model,
        "data": str(data) if data else None,
        "out": str(out) if out else None,
        "fold": fold,
        "iterations": iterations,
        "epochs": epochs,
        "batch_size": batch_size,
        "input_size": size,
        "lr": lr,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "loss": loss,
        "val_every": val_every,
        "save_val_predictions": save_val_predictions,
        "seed": seed,
        "device": device,
        "amp": amp,
        "channels_last": channels_last,
        "compile": compile,
        "geometry": geometry,
        "num_workers": num_workers,
        "model_kwargs": kwargs or None,
    }
    assert set(overrides) == TRAIN_FLAGS
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "iterations" in overrides and "epochs" not in overrides:
        overrides["epochs"] = None  # a flag overrides the recipe's length in the other unit
    if "epochs" in overrides and "iterations" not in overrides:
        overrides["iterations"] = None
    cfg = merge_config(cfg, overrides, source="command line")
    for required in ("model", "data", "out"):
        if not getattr(cfg, required):
            raise ConfigError("is required (or set it in the --config recipe)", option=required)
    summary = train(cfg, resume=resume, progress=not quiet)
    if not ddp.is_main():
        return  # under torchrun, rank 0 speaks for the run
    console = Console()
    console.print(
        f"[green]done[/]: {summary['iterations']} iterations ({summary['epochs']} epochs of "
        f"{summary['iterations_per_epoch']}); run directory {cfg.out}"
    )
    if summary.get("best_val_dice") is not None:
        console.print(f"best validation mean Dice {summary['best_val_dice']:.4f}")
