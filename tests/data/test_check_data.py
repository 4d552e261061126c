"""``attnseg check-data`` and the same check before ``attnseg train``: every error and warning named with its case,
file and problem, the exit code, nothing written into the dataset, the tolerances and the cache."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from synthetic import make_ct_dataset, make_rgb_dataset
from typer.testing import CliRunner

from attnseg.cli.args import join_multi_value_options
from attnseg.cli.main import app
from attnseg.data import check as check_module
from attnseg.data.check import DatasetCheckError, Tolerances, cache_path, check_dataset, verify_dataset

runner = CliRunner()
WIDE = {"COLUMNS": "1000"}  # one table row per line, so that names and problems are never folded


# ------------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    """3 training + 1 test case of 16x16x6 voxels (CT, labels 0/1/2)."""
    return make_ct_dataset(tmp_path_factory.mktemp("small_ct") / "Dataset910_Tiny", shape=(16, 16, 6))


@pytest.fixture(scope="module")
def small_rgb(tmp_path_factory) -> Path:
    return make_rgb_dataset(tmp_path_factory.mktemp("small_rgb") / "Dataset911_TinyRGB", num_train=3, size=(16, 20))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and mtime: what 'nothing written' compares."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[p.relative_to(root).as_posix()] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def _check(ds: Path, tmp_path: Path, *extra: str) -> tuple[object, dict]:
    """Run ``attnseg check-data DS --json ...``; asserts that the dataset is left untouched."""
    before = _snapshot(ds)
    out = tmp_path / "findings.json"
    if out.exists():
        out.unlink()
    result = runner.invoke(app, ["check-data", str(ds), "--json", str(out), *extra], env=WIDE)
    assert _snapshot(ds) == before, "check-data wrote into the dataset"
    assert "Traceback" not in result.output, result.output
    return result, json.loads(out.read_text())


def _nii(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))


def _shift_label(ds: Path, mm: float = 40.0, case: str = "train001") -> None:
    path = ds / "labelsTr" / f"{case}.nii.gz"
    data, affine = _nii(path)
    affine = affine.copy()
    affine[0, 3] += mm
    _save(path, data, affine)


def _nan_image(ds: Path, value: float = np.nan, case: str = "train001") -> None:
    path = ds / "imagesTr" / f"{case}_0000.nii.gz"
    data, affine = _nii(path)
    data = data.astype(np.float32)
    data[1, 2, 3] = value
    _save(path, data, affine)


def _relabel(ds: Path, case: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    path = ds / "labelsTr" / f"{case}.nii.gz"
    data, affine = _nii(path)
    _save(path, change(data.copy()), affine)


def _regrid(ds: Path, case: str, affine: np.ndarray) -> None:
    """Give a case's image and label another (consistent) geometry."""
    for path in (ds / "imagesTr" / f"{case}_0000.nii.gz", ds / "labelsTr" / f"{case}.nii.gz"):
        data, _ = _nii(path)
        _save(path, data, affine)


def _two_channels(ds: Path) -> None:
    for img in sorted((ds / "imagesTr").glob("*_0000.nii.gz")) + sorted((ds / "imagesTs").glob("*_0000.nii.gz")):
        shutil.copy(img, img.with_name(img.name.replace("_0000", "_0001")))
    _edit_json(ds / "dataset.json", lambda d: d.update(channel_names={"0": "CT", "1": "CT"}))


def _with_air(ds: Path) -> None:
    """Every image gets a corner of air (-1000 HU), as real CT has."""
    for img in sorted(ds.glob("images*/*.nii.gz")):
        data, affine = _nii(img)
        data = data.copy()
        data[:2, :2, :] = -1000
        _save(img, data, affine)


def _unit_range(ds: Path, cases: list[str]) -> None:
    """Images rescaled to [0, 1]: not Hounsfield units."""
    for case in cases:
        img = next(ds.glob(f"images*/{case}_0000.nii.gz"))
        data, affine = _nii(img)
        data = data.astype(np.float32)
        _save(img, (data - data.min()) / (data.max() - data.min()), affine)


def _colour_label(ds: Path) -> None:
    path = ds / "labelsTr" / "img001.png"
    mask = np.asarray(Image.open(path))
    Image.fromarray(np.stack([mask * 255, mask * 0, mask * 0], -1).astype(np.uint8)).save(path)


def _no_training_cases(ds: Path) -> None:
    for sub in ("imagesTr", "labelsTr"):
        shutil.rmtree(ds / sub)
        (ds / sub).mkdir()


def _write(rel: str, text: str) -> Callable[[Path], None]:
    return lambda ds: (ds / rel).write_text(text)


def _splits(doc) -> Callable[[Path], None]:
    return _write("splits.json", json.dumps(doc))


_SPLIT_OK = {"train": ["train000", "train001"], "val": ["train002"]}

# (id, dataset, break it, exit code, (severity, case, file, problem fragment))
BAD_INPUTS = [
    # ---------------------------------------------------------------------------------------------- errors
    (
        "missing_dataset_json",
        "ct",
        lambda ds: (ds / "dataset.json").unlink(),
        2,
        ("error", None, "dataset.json", "missing; a dataset folder needs dataset.json"),
    ),
    (
        "dataset_json_is_a_folder",
        "ct",
        lambda ds: ((ds / "dataset.json").unlink(), (ds / "dataset.json").mkdir()),
        2,
        ("error", None, "dataset.json", "is a folder; dataset.json must be a file"),
    ),
    (
        "dataset_json_syntax",
        "ct",
        _write("dataset.json", '{\n  "channel_names": {"0": "CT"},\n  "labels": {\n}}}'),
        2,
        ("error", None, "dataset.json", "invalid JSON at line 4, column 3"),
    ),
    (
        "missing_channel_names",
        "ct",
        lambda ds: _edit_json(ds / "dataset.json", lambda d: d.pop("channel_names")),
        2,
        ("error", None, "dataset.json", "missing required key 'channel_names'"),
    ),
    (
        "absurd_label_id",
        "ct",
        lambda ds: _edit_json(ds / "dataset.json", lambda d: d["labels"].update({"tumour": 1e30})),
        2,
        ("error", None, "dataset.json", "label 'tumour': id 1000000000000000019884624838656 is above 1023"),
    ),
    (
        "missing_labels",
        "ct",
        lambda ds: _edit_json(ds / "dataset.json", lambda d: d.pop("labels")),
        2,
        ("error", None, "dataset.json", "missing required key 'labels'"),
    ),
    (
        "missing_file_ending",
        "ct",
        lambda ds: _edit_json(ds / "dataset.json", lambda d: d.pop("file_ending")),
        2,
        ("error", None, "dataset.json", "missing required key 'file_ending'"),
    ),
    (
        "label_id_not_integer",
        "ct",
        lambda ds: _edit_json(ds / "dataset.json", lambda d: d["labels"].update(organ_a="one")),
        2,
        ("error", None, "dataset.json", "label 'organ_a': id 'one' is not an integer"),
    ),
    (
        "background_not_0",
        "ct",
        lambda ds: _edit_json(ds / "dataset.json", lambda d: d["labels"].update(background=3)),
        2,
        ("error", None, "dataset.json", 'labels must map "background" to 0 (found 3)'),
    ),
    (
        "file_ending_matches_nothing",
        "ct",
        lambda ds: _edit_json(ds / "dataset.json", lambda d: d.update(file_ending=".nrrd")),
        2,
        (
            "error",
            None,
            "dataset.json",
            "file_ending '.nrrd' matches none of the 8 file(s) in imagesTr, labelsTr, imagesTs, labelsTs (8 x",
        ),
    ),
    (
        "image_without_label",
        "ct",
        lambda ds: (ds / "labelsTr" / "train001.nii.gz").unlink(),
        2,
        ("error", "train001", "labelsTr/train001.nii.gz", "missing: a training case needs its label"),
    ),
    (
        "label_without_image",
        "ct",
        lambda ds: (ds / "imagesTr" / "train001_0000.nii.gz").unlink(),
        2,
        ("error", "train001", "labelsTr/train001.nii.gz", "label without image: imagesTr/train001_0000.nii.gz"),
    ),
    (
        "missing_channel_file",
        "ct",
        lambda ds: (_two_channels(ds), (ds / "imagesTr" / "train002_0001.nii.gz").unlink()),
        2,
        (
            "error",
            "train002",
            "imagesTr/train002_0001.nii.gz",
            "missing channel file (dataset.json declares 0: CT, 1: CT)",
        ),
    ),
    (
        "undeclared_channel_file",
        "ct",
        lambda ds: shutil.copy(ds / "imagesTr" / "train000_0000.nii.gz", ds / "imagesTr" / "train000_0001.nii.gz"),
        2,
        ("error", "train000", "imagesTr/train000_0001.nii.gz", "channel 1 is not declared in dataset.json"),
    ),
    (
        "not_an_image",
        "ct",
        _write("imagesTr/train001_0000.nii.gz", "hello, I am text"),
        2,
        ("error", "train001", "imagesTr/train001_0000.nii.gz", "cannot read the header"),
    ),
    (
        "truncated_nii_gz",
        "ct",
        lambda ds: (p := ds / "imagesTr" / "train002_0000.nii.gz").write_bytes(
            p.read_bytes()[: len(p.read_bytes()) // 2]
        ),
        2,
        ("error", "train002", "imagesTr/train002_0000.nii.gz", "is the file corrupt or truncated?"),
    ),
    (
        "shape_mismatch",
        "ct",
        lambda ds: _relabel(ds, "train000", lambda a: a[:-1]),
        2,
        ("error", "train000", "labelsTr/train000.nii.gz", "label shape 15x16x6 differs from image shape 16x16x6"),
    ),
    (
        "spacing_mismatch",
        "ct",
        lambda ds: _save(
            ds / "labelsTr" / "train000.nii.gz",
            _nii(ds / "labelsTr" / "train000.nii.gz")[0],
            np.diag([2.0, 1.5, 3.0, 1.0]),
        ),
        2,
        (
            "error",
            "train000",
            "labelsTr/train000.nii.gz",
            "label spacing 2x1.5x3 mm differs from image spacing 1.5x1.5x3 mm",
        ),
    ),
    (
        "origin_shift_40mm",
        "ct",
        _shift_label,
        2,
        (
            "error",
            "train001",
            "labelsTr/train001.nii.gz",
            "label origin (40, 0, 0) mm lies 40 mm from image origin (0, 0, 0)",
        ),
    ),
    (
        "direction_mismatch",
        "ct",
        lambda ds: _save(
            ds / "labelsTr" / "train000.nii.gz",
            _nii(ds / "labelsTr" / "train000.nii.gz")[0],
            np.diag([-1.5, 1.5, 3.0, 1.0]),
        ),
        2,
        (
            "error",
            "train000",
            "labelsTr/train000.nii.gz",
            "label direction LAS differs from image direction RAS by up to 2 (tolerance 1e-05)",
        ),
    ),
    (
        "label_value_not_declared",
        "ct",
        lambda ds: _relabel(ds, "train001", lambda a: np.where(a == 2, 7, a)),
        2,
        ("error", "train001", "labelsTr/train001.nii.gz", "label values [7] are not in dataset.json labels"),
    ),
    ("colour_label", "rgb", _colour_label, 2, ("error", "img001", "labelsTr/img001.png", "colour (RGB) label image")),
    (
        "nan_in_image",
        "ct",
        _nan_image,
        2,
        ("error", "train001", "imagesTr/train001_0000.nii.gz", "image holds 1 NaN and 0 infinite voxel(s)"),
    ),
    (
        "inf_in_image",
        "ct",
        lambda ds: _nan_image(ds, np.inf),
        2,
        ("error", "train001", "imagesTr/train001_0000.nii.gz", "image holds 0 NaN and 1 infinite voxel(s)"),
    ),
    (
        "splits_json_syntax",
        "ct",
        _write("splits.json", '{"fold0": {"train": ["train000"],}}'),
        2,
        ("error", None, "splits.json", "invalid JSON at line 1, column 34"),
    ),
    (
        "splits_unknown_case",
        "ct",
        _splits({"fold0": {**_SPLIT_OK, "val": ["train002", "ghost"]}}),
        2,
        ("error", None, "splits.json", "split 'fold0' names 1 case(s) not in the dataset: ghost"),
    ),
    (
        "splits_train_and_val",
        "ct",
        _splits({"fold0": {**_SPLIT_OK, "val": ["train002", "train001"]}}),
        2,
        ("error", None, "splits.json", "split 'fold0' puts 1 case(s) in both train and val: train001"),
    ),
    (
        "splits_nnunet_list",
        "ct",
        _splits([_SPLIT_OK]),
        2,
        ("error", None, "splits.json", "must be an object of named splits"),
    ),
    (
        "labels_folder_is_a_file",
        "ct",
        lambda ds: (shutil.rmtree(ds / "labelsTr"), (ds / "labelsTr").write_text("")),
        2,
        ("error", None, "labelsTr", "labelsTr is a file; it must be a folder"),
    ),
    (
        "splits_fold_as_a_list",
        "ct",
        _splits({"fold0": ["train000"]}),
        2,
        ("error", None, "splits.json", """split 'fold0' is not a fold {"train": [...], "val": [...]}"""),
    ),
    (
        "no_training_cases",
        "ct",
        _no_training_cases,
        2,
        ("error", None, "imagesTr", "no training cases: imagesTr holds no file ending in '.nii.gz'"),
    ),
    # -------------------------------------------------------------------------------------------- warnings
    (
        "empty_label",
        "ct",
        lambda ds: _relabel(ds, "train002", np.zeros_like),
        0,
        ("warning", "train002", "labelsTr/train002.nii.gz", "empty label: every voxel is background (0)"),
    ),
    (
        "spacing_varies",
        "ct",
        lambda ds: _regrid(ds, "train002", np.diag([1.5, 1.5, 9.0, 1.0])),
        0,
        (
            "warning",
            None,
            "imagesTr",
            "voxel spacing varies 3x across training cases along z (S-I): 3 mm (train000) to "
            "9 mm (train002); use --geometry spacing",
        ),
    ),
    (
        "orientation_varies",
        "ct",
        lambda ds: _regrid(ds, "train002", np.diag([-1.5, 1.5, 3.0, 1.0])),
        0,
        (
            "warning",
            None,
            "imagesTr",
            "orientation varies across training cases (RAS: 2, LAS: 1; e.g. train002 is LAS)",
        ),
    ),
    (
        "ct_channel_without_hu",
        "ct",
        lambda ds: _unit_range(ds, ["train000", "train001", "train002", "test000"]),
        0,
        (
            "warning",
            None,
            "dataset.json",
            "channel 0 is named 'CT' but its intensities do not look like Hounsfield units in all 4 cases",
        ),
    ),
    (
        "one_case_without_hu",
        "ct",
        lambda ds: _unit_range(ds, ["train001"]),
        0,
        (
            "warning",
            "train001",
            "imagesTr/train001_0000.nii.gz",
            "channel 0 (CT) intensities 0..1 do not look like Hounsfield units",
        ),
    ),
    (
        "mri_channel_with_hu",
        "ct",
        lambda ds: (_with_air(ds), _edit_json(ds / "dataset.json", lambda d: d.update(channel_names={"0": "MRI"}))),
        0,
        (
            "warning",
            None,
            "dataset.json",
            "channel 0 is named 'MRI' but its intensities look like CT Hounsfield units in all 4 cases",
        ),
    ),
    (
        "num_training_mismatch",
        "ct",
        lambda ds: _edit_json(ds / "dataset.json", lambda d: d.update(numTraining=5)),
        0,
        ("warning", None, "dataset.json", "numTraining is 5, but imagesTr holds 3 cases"),
    ),
]


@pytest.mark.parametrize("name, kind, breaker, code, expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_each_bad_input_is_named(name, kind, breaker, code, expected, small_ct, small_rgb, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(small_ct if kind == "ct" else small_rgb, ds)
    breaker(ds)
    result, report = _check(ds, tmp_path)
    assert result.exit_code == code, result.output
    severity, case, file, fragment = expected
    hits = [
        f
        for f in report["findings"]
        if f["severity"] == severity and f["case"] == case and f["file"] == file and fragment in f["problem"]
    ]
    assert hits, json.dumps(report["findings"], indent=1)
    text = result.output
    assert file in text and fragment in text and (case is None or case in text), text
    if code == 0:
        assert report["errors"] == 0, report["findings"]
        assert f"0 error(s), {report['warnings']} warning(s) in" in text
    else:
        assert f"{report['errors']} error(s), {report['warnings']} warning(s) in {report['cases']} cases" in text


def test_a_clean_dataset_passes_without_findings(small_ct, small_rgb, demo_dataset, tmp_path):
    for ds in (small_ct, small_rgb, demo_dataset):
        result, report = _check(ds, tmp_path)
        assert result.exit_code == 0, result.output
        assert report["findings"] == [], report["findings"]
        assert "0 error(s), 0 warning(s) in" in result.output


def test_every_problem_is_reported_at_once(small_ct, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(small_ct, ds)
    _shift_label(ds, case="train001")
    _nan_image(ds, case="train002")
    (ds / "labelsTr" / "train000.nii.gz").unlink()
    _edit_json(ds / "dataset.json", lambda d: d.update(numTraining=9))
    result, report = _check(ds, tmp_path)
    assert result.exit_code == 2
    assert [(f["severity"], f["case"]) for f in report["findings"]] == [
        ("error", "train000"),
        ("error", "train001"),
        ("error", "train002"),
        ("warning", None),
    ]
    assert "3 error(s), 1 warning(s) in 4 cases" in result.output


def test_a_missing_dataset_folder(tmp_path):
    result = runner.invoke(app, ["check-data", str(tmp_path / "nowhere")], env=WIDE)
    assert result.exit_code == 2 and "not found" in result.output and not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------------------------------------------- tolerances
def test_direction_float_noise_passes_and_a_40mm_shift_fails(small_ct, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(small_ct, ds)
    path = ds / "labelsTr" / "train000.nii.gz"
    data, affine = _nii(path)
    noisy = affine.copy()
    noisy[0, 1] = noisy[1, 0] = 1.5e-8  # a 1e-8 difference of direction cosines, as format conversions leave
    _save(path, data, noisy)
    assert nib.load(path).affine[0, 1] != 0  # the noise survives the float32 sform
    result, report = _check(ds, tmp_path)
    assert result.exit_code == 0 and report["findings"] == [], result.output
    strict, _ = _check(ds, tmp_path, "--direction-tol", "1e-9")
    assert strict.exit_code == 2 and "direction differs" in strict.output

    _shift_label(ds, mm=40.0, case="train001")
    result, _ = _check(ds, tmp_path)
    assert result.exit_code == 2 and "lies 40 mm" in result.output
    lenient, report = _check(ds, tmp_path, "--origin-tol", "50")
    assert lenient.exit_code == 0, lenient.output
    assert report["files_read"] == 0  # tolerances apply to the cached summaries


def test_itk_headers_are_compared_in_the_same_world(tmp_path):
    """NRRD geometry comes from SimpleITK's header (LPS), compared in RAS like NIfTI's: a rotated, consistent case
    passes; a label 40 mm off along z fails."""
    import SimpleITK as sitk

    from attnseg.data.layout import write_dataset_json

    ds = tmp_path / "Dataset912_Nrrd"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i, label_z in enumerate((5.0, 45.0)):
        image = sitk.GetImageFromArray(rng.integers(-1000, 400, (6, 12, 10)).astype(np.int16))
        label = sitk.GetImageFromArray((rng.random((6, 12, 10)) > 0.5).astype(np.uint8))
        for im, z in ((image, 5.0), (label, label_z)):
            im.SetSpacing((0.8, 0.9, 2.5))
            im.SetOrigin((-100.0, 20.0, z))
            im.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
        sitk.WriteImage(image, str(ds / "imagesTr" / f"c{i}_0000.nrrd"))
        sitk.WriteImage(label, str(ds / "labelsTr" / f"c{i}.nrrd"))
    write_dataset_json(
        ds, channel_names={0: "CT"}, labels={"background": 0, "x": 1}, file_ending=".nrrd", num_training=2
    )
    result, report = _check(ds, tmp_path)
    assert result.exit_code == 2
    assert [(f["case"], f["file"]) for f in report["findings"]] == [("c1", "labelsTr/c1.nrrd")]
    assert "label origin (100, -20, 45) mm lies 40 mm from image origin (100, -20, 5) mm" in result.output


def test_spacing_tolerance_is_relative(small_ct, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(small_ct, ds)
    path = ds / "labelsTr" / "train000.nii.gz"
    data, affine = _nii(path)
    _save(path, data, affine @ np.diag([1.0005, 1.0, 1.0, 1.0]))  # 1.5 -> 1.50075 mm: 5e-4 relative
    assert _check(ds, tmp_path)[0].exit_code == 0
    assert _check(ds, tmp_path, "--spacing-tol", "1e-4")[0].exit_code == 2


def test_cli_defaults_are_the_library_defaults():
    from attnseg.cli import check_data

    assert (check_data.SPACING_TOL, check_data.ORIGIN_TOL, check_data.DIRECTION_TOL) == (
        Tolerances().spacing,
        Tolerances().origin,
        Tolerances().direction,
    )
    result = runner.invoke(app, ["check-data", "--help"], env=WIDE)
    assert result.exit_code == 0 and "--spacing-tol" in result.output and "--json" in result.output


# --------------------------------------------------------------------------------------------------------- cache
def test_an_unchanged_dataset_is_not_read_again_and_a_touched_file_is(small_ct, tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    shutil.copytree(small_ct, ds)
    first = check_dataset(ds)
    assert first.files_read == 8 and first.files_cached == 0
    assert cache_path(ds).is_file() and not cache_path(ds).is_relative_to(ds)

    real_reader, reads = check_module._read_voxels, []

    def no_reads(path, label):
        raise AssertionError(f"voxels of {path} read again")

    monkeypatch.setattr(check_module, "_read_voxels", no_reads)
    again = check_dataset(ds)
    assert again.files_read == 0 and again.files_cached == 8 and again.ok

    touched = ds / "labelsTr" / "train001.nii.gz"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same bytes, newer mtime

    def counting(path, label):
        reads.append(Path(path).name)
        return real_reader(path, label)

    monkeypatch.setattr(check_module, "_read_voxels", counting)
    third = check_dataset(ds)
    assert reads == ["train001.nii.gz"] and third.files_read == 1 and third.files_cached == 7 and third.ok


def test_a_changed_file_is_rechecked(small_ct, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(small_ct, ds)
    assert check_dataset(ds).ok
    _nan_image(ds)  # new content, new size and mtime
    report = check_dataset(ds)
    assert report.files_read == 1 and [f.file for f in report.errors] == ["imagesTr/train001_0000.nii.gz"]


def test_the_cache_honours_xdg_cache_home_and_no_cache(small_ct, tmp_path, monkeypatch):
    monkeypatch.delenv("ATTNSEG_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_path(small_ct).parent == tmp_path / "xdg" / "attnseg" / "check-data"
    ds = tmp_path / "ds"
    shutil.copytree(small_ct, ds)
    result, report = _check(ds, tmp_path, "--no-cache")
    assert result.exit_code == 0 and not cache_path(ds).exists() and report["files_read"] == 8
    result, report = _check(ds, tmp_path)
    assert cache_path(ds).is_file() and report["files_read"] == 8
    assert _check(ds, tmp_path)[1]["files_read"] == 0


def test_headers_only_skips_voxels(small_ct, tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    shutil.copytree(small_ct, ds)
    _shift_label(ds)

    def no_reads(path, label):
        raise AssertionError("voxels read")

    monkeypatch.setattr(check_module, "_read_voxels", no_reads)
    result, report = _check(ds, tmp_path, "--headers-only")
    assert result.exit_code == 2 and "lies 40 mm" in result.output and report["errors"] == 1


# --------------------------------------------------------------------------------------------------- training
def _train(data: Path, out: Path, *extra: str):
    args = ["train", "--model", "unet", "--model-kwargs", '{"width": 8}', "--data", str(data), "--out", str(out)]
    args += ["--iterations", "1", "--batch-size", "1", "--input-size", "32", "32", "--num-workers", "0", "-q"]
    return runner.invoke(app, join_multi_value_options([*args, *extra]), env=WIDE)


@pytest.mark.parametrize(
    "breaker, fragments",
    [
        (_shift_label, ["labelsTr/train001.nii.gz", "lies 40 mm from image origin", "1 error(s) in 4 cases"]),
        (_nan_image, ["imagesTr/train001_0000.nii.gz", "1 NaN", "1 error(s) in 4 cases", "attnseg check-data"]),
    ],
    ids=["origin_shift", "nan"],
)
def test_train_refuses_a_broken_dataset_before_writing(breaker, fragments, small_ct, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(small_ct, ds)
    breaker(ds)
    before = _snapshot(ds)
    result = _train(ds, tmp_path / "run", "--fold", "all")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error:" in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert not (tmp_path / "run").exists(), "a run directory was created"
    assert _snapshot(ds) == before


def test_train_prints_warnings_and_trains(small_ct, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(small_ct, ds)
    _edit_json(ds / "dataset.json", lambda d: d.update(numTraining=5))
    result = _train(ds, tmp_path / "run", "--fold", "all")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "numTraining is 5, but imagesTr holds 3 cases" in result.output
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_verify_dataset_raises_one_error_type(small_ct, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(small_ct, ds)
    _shift_label(ds)
    _nan_image(ds, case="train002")
    with pytest.raises(DatasetCheckError) as info:
        verify_dataset(ds, print_warnings=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(ds / "labelsTr" / "train001.nii.gz"))
    assert "(case train001; 2 error(s) in 4 cases;" in message
    assert len(info.value.report.errors) == 2
