"""``attnseg evaluate``: score a folder of predictions against a folder of references under a named protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["evaluate"]

_PROTOCOL_HELP = (
    "strict (default: Dice/IoU/precision/recall/specificity, HD95 and ASSD in mm, explicit empty-mask rules), "
    "transunet (TransUNet/medpy: per-volume Dice and pooled HD95 in voxels), isic (one pixel-pooled confusion "
    "matrix at threshold 0.5), nnunet (nnU-Net v2 summary: Dice/IoU, NaN when both empty)."
)


def evaluate(
    pred: Annotated[Path, typer.Option("--pred", help="Folder of predicted label maps (CASE.ext).")],
    gt: Annotated[Path, typer.Option("--gt", help="Folder of reference label maps (CASE.ext), e.g. DATASET/labelsTs.")],
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="Dataset folder (or dataset.json): label names and file ending.")
    ] = None,
    protocol: Annotated[str, typer.Option("--protocol", help=_PROTOCOL_HELP)] = "strict",
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write summary.json. Default: PRED/summary.json.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Worker processes (default: min(4, CPUs)); 1 = no pool.")
    ] = None,
) -> None:
    """Evaluate predictions against references and write an nnU-Net-like summary.json."""
    from rich.console import Console

    from attnseg.config import ConfigError
    from attnseg.evaluation.evaluate import evaluate_folders, print_summary, save_summary
    from attnseg.runs import refuse_reserved

    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: must be >= 1 (1 = no pool), got {workers}")
    target = out if out is not None else pred / "summary.json"
    if target.is_dir():
        raise ConfigError(f"--out {target}: is a folder; give a file name such as {target / 'summary.json'}")
    if target.suffix.lower() != ".json":  # never a prediction or reference image of the folders evaluated
        raise ConfigError(f"--out {target}: the summary is JSON; give a file name ending in .json")
    if gt.is_dir() and target.resolve().parent == gt.resolve():  # beside the references (and dataset.json)
        raise ConfigError(f"--out {target}: is inside the reference folder --gt {gt}; write the summary elsewhere")
    refuse_reserved(target, "--out")
    summary = evaluate_folders(pred, gt, dataset_dir=dataset, protocol=protocol, num_workers=workers)
    target = save_summary(summary, target)
    print_summary(summary)
    Console().print(f"summary written to {target}", markup=False, highlight=False)
