"""The summary of a study directory: its results read back and compared against the baseline.

Reads ``DIR/study.yaml``, ``DIR/results.csv`` (tidy: ``model,fold,seed,split,case,label,metric,value``),
``DIR/costs.json`` and the ``DIR/runs/<label>/<fold>_seed<s>/study_job.json`` files; :mod:`attnseg.study.report`
writes the result as ``summary.json``.

Definitions (the footnote of the tables repeats them):

- **mean** of a class and metric: the mean over the out-of-fold validation cases pooled over folds and seeds
  (undefined values, e.g. HD95 of an empty class, left out). ``mean_foreground`` is the mean over the classes of
  those class means (the papers' "mean Dice").
- **std_over_folds**: the standard deviation (ddof=1) of the same quantity computed per (fold, seed) run; null with
  a single run.
- **wilcoxon_p**: two-sided Wilcoxon signed-rank test (:func:`attnseg.study.stats.wilcoxon_p`) of the per-case Dice
  of the model against the baseline, paired by (fold, seed, case); per class, and for ``mean_foreground`` on each
  case's mean Dice over its classes. **wilcoxon_p_holm**: Holm-Bonferroni over the non-baseline models, class by
  class. A dagger marks a model whose mean-foreground Holm p-value is below :data:`ALPHA`.
- **dice_difference_ci95**: the 95 % bootstrap CI (BCa, seeded) of the mean paired difference of the per-case mean
  foreground Dice, model minus baseline.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from attnseg.errors import AttnsegError
from attnseg.study.stats import bootstrap_ci, holm, paired_cases, wilcoxon_p

__all__ = [
    "ALPHA",
    "ENSEMBLE",
    "MEAN_FOREGROUND",
    "RESULT_COLUMNS",
    "StudyReportError",
    "read_results",
    "read_study",
    "summarize",
]

ALPHA = 0.05
RESULT_COLUMNS = ("model", "fold", "seed", "split", "case", "label", "metric", "value")
ENSEMBLE = "ensemble"  # the fold of a fold ensemble's test rows
MEAN_FOREGROUND = "mean_foreground"


class StudyReportError(AttnsegError):
    """A study directory that cannot be reported: a missing or malformed file."""


# ---------------------------------------------------------------------------------------------------------------
# reading


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of ``results.csv`` with ``seed`` as int and ``value`` as float (NaN when empty or undefined).

    Args:
        path: the ``results.csv`` file.

    Raises:
        StudyReportError: the file is missing, its header is not :data:`RESULT_COLUMNS`, a value is not a number,
            or a (model, fold, seed, split, case, label, metric) appears twice.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyReportError(f"{path}: not found (has the study run?)")
    try:
        return _read_result_rows(path)
    except UnicodeDecodeError:
        raise StudyReportError(f"{path}: not a CSV text file (not UTF-8)") from None


def _read_result_rows(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != RESULT_COLUMNS:
            raise StudyReportError(f"{path}: columns {reader.fieldnames}, expected {','.join(RESULT_COLUMNS)}")
        for line, raw in enumerate(reader, start=2):
            if None in raw or None in raw.values():  # fewer or more fields than the header
                raise StudyReportError(
                    f"{path}:{line}: expected {len(RESULT_COLUMNS)} fields (a truncated or hand-edited row)"
                )
            try:
                seed = int(raw["seed"])
                text = (raw["value"] or "").strip()
                value = float(text) if text else math.nan
            except ValueError:
                raise StudyReportError(f"{path}:{line}: seed {raw['seed']!r} or value {raw['value']!r}") from None
            row = {**raw, "seed": seed, "value": value}
            key = tuple(row[c] for c in RESULT_COLUMNS[:-1])
            if key in seen:
                raise StudyReportError(f"{path}:{line}: duplicate row for {dict(zip(RESULT_COLUMNS, key))}")
            seen.add(key)
            rows.append(row)
    return rows


def read_study(study_dir: Path) -> dict[str, Any]:
    path = study_dir / "study.yaml"
    if not path.is_file():
        raise StudyReportError(f"{path}: not found")
    try:
        study = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise StudyReportError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    except UnicodeDecodeError:
        raise StudyReportError(f"{path}: not a YAML text file (not UTF-8)") from None
    if not isinstance(study, dict) or not isinstance(study.get("models"), list) or not study["models"]:
        raise StudyReportError(f"{path}: expected a mapping with a non-empty 'models' list")
    return study


def _entry_labels(study: dict[str, Any]) -> list[tuple[str, str]]:
    """``[(label, model name)]`` in study order."""
    entries = []
    for entry in study["models"]:
        if isinstance(entry, str):
            entries.append((entry, entry))
        else:
            entries.append((str(entry.get("label") or entry["name"]), str(entry["name"])))
    return entries


def _read_costs(study_dir: Path) -> dict[str, Any]:
    path = study_dir / "costs.json"
    if not path.is_file():
        return {}
    try:
        costs = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StudyReportError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(costs, dict) or not all(isinstance(v, dict) for v in costs.values()):
        raise StudyReportError(f"{path}: expected {{label: {{params, macs}}}}")
    return costs


def _expected_runs(study: dict[str, Any]) -> list[str]:
    """The ``<fold>_seed<seed>`` run folders the study's folds and seeds give each entry."""
    folds = [f"fold{f}" if str(f).isdigit() else str(f) for f in study.get("folds") or []]
    return [f"{fold}_seed{seed}" for fold in folds for seed in study.get("seeds") or []]


def _job_times(study_dir: Path, label: str, expected: list[str]) -> dict[str, Any]:
    """Mean training seconds per done run and mean inference milliseconds per image of one entry; ``jobs`` counts
    its runs by status, ``unfinished`` (a folder without a job record) and ``not started`` (no folder) included, and
    ``incomplete`` names the expected runs that are not done."""
    train, infer, status = [], [], defaultdict(int)
    root = study_dir / "runs" / label
    names = sorted({*expected, *(p.parent.name for p in root.glob("*/study_job.json"))})
    incomplete = []
    for name in names:
        path = root / name / "study_job.json"
        if not path.is_file():
            status["unfinished" if path.parent.is_dir() else "not started"] += 1
            incomplete.append(name)
            continue
        try:
            job = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise StudyReportError(f"{path}: not valid JSON ({exc})") from None
        status[str(job.get("status"))] += 1
        if job.get("status") != "done":
            incomplete.append(name)
        if job.get("status") != "done":
            continue
        if job.get("train_seconds") is not None:
            train.append(float(job["train_seconds"]))
        if job.get("predict_seconds") is not None and job.get("images"):
            infer.append(float(job["predict_seconds"]) / float(job["images"]) * 1000.0)
    return {
        "train_seconds_per_run": float(np.mean(train)) if train else None,
        "inference_ms_per_image": float(np.mean(infer)) if infer else None,
        "jobs": dict(status),
        "incomplete": incomplete,
    }


# ---------------------------------------------------------------------------------------------------------------
# statistics


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _means(rows: list[dict[str, Any]], classes: list[str], metrics: list[str]) -> dict[str, dict[str, float]]:
    """``{class | mean_foreground: {metric: mean}}`` over ``rows`` (one model, one split)."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        values[(row["label"], row["metric"])].append(row["value"])
    out = {c: {m: _nanmean(values.get((c, m), [])) for m in metrics} for c in classes}
    out[MEAN_FOREGROUND] = {m: _nanmean([out[c][m] for c in classes]) for m in metrics}
    return out


def _split_summary(
    rows: list[dict[str, Any]], classes: list[str], metrics: list[str]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], int]:
    """Pooled means, std over the per-(fold, seed) means, and the number of (fold, seed) runs."""
    pooled = _means(rows, classes, metrics)
    by_run: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_run[(row["fold"], row["seed"])].append(row)
    run_means = [_means(group, classes, metrics) for _, group in sorted(by_run.items())]
    std: dict[str, dict[str, float]] = {}
    for name in [*classes, MEAN_FOREGROUND]:
        std[name] = {}
        for m in metrics:
            finite = [r[name][m] for r in run_means if math.isfinite(r[name][m])]
            std[name][m] = float(np.std(finite, ddof=1)) if len(finite) >= 2 else math.nan
    return pooled, std, len(by_run)


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN and infinities become null (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


def summarize(study_dir: str | os.PathLike) -> dict[str, Any]:
    """The summary of a study directory (the content of ``summary.json``; NaN already mapped to None).

    Args:
        study_dir: the study directory written by the runner.

    Returns:
        ``{"name", "baseline", "protocol", "alpha", "classes", "metrics", "folds", "seeds", "n_cases", "note",
        "models": {label: {...}}}``; :func:`write_report` lists each model's keys.

    Raises:
        StudyReportError: a missing or malformed file, or a baseline that is not an entry label.
    """
    study_dir = Path(study_dir)
    study = read_study(study_dir)
    entries = _entry_labels(study)
    labels = [label for label, _ in entries]
    baseline = str(study.get("baseline") or labels[0])
    if baseline not in labels:
        raise StudyReportError(f"{study_dir / 'study.yaml'}: baseline {baseline!r} is not an entry label {labels}")
    rows = [r for r in read_results(study_dir / "results.csv") if r["model"] in labels]
    costs = _read_costs(study_dir)

    classes = list(dict.fromkeys(r["label"] for r in rows))
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    val = [r for r in rows if r["split"] == "val"]
    test = [r for r in rows if r["split"] == "test" and r["fold"] != ENSEMBLE]
    ensemble = [r for r in rows if r["split"] == "test" and r["fold"] == ENSEMBLE]
    others = [label for label in labels if label != baseline]

    models: dict[str, dict[str, Any]] = {}
    for label, name in entries:
        mine = [r for r in val if r["model"] == label]
        mean, std, n_runs = _split_summary(mine, classes, metrics)
        cost = costs.get(label) or {}
        models[label] = {
            "model": name,
            "is_baseline": label == baseline,
            "n_runs": n_runs,
            "n_cases": len({(r["fold"], r["seed"], r["case"]) for r in mine}),
            "mean": mean,
            "std_over_folds": std,
            "params": cost.get("params"),
            "macs": cost.get("macs"),
            **_job_times(study_dir, label, _expected_runs(study)),
        }
        if test:
            t_mean, t_std, t_runs = _split_summary([r for r in test if r["model"] == label], classes, metrics)
            models[label].update(test_mean=t_mean, test_std_over_folds=t_std, test_n_runs=t_runs)
        if ensemble:  # one ensemble per seed: its std is over seeds
            e_mean, e_std, e_runs = _split_summary([r for r in ensemble if r["model"] == label], classes, metrics)
            models[label].update(test_ensemble_mean=e_mean, test_ensemble_std_over_seeds=e_std, test_ensemble_n=e_runs)

    # paired comparisons against the baseline, on the per-case Dice
    raw_p: dict[str, dict[str, float]] = {name: {} for name in [*classes, MEAN_FOREGROUND]}
    for label in others:
        info = models[label]
        for name in [*classes, MEAN_FOREGROUND]:
            pairs = paired_cases(val, label, baseline, "dice", "val", None if name == MEAN_FOREGROUND else name)
            raw_p[name][label] = wilcoxon_p(pairs.model, pairs.baseline)
            if name == MEAN_FOREGROUND:
                diff = pairs.model - pairs.baseline
                info["n_pairs"] = len(pairs.keys)
                info["dice_difference_mean"] = float(np.mean(diff)) if diff.size else math.nan
                info["dice_difference_ci95"] = list(bootstrap_ci(diff, 0.95, seed=0))
        info["wilcoxon_p"] = {name: raw_p[name][label] for name in raw_p}
    adjusted = {name: holm(raw_p[name]) for name in raw_p}
    for label in labels:
        info = models[label]
        if label == baseline:
            info.update(wilcoxon_p=None, wilcoxon_p_holm=None, n_pairs=None, significant=None)
            info.update(dice_difference_mean=None, dice_difference_ci95=None)
            continue
        info["wilcoxon_p_holm"] = {name: adjusted[name][label] for name in adjusted}
        p = info["wilcoxon_p_holm"][MEAN_FOREGROUND]
        info["significant"] = bool(math.isfinite(p) and p < ALPHA)

    significant = [label for label in others if models[label]["significant"]]
    if not others:
        note = "the study has only the baseline: no comparison was made"
    elif not significant:
        note = f"no model differs significantly from the baseline after Holm correction (alpha {ALPHA:g})"
    else:
        listed = ", ".join(f"{s} (p = {models[s]['wilcoxon_p_holm'][MEAN_FOREGROUND]:.3g})" for s in significant)
        note = (
            f"mean foreground Dice differs significantly from the baseline after Holm correction (alpha {ALPHA:g}) "
            f"for: {listed}"
        )
    summary = {
        "name": study.get("name"),
        "baseline": baseline,
        "protocol": study.get("protocol"),
        "alpha": ALPHA,
        "classes": classes,
        "metrics": metrics,
        "folds": sorted({r["fold"] for r in val}),
        "seeds": sorted({r["seed"] for r in val}),
        "n_cases": len({r["case"] for r in val}),
        "has_test": bool(test),
        "has_test_ensemble": bool(ensemble),
        "note": note,
        "models": models,
    }
    return _jsonable(summary)
