"""``DIR/report.html``: self-contained, its tables equal ``summary.json``, missing pieces said, and a real browser
renders it without a console message."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import test_report
import yaml
from PIL import Image

from attnseg.data.io import read_label
from attnseg.data.layout import load_dataset
from attnseg.runs import RunDir
from attnseg.study.html import _picks, render_html
from attnseg.study.report import write_report

study_dir = test_report.study_dir  # the hand-made four-model study of the report tests (no dataset, no runs' files)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DASH = "–"
FOLD_CASES = {"fold0": ["img000", "img001", "img002"], "fold1": ["img003", "img004", "img005"]}
SHIFTS = {"unet": {"fold0": [0, 3, 6], "fold1": [1, 4, 8]}, "malunet": {"fold0": [0, 1, 2], "fold1": [1, 1, 3]}}


# ---------------------------------------------------------------------------------------------------------------
# a study directory as the runner leaves it, on the synthetic RGB dataset, without training


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    both = (pred > 0).sum() + (gt > 0).sum()
    return 1.0 if both == 0 else float(2 * ((pred > 0) & (gt > 0)).sum() / both)


@pytest.fixture
def made_study(rgb_dataset: Path, tmp_path: Path) -> Path:
    """Two models with logs, configurations and predictions (the shifted ground truth) on two folds, except that
    ``malunet``'s fold1 run kept no predictions; a third model whose fold0 job failed and fold1 job never ended."""
    root = tmp_path / "made"
    info = load_dataset(rgb_dataset)
    models = [
        {"name": "unet", "label": "unet", "model_kwargs": {"width": 4}, "train": {}, "recipe": None},
        {"name": "malunet", "label": "malunet", "model_kwargs": {}, "train": {"lr": 0.005}, "recipe": None},
        {"name": "ja_denseunet_small", "label": "broken", "model_kwargs": {}, "train": {}, "recipe": None},
    ]
    study = {"name": "made", "dataset": str(rgb_dataset), "folds": list(FOLD_CASES), "seeds": [0],
             "baseline": "unet", "protocol": "strict", "train": {"iterations": 6, "input_size": [32, 32]},
             "models": models}  # fmt: skip
    root.mkdir()
    (root / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    rows = []
    for label, shifts in SHIFTS.items():
        lr = 0.005 if label == "malunet" else 0.01
        for fold, cases in FOLD_CASES.items():
            run = RunDir(root / "runs" / label / f"{fold}_seed0")
            history = []
            for it in range(1, 7):
                row = {"iteration": it, "loss": 2.0 / it + (0.1 if label == "unet" else 0.0), "lr": lr, "seconds": it}
                if it % 2 == 0:
                    row |= {"val_dice/lesion": 0.1 * it, "val_dice/mean": 0.1 * it}
                history.append(row)
            run.path.mkdir(parents=True)
            run.write_log(history, append=False)
            kwargs = {"width": 4} if label == "unet" else {}
            config = {"model": label, "model_kwargs": kwargs, "data": str(rgb_dataset), "out": str(run.path),
                      "fold": fold, "seed": 0, "iterations": 6, "lr": lr, "augment": {"flip": 0.5}}  # fmt: skip
            (run.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            build = {"name": label, "in_channels": 3, "num_classes": 2, "kwargs": kwargs}
            (run.path / "model.json").write_text(json.dumps(build))
            for case, shift in zip(cases, shifts[fold]):
                gt, _ = read_label(info.cases[case].label)
                pred = np.roll(gt, shift, axis=1)
                if not (label == "malunet" and fold == "fold1"):
                    (run.path / "predictions" / "val").mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(run.path / "predictions" / "val" / f"{case}.npz", labels=pred)
                d = _dice(pred, gt)
                for metric, value in (("dice", d), ("iou", d / (2 - d)), ("hd95", float(shift))):
                    rows.append([label, fold, 0, "val", case, "lesion", metric, repr(value)])
            job = {"label": label, "model": label, "fold": fold, "seed": 0, "status": "done", "error": None,
                   "train_seconds": 12.5, "predict_seconds": 0.3, "images": 3}  # fmt: skip
            (run.path / "study_job.json").write_text(json.dumps(job))
    failed = root / "runs" / "broken" / "fold0_seed0"
    failed.mkdir(parents=True)
    error = "RuntimeError: out of memory (simulated)"
    job = {"label": "broken", "fold": "fold0", "seed": 0, "status": "failed", "error": error}
    (failed / "study_job.json").write_text(json.dumps(job))
    (root / "runs" / "broken" / "fold1_seed0").mkdir(parents=True)  # killed before anything was written
    with open(root / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "fold", "seed", "split", "case", "label", "metric", "value"])
        writer.writerows(rows)
    (root / "costs.json").write_text(json.dumps({"unet": {"params": 31_400, "macs": 2.1e6},
                                                 "malunet": {"params": 176_000, "macs": None}}))  # fmt: skip
    return root


# ---------------------------------------------------------------------------------------------------------------
# reading the page back


class Page(HTMLParser):
    """Tables (by id: ``{data-model: {data-key: text}}``), images, every link and tag, and the visible text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict[str, dict[str, str]]] = {}
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.meta: list[dict[str, str]] = []
        self.text: list[str] = []
        self._table: str | None = None
        self._row: str | None = None
        self._cell: str | None = None
        self._buf: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        for key in ("src", "href", "srcset", "action", "poster", "data"):
            if key in a and tag != "img":
                self.links.append(a[key])
        if tag == "img":
            self.images.append(a)
        elif tag == "meta":
            self.meta.append(a)
        elif tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = {}
        elif tag == "tr" and self._table is not None and "data-model" in a:
            self._row = a["data-model"]
            self.tables[self._table][self._row] = {}
        elif tag in ("td", "th") and self._row is not None and "data-key" in a:
            self._cell, self._buf = a["data-key"], []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][self._row][self._cell] = "".join(self._buf).strip()
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._buf.append(data)

    @property
    def plain(self) -> str:
        return " ".join(" ".join(self.text).split())


def _report(root: Path) -> tuple[dict, Page, str]:
    summary = write_report(root)
    text = (root / "report.html").read_text(encoding="utf-8")
    return summary, Page(text), text


def _decode_png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    data = base64.b64decode(src[len(prefix) :], validate=True)
    assert data.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and image.width > 0 and image.height > 0
    return image


def _assert_self_contained(page: Page, text: str) -> None:
    assert not {"script", "link", "iframe", "object", "embed", "base"} & page.tags
    assert all(link.startswith("#") for link in page.links), page.links
    assert "http://" not in text and "https://" not in text and "url(" not in text
    csp = [m["content"] for m in page.meta if m.get("http-equiv", "").lower() == "content-security-policy"]
    assert csp and "default-src 'none'" in csp[0]
    for image in page.images:
        _decode_png(image["src"])
        assert image.get("alt")


# ---------------------------------------------------------------------------------------------------------------
# the numbers: recomputed from summary.json, formatted as the tables describe them


def _f(value: float | None, scale: float = 1.0) -> str:
    return DASH if value is None else f"{value * scale:.2f}"


def _pm(info: dict, metric: str, scale: float) -> str:
    mean = info["mean"]["mean_foreground"][metric]
    std = info["std_over_folds"]["mean_foreground"][metric]
    if mean is None:
        return DASH
    return _f(mean, scale) if std is None else f"{_f(mean, scale)} ± {_f(std, scale)}"


def _time(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _expected_results(summary: dict) -> dict[str, dict[str, tuple[str, float | None, float]]]:
    """``{label: {data-key: (text, value, tolerance)}}``; value None for a text-only cell."""
    out = {}
    for label, info in summary["models"].items():
        name = label + ("†" if info["significant"] else "") + (" (baseline)" if info["is_baseline"] else "")
        mf = info["mean"]["mean_foreground"]
        cells = {
            "model": (name, None, 0),
            "params": (_f(info["params"], 1e-6), info["params"] and info["params"] * 1e-6, 0.005),
            "macs": (_f(info["macs"], 1e-9), info["macs"] and info["macs"] * 1e-9, 0.005),
            "dice": (_pm(info, "dice", 100.0), mf["dice"] and 100 * mf["dice"], 0.005),
            "hd95": (_pm(info, "hd95", 1.0), mf.get("hd95"), 0.005),
            "train_seconds_per_run": (_time(info["train_seconds_per_run"]), None, 0),
            "inference_ms_per_image": (_f(info["inference_ms_per_image"]), info["inference_ms_per_image"], 0.005),
        }
        for c in summary["classes"]:
            value = info["mean"][c]["dice"]
            cells[f"dice:{c}"] = (_f(value, 100.0), value and 100 * value, 0.005)
        if summary["has_test"]:  # the fold ensemble's test Dice when there is one, else the folds' pooled
            kind = ("test_ensemble_mean", "test_ensemble_std_over_seeds")
            if not summary["has_test_ensemble"]:
                kind = ("test_mean", "test_std_over_folds")
            test = {"mean": info[kind[0]], "std_over_folds": info[kind[1]]}
            value = test["mean"]["mean_foreground"]["dice"]
            cells["test_dice"] = (_pm(test, "dice", 100.0), value and 100 * value, 0.005)
        out[label] = cells
    return out


def _p(value: float | None) -> str:
    return DASH if value is None else f"{value:.3g}"


def _pts(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:+.2f}"


def _expected_comparisons(summary: dict) -> dict[str, dict[str, str]]:
    out = {}
    for label, info in summary["models"].items():
        if info["is_baseline"]:
            continue
        ci = info["dice_difference_ci95"]
        out[label] = {
            "model": label + ("†" if info["significant"] else ""),
            "n_pairs": DASH if info["n_pairs"] is None else str(info["n_pairs"]),
            "dice_difference_mean": _pts(info["dice_difference_mean"]),
            "dice_difference_ci95": DASH if not ci or None in ci else f"{_pts(ci[0])} to {_pts(ci[1])}",
            "wilcoxon_p": _p(info["wilcoxon_p"]["mean_foreground"]),
            "wilcoxon_p_holm": _p(info["wilcoxon_p_holm"]["mean_foreground"]),
            **{f"wilcoxon_p_holm:{c}": _p(info["wilcoxon_p_holm"][c]) for c in summary["classes"]},
        }
    return out


def _assert_numbers_equal_summary(root: Path, page: Page) -> None:
    summary = json.loads((root / "summary.json").read_text())
    table = page.tables["results-table"]
    expected = _expected_results(summary)
    assert list(table) == list(summary["models"])
    for label, cells in expected.items():
        assert set(table[label]) == set(cells), label
        for key, (text, value, tolerance) in cells.items():
            assert table[label][key] == text, (label, key)
            if value is not None:  # and the number shown is the summary's value, rounded
                assert float(text.split("±")[0]) == pytest.approx(value, abs=tolerance), (label, key)
    assert page.tables.get("comparison-table", {}) == _expected_comparisons(summary)
    # the same cells as table.md, row by row
    md = [line for line in (root / "table.md").read_text().splitlines() if line.startswith("|")][2:]
    md_cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md]
    assert [list(row.values()) for row in table.values()] == md_cells
    footnote = next(line for line in (root / "table.md").read_text().splitlines() if line.startswith("†"))
    assert " ".join(footnote.split()) in page.plain
    assert f"Significance: {summary['note']}" in page.plain


# ---------------------------------------------------------------------------------------------------------------
# tests


def test_report_html_is_self_contained_and_complete(made_study: Path) -> None:
    summary, page, text = _report(made_study)
    _assert_self_contained(page, text)
    alts = [image["alt"] for image in page.images]
    assert alts == [
        "box plot of the per-case mean foreground Dice per model",
        "learning curves of unet",
        "learning curves of malunet",
        "overlays of unet",
        "overlays of malunet",
    ]
    overlay = _decode_png(page.images[3]["src"])
    assert overlay.width > 200 and overlay.height > 200
    assert len(text.encode()) < 1_000_000  # small enough to mail
    plain = page.plain
    # the baseline row marked, nothing significant with three pairs: said honestly
    assert page.tables["results-table"]["unet"]["model"] == "unet (baseline)"
    assert summary["note"].startswith("no model differs significantly")
    # the missing pieces are said, not fatal
    assert "broken: no training log (2 run folder(s) without log.csv)" in plain
    assert "fold1_seed0: prediction not kept" in plain
    assert "broken/fold0_seed0 : RuntimeError: out of memory (simulated)" in plain
    assert "no run configuration for: broken" in plain
    assert "Model done failed unfinished not started unet 2 0 0 0 malunet 2 0 0 0 broken 0 1 1 0" in plain  # jobs


def test_settings_that_differ_between_models_are_listed(made_study: Path) -> None:
    _, page, text = _report(made_study)
    plain = page.plain
    assert "{width: 4}" in plain and "{lr: 0.005}" in plain  # the study.yaml entries
    assert "iterations: 6" in text  # the shared train mapping
    differences = text[text.index('id="differences-table"') : text.index("</table>", text.index('id="differences'))]
    for setting in ("model", "model_kwargs.width", "lr", "model.json: kwargs.width"):
        assert f"<th>{setting}</th>" in differences
    for same in ("iterations", "augment.flip", "fold", "out", "seed", "data"):
        assert f"<th>{same}</th>" not in differences


def test_table_numbers_equal_summary_json(made_study: Path, study_dir: Path) -> None:
    _, page, _ = _report(made_study)
    _assert_numbers_equal_summary(made_study, page)
    summary, page, text = _report(study_dir)  # four models, one significant, an undefined HD95, no dataset, no logs
    _assert_numbers_equal_summary(study_dir, page)
    row = page.tables["results-table"]["better"]
    assert row["model"] == "better†" and summary["models"]["better"]["significant"]
    assert 'class="significant" data-model="better"' in text and 'class="baseline" data-model="unet"' in text
    assert page.tables["results-table"]["better"]["macs"] == DASH
    _assert_self_contained(page, text)
    assert [image["alt"] for image in page.images] == ["box plot of the per-case mean foreground Dice per model"]
    assert "cannot be read" in page.plain and "no overlays" in page.plain  # study.yaml names no dataset


def test_picks_best_median_worst() -> None:
    values = {("fold0", 0, f"c{i}"): v for i, v in enumerate([0.5, 0.9, 0.1, 0.7, 0.3])}
    assert [(tag, key[2]) for tag, key, _ in _picks(values)] == [("best", "c1"), ("median", "c0"), ("worst", "c2")]
    four = {("fold0", 0, f"c{i}"): v for i, v in enumerate([0.4, 0.8, 0.2, 0.6])}
    assert [key[2] for _, key, _ in _picks(four)] == ["c1", "c0", "c2"]  # the lower of the two middle values
    assert [tag for tag, _, _ in _picks({("fold0", 0, "a"): 0.5})] == ["best = median = worst"]
    assert _picks({}) == []


def test_report_of_a_real_study_draws_every_run(rgb_dataset: Path, tmp_path: Path) -> None:
    """The runner's own files: log.csv, config.yaml and the predictions it keeps (one model, one fold)."""
    from attnseg.study.runner import run_study

    train = {"iterations": 2, "batch_size": 2, "input_size": [32, 32], "num_workers": 0, "val_every": 1}
    study = {"name": "tiny", "dataset": str(rgb_dataset), "folds": [0], "seeds": [0], "baseline": "unet",
             "train": train, "models": [{"name": "unet", "model_kwargs": {"width": 4}}]}  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert run_study(path, tmp_path / "out", progress=False) == []
    text = (tmp_path / "out" / "report.html").read_text()
    page = Page(text)
    _assert_self_contained(page, text)
    assert [image["alt"] for image in page.images] == [
        "box plot of the per-case mean foreground Dice per model",
        "learning curves of unet",
        "overlays of unet",
    ]
    assert "not kept" not in page.plain and "no training log" not in page.plain
    _assert_numbers_equal_summary(tmp_path / "out", page)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert render_html(tmp_path / "out", summary) == text  # deterministic: the same study gives the same page


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_chromium_renders_the_report(made_study: Path, tmp_path: Path) -> None:
    binary = _browser()
    if binary is None:
        if os.environ.get("ATTNSEG_SKIP_BROWSER") == "1":
            pytest.skip("no Chromium and ATTNSEG_SKIP_BROWSER=1")
        pytest.fail("Chromium not found (Debian package `chromium`; .ci/run installs it); ATTNSEG_SKIP_BROWSER=1 skips")
    write_report(made_study)
    shot = tmp_path / "report.png"
    command = [
        binary,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        (made_study / "report.html").resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    # The page has no script, so any console message is a problem: a Content-Security-Policy violation (something
    # the page tried to fetch), a failed load. The rest of stderr is the sandbox's D-Bus / GPU noise.
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], "\n".join(console)
    for marker in ("Uncaught", "Content Security Policy", "net::ERR_", "Failed to load"):
        assert marker not in done.stderr, marker
    image = Image.open(shot)
    assert image.size == (1200, 2000)
    colours = image.convert("RGB").getcolors(maxcolors=1200 * 2000)
    assert len(colours) > 100  # text, tables and figures; a blank or failed page is one or two colours
