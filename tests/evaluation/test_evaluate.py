"""Folder and in-memory evaluation: summary.json structure and values, multi-class volumes, bad inputs, the CLI."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from attnseg.evaluation.evaluate import EvaluationError, evaluate_arrays, evaluate_folders, save_summary, summary_table

medpy_binary = pytest.importorskip("medpy.metric.binary")  # GPL-3.0: test-time oracle only
monai_metrics = pytest.importorskip("monai.metrics")

LABELS = {"background": 0, "aorta": 1, "liver": 2, "spleen": 3}
SPACING = (0.8, 0.6, 2.5)


def _multiclass(shape: tuple[int, ...], seed: int, n_classes: int = 3) -> np.ndarray:
    """A label map with blobs of classes 1..n_classes (later classes overwrite earlier ones)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.uint8)
    for k in range(1, n_classes + 1):
        seeds = rng.random(shape) < 0.003
        seeds[tuple(rng.integers(0, s) for s in shape)] = True
        out[ndimage.binary_dilation(seeds, iterations=2)] = k
    return out


def _transunet_oracle(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """TransUNet's per-case rule with medpy (written here from its description)."""
    if pred.sum() > 0 and gt.sum() > 0:
        return medpy_binary.dc(pred, gt), medpy_binary.hd95(pred, gt)
    if pred.sum() > 0:
        return 1.0, 0.0
    return 0.0, 0.0


def _monai_hd95(pred: np.ndarray, gt: np.ndarray, spacing) -> float:
    p, g = (torch.from_numpy(a.astype(np.float32))[None, None] for a in (pred, gt))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            monai_metrics.compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)
        )


def test_transunet_multiclass_volumes_match_medpy():
    cases = []
    for i in range(3):
        gt = _multiclass((28, 26, 14), seed=i)
        pred = _multiclass((28, 26, 14), seed=i + 50)
        if i == 1:
            pred[pred == 2] = 0  # a missed organ: TransUNet scores it (0, 0)
        if i == 2:
            gt[gt == 3] = 0  # organ absent from gt but predicted: (1, 0)
        cases.append((f"case{i}", pred, gt, SPACING))
    summary = evaluate_arrays(cases, LABELS, protocol="transunet")
    assert summary["protocol"] == "transunet" and summary["distance_unit"] == "voxel"
    expected = {n: [] for n in ("aorta", "liver", "spleen")}
    for (case, pred, gt, _), entry in zip(cases, summary["per_case"], strict=True):
        assert entry["case"] == case
        for name, k in (("aorta", 1), ("liver", 2), ("spleen", 3)):
            dc, hd = _transunet_oracle(pred == k, gt == k)
            assert entry["per_class"][name]["dice"] == pytest.approx(dc, abs=1e-12)
            assert entry["per_class"][name]["hd95"] == pytest.approx(hd, abs=1e-12)
            expected[name].append((dc, hd))
    assert summary["per_case"][1]["per_class"]["liver"]["dice"] == 0.0
    assert summary["per_case"][2]["per_class"]["spleen"]["dice"] == 1.0
    for name, vals in expected.items():
        assert summary["per_class"][name]["dice"] == pytest.approx(np.mean([v[0] for v in vals]))
        assert summary["per_class"][name]["hd95"] == pytest.approx(np.mean([v[1] for v in vals]))
    means = np.mean([[np.mean([v[0] for v in vals]) for vals in expected.values()]])
    assert summary["foreground_mean"]["dice"] == pytest.approx(means)


def test_strict_multiclass_matches_monai_and_counts_empty_cases():
    gt = _multiclass((24, 22, 12), seed=3)
    pred = _multiclass((24, 22, 12), seed=4)
    pred_missed = pred.copy()
    pred_missed[pred_missed == 1] = 0
    summary = evaluate_arrays([("a", pred, gt, SPACING), ("b", pred_missed, gt, SPACING)], LABELS)
    assert summary["protocol"] == "strict" and summary["distance_unit"] == "mm"
    for name, k in (("aorta", 1), ("liver", 2), ("spleen", 3)):
        assert summary["per_case"][0]["per_class"][name]["hd95"] == pytest.approx(
            _monai_hd95(pred == k, gt == k, SPACING), rel=1e-5
        )
    aorta_b = summary["per_case"][1]["per_class"]["aorta"]
    assert aorta_b["dice"] == 0.0 and math.isnan(aorta_b["hd95"]) and math.isnan(aorta_b["assd"])
    # The NaN is excluded from the mean, and counted.
    assert summary["per_class"]["aorta"]["hd95"] == pytest.approx(summary["per_case"][0]["per_class"]["aorta"]["hd95"])
    assert summary["per_class"]["aorta"]["dice"] == pytest.approx(
        summary["per_case"][0]["per_class"]["aorta"]["dice"] / 2
    )
    c = summary["counts"]["per_class"]["aorta"]
    assert c["missed"] == 1 and c["nan"]["hd95"] == 1 and c["nan"]["assd"] == 1 and c["gt_present"] == 2
    assert summary["counts"]["per_class"]["liver"]["nan"]["hd95"] == 0
    assert summary["counts"]["cases"] == 2


def test_isic_probabilities_thresholded_at_half():
    gt = np.zeros((6, 6), np.uint8)
    gt[1:4, 1:4] = 255  # 0/255 masks: label > 0 is the lesion
    prob = np.zeros((6, 6), np.float32)
    prob[1:4, 1:4] = 0.5  # exactly 0.5 counts as foreground (>= 0.5)
    prob[5, 5] = 0.49
    prob[0, 5] = 0.9  # one false positive
    s = evaluate_arrays([("img1", prob, gt, None)], {"background": 0, "lesion": 1}, protocol="isic")
    agg = s["per_class"]["lesion"]
    assert (agg["tp"], agg["fp"], agg["fn"], agg["tn"]) == (9, 1, 0, 26)
    assert agg["iou"] == pytest.approx(0.9) and agg["dice"] == pytest.approx(18 / 19)
    assert agg["accuracy"] == pytest.approx(35 / 36) and agg["specificity"] == pytest.approx(26 / 27)


def test_inferred_labels_fill_absent_classes():
    a = np.zeros((5, 5), np.uint8)
    a[1:3, 1:3] = 1
    b = np.zeros((5, 5), np.uint8)
    b[2:4, 2:4] = 4
    s = evaluate_arrays([("x", a, a, None), ("y", b, b, None)])
    assert list(s["labels"]) == ["label_1", "label_4"]
    assert s["per_case"][0]["per_class"]["label_4"]["dice"] == 1.0  # both empty in case x: strict rule
    assert s["per_case"][0]["per_class"]["label_4"]["tn"] == 25
    assert s["counts"]["per_class"]["label_4"]["both_empty"] == 1


def _write_nifti(path: Path, arr: np.ndarray, spacing=SPACING) -> None:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 30.0)
    nib.save(nib.Nifti1Image(arr, affine), str(path))


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path, Path, dict]:
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    arrays = {}
    for i, case in enumerate(["c01", "c02"]):
        gt = _multiclass((20, 18, 10), seed=10 + i)
        pred = _multiclass((20, 18, 10), seed=20 + i)
        if case == "c02":
            pred[pred == 3] = 0  # missed spleen
        _write_nifti(gt_dir / f"{case}.nii.gz", gt)
        _write_nifti(pred_dir / f"{case}.nii.gz", pred)
        arrays[case] = (pred, gt)
    (pred_dir / "plans.json").write_text("{}")  # nnU-Net output folders hold json files: ignored
    (tmp_path / "dataset.json").write_text(
        json.dumps({"name": "toy", "channel_names": {"0": "CT"}, "labels": LABELS, "file_ending": ".nii.gz"})
    )
    return pred_dir, gt_dir, tmp_path, arrays


def test_folder_summary_json_structure_and_values(folders, tmp_path):
    pred_dir, gt_dir, ds, arrays = folders
    summary = evaluate_folders(pred_dir, gt_dir, dataset_dir=ds, num_workers=1)
    out = save_summary(summary, tmp_path / "out" / "summary.json")

    def _no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    data = json.loads(out.read_text(), parse_constant=_no_nan)
    assert data["protocol"] == "strict" and data["protocol_version"] == "1.0"
    assert data["labels"] == {"aorta": 1, "liver": 2, "spleen": 3}
    assert [c["case"] for c in data["per_case"]] == ["c01", "c02"]
    assert set(data) >= {"per_case", "per_class", "foreground_mean", "counts"}
    assert list(data["per_class"]) == ["aorta", "liver", "spleen"]
    for key in ("dice", "iou", "precision", "recall", "specificity", "hd95", "assd", "tp", "fp", "fn", "tn"):
        assert key in data["per_case"][0]["per_class"]["liver"]
        assert key in data["per_class"]["liver"]
    assert data["per_case"][0]["spacing"] == pytest.approx(SPACING)  # spacing read from the NIfTI header
    pred, gt = arrays["c01"]
    assert data["per_case"][0]["per_class"]["liver"]["hd95"] == pytest.approx(
        _monai_hd95(pred == 2, gt == 2, SPACING), rel=1e-5
    )
    assert data["per_case"][0]["per_class"]["liver"]["dice"] == pytest.approx(medpy_binary.dc(pred == 2, gt == 2))
    assert data["per_case"][1]["per_class"]["spleen"]["hd95"] is None  # NaN written as null
    assert data["counts"]["per_class"]["spleen"]["missed"] == 1
    assert data["per_class"]["spleen"]["hd95"] == pytest.approx(data["per_case"][0]["per_class"]["spleen"]["hd95"])
    dice_means = [data["per_class"][n]["dice"] for n in ("aorta", "liver", "spleen")]
    assert data["foreground_mean"]["dice"] == pytest.approx(np.mean(dice_means))
    # The in-memory API gives the same numbers.
    mem = evaluate_arrays([(c, p, g, SPACING) for c, (p, g) in arrays.items()], LABELS)
    assert mem["per_class"]["liver"]["assd"] == pytest.approx(summary["per_class"]["liver"]["assd"], rel=1e-6)
    assert summary_table(summary).row_count == 4


def test_process_pool_matches_sequential_and_reports_worker_errors(folders):
    pred_dir, gt_dir, ds, _ = folders
    seq = evaluate_folders(pred_dir, gt_dir, dataset_dir=ds, protocol="transunet", num_workers=1)
    par = evaluate_folders(pred_dir, gt_dir, dataset_dir=ds, protocol="transunet", num_workers=2)
    assert par["per_case"] == seq["per_case"]
    # An error inside a worker process reaches the caller as the same clear EvaluationError.
    (gt_dir / "c02.nii.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(EvaluationError, match=r"case 'c02': cannot read ground truth file"):
        evaluate_folders(pred_dir, gt_dir, dataset_dir=ds, num_workers=2)


def test_missing_prediction_names_the_case(folders):
    pred_dir, gt_dir, ds, _ = folders
    (pred_dir / "c02.nii.gz").unlink()
    with pytest.raises(EvaluationError, match="missing prediction for case.*c02"):
        evaluate_folders(pred_dir, gt_dir, dataset_dir=ds, num_workers=1)


def test_extra_prediction_names_the_case(folders):
    pred_dir, gt_dir, ds, _ = folders
    _write_nifti(pred_dir / "c99.nii.gz", np.zeros((20, 18, 10), np.uint8))
    with pytest.raises(EvaluationError, match="no ground truth for predicted case.*c99"):
        evaluate_folders(pred_dir, gt_dir, dataset_dir=ds, num_workers=1)


def test_shape_mismatch_names_the_case(folders):
    pred_dir, gt_dir, ds, _ = folders
    _write_nifti(pred_dir / "c01.nii.gz", np.zeros((20, 18, 9), np.uint8))
    with pytest.raises(EvaluationError, match=r"case 'c01'.*shape \(20, 18, 9\).*\(20, 18, 10\)"):
        evaluate_folders(pred_dir, gt_dir, dataset_dir=ds, num_workers=1)


def test_grid_mismatches_are_warned_per_case(folders):
    """A prediction on another grid than its reference (written from a resampled image, a flipped axis) is compared
    voxel by voxel as nnU-Net does, but each disagreement is reported; float noise in the affine is not."""
    pred_dir, gt_dir, ds, arrays = folders
    pred = arrays["c01"][0]
    shifted = np.diag([*SPACING, 1.0])
    shifted[:3, 3] = (-10.0, 45.0, 30.0)  # the fixture's origin moved 40 mm along A
    nib.save(nib.Nifti1Image(pred, shifted), str(pred_dir / "c01.nii.gz"))
    _write_nifti(pred_dir / "c02.nii.gz", arrays["c02"][0], spacing=[s * (1 + 1e-7) for s in SPACING])
    summary = evaluate_folders(pred_dir, gt_dir, dataset_dir=ds, num_workers=1)
    assert len(summary["warnings"]) == 1, summary["warnings"]
    assert summary["warnings"][0].startswith("case 'c01': prediction origin (-10, 45, 30) mm lies 40 mm from ground ")
    flipped = np.diag([-SPACING[0], SPACING[1], SPACING[2], 1.0])
    nib.save(nib.Nifti1Image(pred, flipped), str(pred_dir / "c01.nii.gz"))
    (warning,) = [
        w for w in evaluate_folders(pred_dir, gt_dir, dataset_dir=ds, num_workers=1)["warnings"] if "direction" in w
    ]
    assert warning.startswith("case 'c01': prediction direction LAS differs from ground truth direction RAS by up to 2")


def test_label_outside_dataset_json_names_the_case(folders):
    pred_dir, gt_dir, ds, arrays = folders
    pred = arrays["c02"][0].copy()
    pred[0, 0, 0] = 7
    _write_nifti(pred_dir / "c02.nii.gz", pred)
    with pytest.raises(EvaluationError, match=r"case 'c02': prediction holds label value 7"):
        evaluate_folders(pred_dir, gt_dir, dataset_dir=ds, num_workers=1)
    with pytest.raises(EvaluationError, match=r"case 'x': ground truth holds label value\(s\) \[2\]"):
        evaluate_arrays([("x", np.zeros((3, 3), int), np.full((3, 3), 2), None)], {"background": 0, "a": 1, "b": 3})


def test_unreadable_file_names_the_case(folders):
    pred_dir, gt_dir, ds, _ = folders
    (pred_dir / "c01.nii.gz").write_bytes(b"this is not a nifti file")
    with pytest.raises(EvaluationError, match=r"case 'c01': cannot read prediction file"):
        evaluate_folders(pred_dir, gt_dir, dataset_dir=ds, num_workers=1)


def test_bad_arguments(tmp_path):
    with pytest.raises(EvaluationError, match="prediction folder not found"):
        evaluate_folders(tmp_path / "nope", tmp_path)
    (tmp_path / "gt.nii.gz").write_bytes(b"")
    with pytest.raises(EvaluationError, match=r"gt\.nii\.gz: ground-truth is a file, not a folder"):
        evaluate_folders(tmp_path, tmp_path / "gt.nii.gz")
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate_arrays([("a", np.zeros((2, 2), int), np.zeros((2, 2), int), None)], protocol="dice")
    with pytest.raises(EvaluationError, match="non-integer"):
        evaluate_arrays([("a", np.full((2, 2), 0.3), np.zeros((2, 2), int), None)], [1])
    with pytest.raises(EvaluationError, match="twice"):
        z = np.zeros((2, 2), int)
        evaluate_arrays([("a", z, z, None), ("a", z, z, None)], [1])


def test_cli_exit_codes(folders, tmp_path):
    from typer.testing import CliRunner

    from attnseg.cli.main import app

    pred_dir, gt_dir, ds, _ = folders
    out = tmp_path / "s.json"
    ok = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--pred",
            str(pred_dir),
            "--gt",
            str(gt_dir),
            "--dataset",
            str(ds),
            "--out",
            str(out),
            "--workers",
            "1",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(out.read_text())["per_class"]["liver"]["dice"] > 0
    assert "liver" in ok.stdout
    (pred_dir / "c01.nii.gz").unlink()
    bad = CliRunner().invoke(app, ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--dataset", str(ds)])
    assert bad.exit_code == 2
    assert "missing prediction for case(s) c01" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.output
    proto = CliRunner().invoke(app, ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--protocol", "foo"])
    assert proto.exit_code == 2 and "unknown protocol" in proto.stderr
