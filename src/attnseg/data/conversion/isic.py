"""ISIC 2017 / ISIC 2018 lesion segmentation (Task 1) -> canonical layout.

Source layout (as distributed by the ISIC challenge; folder names are matched leniently, case-insensitively and
ignoring punctuation, up to three levels deep)::

    SRC/
      ISIC2018_Task1-2_Training_Input/      ISIC_0000000.jpg ...   (+ LICENSE, ATTRIBUTION.txt: skipped)
      ISIC2018_Task1_Training_GroundTruth/  ISIC_0000000_segmentation.png ...
      ISIC2018_Task1-2_Validation_Input/    ISIC2018_Task1_Validation_GroundTruth/     (optional)
      ISIC2018_Task1-2_Test_Input/          ISIC2018_Task1_Test_GroundTruth/           (optional)

ISIC 2017 uses ``ISIC-2017_Training_Data`` / ``ISIC-2017_Training_Part1_GroundTruth`` (the ``*_superpixels.png``
files next to the images are skipped), ``ISIC-2017_Validation_*`` and ``ISIC-2017_Test_v2_*``. A pre-split
``train|val|test/{images,masks}`` layout is accepted too. Images and masks are paired by ISIC id (never by list
order: docs/models/malunet.md, B3); mask names may end in ``_segmentation``, ``_mask`` or ``_gt``.

Output: one RGB PNG per case (``imagesTr/ISIC_0000000_0000.png``, all three colours in the ``_0000`` file) and a
0/1 PNG mask (``labelsTr/ISIC_0000000.png``; labels background 0, lesion 1; masks are thresholded at > 127, or > 0
for masks stored as 0/1). Official training and validation images go to ``imagesTr``, official test images to
``imagesTs``. ``max_size`` optionally downsizes images whose longer side exceeds it (the full-resolution ISIC
images are up to 6,000 px wide; the trainer caches whole images in memory).

Named splits in ``splits.json`` (all seeded splits use ``random.Random(seed)`` on the sorted ids, seed 42 by
default, recorded in ``dataset.json``):

- ``official``: challenge train / validation / test (when a validation or test folder is present).
- ``malunet``: MALUNet's random 70/30 split. MALUNet's split sizes, inferred from published confusion-matrix
  totals (docs/models/malunet.md §4), show that the official training and validation images were pooled
  (ISIC2018: 2,694 -> 1,886 train / 808 test), so they are pooled here too. MALUNet had no held-out validation (it
  selected on its test part, docs/models/malunet.md, B5), so ``val`` is empty: train on the 70 % and report the
  final checkpoint.
- ``80-10-10``: seeded 80/10/10 of the official training set (EMCAD).
- ``dlka``: the D-LKA Net / DermoSegDiff protocol inferred for MSA2Net's ISIC2018 results: sorted training ids,
  first 70 % train, next 10 % val, last 20 % test (ISIC2018: 1,815 / 259 / 520).

The top-level ``test`` list is the official test set (when present), so the trainer refuses any split whose
validation part touches it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from attnseg.data.conversion._common import (
    SPLIT_SEED,
    ConversionReport,
    find_pair_dirs,
    finish_dataset,
    list_files,
    pair_by_id,
    read_binary_mask,
    read_rgb,
    resize_pair,
    run_parallel,
    save_png,
    seeded_partition,
    staged_output,
)
from attnseg.data.layout import DatasetError

__all__ = ["convert_isic2017", "convert_isic2018", "OFFICIAL_COUNTS"]

# image counts of the official releases (train, validation, test), for a sanity note when they differ
OFFICIAL_COUNTS = {"isic2017": (2000, 150, 600), "isic2018": (2594, 100, 1000)}
_REFERENCES = {
    "isic2017": "Codella N. et al., Skin lesion analysis toward melanoma detection: a challenge at the 2017 ISBI "
    "(ISIC 2017), arXiv:1710.05006. https://challenge.isic-archive.com/data/#2017",
    "isic2018": "Codella N. et al., Skin Lesion Analysis Toward Melanoma Detection 2018 (ISIC 2018), "
    "arXiv:1902.03368; Tschandl P. et al., The HAM10000 dataset, Sci. Data 2018. "
    "https://challenge.isic-archive.com/data/#2018",
}
_MASK_SUFFIXES = ("_segmentation", "_Segmentation", "_mask", "_gt", "_lesion")


def _is_superpixels(path: Path) -> bool:
    return "superpixel" in path.name.lower()


def _subset(
    src: Path, words: tuple[str, ...], exclude: tuple[str, ...], *, required: bool
) -> list[tuple[str, Path, Path]] | None:
    dirs = find_pair_dirs(src, words, exclude=exclude)
    if dirs is None:
        return None
    img_dir, mask_dir = dirs
    images = list_files(img_dir, skip=_is_superpixels)
    masks = list_files(mask_dir)
    if not images and not masks and not required:
        return None  # an empty optional subset (e.g. ground truth not downloaded yet) counts as absent
    if not images:
        raise DatasetError(f"{img_dir}: no images found")
    return pair_by_id(images, masks, mask_suffixes=_MASK_SUFFIXES)


def _convert(
    name: str,
    src: Path,
    dst: Path,
    *,
    seed: int = SPLIT_SEED,
    overwrite: bool = False,
    workers: int = 1,
    max_size: int | None = None,
) -> ConversionReport:
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DatasetError(f"{src}: source folder not found")
    subsets: dict[str, list[tuple[str, Path, Path]]] = {}
    for subset, words, exclude in (
        ("train", ("training", "train"), ("validation", "test")),
        ("val", ("validation", "valid", "val"), ("test",)),
        ("test", ("testing", "test"), ("validation",)),
    ):
        pairs = _subset(src, words, exclude, required=subset == "train")
        if pairs is not None:
            subsets[subset] = pairs
    if "train" not in subsets:
        raise DatasetError(
            f"{src}: no training image folder found (expected e.g. "
            f"{'ISIC2018_Task1-2_Training_Input' if name == 'isic2018' else 'ISIC-2017_Training_Data'}"
            " and its GroundTruth folder)"
        )
    seen: dict[str, str] = {}
    for subset, pairs in subsets.items():
        for cid, img, _ in pairs:
            if cid in seen:
                raise DatasetError(f"{img}: image id {cid!r} appears in both the {seen[cid]} and {subset} sets")
            seen[cid] = subset

    ids = {k: [cid for cid, _, _ in v] for k, v in subsets.items()}
    train, val, test = ids.get("train", []), ids.get("val", []), ids.get("test", [])
    with staged_output(dst, overwrite=overwrite, src=src) as stage:
        for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test else ()):
            (stage / sub).mkdir()

        def convert_one(item: tuple[str, tuple[str, Path, Path]]) -> None:
            subset, (cid, img_path, mask_path) = item
            image = read_rgb(img_path)
            mask = read_binary_mask(mask_path, image.shape[1:], image=img_path)
            image, mask = resize_pair(image, mask, max_size)
            part = "Ts" if subset == "test" else "Tr"
            save_png(image, stage / f"images{part}" / f"{cid}_0000.png")
            save_png(mask, stage / f"labels{part}" / f"{cid}.png")

        run_parallel(convert_one, [(s, p) for s, pairs in subsets.items() for p in pairs], workers)

        splits: dict[str, Any] = {}
        split_notes: dict[str, str] = {}
        if val or test:
            splits["official"] = {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
            split_notes["official"] = "challenge training / validation / test sets"
        m_train, m_test = seeded_partition(train + val, (0.7, 0.3), seed)
        splits["malunet"] = {"train": m_train, "val": [], "test": m_test}
        split_notes["malunet"] = (
            f"MALUNet: random 70/30 of official train+validation pooled (seed {seed}); no "
            "validation part (the paper selected on its test part), report the final model"
        )
        s_train, s_val, s_test = seeded_partition(train, (0.8, 0.1, 0.1), seed)
        splits["80-10-10"] = {"train": s_train, "val": s_val, "test": s_test}
        split_notes["80-10-10"] = f"random 80/10/10 of the official training set (seed {seed}), as EMCAD"
        ordered = sorted(train)
        n70, n10 = int(len(ordered) * 0.7), int(len(ordered) * 0.1)
        splits["dlka"] = {"train": ordered[:n70], "val": ordered[n70 : n70 + n10], "test": ordered[n70 + n10 :]}
        split_notes["dlka"] = (
            "D-LKA Net protocol (inferred for MSA2Net): sorted official training ids, first 70% "
            "train, next 10% val, last 20% test"
        )
        if test:
            splits["test"] = sorted(test)

        notes = []
        expected = OFFICIAL_COUNTS[name]
        found = (len(train), len(val), len(test))
        for label, n, e in zip(("training", "validation", "test"), found, expected):
            if n and n != e:
                notes.append(f"found {n} {label} images; the official {name.upper()} release has {e}")
        year = name[-4:]
        report = finish_dataset(
            stage,
            dataset=name.upper(),
            channel_names={0: "RGB"},
            labels={"background": 0, "lesion": 1},
            file_ending=".png",
            training=train + val,
            test=test,
            splits=splits,
            split_notes=split_notes,
            description=f"ISIC {year} Task 1 lesion segmentation, converted by `attnseg convert-dataset {name}`: RGB "
            "images as PNG, binary lesion masks (source masks thresholded at >127).",
            reference=_REFERENCES[name],
            licence="CC-BY-NC 4.0 (see the ISIC challenge data page)",
            conversion={
                "source": os.fspath(src),
                "seed": seed,
                "max_size": max_size,
                "counts": dict(zip(("train", "val", "test"), found)),
            },
            notes=notes,
        )
    report.root = dst
    return report


def convert_isic2018(src: Path, dst: Path, **kwargs: Any) -> ConversionReport:
    """Convert the ISIC 2018 Task 1 release (see the module docstring for layout, splits and options)."""
    return _convert("isic2018", src, dst, **kwargs)


def convert_isic2017(src: Path, dst: Path, **kwargs: Any) -> ConversionReport:
    """Convert the ISIC 2017 Part 1 release (see the module docstring for layout, splits and options)."""
    return _convert("isic2017", src, dst, **kwargs)
