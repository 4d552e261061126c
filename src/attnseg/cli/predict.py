"""``attnseg predict``."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["predict_command"]


def predict_command(
    runs: list[Path] = typer.Option(
        ...,
        "--run",
        "-r",
        help="Run directory written by `attnseg train`. Repeat it to average several runs' probabilities "
        "(a fold ensemble, as nnU-Net's).",
    ),
    input: Path = typer.Option(..., "--input", "-i", help="Image file, DICOM series folder, or a folder of them."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the masks (same geometry as the input)."),
    formats: list[str] = typer.Option(
        [],
        "--format",
        help="nifti | dicom-seg | rtstruct | png; repeat it for several (default: the input's format, NIfTI for a "
        "DICOM series). dicom-seg (CASE_seg.dcm) and rtstruct (CASE_rtstruct.dcm) reference a DICOM series input "
        '(pip install "attnseg\\[dicom]"; README "Clinical outputs").',
    ),
    checkpoint: str = typer.Option("best", help="best | last."),
    tta: bool = typer.Option(False, "--tta", help="Average over in-plane flips (test-time augmentation)."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write overlays/CASE.png (image | prediction)."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write CASE_probabilities.npz."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    amp: str = typer.Option("none", "--amp", help="none | bf16 (autocast on CUDA and CPU)."),
    keep_largest: str | None = typer.Option(
        None,
        "--keep-largest",
        help="all, or label names/ids (liver,spleen): keep only each class's largest connected component "
        "(nnU-Net's postprocessing; for structures that are one piece).",
    ),
    resume: bool = typer.Option(
        False, "--continue", help="Skip cases whose outputs (mask, and what else is asked) all exist already."
    ),
) -> None:
    """Segment images with a trained model (or an ensemble of runs). Folders continue past bad files and report
    them at the end (exit code 2 if any failed). Every output is written atomically: after an interruption,
    ``--continue`` predicts only the cases not finished (as nnU-Net's ``--continue_prediction``; it does not check
    which run wrote a file)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from attnseg.config import ConfigError
    from attnseg.data.dicom_out import require_dicom_libraries
    from attnseg.inference.postprocess import parse_classes
    from attnseg.inference.predictor import FORMATS, find_inputs, load_run
    from attnseg.io import remove_stale_temporaries

    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint must be best or last, got {checkpoint!r}")
    formats = list(dict.fromkeys(formats))
    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
        if fmt in ("dicom-seg", "rtstruct"):
            require_dicom_libraries(fmt)
    if len(set(runs)) < len(runs):
        raise ConfigError("--run: the same run directory is given twice")
    predictor = load_run(
        runs[0] if len(runs) == 1 else runs, checkpoint=checkpoint, device=device, amp=amp
    )  # the API's loader
    if keep_largest is not None:  # "" is a mistake to name, not "off"
        predictor.keep_largest = parse_classes(keep_largest, predictor.label_names, max(predictor.num_classes, 2))
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output}: is a file; give a folder for the masks")
    items = find_inputs(input, predictor.files_per_case)
    if not items:
        raise ConfigError(f"--input {input}: no images found")
    for fmt in (f for f in formats if f in ("dicom-seg", "rtstruct")):
        other = next((item for item in items if not item.is_dicom), None)
        if other is not None:  # refused before anything is written
            what = "a SEG" if fmt == "dicom-seg" else "an RT Structure Set"
            culprit = f"a folder holding {other.paths[0].name}, which is not" if other.paths[0] != input else "not"
            raise ConfigError(
                f"--format {fmt}: needs a DICOM series input ({what} references its source instances); "
                f"--input {input} is {culprit} a DICOM series folder"
            )
    found = len(items)
    if resume:
        planned = [
            predictor.output_paths(item, output, overlay=overlay, probabilities=probabilities, formats=formats)
            for item in items
        ]
        for path in (p for paths in planned for p in paths.values()):
            remove_stale_temporaries(path)  # half-written files of the killed run
        items = [
            item for item, paths in zip(items, planned, strict=True) if not all(p.is_file() for p in paths.values())
        ]
    console = Console(stderr=True, soft_wrap=True)  # whole paths in the failure lines, not folded
    with Progress(
        TextColumn("[bold]predict"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeRemainingColumn(),
        console=console,
        disable=len(items) < 2,
    ) as progress:
        task = progress.add_task("", total=len(items))

        def done(item, error) -> None:
            progress.update(task, advance=1, description=item.case_id)

        failures = predictor.predict_inputs(
            items, output, tta=tta, overlay=overlay, probabilities=probabilities, formats=formats, on_done=done
        )
    ok = len(items) - len(failures)
    skipped = f" ({found - len(items)} skipped: already complete)" if resume else ""
    Console().print(f"[green]{ok}[/] of {len(items)} case(s) written to {output}{skipped}")
    if failures:
        for case, message in failures.items():
            console.print(f"[bold red]failed:[/] {case}: {message}")
        raise typer.Exit(2)  # the inputs' problems (an unexpected exception is not caught and exits 1)
