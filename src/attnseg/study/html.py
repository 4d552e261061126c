"""``DIR/report.html``: a study's report as one self-contained page (:func:`write_html`, called by
:func:`attnseg.study.report.write_report` after ``summary.json`` and the tables).

The page holds, in order:

- **results**: the table of ``table.md`` (the same cells, built by the same code) with the baseline row marked, a
  dagger on the significant rows, the footnote and the significance note; then the paired comparisons against the
  baseline (pairs, mean difference of the per-case Dice with its bootstrap CI, Wilcoxon and Holm p-values);
- **per-case Dice**: a box plot per model of each validation case's mean foreground Dice (``results.csv``; the
  quantity the Wilcoxon test pairs), every case drawn as a dot, the mean as a diamond;
- **learning curves**: per model, the training loss and the validation mean Dice of every run against the
  iteration (``RUN/log.csv`` through :meth:`attnseg.runs.RunDir.read_log`);
- **overlays**: per model, its best, median and worst validation case by per-case mean foreground Dice: the image,
  and below it the prediction (``RUN/predictions/val/<case>.npz``, key ``labels``) filled with the ground truth
  outlined; a volume shows the axial slice with the most ground-truth foreground (as ``attnseg predict
  --overlay``);
- **settings**: the shared study settings, each model entry of ``study.yaml`` (model_kwargs, train overrides,
  recipe), and every resolved training option (``RUN/config.yaml``) or built model option (``RUN/model.json``)
  that differs between models;
- **jobs**: done, failed, unfinished and not started runs per model, with each failed run's error.

Self-contained: the figures are matplotlib PNGs (an Agg canvas per figure, no pyplot state) embedded as ``data:``
URIs, the style is inline, there is no script, and the page's Content-Security-Policy allows nothing else, so a
browser fetches nothing. Whatever is missing (a failed job, a run without log or predictions, a dataset that moved) is
said on the page instead of stopping the report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from attnseg.inference.overlay import PALETTE, blend, to_gray_uint8, to_ras
from attnseg.io import write_text
from attnseg.study.stats import case_values
from attnseg.study.summary import MEAN_FOREGROUND, StudyReportError, read_results, read_study
from attnseg.study.tables import DASH, column_keys, footnote, table_rows

__all__ = ["HTML_FILE", "render_html", "write_html"]

HTML_FILE = "report.html"
DPI = 80  # figures of about 6 x 3 in: ~480 x 240 px each keeps the page small
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# run configuration keys that differ between the runs of one model (or are the study's own): not model settings
_PER_RUN_KEYS = frozenset({"out", "fold", "seed", "data"})
_VAL_DICE = "val_dice/mean"  # the trainer's validation log column (mean over foreground classes)

CaseKey = tuple[str, int, str]  # (fold, seed, case), as in attnseg.study.stats

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:1.5rem auto;
max-width:1200px;padding:0 1rem;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
h3{margin-bottom:.3rem}nav a{margin-right:1rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right;white-space:nowrap}
th:first-child,td:first-child,table.settings td,table.settings th{text-align:left}
table.settings td{white-space:normal}
thead th{background:#f0f0f0}
tr.baseline{background:#f6f6f6;font-style:italic}
tr.significant th{font-weight:bold}
.footnote{font-size:.85rem;color:#444;max-width:60rem}
.note{padding:.5rem .75rem;border-left:4px solid #888;background:#f7f7f7;max-width:60rem}
.note.significant{border-color:#2e7d32}.note.not-significant{border-color:#b26a00}
.missing{color:#8a4b00}
.grid{display:flex;flex-wrap:wrap;gap:0 1.5rem}.card{flex:0 1 540px;min-width:0}
figure{margin:.5rem 0 1rem 0}figcaption{font-size:.85rem;color:#444;max-width:60rem}
img{max-width:100%;height:auto;border:1px solid #eee}
.swatch{display:inline-block;width:.8em;height:.8em;border:1px solid #333;margin:0 .2em 0 .6em;vertical-align:-.05em}
pre{background:#f7f7f7;padding:.5rem;overflow-x:auto;font-size:.85rem}
dl{display:grid;grid-template-columns:max-content auto;gap:.1rem 1rem}dt{font-weight:bold}dd{margin:0}
"""


# ---------------------------------------------------------------------------------------------------------------
# small helpers


def _e(value: Any) -> str:
    """Escaped text (quotes too: also used inside attributes)."""
    return html.escape(str(value), quote=True)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _inline(value: Any) -> str:
    """A setting's value on one line (YAML flow style); an empty mapping or None is a dash."""
    import yaml

    if value is None or value == {} or value == []:
        return DASH
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, list | tuple | Mapping):
        return str(value)
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``augment.flip``); lists stay values."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))  # an empty mapping sets nothing
        else:
            out[name] = value
    return out


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on its own Agg canvas (no pyplot: no global state, safe in any process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _data_uri(fig: Any, *, palette: bool = False) -> str:
    """The figure as a ``data:image/png;base64,`` URI.

    ``palette``: store a chart's few colours as a 256-colour palette (no dithering; a third of the bytes, the same
    picture). Overlays keep every colour: the classes are told apart by them.
    """
    from PIL import Image

    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")
    if palette:
        image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{_e(alt)}">{cap}</figure>'


def _grid(blocks: Mapping[str, str]) -> str:
    """One card per model (its name, then its content), side by side as the page's width allows."""
    cards = "".join(f'<div class="card"><h3>{_e(label)}</h3>{text}</div>' for label, text in blocks.items())
    return f'<div class="grid">{cards}</div>'


def _run_dirs(study_dir: Path, label: str) -> list[Path]:
    """``DIR/runs/<label>/<fold>_seed<seed>`` folders, sorted by name."""
    root = study_dir / "runs" / label
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------------------------------------------------------
# tables


def _results_table(summary: Mapping[str, Any]) -> str:

    header, body = table_rows(dict(summary))
    keys = column_keys(dict(summary))
    head = "".join(f'<th scope="col" data-key="{_e(k)}">{_e(h)}</th>' for k, h in zip(keys, header))
    lines = []
    for (label, info), row in zip(summary["models"].items(), body):
        classes = [
            c for c, on in (("baseline", info.get("is_baseline")), ("significant", info.get("significant"))) if on
        ]
        cells = f'<th scope="row" data-key="{_e(keys[0])}">{_e(row[0])}</th>'
        cells += "".join(f'<td data-key="{_e(k)}">{_e(v)}</td>' for k, v in zip(keys[1:], row[1:]))
        lines.append(f'<tr class="{" ".join(classes)}" data-model="{_e(label)}">{cells}</tr>')
    significant = any(info.get("significant") for info in summary["models"].values())
    kind = "significant" if significant else "not-significant"
    return (
        '<div class="scroll"><table id="results-table" class="results">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table></div>"
        f'<p class="footnote">{_e(footnote(dict(summary)))}</p>'
        f'<p class="note {kind}"><strong>Significance:</strong> {_e(summary.get("note") or "")}</p>'
    )


def _p_text(value: Any) -> str:

    return DASH if value is None else f"{value:.3g}"


def _points(value: Any) -> str:
    """A difference of Dice (fraction) in percentage points, signed."""

    return DASH if value is None else f"{100.0 * value:+.2f}"


def _ci_text(ci: Any) -> str:

    if not ci or any(v is None for v in ci):
        return DASH
    return f"{_points(ci[0])} to {_points(ci[1])}"


def _comparison_table(summary: Mapping[str, Any]) -> str:
    """The paired comparisons of each model with the baseline (numbers of ``summary.json``)."""

    classes = list(summary["classes"])
    others = [(label, info) for label, info in summary["models"].items() if not info.get("is_baseline")]
    if not others:
        return ""
    columns = [
        ("model", "Model"),
        ("n_pairs", "Pairs"),
        ("dice_difference_mean", "Δ Dice (points)"),
        ("dice_difference_ci95", "95 % CI (bootstrap)"),
        ("wilcoxon_p", "Wilcoxon p"),
        ("wilcoxon_p_holm", "Holm p"),
        *[(f"wilcoxon_p_holm:{c}", f"Holm p {c}") for c in classes],
    ]
    head = "".join(f'<th scope="col" data-key="{_e(k)}">{_e(h)}</th>' for k, h in columns)
    lines = []
    for label, info in others:
        p = info.get("wilcoxon_p") or {}
        holm = info.get("wilcoxon_p_holm") or {}
        values = {
            "n_pairs": "–" if info.get("n_pairs") is None else str(info["n_pairs"]),
            "dice_difference_mean": _points(info.get("dice_difference_mean")),
            "dice_difference_ci95": _ci_text(info.get("dice_difference_ci95")),
            "wilcoxon_p": _p_text(p.get(MEAN_FOREGROUND)),
            "wilcoxon_p_holm": _p_text(holm.get(MEAN_FOREGROUND)),
            **{f"wilcoxon_p_holm:{c}": _p_text(holm.get(c)) for c in classes},
        }
        mark = "†" if info.get("significant") else ""
        cells = f'<th scope="row" data-key="model">{_e(label + mark)}</th>'
        cells += "".join(f'<td data-key="{_e(k)}">{_e(values[k])}</td>' for k, _ in columns[1:])
        cls = "significant" if info.get("significant") else ""
        lines.append(f'<tr class="{cls}" data-model="{_e(label)}">{cells}</tr>')
    return (
        f"<h3>Paired comparisons with the baseline ({_e(summary['baseline'])})</h3>"
        '<div class="scroll"><table id="comparison-table" class="comparisons">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table></div>"
        '<p class="footnote">Δ Dice: mean over the paired validation cases of the model\'s per-case mean foreground '
        "Dice minus the baseline's, in percentage points, with its 95 % BCa bootstrap interval. Wilcoxon p: "
        "two-sided signed-rank test on the same pairs; Holm p: Holm-Bonferroni adjusted over the compared models "
        "(per class on that class's Dice). A dash: not computable (fewer than 2 pairs or no non-zero difference).</p>"
    )


# ---------------------------------------------------------------------------------------------------------------
# per-case Dice and the box plot


def _per_case(study_dir: Path, labels: Iterable[str]) -> tuple[dict[str, dict[CaseKey, float]], str | None]:
    """``{label: {(fold, seed, case): mean foreground Dice}}`` on the validation cases, as the Wilcoxon test pairs
    them (:func:`attnseg.study.stats.paired_cases`: undefined values left out of a case's mean)."""

    try:
        rows = read_results(study_dir / "results.csv")
    except StudyReportError as exc:
        return {label: {} for label in labels}, str(exc)
    return {label: case_values(rows, label, "dice", "val", None) for label in labels}, None


def _box_plot(summary: Mapping[str, Any], names: Mapping[str, str], per_case: Mapping[str, Mapping]) -> str:
    labels = [label for label in summary["models"] if per_case.get(label)]
    absent = [label for label in summary["models"] if not per_case.get(label)]
    if not labels:
        return _missing("no validation results in results.csv: nothing to plot")
    fig = _figure(max(4.0, min(12.0, 1.2 * len(labels) + 1.5)), 3.2)
    ax = fig.add_subplot()
    data = [100.0 * np.array(list(per_case[label].values())) for label in labels]
    boxes = ax.boxplot(
        data,
        widths=0.5,
        showfliers=False,  # every case is drawn as a dot below
        showmeans=True,
        patch_artist=True,
        medianprops={"color": "black"},
        meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 5},
    )
    for patch, label in zip(boxes["boxes"], labels):
        patch.set_facecolor("#d9d9d9" if summary["models"][label].get("is_baseline") else "#9ecae1")
    rng = np.random.default_rng(0)  # fixed jitter: the same study gives the same figure
    for i, values in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, values.size), values, s=9, color="#08519c", alpha=0.6, zorder=3)
    ticks = [names.get(label, label).replace(" (baseline)", "\n(baseline)") for label in labels]
    ax.set_xticks(range(1, len(labels) + 1), ticks, rotation=20 if len(labels) > 5 else 0, fontsize=8)
    ax.set_ylabel("per-case mean foreground Dice (%)", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    n = {label: len(per_case[label]) for label in labels}
    counts = ", ".join(f"{_e(label)}: {n[label]}" for label in labels)
    caption = (
        "Each validation case's Dice averaged over the foreground classes, out of fold, pooled over folds and seeds "
        f"(cases per model: {counts}). Box: quartiles and median; diamond: mean; dots: cases."
    )
    if absent:
        caption += f" No validation results for: {_e(', '.join(absent))}."
    return _img(_data_uri(fig, palette=True), "box plot of the per-case mean foreground Dice per model", caption)


# ---------------------------------------------------------------------------------------------------------------
# learning curves


def _read_curves(run_dir: Path) -> tuple[list[tuple[float, float]], list[tuple[float, float]]] | None:
    """``(loss points, validation Dice points)`` of a run's log; None when it has no readable log."""
    import csv

    from attnseg.runs import RunDir

    try:
        rows = RunDir(run_dir).read_log()
    except (OSError, csv.Error, ValueError, KeyError):
        return None
    loss, val = [], []
    for row in rows:
        it = _float(row.get("iteration"))
        if not math.isfinite(it):
            continue
        if math.isfinite(value := _float(row.get("loss"))):
            loss.append((it, value))
        if math.isfinite(value := _float(row.get(_VAL_DICE))):
            val.append((it, 100.0 * value))
    return (loss, val) if loss or val else None


def _learning_curves(study_dir: Path, label: str) -> str:
    from matplotlib.ticker import MaxNLocator

    runs = _run_dirs(study_dir, label)
    curves = {run.name: _read_curves(run) for run in runs}
    have = {name: c for name, c in curves.items() if c is not None}
    without = [name for name, c in curves.items() if c is None]
    if not have:
        return _missing(f"{label}: no training log" + (f" ({len(runs)} run folder(s) without log.csv)" if runs else ""))
    fig = _figure(6.0, 2.6)
    ax_loss, ax_val = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(have))]
    for colour, (name, (loss, val)) in zip(colours, have.items()):
        if loss:  # a short log gets markers: a single point draws no line
            marker = "o" if len(loss) <= 30 else None
            ax_loss.plot(*zip(*loss), color=colour, linewidth=1.2, marker=marker, markersize=2.5, label=name)
        if val:
            ax_val.plot(*zip(*val), color=colour, linewidth=1.2, marker="o", markersize=3, label=name)
    for ax, title in ((ax_loss, "training loss"), (ax_val, "validation mean Dice (%)")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if not any(val for _, val in have.values()):
        ax_val.text(0.5, 0.5, "no validation in the log", ha="center", va="center", transform=ax_val.transAxes)
    if len(have) <= 10:
        ax_val.legend(fontsize=6, loc="best")
    caption = f"{_e(label)}: one line per run ({len(have)} run(s))."
    if without:
        caption += f" No training log for: {_e(', '.join(without))}."
    return _img(_data_uri(fig, palette=True), f"learning curves of {label}", caption)


# ---------------------------------------------------------------------------------------------------------------
# overlays


def _picks(values: Mapping[CaseKey, float]) -> list[tuple[str, CaseKey, float]]:
    """``[(tag, key, Dice)]``: best, median and worst case (the lower median of an even count); one case picked
    twice gets both tags."""
    ordered = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
    if not ordered:
        return []
    chosen: dict[CaseKey, list[str]] = {}
    for tag, index in (("best", 0), ("median", len(ordered) // 2), ("worst", len(ordered) - 1)):
        chosen.setdefault(ordered[index][0], []).append(tag)
    return [(" = ".join(tags), key, values[key]) for key, tags in chosen.items()]


def _to_2d(
    image: np.ndarray, gt: np.ndarray, pred: np.ndarray | None, affine: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """2D arrays as they are; a volume's axial slice with the most ground-truth foreground (the prediction's when
    the ground truth is empty), in the radiological view when the affine is known, like
    :func:`attnseg.inference.overlay.save_overlay`."""

    if gt.ndim == 2:
        return image, gt, pred
    if affine is not None:
        image, gt, pred = to_ras([image, gt, pred], affine)
    ref = gt if gt.any() or pred is None else pred
    z = int(np.argmax((ref > 0).reshape(-1, ref.shape[-1]).sum(0)))

    def view(a: np.ndarray) -> np.ndarray:  # RAS (x, y) -> rows anterior first, columns patient right first
        return np.ascontiguousarray(np.swapaxes(a[..., z], -2, -1)[..., ::-1, ::-1])

    return view(image), view(gt), None if pred is None else view(pred)


def _base_rgb(image: np.ndarray, rgb: bool) -> np.ndarray:

    if rgb and image.shape[0] == 3:
        base = np.moveaxis(image, 0, -1)
        return base if base.dtype == np.uint8 else to_gray_uint8(base)
    return np.repeat(to_gray_uint8(image[0])[..., None], 3, axis=-1)


def _load_pick(dataset: Any, run_dir: Path, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """``(base RGB uint8, ground truth, prediction or None, why no prediction)``, all 2D."""
    from attnseg.data.io import read_image, read_label

    case = dataset.cases[case_id]
    arrays, meta = [], None
    for path in case.images:
        arr, m = read_image(path)
        arrays.append(arr)
        meta = meta or m
    image = np.concatenate(arrays, axis=0)
    gt, _ = read_label(case.label)
    pred, why = None, ""
    path = run_dir / "predictions" / "val" / f"{case_id}.npz"
    if not path.is_file():
        why = "prediction not kept"
    else:
        try:
            with np.load(path) as stored:
                pred = np.asarray(stored["labels"])
        except (OSError, ValueError, KeyError) as exc:
            why = f"prediction unreadable ({type(exc).__name__})"
        if pred is not None and pred.shape != gt.shape:
            pred, why = None, f"prediction grid {pred.shape} differs from the label's {gt.shape}"
    image, gt, pred = _to_2d(image, gt, pred, None if meta is None else meta.affine)
    return _base_rgb(image, bool(meta is not None and meta.rgb) or dataset.is_rgb), gt, pred, why


def _contours(ax: Any, gt: np.ndarray) -> None:
    """The ground truth's outline, class by class in its palette colour, on a dark halo."""
    from matplotlib import patheffects

    halo = [patheffects.withStroke(linewidth=2.6, foreground="black")]
    for value in np.unique(gt):
        mask = gt == value
        if value == 0 or mask.all():
            continue
        colour = PALETTE[(int(value) - 1) % len(PALETTE)] / 255.0
        contour = ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.3)
        contour.set_path_effects(halo)


def _overlays(study_dir: Path, label: str, values: Mapping[CaseKey, float], dataset: Any) -> str:

    picks = _picks(values)
    if not picks:
        return _missing(f"{label}: no validation case with a Dice value")
    panels, notes = [], []
    for tag, (fold, seed, case_id), dice in picks:
        run_name = f"{fold}_seed{seed}"
        try:
            base, gt, pred, why = _load_pick(dataset, study_dir / "runs" / label / run_name, case_id)
        except Exception as exc:  # noqa: BLE001 - a case that cannot be read leaves its panel out, said on the page
            notes.append(f"{tag} ({case_id}, {run_name}): not shown ({type(exc).__name__}: {exc})")
            continue
        if why:
            notes.append(f"{run_name}: {why} ({case_id})")
        panels.append((tag, fold, seed, case_id, dice, base, gt, pred, why))
    if not panels:
        return "".join(_missing(f"{label}: {n}") for n in notes)
    aspect = float(np.clip(panels[0][5].shape[0] / max(panels[0][5].shape[1], 1), 0.6, 1.5))
    fig = _figure(max(2.0 * len(panels), 3.0), 2 * 1.9 * aspect + 0.45)
    axes = fig.subplots(2, len(panels), squeeze=False)
    for col, (tag, fold, seed, case_id, dice, base, gt, pred, why) in enumerate(panels):
        top, bottom = axes[0][col], axes[1][col]
        top.imshow(base, interpolation="nearest")
        top.set_title(f"{tag}: {case_id}\n{fold}, seed {seed}, Dice {100 * dice:.1f} %", fontsize=7)
        bottom.imshow(base if pred is None else blend(base, pred), interpolation="nearest")
        _contours(bottom, gt)
        if pred is None:
            bottom.text(0.5, 0.04, why, ha="center", va="bottom", fontsize=6, color="white",
                        transform=bottom.transAxes, bbox={"facecolor": "black", "alpha": 0.6, "pad": 2})  # fmt: skip
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    caption = (
        f"{_e(label)}: best, median and worst validation case by per-case mean foreground Dice. Top: the image; "
        f"bottom: the prediction (filled) and the ground truth (outlined). {_legend(dataset)}"
    )
    if notes:
        caption += " " + _e("; ".join(notes)) + "."
    return _img(_data_uri(fig), f"overlays of {label}", caption)


def _legend(dataset: Any) -> str:

    items = []
    for value, name in sorted(dataset.label_names.items()):
        if value == 0:
            continue
        r, g, b = (int(c) for c in PALETTE[(int(value) - 1) % len(PALETTE)])
        items.append(f'<span class="swatch" style="background:rgb({r},{g},{b})"></span>{_e(name)}')
    return "Classes:" + "".join(items) if items else ""


def _overlay_section(study_dir: Path, study: Mapping[str, Any], labels: list[str], per_case: Mapping) -> str:
    from attnseg.data.layout import load_dataset

    path = study.get("dataset")
    try:
        dataset = load_dataset(path)
    except Exception as exc:  # noqa: BLE001 - a moved or broken dataset leaves the overlays out, said on the page
        return _missing(f"the dataset {path} cannot be read ({type(exc).__name__}: {exc}): no overlays")
    return _grid({label: _overlays(study_dir, label, per_case.get(label, {}), dataset) for label in labels})


# ---------------------------------------------------------------------------------------------------------------
# settings and jobs


def _resolved_settings(study_dir: Path, label: str) -> dict[str, Any] | None:
    """The first run's resolved training options (``config.yaml``) and built model (``model.json``), flattened;
    None without any run configuration."""
    import yaml

    from attnseg.runs import RunDir, RunError

    for run_dir in _run_dirs(study_dir, label):
        run = RunDir(run_dir)
        try:
            cfg = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(cfg, dict):
            continue
        flat = {k: v for k, v in _flatten(cfg).items() if k.split(".")[0] not in _PER_RUN_KEYS}
        try:
            build = run.read_model()
        except RunError:
            build = {}
        built = {k: build[k] for k in ("kwargs", "slab_size", "spatial_dims") if k in build}
        flat.update({f"model.json: {k}": v for k, v in _flatten(built).items()})
        return flat
    return None


def _same(values: list[Any]) -> bool:
    return len({json.dumps(v, sort_keys=True, default=str) for v in values}) <= 1


def _settings_section(study_dir: Path, study: Mapping[str, Any], labels: list[str]) -> str:
    import yaml

    shared = study.get("train") or {}
    info = [
        ("name", study.get("name")),
        ("dataset", study.get("dataset")),
        ("folds", ", ".join(map(str, study.get("folds") or [])) or DASH),
        ("seeds", ", ".join(map(str, study.get("seeds") or [])) or DASH),
        ("baseline", study.get("baseline") or labels[0]),
        ("protocol", study.get("protocol")),
    ]
    out = ["<h3>Study</h3><dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(_inline(v))}</dd>" for k, v in info) + "</dl>"]
    out.append("<p>Training settings shared by every model (the study's <code>train</code>):</p>")
    out.append(f"<pre>{_e(yaml.safe_dump(shared, sort_keys=False).strip())}</pre>" if shared else "<p>none</p>")

    rows = []
    for entry in study.get("models") or []:
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        label = str(entry.get("label") or entry.get("name"))
        cells = [entry.get("name"), entry.get("model_kwargs"), entry.get("train"), entry.get("recipe")]
        rows.append(f"<tr><th>{_e(label)}</th>" + "".join(f"<td>{_e(_inline(c))}</td>" for c in cells) + "</tr>")
    out.append(
        "<h3>Model entries (study.yaml)</h3>"
        '<div class="scroll"><table class="settings" id="entries-table"><thead><tr><th>Label</th><th>Model</th>'
        "<th>model_kwargs</th><th>train overrides</th><th>recipe</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )

    resolved = {label: _resolved_settings(study_dir, label) for label in labels}
    known = {label: s for label, s in resolved.items() if s is not None}
    out.append("<h3>Resolved settings that differ between models</h3>")
    if len(known) < 2:
        out.append(
            "<p>Fewer than two models have a run configuration (<code>config.yaml</code>): nothing to compare.</p>"
        )
    else:
        keys = list(dict.fromkeys(k for s in known.values() for k in s))
        differ = [k for k in keys if not _same([s.get(k, DASH) for s in known.values()])]
        if not differ:
            out.append("<p>The models' runs use the same resolved settings apart from the model itself.</p>")
        else:
            head = "".join(f"<th>{_e(label)}</th>" for label in known)
            body = "".join(
                f"<tr><th>{_e(k)}</th>" + "".join(f"<td>{_e(_inline(s.get(k, DASH)))}</td>" for s in known.values())
                for k in differ
            )
            out.append(
                '<div class="scroll"><table class="settings" id="differences-table">'
                f"<thead><tr><th>Setting</th>{head}</tr></thead><tbody>{body}</tbody></table></div>"
                '<p class="footnote">From each model\'s first run: the training options it ran with '
                "(<code>config.yaml</code>: recipe, then the study's <code>train</code>, then the entry's) and the "
                "options the network was built with (<code>model.json</code>). A dash: the option is not set.</p>"
            )
    absent = [label for label, s in resolved.items() if s is None]
    if absent:
        out.append(_missing(f"no run configuration for: {', '.join(absent)}"))
    return "".join(out)


def _jobs_section(study_dir: Path, summary: Mapping[str, Any]) -> str:
    rows, failures = [], []
    columns = ("done", "failed", "unfinished", "not started")
    for label, info in summary["models"].items():
        counts = dict.fromkeys(columns, 0)
        for status, n in (info.get("jobs") or {}).items():
            counts[status if status in counts else "unfinished"] += n
        for run_dir in _run_dirs(study_dir, label):
            job = _read_json(run_dir / "study_job.json")
            if job is not None and job.get("status") == "failed":
                failures.append(f"<li><code>{_e(label)}/{_e(run_dir.name)}</code>: {_e(job.get('error') or '')}</li>")
        rows.append(f"<tr><th>{_e(label)}</th>" + "".join(f"<td>{counts[k]}</td>" for k in columns) + "</tr>")
    head = "".join(f"<th>{k}</th>" for k in columns)
    table = (
        f'<table class="jobs" id="jobs-table"><thead><tr><th>Model</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    listed = f"<p>Failed runs (left out of every number above):</p><ul>{''.join(failures)}</ul>" if failures else ""
    return table + listed


# ---------------------------------------------------------------------------------------------------------------
# the page


def render_html(study_dir: str | os.PathLike, summary: Mapping[str, Any]) -> str:
    """The report page of a study directory.

    Args:
        study_dir: the study directory (reads ``study.yaml``, ``results.csv``, the run folders and the dataset).
        summary: its summary (:func:`attnseg.study.report.summarize`, as written to ``summary.json``).

    Returns:
        One self-contained HTML document (figures as PNG data URIs, no script, no external resource).
    """

    study_dir = Path(study_dir)
    try:
        study = read_study(study_dir)
    except StudyReportError:
        study = {"name": summary.get("name"), "models": [{"name": label} for label in summary["models"]]}
    labels = list(summary["models"])
    _, body = table_rows(dict(summary))
    names = {label: row[0] for label, row in zip(labels, body)}
    title = f"Study {summary.get('name') or ''}".strip()
    runs = f"{len(summary.get('folds') or [])} fold(s) × {len(summary.get('seeds') or [])} seed(s)"

    per_case, results_problem = _per_case(study_dir, labels)
    box = _missing(results_problem) if results_problem else _box_plot(summary, names, per_case)
    curves = _grid({label: _learning_curves(study_dir, label) for label in labels})
    overlays = _overlay_section(study_dir, study, labels, per_case)

    sections = [
        ("results", "Results", _results_table(summary) + _comparison_table(summary)),
        ("per-case", "Per-case Dice", box),
        ("curves", "Learning curves", curves),
        ("overlays", "Overlays", overlays),
        ("settings", "Settings", _settings_section(study_dir, study, labels)),
        ("jobs", "Jobs", _jobs_section(study_dir, summary)),
    ]
    nav = "".join(f'<a href="#{key}">{_e(name)}</a>' for key, name, _ in sections)
    content = "".join(f'<section id="{key}"><h2>{_e(name)}</h2>{text}</section>' for key, name, text in sections)
    intro = (
        f"<p>{_e(summary.get('n_cases'))} validation case(s), {_e(runs)}, baseline "
        f"<strong>{_e(summary.get('baseline'))}</strong>, protocol {_e(summary.get('protocol') or '–')}. "
        "Written by <code>attnseg study report</code>.</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{_e(title)}</h1>\n{intro}\n<nav>{nav}</nav>\n{content}\n</body>\n</html>\n"
    )


def write_html(study_dir: str | os.PathLike, summary: Mapping[str, Any]) -> Path:
    """Write ``DIR/report.html`` (atomically) and return its path."""
    return write_text(Path(study_dir) / HTML_FILE, render_html(study_dir, summary))
