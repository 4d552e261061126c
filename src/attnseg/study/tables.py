"""The study's tables: ``table.md`` and ``table.tex`` in the papers' format, from the summary.

One row per model: params (M) | MACs (G) | mean Dice ± std over folds | HD95 ± std | Dice per class | test Dice
(the fold ensemble's, when the dataset has a test split) | train time per run | inference ms per image; the
baseline row marked, a dagger on significant rows, and a footnote with the definitions
(:mod:`attnseg.study.summary`). ``report.html`` shows the same cells.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attnseg.study.summary import MEAN_FOREGROUND

__all__ = ["DASH", "column_keys", "footnote", "render_latex", "render_markdown", "table_rows"]

DASH = "–"  # an undefined number in the tables


def _num(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return DASH if value is None else f"{value * scale:.{digits}f}"


def _mean_std(info: dict[str, Any], metric: str, scale: float) -> str:
    mean = (info["mean"].get(MEAN_FOREGROUND) or {}).get(metric)
    std = (info["std_over_folds"].get(MEAN_FOREGROUND) or {}).get(metric)
    if mean is None:
        return DASH
    return _num(mean, scale) if std is None else f"{_num(mean, scale)} ± {_num(std, scale)}"


def _seconds(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:.1f} s" if value < 60 else f"{value / 60:.1f} min"


def footnote(summary: dict[str, Any]) -> str:
    models = summary["models"]
    pairs = sorted({info["n_pairs"] for info in models.values() if info["n_pairs"] is not None})
    n_pairs = DASH if not pairs else str(pairs[0]) if len(pairs) == 1 else f"{pairs[0]}–{pairs[-1]}"
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
        f"Protocol: {summary['protocol'] or DASH}. Note: {summary['note']}."
    )


def _test_dice(info: dict[str, Any], ensemble: bool) -> str:
    """Mean foreground test Dice: of the fold ensemble (± over seeds) or pooled over the fold runs (± over folds)."""
    mean_key, std_key = (
        ("test_ensemble_mean", "test_ensemble_std_over_seeds") if ensemble else ("test_mean", "test_std_over_folds")
    )
    return _mean_std({"mean": info.get(mean_key) or {}, "std_over_folds": info.get(std_key) or {}}, "dice", 100.0)


def _columns(summary: dict[str, Any]) -> list[tuple[str, str, Callable[[str, dict[str, Any]], str]]]:
    """``(key, header, cell(label, info))`` per column: the table's one definition (``report.html`` uses the keys)."""
    columns: list[tuple[str, str, Callable[[str, dict[str, Any]], str]]] = [
        (
            "model",
            "Model",
            lambda label, info: (
                label + ("†" if info["significant"] else "") + (" (baseline)" if info["is_baseline"] else "")
            ),
        ),
        ("params", "Params (M)", lambda _, info: _num(info["params"], 1e-6)),
        ("macs", "MACs (G)", lambda _, info: _num(info["macs"], 1e-9)),
        ("dice", "Dice (mean ± std)", lambda _, info: _mean_std(info, "dice", 100.0)),
        ("hd95", "HD95 (mean ± std)", lambda _, info: _mean_std(info, "hd95", 1.0)),
    ]
    for c in summary["classes"]:
        columns.append((f"dice:{c}", f"Dice {c}", lambda _, info, c=c: _num(info["mean"][c].get("dice"), 100.0)))
    if summary.get("has_test"):
        ensemble = bool(summary.get("has_test_ensemble"))
        header = f"Test Dice ({len(summary['folds'])}-fold ensemble)" if ensemble else "Test Dice"
        columns.append(("test_dice", header, lambda _, info: _test_dice(info, ensemble)))
    columns += [
        ("train_seconds_per_run", "Train time / run", lambda _, info: _seconds(info["train_seconds_per_run"])),
        ("inference_ms_per_image", "Inference ms / image", lambda _, info: _num(info["inference_ms_per_image"])),
    ]
    return columns


def column_keys(summary: dict[str, Any]) -> list[str]:
    """The key of each column of :func:`table_rows` (``report.html`` tags its cells with them)."""
    return [key for key, _, _ in _columns(summary)]


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The header and one row of cells per model (study order), as every rendering of the table shows them."""
    columns = _columns(summary)
    header = [name for _, name, _ in columns]
    body = [[cell(label, info) for _, _, cell in columns] for label, info in summary["models"].items()]
    return header, body


def render_markdown(summary: dict[str, Any]) -> str:
    """``table.md``: one row per model in study order, then the footnote."""
    header, body = table_rows(summary)
    align = ["---", *["---:"] * (len(header) - 1)]
    lines = [f"# Study {summary['name'] or ''}".rstrip(), ""]
    lines += ["| " + " | ".join(row) + " |" for row in [header, align, *body]]
    return "\n".join([*lines, "", footnote(summary), ""])


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
    header, body = table_rows(summary)
    spec = "l" + "r" * (len(header) - 1)
    lines = [f"% study {summary['name'] or ''}: written by attnseg study report", rf"\begin{{tabular}}{{{spec}}}"]
    lines += [r"\toprule", " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(cell) for cell in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", "", r"{\footnotesize " + _tex(footnote(summary)) + "}", ""]
    return "\n".join(lines)
