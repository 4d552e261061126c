"""Run a study: train, predict and evaluate every (model entry, fold, seed) job into one study directory.

The study directory ``DIR``::

    DIR/study.yaml                              the study (absolute paths, folds as split names)
    DIR/runs/<label>/fold<k>_seed<s>/           a normal training run directory, plus
        study_job.json                          {"label", "model", "fold", "seed", "status": "done"|"failed",
                                                 "error", "train_seconds", "predict_seconds" (inference),
                                                 "evaluate_seconds" (saving + metrics), "images" (predicted
                                                 here; validation cases come from training's RUN/validation/)}
        metrics.csv                             model,fold,seed,split,case,label,metric,value
        predictions/<split>/<case>.npz          the predicted label map (``labels``) on the case's grid
        predictions/test/<case>_probabilities.npz   with several folds: the probabilities (float16)
    DIR/ensembles/<label>/seed<s>/metrics.csv   the fold ensemble on the test split (fold ``ensemble``)
    DIR/results.csv                             every done job's and ensemble's metrics.csv rows, sorted
    DIR/costs.json                              {label: {"params": int, "macs": float | null}}
    DIR/summary.json, table.md, table.tex, report.html   the report (:mod:`attnseg.study.report`)

Jobs are ordered entry by entry (file order), then fold, then seed; ``shard=(i, n)`` runs ``jobs[i-1::n]`` so
several processes can share one directory. A job is done when its ``study_job.json`` says so; a re-run skips done
jobs, resumes a run directory holding a ``last`` checkpoint and restarts one without. A failing job is recorded
(status ``failed`` with the message) and the study goes on; :func:`run_study` returns the failed jobs. With
several folds and a test split, the process that finds all folds of an (entry, seed) done averages their test
probabilities (nnU-Net's fold ensemble) and evaluates it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnseg.errors import AttnsegError
from attnseg.io import atomic_write, write_json, write_text
from attnseg.runs import RunDir
from attnseg.study.config import StudyConfig, StudyError, load_study, parse_study
from attnseg.study.report import write_report
from attnseg.study.summary import ENSEMBLE, RESULT_COLUMNS

__all__ = [
    "Job",
    "JobResult",
    "METRICS",
    "RESULT_COLUMNS",
    "collect_results",
    "jobs_of",
    "parse_shard",
    "prepare_study_dir",
    "run_study",
]

METRICS: tuple[str, ...] = ("dice", "iou", "hd95", "assd")
JOB_FILE = "study_job.json"
METRICS_FILE = "metrics.csv"
PREDICTIONS = "predictions"


@dataclass(frozen=True)
class Job:
    """One (entry, fold, seed) training run of a study."""

    label: str
    model: str
    fold: str
    seed: int

    def run_dir(self, study_dir: str | os.PathLike) -> Path:
        """``DIR/runs/<label>/<fold>_seed<seed>``."""
        return Path(study_dir) / "runs" / self.label / f"{self.fold}_seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.label}/{self.fold}_seed{self.seed}"


@dataclass
class JobResult:
    """What happened to one job in this call."""

    job: Job
    status: str  # "done", "failed" or "skipped" (already done)
    error: str | None = None


def jobs_of(study: StudyConfig) -> list[Job]:
    """Every job of ``study`` in the deterministic order: entry (file order), fold, seed."""
    return [Job(m.label, m.name, f, s) for m in study.models for f in study.folds for s in study.seeds]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 1 <= I <= N; None -> ``(1, 1)``."""
    if text is None:
        return 1, 1
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise StudyError(f"shard: {text!r} must be I/N, e.g. 1/2") from None
    if not 1 <= i <= n:
        raise StudyError(f"shard: {text!r} needs 1 <= I <= N")
    return i, n


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _is_done(run_dir: Path) -> bool:
    marker = _read_json(run_dir / JOB_FILE)
    return bool(marker) and marker.get("status") == "done" and (run_dir / METRICS_FILE).exists()


def _trained_otherwise(study: StudyConfig, job: Job, study_dir: Path) -> bool:
    """True when ``job``'s run directory holds a run trained with settings other than ``study`` resolves for it
    (``device`` aside, which a run may override, and ``out``, the job's directory by construction)."""
    import yaml

    from attnseg.config import config_to_dict

    run_dir = job.run_dir(study_dir)
    path = RunDir(run_dir).config_path
    if not path.is_file():
        return False
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return True
    expected = config_to_dict(study.train_config(study.entry(job.label), job.fold, job.seed, run_dir))
    if not isinstance(stored, dict):
        return True
    ignored = ("device", "out")
    return {k: v for k, v in stored.items() if k not in ignored} != {
        k: v for k, v in expected.items() if k not in ignored
    }


def _comparable(study: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rest = {k: v for k, v in study.items() if k != "models"}
    return rest, list(study.get("models", []))


def prepare_study_dir(study: StudyConfig, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Check ``out`` can hold ``study`` and write ``out/study.yaml``.

    A directory holding a different study (anything but added model entries) is refused unless ``force``.

    Raises:
        StudyError: the directory holds a different study, or is a file.
    """
    import yaml

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out: {out} is a file, not a study directory")
    stored_path = out / "study.yaml"
    new = study.to_dict()
    if stored_path.exists() and not force:
        try:
            old_raw = yaml.safe_load(stored_path.read_text(encoding="utf-8"))
            old = parse_study(old_raw, out, check_dataset=False).to_dict()
        except (StudyError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise StudyError(f"{stored_path}: unreadable study ({' '.join(str(exc).split())}); use --force") from None
        old_rest, old_models = _comparable(old)
        new_rest, new_models = _comparable(new)
        changed = [k for k in sorted(set(old_rest) | set(new_rest)) if old_rest.get(k) != new_rest.get(k)]
        removed = [m["label"] for m in old_models if m not in new_models]
        if changed or removed:
            what = f"key(s) {', '.join(changed)}" if changed else f"model entries {', '.join(removed)}"
            raise StudyError(
                f"{out} holds a different study ({what} differ; only added models entries are allowed); "
                "use --force or another --out"
            )
    write_text(stored_path, yaml.safe_dump(new, sort_keys=False))
    return out


def _split_cases(study: StudyConfig, fold: str) -> tuple[list[str], list[str], Any]:
    from attnseg.data.layout import load_dataset, load_splits

    info = load_dataset(study.dataset)
    splits = load_splits(info, write_if_missing=False)
    split = splits[fold]
    val = list(split.get("val", []))
    test = split.get("test", splits.get("test", []))
    test = list(test) if isinstance(test, list) else []
    return val, test, info


def _save_npz(path: Path, **arrays: Any) -> None:
    import numpy as np

    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def _metric_rows(summary: dict[str, Any], label: str, fold: str, seed: int, split: str) -> list[list[Any]]:
    """``evaluate_arrays`` per-case results as ``results.csv`` rows."""
    rows = []
    for entry in summary["per_case"]:
        for cls, values in entry["per_class"].items():
            rows.extend(
                [label, fold, seed, split, entry["case"], cls, metric, float(values[metric])]
                for metric in METRICS
                if metric in values
            )
    return rows


def _predict_and_evaluate(study: StudyConfig, job: Job, run_dir: Path, device: str) -> tuple[list[list[Any]], int]:
    """Predict the fold's validation (and test) cases with the ``best`` checkpoint; the metrics.csv rows.

    A validation case's label map is the one training's validation kept for the ``best`` checkpoint
    (``RUN/validation/``), equal to predicting it again; a case without one (a run from before these were kept) is
    predicted. The label maps go to ``RUN/predictions/<split>/<case>.npz`` (``labels``, on the case's own grid;
    the report draws overlays from them). With several folds, the test cases' probabilities are kept as well
    (``<case>_probabilities.npz``, float16) for the fold ensemble.
    """
    import numpy as np

    from attnseg.data.io import read_label
    from attnseg.evaluation.evaluate import evaluate_arrays
    from attnseg.inference.predictor import PredictionInput, Predictor, labels_from_probabilities

    val, test, info = _split_cases(study, job.fold)
    predictor = Predictor.from_run(run_dir, "best", device=device)
    run = RunDir(run_dir)
    keep_test_probabilities = len(study.folds) > 1
    rows: list[list[Any]] = []
    images, seconds = 0, 0.0
    for split, ids in (("val", val), ("test", test)):
        pairs = []
        for cid in ids:
            case = info.cases[cid]
            if case.label is None:
                continue
            pred = run.validation_prediction(cid) if split == "val" else None
            if pred is None:
                t0 = time.perf_counter()
                image, meta = predictor.read(PredictionInput(cid, list(case.images)))
                probs = predictor.predict_case(image, meta)
                pred = labels_from_probabilities(probs)
                seconds += time.perf_counter() - t0
                images += 1  # predicted here (the inference time per image divides by these)
                if split == "test" and keep_test_probabilities:
                    half = probs.astype(np.float16)
                    _save_npz(run_dir / PREDICTIONS / split / f"{cid}_probabilities.npz", probabilities=half)
            _save_npz(run_dir / PREDICTIONS / split / f"{cid}.npz", labels=pred)
            gt, meta = read_label(case.label)  # the label's grid is the image's (checked by train)
            pairs.append((cid, pred, gt, meta.spacing))
        if pairs:
            summary = evaluate_arrays(pairs, labels=info.labels, protocol=study.protocol)
            rows.extend(_metric_rows(summary, job.label, job.fold, job.seed, split))
    return rows, images, seconds


def ensemble_dir(study_dir: str | os.PathLike, label: str, seed: int) -> Path:
    """``DIR/ensembles/<label>/seed<seed>``: the fold ensemble of one entry and seed on the test split."""
    return Path(study_dir) / "ensembles" / label / f"seed{seed}"


def _run_ensembles(study: StudyConfig, study_dir: Path) -> None:
    """Evaluate each (entry, seed)'s fold ensemble on the test cases once all its folds are done.

    The ensemble averages the folds' stored test probabilities (as ``attnseg predict --run R1 --run R2 ...``) and
    writes ``metrics.csv`` rows with fold ``ensemble``. Idempotent: a finished ensemble is not redone.
    """
    import numpy as np

    from attnseg.data.io import read_label
    from attnseg.evaluation.evaluate import evaluate_arrays
    from attnseg.inference.predictor import labels_from_probabilities

    if len(study.folds) < 2:
        return
    tests = [_split_cases(study, fold)[1] for fold in study.folds]
    _, _, info = _split_cases(study, study.folds[0])
    cases = [c for c in tests[0] if all(c in t for t in tests) and info.cases[c].label is not None]
    if not cases:
        return
    for entry in study.models:
        for seed in study.seeds:
            out = ensemble_dir(study_dir, entry.label, seed)
            runs = [Job(entry.label, entry.name, f, seed).run_dir(study_dir) for f in study.folds]
            if (out / METRICS_FILE).exists() or not all(_is_done(r) for r in runs):
                continue
            pairs = []
            for cid in cases:
                files = [r / PREDICTIONS / "test" / f"{cid}_probabilities.npz" for r in runs]
                if not all(f.exists() for f in files):
                    break
                mean = sum(np.load(f)["probabilities"].astype(np.float32) for f in files) / len(files)
                gt, meta = read_label(info.cases[cid].label)  # the label's grid is the image's (checked by train)
                pairs.append((cid, labels_from_probabilities(mean), gt, meta.spacing))
            else:
                summary = evaluate_arrays(pairs, labels=info.labels, protocol=study.protocol)
                write_text(out / METRICS_FILE, _csv_text(_metric_rows(summary, entry.label, ENSEMBLE, seed, "test")))


def _csv_text(rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for row in rows:
        writer.writerow([repr(v) if isinstance(v, float) else v for v in row])
    return buf.getvalue()


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _run_job(study: StudyConfig, job: Job, study_dir: Path, device: str | None, bar: Any = None) -> JobResult:
    """Train (or resume), predict and evaluate one job; record it in its run directory.

    ``bar``: the study's progress display, which then shows the job's training bar too.
    """
    from attnseg.config import resolve_device
    from attnseg.training import trainer as trainer_module

    run_dir = job.run_dir(study_dir)
    run = RunDir(run_dir)
    if run_dir.exists() and not run.has_checkpoint("last"):
        shutil.rmtree(run_dir)  # nothing to resume: start again from an empty directory
    resume = run.has_checkpoint("last")
    entry = study.entry(job.label)
    record: dict[str, Any] = {
        "label": job.label,
        "model": job.model,
        "fold": job.fold,
        "seed": job.seed,
        "status": "failed",
        "error": None,
        "train_seconds": None,
        "predict_seconds": None,
        "evaluate_seconds": None,
        "images": 0,
    }
    try:
        cfg = study.train_config(entry, job.fold, job.seed, run_dir)
        if device is not None:
            cfg.device = device
        t0 = time.perf_counter()
        trainer_module.train(cfg, resume=resume, progress=bar or False)
        record["train_seconds"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        rows, images, predict_seconds = _predict_and_evaluate(study, job, run_dir, str(resolve_device(cfg.device)))
        record["predict_seconds"] = round(predict_seconds, 3)
        record["evaluate_seconds"] = round(time.perf_counter() - t0 - predict_seconds, 3)
        record["images"] = images
        write_text(run_dir / METRICS_FILE, _csv_text(rows))
        record["status"] = "done"
    except Exception as exc:  # noqa: BLE001 - a failing job is recorded and the study goes on
        record["error"] = _error_text(exc)
        if not isinstance(exc, AttnsegError):  # not the input's fault: keep the traceback of the bug
            record["traceback"] = traceback.format_exc()
    write_json(run_dir / JOB_FILE, record)
    return JobResult(job, record["status"], record["error"])


def collect_results(study: StudyConfig, study_dir: str | os.PathLike) -> Path:
    """Rewrite ``DIR/results.csv`` from every done job's ``metrics.csv`` (sorted rows)."""
    study_dir = Path(study_dir)
    rows: list[list[str]] = []
    done = [j.run_dir(study_dir) / METRICS_FILE for j in jobs_of(study) if _is_done(j.run_dir(study_dir))]
    ensembles = [ensemble_dir(study_dir, m.label, s) / METRICS_FILE for m in study.models for s in study.seeds]
    for path in [*done, *(p for p in ensembles if p.exists())]:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or tuple(header) != RESULT_COLUMNS:
                continue
            rows.extend(list(r) for r in reader if r)

    def key(r: list[str]) -> tuple[Any, ...]:
        return (r[0], r[1], int(r[2]), r[3], r[4], r[5], r[6])

    rows.sort(key=key)
    return write_text(study_dir / "results.csv", _csv_text(rows))


def _label_costs(study: StudyConfig, job: Job, study_dir: Path) -> dict[str, Any]:
    """Parameters and fvcore MACs of one entry's model at the study input size (MACs null when they fail)."""
    import torch

    from attnseg.bench.complexity import count_parameters, fvcore_macs
    from attnseg.models.registry import create_model

    build = RunDir(job.run_dir(study_dir)).read_model()
    model = create_model(build["name"], build["in_channels"], build["num_classes"], **build.get("kwargs", {}))
    model.eval()
    cfg = study.train_config(study.entry(job.label), job.fold, job.seed)
    slab = int(build.get("slab_size", 1) or 1)
    shape = [1, int(build["in_channels"]), *([slab] if slab > 1 else []), *cfg.input_size]
    params = count_parameters(model).total
    macs: float | None
    try:
        with torch.no_grad():
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
            macs = float(fvcore_macs(model, (x,))[0])
    except Exception:  # noqa: BLE001 - fvcore missing or the count failing leaves MACs null
        macs = None
    return {"params": int(params), "macs": macs}


def _update_costs(study: StudyConfig, study_dir: Path) -> None:
    path = study_dir / "costs.json"
    costs = _read_json(path) or {}
    missing = False
    for entry in study.models:
        if entry.label in costs:
            continue
        done = [j for j in jobs_of(study) if j.label == entry.label and _is_done(j.run_dir(study_dir))]
        if not done:
            continue
        try:
            costs[entry.label] = _label_costs(study, done[0], study_dir)
        except Exception:  # noqa: BLE001 - costs are extra information; a later run tries again
            continue
        missing = True
    if missing:
        write_json(path, costs)


def _progress(enabled: bool, total: int, completed: int) -> tuple[Any, Any]:
    if not enabled:
        return None, None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(  # the jobs, then the current job's training (added by the trainer)
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    task = bar.add_task("[bold]study", total=total, completed=completed)
    bar.start()
    return bar, task


def check_entries(study: StudyConfig, device: str | None = None) -> None:
    """Raise :class:`StudyError` for what every job of an entry would fail on, before the first job trains: the
    device, and each entry's model options and input size (the model is built once on CPU, without data)."""
    from attnseg.config import resolve_device
    from attnseg.models.registry import check_input_size, create_model, sized_kwargs

    if device is not None:
        resolve_device(device)  # the --device flag: a ConfigError naming it
    for index, entry in enumerate(study.models):
        cfg = study.train_config(entry, study.folds[0], study.seeds[0])
        try:
            resolve_device(device or cfg.device)
            size = tuple(cfg.input_size) if cfg.input_size else None
            kwargs = sized_kwargs(entry.name, size, cfg.model_kwargs) if size else dict(cfg.model_kwargs)
            model = create_model(entry.name, 1, 2, **kwargs)
            if size:
                check_input_size(model, size)
        except (AttnsegError, TypeError, ValueError) as exc:
            raise StudyError(f"models[{index}] ({entry.label}): {exc}") from None


def run_study(
    study: StudyConfig | str | os.PathLike,
    out: str | os.PathLike,
    *,
    shard: tuple[int, int] | str | None = None,
    force: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> list[JobResult]:
    """Run (or continue) a study into ``out``.

    Args:
        study: a parsed study or the path of a study file.
        out: the study directory.
        shard: ``(i, n)`` or ``"i/n"``: run only ``jobs[i-1::n]``.
        force: accept a directory holding a different study (its ``study.yaml`` is replaced; a job whose run was
            trained with other settings than this study gives it, ``config.yaml`` against the resolved training
            configuration, is deleted and trained again; the others are kept).
        device: overrides the training device of every job (``auto``, ``cpu``, ``cuda:N``).
        progress: show a progress bar of the jobs.

    Returns:
        The jobs that failed in this call (empty when all succeeded).

    Raises:
        StudyError: an invalid study file or a directory holding a different study (nothing is written then).
    """
    if not isinstance(study, StudyConfig):
        study = load_study(study)
    i, n = shard if isinstance(shard, tuple) else parse_shard(shard)
    if not 1 <= i <= n:
        raise StudyError(f"shard: {i}/{n} needs 1 <= I <= N")
    check_entries(study, device)
    study_dir = prepare_study_dir(study, out, force=force)
    mine = jobs_of(study)[i - 1 :: n]
    if force:  # the directory may hold another study's runs: a job trained otherwise is trained again
        for job in mine:
            if _trained_otherwise(study, job, study_dir):
                shutil.rmtree(job.run_dir(study_dir))
    already = sum(_is_done(j.run_dir(study_dir)) for j in mine)
    bar, task = _progress(progress, len(mine), already)
    failed: list[JobResult] = []
    try:
        for job in mine:
            if _is_done(job.run_dir(study_dir)):
                continue
            if bar is not None:
                bar.update(task, description=f"[bold]study[/] {job}")
            result = _run_job(study, job, study_dir, device, bar)
            if result.status == "failed":
                failed.append(result)
            else:
                _update_costs(study, study_dir)
            collect_results(study, study_dir)
            if bar is not None:
                bar.update(task, advance=1)
    finally:
        if bar is not None:
            bar.stop()
    _run_ensembles(study, study_dir)
    collect_results(study, study_dir)
    _update_costs(study, study_dir)
    write_report(study_dir)
    return failed
