"""The nnU-Net raw layout: dataset.json, case discovery, splits, and clear errors."""

from __future__ import annotations

import json
import shutil

import pytest

from attnseg.data.layout import DatasetError, default_folds, load_dataset, load_splits


def test_cases_and_default_splits(ct_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(ct_dataset, root)
    (root / "splits.json").unlink(missing_ok=True)
    info = load_dataset(root)
    assert info.training_cases() == ["train000", "train001", "train002"]
    assert info.test_cases() == ["test000"] and info.num_classes == 3 and info.channel_kind(0) == "ct"
    splits = load_splits(info)
    assert (root / "splits.json").exists() and splits["test"] == ["test000"]
    assert json.loads((root / "splits.json").read_text()) == splits  # written deterministically
    for fold in ("fold0", "fold1", "fold2"):
        assert sorted(splits[fold]["train"] + splits[fold]["val"]) == info.training_cases()
    vals = sorted(c for f in ("fold0", "fold1", "fold2") for c in splits[f]["val"])
    assert vals == info.training_cases()  # each case validated exactly once


def test_default_folds_are_deterministic():
    ids = [f"c{i}" for i in range(11)]
    assert default_folds(ids) == default_folds(list(reversed(ids)))
    assert sum(len(f["val"]) for f in default_folds(ids).values()) == 11


def test_layout_errors_name_the_file(ct_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(ct_dataset, root)
    with pytest.raises(DatasetError, match="dataset.json: missing"):
        load_dataset(tmp_path)
    (root / "labelsTr" / "train001.nii.gz").unlink()
    with pytest.raises(DatasetError, match="train001.nii.gz: label file missing"):
        load_dataset(root)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="invalid JSON"):
        load_dataset(root)
    (root / "dataset.json").write_text(json.dumps({**meta, "labels": {**meta["labels"], "x": 5000}}))
    with pytest.raises(DatasetError, match="label 'x': id 5000 is above 1023; the model would get id"):
        load_dataset(root)
    (root / "dataset.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(DatasetError, match="dataset.json: cannot be read .UnicodeDecodeError"):
        load_dataset(root)
    (root / "dataset.json").unlink()
    (root / "dataset.json").mkdir()
    with pytest.raises(DatasetError, match="dataset.json: is a folder"):
        load_dataset(root)


def test_split_naming_unknown_case_is_an_error(ct_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(ct_dataset, root)
    (root / "splits.json").write_text(json.dumps({"fold0": {"train": ["nope"], "val": []}}))
    with pytest.raises(DatasetError, match="nope"):
        load_splits(load_dataset(root))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('["c1", "c2"]', "must be an object of named splits, found a list"),
        ('{"fold0": 3}', "split 'fold0' must be a list of case ids or an object of such lists"),
        ('{"fold0": {"train": "train001"}}', "split 'fold0' must be a list of case ids"),
        ('{"fold0": {"train": [1, 2]}}', "split 'fold0' must be a list of case ids"),
    ],
)
def test_load_splits_refuses_a_badly_shaped_file(ct_dataset, tmp_path, content: str, message: str):
    root = tmp_path / "ds"
    shutil.copytree(ct_dataset, root)
    (root / "splits.json").write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_splits(load_dataset(root))
    (root / "splits.json").write_bytes(b"\xff{")
    with pytest.raises(DatasetError, match="splits.json: cannot be read"):
        load_splits(load_dataset(root))
