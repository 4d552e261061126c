"""``attnseg study run`` and ``attnseg study report``: a cross-validated comparison of models in one command.

The command functions are plain typer functions; ``attnseg.cli.main`` wraps them with its error policy and adds
the ``study`` sub-app. torch and the study runner are imported inside the functions so ``attnseg --help`` stays
fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["study_run", "study_report", "STUDY_COMMANDS"]


def study_run(
    study_file: Annotated[Path, typer.Argument(help="The study file (YAML).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The study directory.", show_default=False)],
    shard: Annotated[
        str | None,
        typer.Option("--shard", help="Run only jobs[I-1::N] (I/N), to share the study between processes."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Accept a study directory holding a different study; its jobs trained with other settings are "
            "trained again.",
        ),
    ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train, predict and evaluate every (model, fold, seed) job of a study; skips done jobs, resumes the rest.

    Writes OUT/study.yaml, OUT/runs/<label>/<fold>_seed<seed>/ (run directory, study_job.json, metrics.csv),
    OUT/results.csv and OUT/costs.json. Exits 1 naming the failed jobs, if any.
    """
    from rich.console import Console

    from attnseg.study.config import load_study
    from attnseg.study.runner import parse_shard, run_study

    shard_spec = parse_shard(shard)
    study = load_study(study_file)
    failed = run_study(study, out, shard=shard_spec, force=force, device=device, progress=not quiet)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if failed:
        for result in failed:
            console.print(f"[bold red]failed:[/] {result.job}: {result.error}", markup=True)
        names = ", ".join(str(r.job) for r in failed)
        console.print(f"[bold red]error:[/] {len(failed)} job(s) failed: {names}", markup=True)
        raise typer.Exit(1)
    if not quiet:
        Console(highlight=False).print(f"study {study.name}: results in {Path(out) / 'results.csv'}")


def study_report(
    study_dir: Annotated[Path, typer.Argument(help="A study directory (from `attnseg study run`).")],
) -> None:
    """Write the study's report (tables and statistics against the baseline) from DIR/results.csv."""
    from rich.console import Console

    from attnseg.study.report import write_report

    summary = write_report(study_dir)
    missing = [f"{label}/{run}" for label, info in summary["models"].items() for run in info.get("incomplete", [])]
    if missing:  # the tables cover the done jobs only: say so rather than print a partial table as the study's
        total = sum(sum(info.get("jobs", {}).values()) for info in summary["models"].values())
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"warning: {len(missing)} of {total} job(s) have no results (failed, unfinished or not started): "
            f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}; the report covers the others",
            markup=False,
        )


STUDY_COMMANDS = {"run": study_run, "report": study_report}
