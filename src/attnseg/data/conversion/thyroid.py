"""Thyroid-nodule ultrasound: TN3K and DDTI -> canonical layout.

**TN3K** (Gong et al., ISBI 2021 / CIBM 2023; released with TRFE-Net) as distributed::

    SRC/
      trainval-image/ 0000.jpg ...   trainval-mask/ 0000.jpg ...    (2,879 images)
      test-image/     0000.jpg ...   test-mask/     0000.jpg ...    (614 images)
      tn3k-trainval-fold0.json ... tn3k-trainval-fold4.json          (optional CV folds)
      label4trainval.csv, label4test.csv                              (classification labels: ignored)

The fold files hold ``{"train": [...], "val": [...]}`` with indices into the trainval images sorted by their
numeric name (TRFE-Net's loader); file names or stems are accepted too. Folder names are matched leniently
(``trainval_images``, ``train/images``, ``Test-Mask`` ...).

**DDTI** (Pedraza et al., 2015) through TRFE-Net's processed release (637 images)::

    SRC/ image/ 0.PNG ...   mask/ 0.PNG ...

Both are converted to single-channel gray PNGs (``US``; colour-encoded frames are converted to luminance) with 0/1
PNG masks (labels background 0, nodule 1). The masks are JPEGs in TN3K, so they are thresholded at > 127 (masks
stored as 0/1 at > 0); TRFE-Net's loader instead divides by the maximum and truncates, which keeps only the
brightest JPEG level. Images and masks are paired by name.

Case ids: ``trainval_0000`` / ``test_0000`` (TN3K; the two sets reuse file names), ``ddti_<name>`` (DDTI).

Named splits:

- TN3K ``official``: the 2,879 trainval images for training, no validation, the 614 test images as test;
  ``fold0`` ... ``fold4``: the published trainval folds (train/val) when the JSON files are present, else five
  seeded folds of the trainval images (layout default, seed 12345), stated in ``dataset.json``. The top-level
  ``test`` is the official test set (``imagesTs``).
- DDTI ``80-10-10``: seeded random 80/10/10 of all images (no official split exists; images of one patient may fall
  into different parts, since the release carries no patient ids). Its test part goes to ``imagesTs``. DDTI is also
  used as an external test set for TN3K-trained models: evaluate on all of ``labelsTr`` + ``labelsTs`` for that.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from attnseg.data.conversion._common import (
    IMAGE_WORDS,
    MASK_WORDS,
    SPLIT_SEED,
    ConversionReport,
    descend_single,
    find_dir,
    find_pair_dirs,
    finish_dataset,
    list_files,
    pair_by_id,
    read_binary_mask,
    read_gray_image,
    resize_pair,
    run_parallel,
    save_png,
    seeded_partition,
    staged_output,
)
from attnseg.data.layout import DatasetError, default_folds

__all__ = ["convert_tn3k", "convert_ddti"]

_TN3K_REF = (
    "Gong H. et al., Multi-task learning for thyroid nodule segmentation with thyroid region prior, ISBI "
    "2021; Gong H. et al., Thyroid region prior guided attention for ultrasound segmentation of thyroid "
    "nodules, Comput. Biol. Med. 2023. https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation"
)
_DDTI_REF = (
    "Pedraza L. et al., An open access thyroid ultrasound image database, SPIE 2015 (DDTI); processed "
    "release of TRFE-Net (Gong et al.)."
)
_MASK_SUFFIXES = ("_mask", "_gt", "_label", "_segmentation")


def _numeric_key(path: Path) -> tuple[int, int | str]:
    stem = path.name.split(".")[0]
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def _pairs(img_dir: Path, mask_dir: Path, prefix: str) -> list[tuple[str, Path, Path]]:
    images = list_files(img_dir)
    if not images:
        raise DatasetError(f"{img_dir}: no images found")
    pairs = pair_by_id(images, list_files(mask_dir), mask_suffixes=_MASK_SUFFIXES)
    return [(f"{prefix}_{key}", img, mask) for key, img, mask in pairs]


def _write_cases(stage: Path, cases: list[tuple[str, str, Path, Path]], workers: int, max_size: int | None) -> None:
    def convert_one(item: tuple[str, str, Path, Path]) -> None:
        part, cid, img_path, mask_path = item
        image = read_gray_image(img_path)
        mask = read_binary_mask(mask_path, image.shape, image=img_path)
        image, mask = resize_pair(image, mask, max_size)
        save_png(image, stage / f"images{part}" / f"{cid}_0000.png")
        save_png(mask, stage / f"labels{part}" / f"{cid}.png")

    for sub in {f"{kind}{part}" for part, *_ in cases for kind in ("images", "labels")}:
        (stage / sub).mkdir(exist_ok=True)
    run_parallel(convert_one, cases, workers)


def _read_folds(src: Path, trainval_images: list[Path], prefix: str) -> dict[str, dict[str, list[str]]]:
    """TN3K's ``tn3k-trainval-foldK.json`` files, as case ids."""
    ordered = sorted(trainval_images, key=_numeric_key)
    by_name = {p.name: p for p in ordered} | {p.name.split(".")[0]: p for p in ordered}
    files = sorted(p for p in src.rglob("*.json") if re.search(r"fold\s*\d+", p.name.lower()))
    folds: dict[str, dict[str, list[str]]] = {}
    for path in files:
        k = int(re.search(r"fold\s*(\d+)", path.name.lower()).group(1))
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: invalid fold file ({exc})") from None
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read the fold file ({exc.strerror or exc})") from None
        if not isinstance(doc, dict) or not {"train", "val"} <= set(doc):
            raise DatasetError(f"{path}: a fold file must hold 'train' and 'val' lists")
        for part in ("train", "val"):
            if not isinstance(doc[part], list):
                raise DatasetError(f"{path}: {part!r} must be a list, got {type(doc[part]).__name__}")
        fold = {}
        for part in ("train", "val"):
            ids = []
            for entry in doc[part]:
                if isinstance(entry, int) and not isinstance(entry, bool):
                    if not 0 <= entry < len(ordered):
                        raise DatasetError(
                            f"{path}: index {entry} in {part!r} is outside the {len(ordered)} trainval images"
                        )
                    img = ordered[entry]
                elif isinstance(entry, str) and (entry in by_name or Path(entry).name in by_name):
                    img = by_name.get(entry) or by_name[Path(entry).name]
                else:
                    raise DatasetError(f"{path}: {entry!r} in {part!r} is neither an index nor a trainval image name")
                ids.append(f"{prefix}_{img.name.split('.')[0]}")
            fold[part] = sorted(ids)
        overlap = set(fold["train"]) & set(fold["val"])
        if overlap:
            raise DatasetError(f"{path}: {len(overlap)} images are in both train and val (e.g. {sorted(overlap)[0]})")
        folds[f"fold{k}"] = fold
    found = {int(k[4:]) for k in folds}
    absent = sorted(set(range(max([4, *found]) + 1)) - found)
    if folds and absent:  # TN3K publishes folds 0-4: a lost file must not silently shrink the CV
        raise DatasetError(
            f"{src}: fold file(s) for fold {', '.join(map(str, absent))} missing (found {', '.join(sorted(folds))}); "
            "give all five tn3k-trainval-foldK.json files, or none for seeded folds"
        )
    return folds


def convert_tn3k(
    src: Path,
    dst: Path,
    *,
    seed: int = SPLIT_SEED,
    overwrite: bool = False,
    workers: int = 1,
    max_size: int | None = None,
) -> ConversionReport:
    """Convert TN3K (see the module docstring for layout, splits and options).

    Args:
        src: the TN3K folder as distributed.
        dst: the dataset folder to create.
        seed: unused for TN3K's own folds; recorded for the fallback folds' documentation.
        overwrite: replace an existing non-empty ``dst``.
        workers: threads for image conversion.
        max_size: optional cap on the longer image side (pixels).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DatasetError(f"{src}: source folder not found")
    trainval_dirs = find_pair_dirs(src, ("trainval", "training", "train"), exclude=("test",))
    if trainval_dirs is None:
        raise DatasetError(f"{src}: no trainval-image / trainval-mask folders found (TN3K layout)")
    test_dirs = find_pair_dirs(src, ("testing", "test"), exclude=("trainval",))
    trainval = _pairs(*trainval_dirs, "trainval")
    test = _pairs(*test_dirs, "test") if test_dirs else []
    train_ids, test_ids = [c for c, _, _ in trainval], [c for c, _, _ in test]
    folds = _read_folds(src, [img for _, img, _ in trainval], "trainval")
    notes = []
    if folds:
        fold_note = "TN3K's published trainval folds (tn3k-trainval-foldK.json)"
    else:
        folds = default_folds(train_ids)
        fold_note = "no TN3K fold files were found: five seeded folds of the trainval images (seed 12345)"
        notes.append(fold_note)
    for label, n, e in (("trainval", len(train_ids), 2879), ("test", len(test_ids), 614)):
        if n != e:
            notes.append(f"found {n} {label} images; the official TN3K release has {e}")
    with staged_output(dst, overwrite=overwrite, src=src) as stage:
        _write_cases(
            stage, [("Tr", c, i, m) for c, i, m in trainval] + [("Ts", c, i, m) for c, i, m in test], workers, max_size
        )
        splits: dict[str, Any] = {"official": {"train": sorted(train_ids), "val": [], "test": sorted(test_ids)}}
        splits.update(folds)
        if test_ids:
            splits["test"] = sorted(test_ids)
        split_notes = {"official": "TN3K trainval (2,879) for training, no validation, test (614)"}
        split_notes.update({k: fold_note for k in folds})
        report = finish_dataset(
            stage,
            dataset="TN3K",
            channel_names={0: "US"},
            labels={"background": 0, "nodule": 1},
            file_ending=".png",
            training=train_ids,
            test=test_ids,
            splits=splits,
            split_notes=split_notes,
            description="TN3K thyroid nodule ultrasound, converted by `attnseg convert-dataset tn3k`: gray PNG "
            "images, binary nodule masks (JPEG masks thresholded at >127).",
            reference=_TN3K_REF,
            licence="see the TN3K release (research use)",
            conversion={
                "source": os.fspath(src),
                "seed": seed,
                "max_size": max_size,
                "folds_from_files": fold_note.startswith("TN3K"),
            },
            notes=notes,
        )
    report.root = dst
    return report


def convert_ddti(
    src: Path,
    dst: Path,
    *,
    seed: int = SPLIT_SEED,
    overwrite: bool = False,
    workers: int = 1,
    max_size: int | None = None,
) -> ConversionReport:
    """Convert DDTI from TRFE-Net's processed release (see the module docstring).

    Args:
        src: folder holding ``image/`` and ``mask/``.
        dst: the dataset folder to create.
        seed: seed of the 80-10-10 split.
        overwrite: replace an existing non-empty ``dst``.
        workers: threads for image conversion.
        max_size: optional cap on the longer image side (pixels).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DatasetError(f"{src}: source folder not found")
    img_dir = find_dir(src, include=[[w] for w in IMAGE_WORDS], exclude=MASK_WORDS)
    mask_dir = find_dir(src, include=[[w] for w in MASK_WORDS])
    if img_dir is None or mask_dir is None:
        raise DatasetError(f"{src}: expected an image/ and a mask/ folder (TRFE-Net's processed DDTI release)")
    pairs = _pairs(descend_single(img_dir), descend_single(mask_dir), "ddti")
    ids = [c for c, _, _ in pairs]
    train, val, test = seeded_partition(ids, (0.8, 0.1, 0.1), seed)
    test_set = set(test)
    notes = [] if len(ids) == 637 else [f"found {len(ids)} images; TRFE-Net's DDTI release has 637"]
    with staged_output(dst, overwrite=overwrite, src=src) as stage:
        _write_cases(stage, [("Ts" if c in test_set else "Tr", c, i, m) for c, i, m in pairs], workers, max_size)
        splits = {"80-10-10": {"train": train, "val": val, "test": test}, "test": test}
        report = finish_dataset(
            stage,
            dataset="DDTI",
            channel_names={0: "US"},
            labels={"background": 0, "nodule": 1},
            file_ending=".png",
            training=train + val,
            test=test,
            splits=splits,
            split_notes={
                "80-10-10": f"random 80/10/10 of all images (seed {seed}); no official split exists and "
                "the release has no patient ids"
            },
            description="DDTI thyroid nodule ultrasound (TRFE-Net processed release), converted by `attnseg "
            "convert-dataset ddti`: gray PNG images, binary nodule masks (thresholded at >127).",
            reference=_DDTI_REF,
            licence="see the DDTI release (research use)",
            conversion={"source": os.fspath(src), "seed": seed, "max_size": max_size},
            notes=notes,
        )
    report.root = dst
    return report
