"""Paired statistics of a study: per-case pairing, Wilcoxon signed-rank test, Holm correction, bootstrap CI.

Pure functions on numbers (numpy and scipy only); :mod:`attnseg.study.report` reads the study directory and calls
them. The unit of pairing is the case as evaluated by one (fold, seed) run: two models are compared on the cases
both of them predicted, run by run.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import scipy.stats

__all__ = ["PairedValues", "paired_cases", "wilcoxon_p", "holm", "bootstrap_ci"]

CaseKey = tuple[str, int, str]  # (fold, seed, case)


class PairedValues(NamedTuple):
    """Per-case values of two models on the same cases.

    Attributes:
        keys: the ``(fold, seed, case)`` of each pair, sorted.
        model: the model's value for each key.
        baseline: the baseline's value for each key.
    """

    keys: list[CaseKey]
    model: np.ndarray
    baseline: np.ndarray


def _records(df_or_rows: Any) -> Iterable[Mapping[str, Any]]:
    if hasattr(df_or_rows, "to_dict"):  # a pandas DataFrame, should a caller have one
        return df_or_rows.to_dict("records")
    return df_or_rows


def _to_float(value: Any) -> float:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return math.nan
    return float(value)


def case_values(
    rows: Iterable[Mapping[str, Any]], model: str, metric: str, split: str, label: str | None
) -> dict[CaseKey, float]:
    """``{(fold, seed, case): value}`` of one model: one label's value, or the mean over the case's labels."""
    per_case: dict[CaseKey, list[float]] = defaultdict(list)
    for row in rows:
        if row["model"] != model or row["metric"] != metric or row["split"] != split:
            continue
        if label is not None and row["label"] != label:
            continue
        value = _to_float(row["value"])
        if math.isfinite(value):
            per_case[(str(row["fold"]), int(row["seed"]), str(row["case"]))].append(value)
    return {key: float(np.mean(values)) for key, values in per_case.items()}


def paired_cases(
    df_or_rows: Any,
    model: str,
    baseline: str,
    metric: str = "dice",
    split: str = "val",
    label: str | None = None,
) -> PairedValues:
    """Pair the per-case values of ``model`` and ``baseline`` by ``(fold, seed, case)``.

    With ``label=None`` each case's value is the mean over its labels first (for Dice: the case's mean foreground
    Dice); with a label name, that label's value. Undefined values (empty or NaN) are left out of the mean; a case
    with no defined value, or present for one model only, is not a pair.

    Args:
        df_or_rows: the rows of ``results.csv`` (mappings with the keys ``model, fold, seed, split, case, label,
            metric, value``), or a DataFrame with those columns.
        model: the model's entry label.
        baseline: the baseline's entry label.
        metric: the metric compared.
        split: ``"val"`` (out-of-fold validation cases) or ``"test"``.
        label: one class name, or None for the mean over the case's labels.

    Returns:
        The pairs, sorted by ``(fold, seed, case)``.
    """
    rows = list(_records(df_or_rows))
    ours = case_values(rows, model, metric, split, label)
    theirs = case_values(rows, baseline, metric, split, label)
    keys = sorted(ours.keys() & theirs.keys())
    return PairedValues(
        keys,
        np.array([ours[k] for k in keys], dtype=float),
        np.array([theirs[k] for k in keys], dtype=float),
    )


def wilcoxon_p(model_values: Any, baseline_values: Any) -> float:
    """Two-sided p-value of ``scipy.stats.wilcoxon(model_values, baseline_values)`` with scipy's defaults.

    The defaults are ``zero_method="wilcox"`` (zero differences dropped), ``correction=False``,
    ``alternative="two-sided"``, ``method="auto"`` and ``nan_policy="propagate"`` (a NaN value gives NaN). In scipy
    1.17, ``method="auto"`` means: the normal approximation for more than 50 pairs; otherwise the exact
    distribution without ties or zero differences, an exhaustive permutation test with them and at most 13 pairs
    (up to 2**13 sign flips; about a second), and the normal approximation with them and more pairs.

    NaN is returned without calling the test when there are fewer than 2 pairs or when every difference is zero:
    the test is undefined there (no non-zero difference is left to rank). scipy itself raised a ``ValueError`` for
    all-zero differences in older releases; scipy 1.17 returns p = 1.0 with a ``RuntimeWarning`` from a 0/0
    z-statistic. NaN is also returned if scipy raises ``ValueError`` for any other degenerate input.

    Args:
        model_values: per-case values of the model.
        baseline_values: the baseline's values for the same cases, in the same order.

    Returns:
        The p-value, or NaN.
    """
    x = np.asarray(model_values, dtype=float)
    y = np.asarray(baseline_values, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"wilcoxon_p needs two 1-D arrays of equal length, got shapes {x.shape} and {y.shape}")
    if x.size < 2 or np.all(x - y == 0):
        return math.nan
    try:
        return float(scipy.stats.wilcoxon(x, y).pvalue)
    except ValueError:
        return math.nan


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni step-down adjusted p-values.

    With the m defined p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of the i-th
    (1-based) is ``min(1, max_{j <= i} (m - j + 1) * p_(j))``: monotone in the sorted order and capped at 1. A
    hypothesis is rejected at level alpha when its adjusted p-value is below alpha. NaN (or None) entries are
    passed through as NaN and do not count in m.

    Args:
        pvalues: ``{name: p}``.

    Returns:
        ``{name: adjusted p}`` with the keys of ``pvalues``, in the same order.
    """
    adjusted = {name: math.nan for name in pvalues}
    defined = [(float(p), name) for name, p in pvalues.items() if p is not None and not math.isnan(float(p))]
    defined.sort(key=lambda item: item[0])  # stable: ties keep their input order
    m = len(defined)
    running = 0.0
    for i, (p, name) in enumerate(defined):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[name] = running
    return adjusted


def bootstrap_ci(differences: Any, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Confidence interval of the mean paired difference with ``scipy.stats.bootstrap``.

    The pairs are resampled by resampling the vector of differences (model minus baseline, one per pair). The
    method is BCa; when BCa fails (an exception, a ``DegenerateDataWarning`` or a non-finite bound, e.g. when all
    differences are equal) the percentile interval is used instead. ``rng=numpy.random.default_rng(seed)`` makes
    the interval reproducible.

    Args:
        differences: the per-pair differences; NaN entries are dropped.
        confidence: the confidence level.
        seed: seed of the resampling.

    Returns:
        ``(low, high)``; ``(nan, nan)`` with fewer than 2 defined differences (scipy needs two observations).
    """
    d = np.asarray(differences, dtype=float).ravel()
    d = d[np.isfinite(d)]
    if d.size < 2:
        return (math.nan, math.nan)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", scipy.stats.DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                result = scipy.stats.bootstrap(
                    (d,),
                    np.mean,
                    confidence_level=confidence,
                    method=method,
                    rng=np.random.default_rng(seed),
                )
            except (ValueError, scipy.stats.DegenerateDataWarning):
                continue
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return (low, high)
    return (math.nan, math.nan)
