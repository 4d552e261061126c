"""``attnseg study report DIR``: the summary and the tables of a finished study.

Reads ``DIR/study.yaml``, ``DIR/results.csv`` (tidy: ``model,fold,seed,split,case,label,metric,value``),
``DIR/costs.json`` and the ``DIR/runs/<label>/<fold>_seed<s>/study_job.json`` files, and writes (atomically, through
:mod:`attnseg.io`) ``DIR/summary.json``, ``DIR/table.md`` and ``DIR/table.tex``.

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
from attnseg.io import write_json, write_text
from attnseg.study.stats import bootstrap_ci, holm, paired_cases, wilcoxon_p

__all__ = [
    "ALPHA",
    "RESULT_COLUMNS",
    "MEAN_FOREGROUND",
    "StudyReportError",
    "read_results",
    "summarize",
    "render_markdown",
    "render_latex",
    "write_report",
]

ALPHA = 0.05
RESULT_COLUMNS = ("model", "fold", "seed", "split", "case", "label", "metric", "value")
MEAN_FOREGROUND = "mean_foreground"
_DASH = "–"  # an undefined number in the tables


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
    rows: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != RESULT_COLUMNS:
            raise StudyReportError(f"{path}: columns {reader.fieldnames}, expected {','.join(RESULT_COLUMNS)}")
        for line, raw in enumerate(reader, start=2):
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


def _read_study(study_dir: Path) -> dict[str, Any]:
    path = study_dir / "study.yaml"
    if not path.is_file():
        raise StudyReportError(f"{path}: not found")
    try:
        study = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise StudyReportError(f"{path}: not valid YAML ({exc})") from None
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
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StudyReportError(f"{path}: not valid JSON ({exc})") from None


def _job_times(study_dir: Path, label: str) -> dict[str, Any]:
    """Mean training seconds per done run and mean inference milliseconds per image of one entry."""
    train, infer, status = [], [], defaultdict(int)
    for path in sorted((study_dir / "runs" / label).glob("*/study_job.json")):
        try:
            job = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise StudyReportError(f"{path}: not valid JSON ({exc})") from None
        status[str(job.get("status"))] += 1
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
    study = _read_study(study_dir)
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
    test = [r for r in rows if r["split"] == "test"]
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
            **_job_times(study_dir, label),
        }
        if test:
            t_mean, t_std, t_runs = _split_summary([r for r in test if r["model"] == label], classes, metrics)
            models[label].update(test_mean=t_mean, test_std_over_folds=t_std, test_n_runs=t_runs)

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
        "note": note,
        "models": models,
    }
    return _jsonable(summary)


# ---------------------------------------------------------------------------------------------------------------
# tables


def _num(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return _DASH if value is None else f"{value * scale:.{digits}f}"


def _mean_std(info: dict[str, Any], metric: str, scale: float) -> str:
    mean = (info["mean"].get(MEAN_FOREGROUND) or {}).get(metric)
    std = (info["std_over_folds"].get(MEAN_FOREGROUND) or {}).get(metric)
    if mean is None:
        return _DASH
    return _num(mean, scale) if std is None else f"{_num(mean, scale)} ± {_num(std, scale)}"


def _seconds(value: float | None) -> str:
    if value is None:
        return _DASH
    return f"{value:.1f} s" if value < 60 else f"{value / 60:.1f} min"


def _footnote(summary: dict[str, Any]) -> str:
    models = summary["models"]
    pairs = sorted({info["n_pairs"] for info in models.values() if info["n_pairs"] is not None})
    n_pairs = _DASH if not pairs else str(pairs[0]) if len(pairs) == 1 else f"{pairs[0]}–{pairs[-1]}"
    compared = [label for label, info in models.items() if not info["is_baseline"]]
    tested = [label for label in compared if models[label]["wilcoxon_p"][MEAN_FOREGROUND] is not None]
    untested = [label for label in compared if label not in tested]
    skipped = f" ({', '.join(untested)}: fewer than 2 pairs or no non-zero difference, not tested)" if untested else ""
    runs = f"{len(summary['folds'])} fold(s) × {len(summary['seeds'])} seed(s)"
    return (
        f"† mean foreground Dice differs from the baseline ({summary['baseline']}) with Holm-adjusted p < "
        f"{summary['alpha']:g}: two-sided Wilcoxon signed-rank test on the per-case mean foreground Dice, paired by "
        f"(fold, seed, case), n = {n_pairs} pairs; Holm-Bonferroni over {len(tested)} comparison(s){skipped}. "
        f"Means over the out-of-fold validation cases ({summary['n_cases']} cases, {runs}) pooled over folds and "
        f"seeds; ± is the standard deviation of the per-(fold, seed) means. Dice in %, HD95 in mm. "
        f"Protocol: {summary['protocol'] or _DASH}. Note: {summary['note']}."
    )


def _rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    classes = summary["classes"]
    header = [
        "Model",
        "Params (M)",
        "MACs (G)",
        "Dice (mean ± std)",
        "HD95 (mean ± std)",
        *[f"Dice {c}" for c in classes],
        "Train time / run",
        "Inference ms / image",
    ]
    body = []
    for label, info in summary["models"].items():
        name = label + ("†" if info["significant"] else "") + (" (baseline)" if info["is_baseline"] else "")
        body.append(
            [
                name,
                _num(info["params"], 1e-6),
                _num(info["macs"], 1e-9),
                _mean_std(info, "dice", 100.0),
                _mean_std(info, "hd95", 1.0),
                *[_num(info["mean"][c].get("dice"), 100.0) for c in classes],
                _seconds(info["train_seconds_per_run"]),
                _num(info["inference_ms_per_image"]),
            ]
        )
    return header, body


def render_markdown(summary: dict[str, Any]) -> str:
    """``table.md``: one row per model in study order, then the footnote."""
    header, body = _rows(summary)
    align = ["---", *["---:"] * (len(header) - 1)]
    lines = [f"# Study {summary['name'] or ''}".rstrip(), ""]
    lines += ["| " + " | ".join(row) + " |" for row in [header, align, *body]]
    return "\n".join([*lines, "", _footnote(summary), ""])


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "×": r"$\times$",
    "–": "--",
    "<": r"$<$",
}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def render_latex(summary: dict[str, Any]) -> str:
    """``table.tex``: the same table as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), then the note."""
    header, body = _rows(summary)
    spec = "l" + "r" * (len(header) - 1)
    lines = [f"% study {summary['name'] or ''}: written by attnseg study report", rf"\begin{{tabular}}{{{spec}}}"]
    lines += [r"\toprule", " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(cell) for cell in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", "", r"{\footnotesize " + _tex(_footnote(summary)) + "}", ""]
    return "\n".join(lines)


def write_report(study_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``summary.json``, ``table.md`` and ``table.tex`` into the study directory and return the summary.

    ``summary.json`` (strict JSON, NaN written as null)::

        {"name", "baseline", "protocol", "alpha": 0.05, "classes": [..], "metrics": [..], "folds": [..],
         "seeds": [..], "n_cases": distinct validation case ids, "has_test": bool, "note": str,
         "models": {label: {
             "model": registry name, "is_baseline": bool, "n_runs": (fold, seed) runs with results,
             "n_cases": (fold, seed, case) validation units,
             "mean": {class | "mean_foreground": {metric: float}},
             "std_over_folds": {class | "mean_foreground": {metric: float | null}},
             "params": int | null, "macs": float | null,
             "train_seconds_per_run": float | null, "inference_ms_per_image": float | null,
             "jobs": {status: count},
             "wilcoxon_p": {class | "mean_foreground": float | null} | null (baseline),
             "wilcoxon_p_holm": same | null (baseline),
             "n_pairs": int | null (baseline), "significant": bool | null (baseline),
             "dice_difference_mean": float | null, "dice_difference_ci95": [low, high] | null,
             # only when results.csv has test rows:
             "test_mean": like "mean", "test_std_over_folds": like "std_over_folds", "test_n_runs": int}}}

    Args:
        study_dir: the study directory written by the runner.

    Returns:
        The summary written to ``summary.json``.
    """
    study_dir = Path(study_dir)
    summary = summarize(study_dir)
    write_json(study_dir / "summary.json", summary, allow_nan=False)
    write_text(study_dir / "table.md", render_markdown(summary))
    write_text(study_dir / "table.tex", render_latex(summary))
    return summary
