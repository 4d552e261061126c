"""``attnseg study report``: the paired statistics and the tables, on a small hand-made study directory."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml

from attnseg.study.report import write_report
from attnseg.study.stats import bootstrap_ci, holm, paired_cases, wilcoxon_p
from attnseg.study.summary import read_results, summarize

CLASSES = ["liver", "tumor"]
FOLDS = ["fold0", "fold1"]
SEEDS = [0]
CASES = {"fold0": [f"case_{i:02d}" for i in range(6)], "fold1": [f"case_{i:02d}" for i in range(6, 12)]}
LABELS = ["unet", "better", "same", "noisy"]
BASELINE = "unet"


# ---------------------------------------------------------------------------------------------------------------
# the hand-made study directory


def _study_rows() -> list[dict]:
    """Baseline Dice per case; ``better`` is 8-12 points better on every case, ``same`` equals the baseline,
    ``noisy`` differs by small differences of both signs; one HD95 is undefined; a small test split."""
    rng = np.random.default_rng(7)
    rows = []
    noise = rng.normal(0.0, 0.01, size=(12, 2))
    gain = rng.uniform(0.08, 0.12, size=(12, 2))  # distinct: no ties, so scipy uses its exact distribution
    for fold in FOLDS:
        for seed in SEEDS:
            for case in CASES[fold]:
                i = int(case[-2:])
                for c, cls in enumerate(CLASSES):
                    base = 0.6 + 0.02 * i + 0.05 * c + 0.003 * (i % 3)
                    dice = {
                        "unet": base,
                        "better": base + gain[i, c],
                        "same": base,
                        "noisy": base + noise[i, c],
                    }
                    for label in LABELS:
                        d = dice[label]
                        hd = 20.0 * (1.0 - d) + c
                        values = {"dice": d, "iou": d / (2 - d), "hd95": math.nan if (i, c) == (3, 1) else hd}
                        for metric, value in values.items():
                            rows.append(dict(model=label, fold=fold, seed=seed, split="val", case=case, label=cls,
                                             metric=metric, value=value))  # fmt: skip
    for label in ("unet", "better"):
        for fold in FOLDS:
            for case in ("test_a", "test_b"):
                for c, cls in enumerate(CLASSES):
                    d = 0.7 + 0.1 * c + (0.05 if label == "better" else 0.0) + (0.01 if fold == "fold1" else 0.0)
                    for metric, value in {"dice": d, "iou": d / (2 - d), "hd95": 5.0 + c}.items():
                        rows.append(dict(model=label, fold=fold, seed=0, split="test", case=case, label=cls,
                                         metric=metric, value=value))  # fmt: skip
    return rows


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    root.mkdir()
    study = {
        "name": "toy",
        "baseline": BASELINE,
        "protocol": "strict",
        "train": {"input_size": [64, 64]},
        "models": [
            {"name": "unet"},
            {"name": "mdsa_unet", "label": "better", "model_kwargs": {"n_win": "auto"}},
            {"name": "unet", "label": "same"},
            {"name": "msa2net", "label": "noisy"},
        ],
    }
    (root / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    with open(root / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "fold", "seed", "split", "case", "label", "metric", "value"])
        for r in _study_rows():
            value = "" if isinstance(r["value"], float) and math.isnan(r["value"]) else repr(float(r["value"]))
            writer.writerow([r["model"], r["fold"], r["seed"], r["split"], r["case"], r["label"], r["metric"], value])
    costs = {
        "unet": {"params": 1_234_567, "macs": 2.5e9},
        "better": {"params": 3_000_000, "macs": None},
        "same": {"params": 1_234_567, "macs": 2.5e9},
        "noisy": {"params": 2_100_000, "macs": 4.75e9},
    }
    (root / "costs.json").write_text(json.dumps(costs))
    for k, label in enumerate(LABELS):
        for j, fold in enumerate(FOLDS):
            times = {"train_seconds": 30.0 + 40 * k + 10 * j, "predict_seconds": 1.5 + j, "images": 100 + 20 * j}
            job = {"label": label, "model": label, "fold": fold, "seed": 0, "status": "done", "error": None, **times}
            run = root / "runs" / label / f"{fold}_seed0"
            run.mkdir(parents=True)
            (run / "study_job.json").write_text(json.dumps(job))
    failed = root / "runs" / "unet" / "fold0_seed1"  # a failed job counts in no time
    failed.mkdir(parents=True)
    (failed / "study_job.json").write_text(
        json.dumps({"label": "unet", "fold": "fold0", "seed": 1, "status": "failed", "train_seconds": 1e6})
    )
    return root


def _csv_rows(root: Path) -> list[dict]:
    with open(root / "results.csv", newline="") as fh:
        return [{**r, "value": float(r["value"]) if r["value"] else math.nan} for r in csv.DictReader(fh)]


def _per_case(rows: list[dict], label: str, cls: str | None, split: str = "val") -> dict[tuple, float]:
    """Recompute: per (fold, seed, case) Dice of one class or the mean over classes."""
    acc: dict[tuple, list[float]] = {}
    for r in rows:
        if r["model"] == label and r["split"] == split and r["metric"] == "dice" and cls in (None, r["label"]):
            acc.setdefault((r["fold"], int(r["seed"]), r["case"]), []).append(r["value"])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _scipy_p(rows: list[dict], label: str, cls: str | None) -> float:
    a, b = _per_case(rows, label, cls), _per_case(rows, BASELINE, cls)
    keys = sorted(a.keys() & b.keys())
    return float(scipy.stats.wilcoxon([a[k] for k in keys], [b[k] for k in keys]).pvalue)


# ---------------------------------------------------------------------------------------------------------------
# stats


def test_wilcoxon_p_is_scipy_default() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0.8, 0.05, 12)
    y = x - rng.normal(0.02, 0.03, 12)
    assert wilcoxon_p(x, y) == scipy.stats.wilcoxon(x, y).pvalue  # exact distribution (n < 50, no ties)
    x2, y2 = np.round(x[:8], 2), np.round(y[:8], 2)  # ties or zeros with n <= 13: scipy's permutation test
    assert len(set(np.abs(x2 - y2))) < 8
    assert wilcoxon_p(x2, y2) == scipy.stats.wilcoxon(x2, y2).pvalue
    big_x, big_y = rng.normal(0, 1, 80), rng.normal(0.2, 1, 80)
    assert wilcoxon_p(big_x, big_y) == scipy.stats.wilcoxon(big_x, big_y).pvalue
    assert math.isnan(wilcoxon_p([0.5], [0.4]))  # fewer than 2 pairs
    assert math.isnan(wilcoxon_p([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]))  # all differences zero
    with pytest.raises(ValueError, match="equal length"):
        wilcoxon_p([1.0, 2.0], [1.0])


def test_holm_matches_hand_computation() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(0.06, 1*0.04)
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    out = holm({"a": 0.01, "b": math.nan, "c": 0.04})  # NaN passed through, m = 2
    assert out["a"] == pytest.approx(0.02) and out["c"] == pytest.approx(0.04) and math.isnan(out["b"])
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}  # capped at 1, monotone
    assert holm({"a": 0.2, "b": 0.001, "c": 0.02, "d": 0.04}) == pytest.approx(
        {"b": 0.004, "c": 0.06, "d": 0.08, "a": 0.2}
    )
    assert holm({}) == {}
    assert list(holm({"z": 0.5, "a": 0.1})) == ["z", "a"]  # input order kept


def test_bootstrap_ci_contains_mean_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    d = rng.normal(0.05, 0.02, 12)
    low, high = bootstrap_ci(d, seed=3)
    assert low < d.mean() < high
    assert bootstrap_ci(d, seed=3) == (low, high)
    ref = scipy.stats.bootstrap((d,), np.mean, confidence_level=0.95, method="BCa", rng=np.random.default_rng(3))
    assert (low, high) == (ref.confidence_interval.low, ref.confidence_interval.high)
    narrow = bootstrap_ci(d, confidence=0.5, seed=3)
    assert low < narrow[0] < narrow[1] < high
    assert bootstrap_ci(np.full(12, 0.1)) == pytest.approx((0.1, 0.1))  # BCa degenerate -> percentile
    assert all(math.isnan(v) for v in bootstrap_ci([0.3]))


def test_paired_cases_means_over_labels_and_pairs_by_key() -> None:
    rows = [
        dict(model=m, fold="fold0", seed=0, split="val", case=c, label=lab, metric="dice", value=v)
        for m, c, lab, v in [
            ("a", "x", "l1", 0.8), ("a", "x", "l2", 0.6), ("b", "x", "l1", 0.5), ("b", "x", "l2", ""),
            ("a", "y", "l1", 0.9), ("b", "z", "l1", 0.1),  # y and z have one model only
        ]
    ]  # fmt: skip
    pairs = paired_cases(rows, "a", "b")
    assert pairs.keys == [("fold0", 0, "x")]
    assert pairs.model == pytest.approx([0.7]) and pairs.baseline == pytest.approx([0.5])  # empty value left out
    assert paired_cases(rows, "a", "b", label="l2").keys == []
    assert paired_cases(rows, "a", "b", split="test").keys == []


# ---------------------------------------------------------------------------------------------------------------
# the report


def test_summary_statistics_equal_scipy(study_dir: Path) -> None:
    summary = write_report(study_dir)
    rows = _csv_rows(study_dir)
    models = summary["models"]
    assert list(models) == LABELS and summary["baseline"] == BASELINE and summary["protocol"] == "strict"
    assert summary["n_cases"] == 12 and summary["folds"] == FOLDS and summary["classes"] == CLASSES
    raw = {}
    for label in ("better", "noisy"):
        for cls in [*CLASSES, None]:
            key = cls or "mean_foreground"
            assert models[label]["wilcoxon_p"][key] == pytest.approx(_scipy_p(rows, label, cls), rel=1e-12)
        raw[label] = models[label]["wilcoxon_p"]["mean_foreground"]
        assert models[label]["n_pairs"] == 12
    assert models["same"]["wilcoxon_p"]["mean_foreground"] is None  # all differences zero: NaN -> null
    adjusted = holm(raw)  # "same" is undefined, so m = 2
    for label in ("better", "noisy"):
        assert models[label]["wilcoxon_p_holm"]["mean_foreground"] == pytest.approx(adjusted[label])
    assert models["better"]["wilcoxon_p_holm"]["mean_foreground"] == pytest.approx(2 * 2 / 2**12)  # exact, n=12
    assert models["noisy"]["wilcoxon_p_holm"]["mean_foreground"] > 0.05
    assert models["unet"]["wilcoxon_p"] is None and models["unet"]["dice_difference_ci95"] is None

    a, b = _per_case(rows, "better", None), _per_case(rows, BASELINE, None)
    diff = np.array([a[k] - b[k] for k in sorted(a)])
    low, high = models["better"]["dice_difference_ci95"]
    assert (low, high) == pytest.approx(bootstrap_ci(diff, seed=0)) and low < diff.mean() < high
    assert models["same"]["dice_difference_ci95"] == [0.0, 0.0]

    unet = models["unet"]
    assert unet["params"] == 1_234_567 and models["better"]["macs"] is None
    assert unet["train_seconds_per_run"] == pytest.approx(35.0)  # the failed job is not counted
    assert unet["inference_ms_per_image"] == pytest.approx((1.5 / 100 + 2.5 / 120) / 2 * 1000)
    assert unet["jobs"] == {"done": 2, "failed": 1}
    # test split: pooled over folds, std over the two folds
    assert unet["test_mean"]["liver"]["dice"] == pytest.approx(0.705)
    assert unet["test_mean"]["mean_foreground"]["dice"] == pytest.approx(0.755)
    assert unet["test_std_over_folds"]["liver"]["dice"] == pytest.approx(np.std([0.7, 0.71], ddof=1))
    assert "test_mean" in models["same"] and models["same"]["test_mean"]["liver"]["dice"] is None


def test_summary_json_is_strict(study_dir: Path) -> None:
    write_report(study_dir)

    def reject(token: str) -> None:
        raise AssertionError(f"non-strict JSON constant {token}")

    data = json.loads((study_dir / "summary.json").read_text(), parse_constant=reject)
    assert data == json.loads(json.dumps(summarize(study_dir)))
    assert data["models"]["unet"]["mean"]["tumor"]["hd95"] is not None  # the undefined HD95 is left out of the mean


def _parse_markdown(text: str) -> tuple[list[str], list[list[str]], str]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    footnote = "\n".join(line for line in text.splitlines() if line.startswith("†"))
    return cells[0], cells[2:], footnote


def _mean_std(cell: str) -> tuple[float, float | None]:
    parts = cell.split("±")
    return float(parts[0]), float(parts[1]) if len(parts) == 2 else None


def test_table_numbers_recompute_from_results(study_dir: Path) -> None:
    write_report(study_dir)
    rows = _csv_rows(study_dir)
    header, body, footnote = _parse_markdown((study_dir / "table.md").read_text())
    assert header == ["Model", "Params (M)", "MACs (G)", "Dice (mean ± std)", "HD95 (mean ± std)", "Dice liver",
                      "Dice tumor", "Test Dice", "Train time / run", "Inference ms / image"]  # fmt: skip
    assert len(body) == len(LABELS)
    costs = json.loads((study_dir / "costs.json").read_text())

    def mean(values: list[float]) -> float:
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values)

    for row, label in zip(body, LABELS):
        assert re.sub(r"†| \(baseline\)", "", row[0]) == label
        assert row[0].endswith("(baseline)") == (label == BASELINE)
        mine = [r for r in rows if r["model"] == label and r["split"] == "val"]

        def class_mean(cls: str, metric: str, subset: list[dict] = mine) -> float:
            return mean([r["value"] for r in subset if r["label"] == cls and r["metric"] == metric])

        assert float(row[1]) == pytest.approx(costs[label]["params"] / 1e6, abs=0.005)
        if costs[label]["macs"] is None:
            assert row[2] == "–"
        else:
            assert float(row[2]) == pytest.approx(costs[label]["macs"] / 1e9, abs=0.005)
        for col, metric, scale in ((3, "dice", 100.0), (4, "hd95", 1.0)):
            pooled = mean([class_mean(c, metric) for c in CLASSES])
            per_fold = [
                mean([class_mean(c, metric, [r for r in mine if r["fold"] == f]) for c in CLASSES]) for f in FOLDS
            ]
            m, s = _mean_std(row[col])
            assert m == pytest.approx(scale * pooled, abs=0.005)
            assert s == pytest.approx(scale * float(np.std(per_fold, ddof=1)), abs=0.005)
        for col, cls in zip((5, 6), CLASSES):
            assert float(row[col]) == pytest.approx(100 * class_mean(cls, "dice"), abs=0.005)
        tested = [r for r in rows if r["model"] == label and r["split"] == "test"]  # no ensemble: pooled folds
        if tested:
            test_mean, test_std = _mean_std(row[7])
            pooled = mean([class_mean(c, "dice", tested) for c in CLASSES])
            per_fold = [
                mean([class_mean(c, "dice", [r for r in tested if r["fold"] == f]) for c in CLASSES]) for f in FOLDS
            ]
            assert test_mean == pytest.approx(100 * pooled, abs=0.005)
            assert test_std == pytest.approx(100 * float(np.std(per_fold, ddof=1)), abs=0.005)
        else:
            assert row[7] == "–"
        jobs = [json.loads(p.read_text()) for p in sorted((study_dir / "runs" / label).glob("*/study_job.json"))]
        done = [j for j in jobs if j["status"] == "done"]
        assert row[8] == f"{mean([j['train_seconds'] for j in done]):.1f} s" or row[8].endswith(" min")
        if row[8].endswith(" min"):
            assert float(row[8].split()[0]) == pytest.approx(mean([j["train_seconds"] for j in done]) / 60, abs=0.051)
        ms = mean([j["predict_seconds"] / j["images"] * 1000 for j in done])
        assert float(row[9]) == pytest.approx(ms, abs=0.005)
    assert "Wilcoxon" in footnote and "Holm" in footnote and "n = 12 pairs" in footnote
    assert "(fold, seed, case)" in footnote and "Protocol: strict" in footnote
    assert "over 2 comparison(s) (same: fewer than 2 pairs or no non-zero difference, not tested)" in footnote


def test_dagger_only_where_holm_significant(study_dir: Path) -> None:
    summary = write_report(study_dir)
    _, body, _ = _parse_markdown((study_dir / "table.md").read_text())
    names = {re.sub(r"†| \(baseline\)", "", row[0]): row[0] for row in body}
    assert names["better"] == "better†"
    assert "†" not in names["same"] and "†" not in names["noisy"] and names["unet"] == "unet (baseline)"
    assert summary["models"]["better"]["significant"] is True
    assert summary["models"]["noisy"]["significant"] is False and summary["models"]["same"]["significant"] is False
    assert "better" in summary["note"]
    tex = (study_dir / "table.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"\begin{tabular}" in tex
    assert r"better$^\dagger$ &" in tex and r"unet (baseline) &" in tex and r"$\pm$" in tex
    assert tex.count(r" \\") == 1 + len(LABELS)


def test_note_when_nothing_is_significant(study_dir: Path) -> None:
    rows = [r for r in _csv_rows(study_dir) if r["model"] != "better"]
    with open(study_dir / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "fold", "seed", "split", "case", "label", "metric", "value"])
        for r in rows:
            writer.writerow([r[k] for k in ("model", "fold", "seed", "split", "case", "label", "metric", "value")])
    summary = write_report(study_dir)
    assert summary["note"] == "no model differs significantly from the baseline after Holm correction (alpha 0.05)"
    assert "†" not in "".join(r[0] for r in _parse_markdown((study_dir / "table.md").read_text())[1])
    assert summary["models"]["better"]["mean"]["liver"]["dice"] is None  # no results: null, still a row
    assert len(read_results(study_dir / "results.csv")) == len(rows)


def test_unreadable_study_directory_is_a_user_error(study_dir: Path) -> None:
    from attnseg.errors import AttnsegError

    text = (study_dir / "study.yaml").read_text()
    (study_dir / "study.yaml").write_text(text.replace("baseline: unet", "baseline: resnet"))
    with pytest.raises(AttnsegError, match="baseline 'resnet' is not an entry label"):
        summarize(study_dir)
    (study_dir / "study.yaml").write_text(text)
    lines = (study_dir / "results.csv").read_text().splitlines()
    (study_dir / "results.csv").write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(AttnsegError, match="duplicate row"):
        summarize(study_dir)
    cut = lines[1][: lines[1].rindex(",", 0, lines[1].rindex(","))]  # a row killed mid-write: metric, value lost
    (study_dir / "results.csv").write_text("\n".join([*lines, cut]) + "\n")
    with pytest.raises(AttnsegError, match=rf"results.csv:{len(lines) + 1}: expected 8 fields"):
        summarize(study_dir)
    (study_dir / "results.csv").write_bytes(b"\xff\xfe")
    with pytest.raises(AttnsegError, match="results.csv: not a CSV text file"):
        summarize(study_dir)
    (study_dir / "results.csv").write_text("\n".join(lines) + "\n")
    costs = (study_dir / "costs.json").read_text()
    (study_dir / "costs.json").write_text("[1, 2]")
    with pytest.raises(AttnsegError, match="costs.json: expected"):
        summarize(study_dir)
    (study_dir / "costs.json").write_text(costs)
    (study_dir / "study.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(AttnsegError, match="study.yaml: not a YAML text file"):
        summarize(study_dir)
    (study_dir / "study.yaml").write_text("::: [\n")
    with pytest.raises(AttnsegError, match="study.yaml: not valid YAML") as info:
        summarize(study_dir)
    assert "\n" not in str(info.value)  # one line on the terminal
    (study_dir / "study.yaml").write_text(text)
    (study_dir / "results.csv").unlink()
    with pytest.raises(AttnsegError, match="results.csv: not found"):
        write_report(study_dir)
    assert not (study_dir / "summary.json").exists() and not (study_dir / "table.md").exists()
