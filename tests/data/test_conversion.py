"""`attnseg convert-dataset`: tiny synthetic releases in each distributed layout -> canonical layout + named splits.

Each test builds a miniature source tree the way the dataset is distributed, converts it, and checks dataset.json,
file naming, pixel/voxel values (JPEG masks thresholded at > 127, labels remapped), split membership, sizes and
disjointness, and the error cases (missing mask, mask of another size, non-image file, bad labels), including that a
failed conversion leaves no dataset behind.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from attnseg.cli.main import app
from attnseg.data.conversion import convert_dataset, list_converters
from attnseg.data.conversion.acdc import ACDC_TEST_PATIENTS
from attnseg.data.conversion.synapse import BTCV_TO_SYNAPSE, TRANSUNET_TEST, TRANSUNET_TRAIN
from attnseg.data.layout import DatasetError, load_dataset, load_splits

runner = CliRunner()


# ------------------------------------------------------------------------------------------------------ helpers
def _jpeg_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A 0/255 rectangle mask; returned as saved-and-decoded JPEG (lossy, values near 0 and 255)."""
    h, w = shape
    m = np.zeros(shape, np.uint8)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    m[y0 : y0 + h // 2, x0 : x0 + w // 2] = 255
    return m


def _save(arr: np.ndarray, path: Path, fmt: str | None = None) -> np.ndarray:
    """Save and return what a reader decodes (JPEG is lossy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, quality=75) if fmt == "JPEG" else Image.fromarray(arr).save(path)
    with Image.open(path) as im:
        return np.asarray(im)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _splits(root: Path) -> dict:
    return json.loads((root / "splits.json").read_text())


def _assert_split_sane(splits: dict, name: str) -> None:
    parts = splits[name]
    members = [c for ids in parts.values() for c in ids]
    assert len(members) == len(set(members)), f"{name}: a case is in two parts"
    top_test = set(splits.get("test", []))
    assert not set(parts.get("val", [])) & top_test, f"{name}: val overlaps the top-level test"


def _no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists(), "a failed conversion left the destination behind"
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")], "staging folder left behind"


def make_isic2018(root: Path, n=(6, 2, 3), size=(24, 32), seed=0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ISIC 2018 Task 1 challenge folders; returns {id: (decoded RGB image, decoded JPEG-ish mask)}."""
    rng = np.random.default_rng(seed)
    truth = {}
    for sub, count, offset in (("Training", n[0], 0), ("Validation", n[1], 100), ("Test", n[2], 200)):
        img_dir = root / f"ISIC2018_Task1-2_{sub}_Input"
        gt_dir = root / f"ISIC2018_Task1_{sub}_GroundTruth"
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        (img_dir / "LICENSE.txt").write_text("CC-BY-NC")
        (img_dir / "ATTRIBUTION.txt").write_text("ISIC")
        for i in range(count):
            cid = f"ISIC_{offset + i:07d}"
            img = _save(rng.integers(0, 256, (*size, 3), dtype=np.uint8), img_dir / f"{cid}.jpg", "JPEG")
            # a lossy mask (JPEG-decoded values stored as PNG) exercises the > 127 threshold
            lossy = np.asarray(Image.open(io.BytesIO(_jpeg_bytes(_jpeg_mask(rng, size)))))
            Image.fromarray(lossy).save(gt_dir / f"{cid}_segmentation.png")
            truth[cid] = (img, lossy)
    return truth


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------- ISIC
def test_isic2018_layout_values_and_splits(tmp_path):
    src = tmp_path / "src"
    truth = make_isic2018(src)
    report = convert_dataset("isic2018", src, tmp_path / "out")
    out = tmp_path / "out"
    assert report.root == out and report.num_training == 8 and report.num_test == 3

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "RGB"} and meta["labels"] == {"background": 0, "lesion": 1}
    assert meta["file_ending"] == ".png" and meta["numTraining"] == 8 and meta["numTest"] == 3
    assert meta["conversion"]["seed"] == 42

    tr = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert tr[0] == "ISIC_0000000_0000.png" and len(tr) == 8
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == [f"ISIC_{200 + i:07d}.png" for i in range(3)]
    for cid, (img, lossy) in truth.items():
        part = "Ts" if cid.startswith("ISIC_00002") else "Tr"
        got_img = _png(out / f"images{part}" / f"{cid}_0000.png")
        got_mask = _png(out / f"labels{part}" / f"{cid}.png")
        np.testing.assert_array_equal(got_img, img)  # same pixels as the decoded JPEG, paired by id
        np.testing.assert_array_equal(got_mask, (lossy > 127).astype(np.uint8))
        assert set(np.unique(lossy)) - {0, 255}, "the synthetic mask should carry JPEG artefacts"

    splits = _splits(out)
    train = [f"ISIC_{i:07d}" for i in range(6)]
    val = [f"ISIC_{100 + i:07d}" for i in range(2)]
    test = [f"ISIC_{200 + i:07d}" for i in range(3)]
    assert splits["official"] == {"train": train, "val": val, "test": test}
    assert splits["test"] == test
    m = splits["malunet"]
    assert m["val"] == [] and len(m["train"]) == 6 and len(m["test"]) == 2  # round(0.7 * 8) = 6 of train+val
    assert sorted(m["train"] + m["test"]) == sorted(train + val)
    s = splits["80-10-10"]
    assert sorted(s["train"] + s["val"] + s["test"]) == train and [len(s[k]) for k in ("train", "val", "test")] == [
        5,
        1,
        0,
    ]
    assert splits["dlka"] == {"train": train[:4], "val": [], "test": train[4:]}  # int(4.2), int(0.6), rest
    for name in ("official", "malunet", "80-10-10", "dlka"):
        _assert_split_sane(splits, name)
    info = load_dataset(out)
    assert info.is_rgb and info.num_classes == 2 and set(load_splits(info)) == set(splits)


def test_isic_seeded_splits_are_reproducible(tmp_path):
    src = tmp_path / "src"
    make_isic2018(src, n=(20, 0, 0))
    a = _splits(convert_dataset("isic2018", src, tmp_path / "a").root)
    b = _splits(convert_dataset("isic2018", src, tmp_path / "b").root)
    c = _splits(convert_dataset("isic2018", src, tmp_path / "c", seed=7).root)
    assert a == b and a["malunet"] != c["malunet"]
    assert "official" not in a and "test" not in a  # no validation/test folders: no official split
    assert len(a["malunet"]["train"]) == 14 and len(a["malunet"]["test"]) == 6
    assert [len(a["80-10-10"][k]) for k in ("train", "val", "test")] == [16, 2, 2]


def test_isic2017_layout_skips_superpixels_and_max_size(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "ISIC2017"
    for sub in ("Training", "Validation", "Test_v2"):
        img_dir, gt_dir = src / f"ISIC-2017_{sub}_Data", src / f"ISIC-2017_{sub}_Part1_GroundTruth"
        for i in range(2):
            cid = f"ISIC_{len(sub) * 10 + i:07d}"
            _save(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), img_dir / f"{cid}.jpg", "JPEG")
            _save(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), img_dir / f"{cid}_superpixels.png")
            mask = np.zeros((40, 60), np.uint8)
            mask[10:30, 20:50] = 255
            _save(mask, gt_dir / f"{cid}_segmentation.png")
    (src / "ISIC-2017_Training_Data" / "ISIC-2017_Training_Data_metadata.csv").write_text("id,age\n")
    out = convert_dataset("isic2017", src, tmp_path / "out", max_size=30).root
    splits = _splits(out)
    assert [len(splits["official"][k]) for k in ("train", "val", "test")] == [2, 2, 2]
    names = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert len(names) == 4 and not any("superpixels" in n for n in names)
    cid = splits["official"]["train"][0]
    img, mask = _png(out / "imagesTr" / f"{cid}_0000.png"), _png(out / "labelsTr" / f"{cid}.png")
    assert img.shape == (20, 30, 3) and mask.shape == (20, 30)  # longer side 60 -> 30
    expected = np.zeros((20, 30), np.uint8)
    expected[5:15, 10:25] = 1  # the rectangle halves exactly
    np.testing.assert_array_equal(mask, expected)
    assert json.loads((out / "dataset.json").read_text())["conversion"]["max_size"] == 30


@pytest.mark.parametrize("problem", ["missing_mask", "mask_size", "non_image", "corrupt_image"])
def test_isic_errors_name_the_file_and_leave_nothing(tmp_path, problem):
    src = tmp_path / "src"
    make_isic2018(src, n=(3, 0, 0))
    img_dir, gt_dir = src / "ISIC2018_Task1-2_Training_Input", src / "ISIC2018_Task1_Training_GroundTruth"
    if problem == "missing_mask":
        (gt_dir / "ISIC_0000001_segmentation.png").unlink()
        culprit = "ISIC_0000001.jpg"
    elif problem == "mask_size":
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(gt_dir / "ISIC_0000002_segmentation.png")
        culprit = "ISIC_0000002_segmentation.png"
    elif problem == "non_image":
        (img_dir / "notes.docx").write_bytes(b"PK\x03\x04")
        culprit = "notes.docx"
    else:
        (img_dir / "ISIC_0000000.jpg").write_bytes(b"this is not a jpeg")
        culprit = "ISIC_0000000.jpg"
    with pytest.raises(DatasetError) as err:
        convert_dataset("isic2018", src, tmp_path / "out")
    assert culprit in str(err.value)
    _no_leftovers(tmp_path, "out")


def test_destination_rules_and_overwrite(tmp_path):
    src = tmp_path / "src"
    make_isic2018(src, n=(3, 0, 0))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(DatasetError, match="not empty"):
        convert_dataset("isic2018", src, out)
    assert (out / "keep.txt").exists()
    with pytest.raises(DatasetError, match="inside the source"):
        convert_dataset("isic2018", src, src / "converted")
    with pytest.raises(DatasetError, match="unknown dataset"):
        convert_dataset("isic2019", src, tmp_path / "x")
    with pytest.raises(DatasetError, match="must not contain the source"):  # --overwrite would delete the source
        convert_dataset("isic2018", src, tmp_path, overwrite=True)
    assert (src / "ISIC2018_Task1-2_Training_Input").is_dir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DatasetError, match="afile exists and is not a folder"):
        convert_dataset("isic2018", src, tmp_path / "afile" / "out")
    convert_dataset("ISIC-2018", src, out, overwrite=True)
    assert (out / "dataset.json").exists() and not (out / "keep.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert list_converters() == ["acdc", "ddti", "isic2017", "isic2018", "synapse", "tn3k"]


# ---------------------------------------------------------------------------------------------------- thyroid
def make_tn3k(root: Path, n_trainval=12, n_test=3, folds=True, seed=0) -> dict[str, np.ndarray]:
    """TN3K release: unpadded numeric names (so numeric and text order differ), JPEG images and masks."""
    rng = np.random.default_rng(seed)
    masks = {}
    for sub, n in (("trainval", n_trainval), ("test", n_test)):
        for i in range(n):
            _save(rng.integers(0, 256, (20, 28), dtype=np.uint8), root / f"{sub}-image" / f"{i}.jpg", "JPEG")
            m = _save(_jpeg_mask(rng, (20, 28)), root / f"{sub}-mask" / f"{i}.jpg", "JPEG")
            masks[f"{sub}_{i}"] = m
    (root / "label4trainval.csv").write_text("0,1\n")
    if folds:
        for k, val in enumerate(([9, 10, 11], [0, 1, 2], [3, 4, 5], [6, 7, 8], [1, 5, 9])):
            train = [i for i in range(n_trainval) if i not in val]
            (root / f"tn3k-trainval-fold{k}.json").write_text(json.dumps({"train": train, "val": val}))
    return masks


def test_tn3k_layout_folds_and_thresholding(tmp_path):
    src = tmp_path / "tn3k"
    masks = make_tn3k(src)
    out = convert_dataset("tn3k", src, tmp_path / "out").root
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "US"} and meta["labels"] == {"background": 0, "nodule": 1}
    assert meta["numTraining"] == 12 and meta["numTest"] == 3
    assert (out / "imagesTr" / "trainval_10_0000.png").exists() and (out / "imagesTs" / "test_2_0000.png").exists()
    img = _png(out / "imagesTr" / "trainval_3_0000.png")
    assert img.ndim == 2 and img.dtype == np.uint8  # one gray channel
    for cid, m in masks.items():
        part = "Ts" if cid.startswith("test") else "Tr"
        np.testing.assert_array_equal(_png(out / f"labels{part}" / f"{cid}.png"), (m > 127).astype(np.uint8))
    splits = _splits(out)
    # fold indices address the images sorted by their numeric name: index 9..11 are 9.jpg, 10.jpg, 11.jpg
    assert splits["fold0"]["val"] == ["trainval_10", "trainval_11", "trainval_9"]
    assert splits["fold1"]["val"] == ["trainval_0", "trainval_1", "trainval_2"]
    assert len(splits["fold0"]["train"]) == 9
    assert splits["official"]["train"] == sorted(f"trainval_{i}" for i in range(12))
    assert splits["official"]["val"] == [] and splits["test"] == ["test_0", "test_1", "test_2"]
    for name in ("official", "fold0", "fold1", "fold4"):
        _assert_split_sane(splits, name)
    load_splits(load_dataset(out))
    (src / "tn3k-trainval-fold3.json").unlink()  # a lost file must not silently leave a four-fold CV
    with pytest.raises(DatasetError, match=r"fold file\(s\) for fold 3 missing \(found fold0, fold1, fold2, fold4\)"):
        convert_dataset("tn3k", src, tmp_path / "out3")
    _no_leftovers(tmp_path, "out3")


def test_tn3k_without_fold_files_and_bad_fold(tmp_path):
    src = tmp_path / "tn3k"
    make_tn3k(src, folds=False)
    report = convert_dataset("tn3k", src, tmp_path / "out")
    splits = _splits(report.root)
    assert [f"fold{k}" in splits for k in range(5)] == [True] * 5
    assert any("no TN3K fold files" in n for n in report.notes)
    (src / "tn3k-trainval-fold0.json").write_text(json.dumps({"train": [0, 1], "val": [99]}))
    with pytest.raises(DatasetError, match="tn3k-trainval-fold0.json.*index 99"):
        convert_dataset("tn3k", src, tmp_path / "out2")
    _no_leftovers(tmp_path, "out2")
    (src / "tn3k-trainval-fold0.json").write_text(json.dumps({"train": None, "val": [0]}))
    with pytest.raises(DatasetError, match="'train' must be a list, got NoneType"):
        convert_dataset("tn3k", src, tmp_path / "out2")


def test_ddti_split_and_mask_size_error(tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / "DDTI"
    for i in range(20):
        _save(rng.integers(0, 256, (18, 22, 3), dtype=np.uint8), src / "image" / f"{i}.PNG")
        _save((rng.random((18, 22)) > 0.5).astype(np.uint8), src / "mask" / f"{i}.PNG")  # stored as 0/1
    out = convert_dataset("ddti", src, tmp_path / "out").root
    splits = _splits(out)
    s = splits["80-10-10"]
    assert [len(s[k]) for k in ("train", "val", "test")] == [16, 2, 2]
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == sorted(f"{c}.png" for c in s["test"])
    assert splits["test"] == s["test"]
    _assert_split_sane(splits, "80-10-10")
    # 0/1 masks are kept (threshold > 0), colour frames become gray
    src_mask = _png(src / "mask" / "0.PNG")
    part = "Ts" if "ddti_0" in s["test"] else "Tr"
    np.testing.assert_array_equal(_png(out / f"labels{part}" / "ddti_0.png"), src_mask)
    assert _png(out / f"images{part}" / "ddti_0_0000.png").ndim == 2
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(src / "mask" / "7.PNG")
    with pytest.raises(DatasetError, match=r"7\.PNG: mask size 5x5"):
        convert_dataset("ddti", src, tmp_path / "new" / "deeper" / "out2")
    assert not (tmp_path / "new").exists()  # the parents a failed conversion created are removed again


def test_ddti_16_bit_images_keep_their_depth(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / "DDTI"
    for i in range(3):
        _save((rng.random((18, 22)) > 0.5).astype(np.uint8) * 255, src / "mask" / f"{i}.png")
    deep = rng.integers(0, 4096, (18, 22)).astype(np.uint16)
    deep[0, 0] = 300  # 300 mod 256 = 44: the value an 8-bit cast used to write
    _save(deep, src / "image" / "0.png")
    for i in (1, 2):
        _save(rng.integers(0, 256, (18, 22), dtype=np.uint8), src / "image" / f"{i}.png")
    out = convert_dataset("ddti", src, tmp_path / "out", max_size=None).root
    written = next(out.glob("images*/ddti_0_0000.png"))
    np.testing.assert_array_equal(_png(written), deep)
    half = convert_dataset("ddti", src, tmp_path / "half", max_size=16).root  # resized 16-bit: still 16 bits
    small = _png(next(half.glob("images*/ddti_0_0000.png")))
    assert small.dtype == np.uint16 and small.shape == (13, 16) and small.max() > 255
    _save(np.full((18, 22), 0.5, np.float32), src / "image" / "0.tif")
    (src / "image" / "0.png").unlink()
    with pytest.raises(DatasetError, match=r"0\.tif: float32 grey image"):
        convert_dataset("ddti", src, tmp_path / "float")


# ------------------------------------------------------------------------------------------------------- ACDC
def _acdc_patient(
    folder: Path, rng: np.random.Generator, ed: int, es: int, info: bool = True, shape=(10, 12, 3)
) -> None:
    folder.mkdir(parents=True)
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    if info:
        (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 170.0\nNbFrame: 30\nWeight: 70\n")
    nib.save(
        nib.Nifti1Image(rng.integers(0, 500, (*shape, 4)).astype(np.int16), affine), folder / f"{folder.name}_4d.nii.gz"
    )
    for frame in (ed, es):
        nib.save(
            nib.Nifti1Image(rng.integers(0, 500, shape).astype(np.int16), affine),
            folder / f"{folder.name}_frame{frame:02d}.nii.gz",
        )
        nib.save(
            nib.Nifti1Image(rng.integers(0, 4, shape).astype(np.uint8), affine),
            folder / f"{folder.name}_frame{frame:02d}_gt.nii.gz",
        )


def make_acdc(root: Path, numbers=(1, 2, 3, 4, 5, 8, 9, 10), testing=(101,)) -> None:
    rng = np.random.default_rng(4)
    for n in numbers:
        _acdc_patient(root / "database" / "training" / f"patient{n:03d}", rng, 1, 8 + n % 5, info=n != 4)
    for n in testing:
        _acdc_patient(root / "database" / "testing" / f"patient{n:03d}", rng, 1, 10)
    _acdc_patient(root / "database" / "testing" / "patient150", rng, 1, 9)
    for f in (root / "database" / "testing" / "patient150").glob("*_gt.nii.gz"):
        f.unlink()  # an unannotated test patient: skipped


def test_acdc_cases_bytes_and_patient_split(tmp_path):
    src = tmp_path / "ACDC"
    make_acdc(src)
    report = convert_dataset("acdc", src, tmp_path / "out")
    out = report.root
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MRI"}
    assert meta["labels"] == {"background": 0, "RV": 1, "Myo": 2, "LV": 3}
    assert meta["conversion"]["frames"]["patient001_ES"] == 9 and meta["conversion"]["frames"]["patient004_ED"] == 1
    # byte-for-byte copies (geometry exactly as released)
    ref = src / "database" / "training" / "patient005"
    copied = (out / "imagesTr" / "patient005_ES_0000.nii.gz").read_bytes()
    assert copied == (ref / "patient005_frame08.nii.gz").read_bytes()
    copied = (out / "labelsTr" / "patient005_ED.nii.gz").read_bytes()
    assert copied == (ref / "patient005_frame01_gt.nii.gz").read_bytes()
    splits = _splits(out)
    s = splits["70-10-20"]
    listed = sorted(p for p in ("patient002", "patient003", "patient008", "patient009") if p in ACDC_TEST_PATIENTS)
    assert s["test"] == sorted(f"{p}_{ph}" for p in listed for ph in ("ED", "ES"))
    assert splits["test"] == s["test"]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == sorted(f"{c}_0000.nii.gz" for c in s["test"])
    assert len(s["val"]) == 2 and len(s["train"]) == 6  # 4 remaining patients: 1 validation patient, 3 training
    for part in s.values():  # ED and ES of a patient always together
        patients = {c.rsplit("_", 1)[0] for c in part}
        assert sorted(part) == sorted(f"{p}_{ph}" for p in patients for ph in ("ED", "ES"))
    o = splits["official"]
    assert o["test"] == ["patient101_ED", "patient101_ES"] and o["val"] == s["val"]
    assert not set(o["train"]) & set(o["val"]) and len(o["train"]) == 14
    for name in ("70-10-20", "official"):
        _assert_split_sane(splits, name)
    assert any("without annotations" in n for n in report.notes)
    info = load_dataset(out)
    assert info.num_classes == 4 and len(info.cases) == 18


def test_acdc_bad_label_value(tmp_path):
    src = tmp_path / "ACDC"
    make_acdc(src, numbers=(1, 2), testing=())
    gt = src / "database" / "training" / "patient002" / "patient002_frame01_gt.nii.gz"
    img = nib.load(gt)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(data, img.affine), gt)
    with pytest.raises(DatasetError, match=r"patient002_frame01_gt\.nii\.gz: label values \[5\]"):
        convert_dataset("acdc", src, tmp_path / "out")
    _no_leftovers(tmp_path, "out")
    info = src / "database" / "training" / "patient001" / "Info.cfg"
    info.write_text("ED: inf\nES: 5\n")
    with pytest.raises(DatasetError, match=r"Info\.cfg: cannot read the ED frame number from 'ED: inf'"):
        convert_dataset("acdc", src, tmp_path / "out")


# ---------------------------------------------------------------------------------------------------- Synapse
def test_synapse_raw_btcv_remap(tmp_path):
    rng = np.random.default_rng(5)
    src = tmp_path / "Abdomen"
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    ids = (1, 2, 5, 6)  # two TransUNet test cases, two training cases
    img_dir, lbl_dir = src / "RawData" / "Training" / "img", src / "RawData" / "Training" / "label"
    img_dir.mkdir(parents=True)
    lbl_dir.mkdir(parents=True)
    for n in ids:
        ct = rng.integers(-1000, 1000, (8, 9, 4)).astype(np.int16)
        nib.save(nib.Nifti1Image(ct, affine), img_dir / f"img{n:04d}.nii.gz")
        label = rng.integers(0, 14, (8, 9, 4)).astype(np.uint8)  # all 13 BTCV structures
        nib.save(nib.Nifti1Image(label, affine), lbl_dir / f"label{n:04d}.nii.gz")
    (src / "RawData" / "Testing" / "img").mkdir(parents=True)
    nib.save(
        nib.Nifti1Image(np.zeros((8, 9, 4), np.int16), affine), src / "RawData" / "Testing" / "img" / "img0061.nii.gz"
    )
    report = convert_dataset("synapse", src, tmp_path / "out")
    out = report.root
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {
        "background": 0,
        "aorta": 1,
        "gallbladder": 2,
        "spleen": 3,
        "kidney_left": 4,
        "kidney_right": 5,
        "liver": 6,
        "pancreas": 7,
        "stomach": 8,
    }
    assert meta["channel_names"] == {"0": "CT"} and meta["conversion"]["layout"] == "btcv-raw"
    raw = np.asarray(nib.load(src / "RawData" / "Training" / "label" / "label0005.nii.gz").dataobj)
    got = nib.load(out / "labelsTr" / "case0005.nii.gz")
    expected = np.zeros_like(raw)
    for btcv, ours in {8: 1, 4: 2, 1: 3, 3: 4, 2: 5, 6: 6, 11: 7, 7: 8}.items():  # written out independently
        expected[raw == btcv] = ours
    assert BTCV_TO_SYNAPSE == {8: 1, 4: 2, 1: 3, 3: 4, 2: 5, 6: 6, 11: 7, 7: 8}
    np.testing.assert_array_equal(np.asarray(got.dataobj), expected)
    np.testing.assert_allclose(got.affine, affine)
    assert (out / "imagesTs" / "case0001_0000.nii.gz").read_bytes() == (
        src / "RawData" / "Training" / "img" / "img0001.nii.gz"
    ).read_bytes()
    splits = _splits(out)
    assert splits["transunet"] == {"train": ["case0005", "case0006"], "val": [], "test": ["case0001", "case0002"]}
    assert splits["test"] == ["case0001", "case0002"]
    assert any("missing" in n for n in report.notes)
    assert len(TRANSUNET_TRAIN) == 18 and len(TRANSUNET_TEST) == 12 and not set(TRANSUNET_TRAIN) & set(TRANSUNET_TEST)
    load_splits(load_dataset(out))


def _make_transunet_release(src: Path, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    vols = {}
    for cid, depth in (("case0005", 3), ("case0006", 2)):
        img = rng.random((depth, 16, 16)).astype(np.float32)
        lbl = rng.integers(0, 9, (depth, 16, 16)).astype(np.float32)
        (src / "train_npz").mkdir(parents=True, exist_ok=True)
        for k in range(depth):
            np.savez(src / "train_npz" / f"{cid}_slice{k:03d}.npz", image=img[k], label=lbl[k])
        vols[cid] = (img, lbl)
    return vols


def test_synapse_transunet_release(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(6)
    src = tmp_path / "Synapse"
    vols = _make_transunet_release(src, rng)
    (src / "test_vol_h5").mkdir()
    img = rng.random((4, 16, 16)).astype(np.float32)
    lbl = rng.integers(0, 9, (4, 16, 16)).astype(np.float32)
    with h5py.File(src / "test_vol_h5" / "case0001.npy.h5", "w") as h:
        h["image"], h["label"] = img, lbl
    vols["case0001"] = (img, lbl)
    out = convert_dataset("synapse", src, tmp_path / "out").root
    for cid, (img, lbl) in vols.items():
        part = "Ts" if cid == "case0001" else "Tr"
        got_img = np.asarray(nib.load(out / f"images{part}" / f"{cid}_0000.nii.gz").dataobj)
        got_lbl = np.asarray(nib.load(out / f"labels{part}" / f"{cid}.nii.gz").dataobj)
        assert got_img.dtype == np.float32 and got_img.shape == (16, 16, img.shape[0])
        for k in range(img.shape[0]):  # slice k along the last axis is the released 2D array, exactly
            np.testing.assert_array_equal(got_img[..., k], img[k])
            np.testing.assert_array_equal(got_lbl[..., k], lbl[k].astype(np.uint8))
    splits = _splits(out)
    assert splits["transunet"] == {"train": ["case0005", "case0006"], "val": [], "test": ["case0001"]}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["conversion"]["layout"] == "transunet-preprocessed"


def test_synapse_transunet_release_errors(tmp_path):
    rng = np.random.default_rng(7)
    src = tmp_path / "Synapse"
    _make_transunet_release(src, rng)
    (src / "train_npz" / "case0005_slice001.npz").unlink()
    with pytest.raises(DatasetError, match=r"case0005 is missing slice\(s\) \[1\]"):
        convert_dataset("synapse", src, tmp_path / "out")
    (src / "train_npz" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="notes.txt: not a TransUNet slice file"):
        convert_dataset("synapse", src, tmp_path / "out")
    (src / "train_npz" / "notes.txt").unlink()
    broken = src / "train_npz" / "case0005_slice001.npz"
    good = (src / "train_npz" / "case0005_slice000.npz").read_bytes()
    for payload, problem in [
        (b"", "EOFError"),
        (good[:100], "BadZipFile"),
        (None, "holds a single array"),
        ({"image": np.full((16, 16), "a"), "label": np.zeros((16, 16))}, "'image' holds <U1 values"),
    ]:
        if isinstance(payload, bytes):
            broken.write_bytes(payload)
        elif payload is None:
            with broken.open("wb") as f:
                np.save(f, np.zeros(3))
        else:
            np.savez(broken, **payload)
        with pytest.raises(DatasetError, match=f"case0005_slice001.npz: .*{problem}"):
            convert_dataset("synapse", src, tmp_path / "out")
    _no_leftovers(tmp_path, "out")


def test_synapse_h5_needs_h5py(tmp_path, monkeypatch):
    import builtins

    src = tmp_path / "Synapse"
    (src / "test_vol_h5").mkdir(parents=True)
    (src / "test_vol_h5" / "case0001.npy.h5").write_bytes(b"")
    real_import = builtins.__import__

    def no_h5py(name, *args, **kwargs):
        if name == "h5py":
            raise ImportError("no h5py")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_h5py)
    with pytest.raises(DatasetError, match=r"needs h5py: pip install 'attnseg\[convert\]'"):
        convert_dataset("synapse", src, tmp_path / "out")


# -------------------------------------------------------------------------------------------------------- CLI
def test_cli_convert_and_clean_errors(tmp_path):
    src = tmp_path / "src"
    make_isic2018(src, n=(3, 1, 1))
    ok = runner.invoke(app, ["convert-dataset", "isic2018", str(src), str(tmp_path / "out"), "--workers", "2"])
    assert ok.exit_code == 0, ok.output
    assert "split malunet" in ok.output and (tmp_path / "out" / "splits.json").exists()

    bad = runner.invoke(app, ["convert-dataset", "isic2019", str(src), str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown dataset 'isic2019'" in bad.output
    assert "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1

    (src / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000002_segmentation.png").unlink()
    missing = runner.invoke(app, ["convert-dataset", "isic2018", str(src), str(tmp_path / "y")])
    assert missing.exit_code == 2 and "ISIC_0000002.jpg" in missing.output and "no mask" in missing.output
    assert "Traceback" not in missing.output and len(missing.output.strip().splitlines()) == 1
    _no_leftovers(tmp_path, "y")

    exists = runner.invoke(app, ["convert-dataset", "isic2018", str(src), str(tmp_path / "out")])
    assert exists.exit_code == 2 and "--overwrite" in exists.output


# ------------------------------------------------------------------------------------- usable with `--fold NAME`
def test_named_splits_drive_the_trainer(tmp_path):
    """Every named split of a converted dataset sets up a training run (train/val from the split, test untouched)."""
    from attnseg.config import TrainConfig
    from attnseg.training.trainer import Trainer

    src_isic, src_acdc = tmp_path / "isic", tmp_path / "acdc"
    make_isic2018(src_isic, n=(10, 2, 2))
    make_acdc(src_acdc)
    for kind, src, loss in (("isic2018", src_isic, "bce_dice"), ("acdc", src_acdc, "dice_ce")):
        out = convert_dataset(kind, src, tmp_path / f"{kind}_out").root
        splits = _splits(out)
        for name, split in splits.items():
            if not isinstance(split, dict):
                continue
            cfg = TrainConfig(
                model="unet",
                model_kwargs={"width": 4},
                data=str(out),
                out=str(tmp_path / "run"),
                fold=name,
                iterations=1,
                batch_size=1,
                input_size=[32, 32],
                loss=loss,
                geometry="resize",
                device="cpu",
                num_workers=0,
            )
            trainer = Trainer(cfg, progress=False)
            trainer.setup()
            assert trainer.train_ids == split["train"] and trainer.val_ids == split.get("val", [])
            assert not set(trainer.train_ids) & set(split.get("test", []))
            assert not (tmp_path / "run").exists(), "setup must not write the run directory"


def test_mask_threshold_rules(tmp_path):
    from attnseg.data.conversion._common import read_binary_mask

    faint = np.zeros((16, 16), np.uint8)
    faint[4:12, 4:12] = 1  # an empty mask with JPEG-like noise of value 1
    Image.fromarray(faint).save(tmp_path / "faint.jpg", quality=100)
    assert np.asarray(Image.open(tmp_path / "faint.jpg")).max() >= 1
    assert read_binary_mask(tmp_path / "faint.jpg").sum() == 0  # JPEG: always > 127
    _save(faint, tmp_path / "binary.png")
    np.testing.assert_array_equal(read_binary_mask(tmp_path / "binary.png"), faint)  # lossless 0/1: > 0
    grey = np.array([[0, 127, 128, 255]], np.uint8)
    _save(grey, tmp_path / "grey.png")
    np.testing.assert_array_equal(read_binary_mask(tmp_path / "grey.png"), [[0, 0, 1, 1]])
    with pytest.raises(DatasetError, match="grey.png: mask size 4x1"):
        read_binary_mask(tmp_path / "grey.png", (2, 4), image=tmp_path / "img.png")
    red = np.zeros((2, 4, 3), np.uint8)
    red[:, 2:, 0] = 255  # luminance 76: a red lesion would vanish under a grey threshold
    Image.fromarray(red).save(tmp_path / "red.png")
    np.testing.assert_array_equal(read_binary_mask(tmp_path / "red.png"), [[0, 0, 1, 1], [0, 0, 1, 1]])
    Image.fromarray(red).convert("P").save(tmp_path / "red_palette.png")
    np.testing.assert_array_equal(read_binary_mask(tmp_path / "red_palette.png"), [[0, 0, 1, 1], [0, 0, 1, 1]])


def test_isic_pre_split_folder_layout(tmp_path):
    """`train|val|test/{images,masks}` (the layout MALUNet's README distributes) is recognised too."""
    rng = np.random.default_rng(8)
    src = tmp_path / "isic18"
    for sub, n in (("train", 4), ("val", 2), ("test", 1)):
        for i in range(n):
            cid = f"ISIC_{sub}{i}"
            _save(rng.integers(0, 256, (12, 14, 3), dtype=np.uint8), src / sub / "images" / f"{cid}.png")
            _save(np.full((12, 14), 255, np.uint8), src / sub / "masks" / f"{cid}_mask.png")
    out = convert_dataset("isic2018", src, tmp_path / "out").root
    official = _splits(out)["official"]
    assert official == {
        "train": [f"ISIC_train{i}" for i in range(4)],
        "val": ["ISIC_val0", "ISIC_val1"],
        "test": ["ISIC_test0"],
    }
    assert _png(out / "labelsTs" / "ISIC_test0.png").min() == 1
