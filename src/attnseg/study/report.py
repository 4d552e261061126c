"""``attnseg study report DIR``: the summary, the tables and the HTML report of a study.

Writes (atomically, through :mod:`attnseg.io`) ``DIR/summary.json`` (:mod:`attnseg.study.summary`),
``DIR/table.md`` and ``DIR/table.tex`` (:mod:`attnseg.study.tables`) and ``DIR/report.html``
(:mod:`attnseg.study.html`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from attnseg.io import write_json, write_text
from attnseg.study.html import write_html
from attnseg.study.summary import summarize
from attnseg.study.tables import render_latex, render_markdown

__all__ = ["write_report"]


def write_report(study_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``summary.json``, ``table.md``, ``table.tex`` and ``report.html`` into the study dir; return the summary.

    ``summary.json`` (strict JSON, NaN written as null)::

        {"name", "baseline", "protocol", "alpha": 0.05, "classes": [..], "metrics": [..], "folds": [..],
         "seeds": [..], "n_cases": distinct validation case ids, "has_test": bool, "has_test_ensemble": bool,
         "note": str,
         "models": {label: {
             "model": registry name, "is_baseline": bool, "n_runs": (fold, seed) runs with results,
             "n_cases": (fold, seed, case) validation units,
             "mean": {class | "mean_foreground": {metric: float}},
             "std_over_folds": {class | "mean_foreground": {metric: float | null}},
             "params": int | null, "macs": float | null,
             "train_seconds_per_run": float | null, "inference_ms_per_image": float | null,
             "jobs": {status: count} (done, failed, unfinished: a run folder without its job record, not started),
             "incomplete": the "<fold>_seed<seed>" runs of the study that are not done,
             "wilcoxon_p": {class | "mean_foreground": float | null} | null (baseline),
             "wilcoxon_p_holm": same | null (baseline),
             "n_pairs": int | null (baseline), "significant": bool | null (baseline),
             "dice_difference_mean": float | null, "dice_difference_ci95": [low, high] | null,
             # only when results.csv has test rows:
             "test_mean": like "mean", "test_std_over_folds": like "std_over_folds", "test_n_runs": int,
             # only with test rows of fold "ensemble" (several folds): the fold ensemble, one per seed
             "test_ensemble_mean": like "mean", "test_ensemble_std_over_seeds": like "std_over_folds",
             "test_ensemble_n": int}}}

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
    write_html(study_dir, summary)
    return summary
