"""Synapse multi-organ CT (MICCAI 2015 BTCV "Beyond the Cranial Vault", abdomen) -> canonical layout.

Two source layouts are accepted (detected automatically):

1. **Raw BTCV** NIfTI files as distributed on synapse.org (``RawData.zip``)::

       SRC/RawData/Training/img/img0001.nii.gz     SRC/RawData/Training/label/label0001.nii.gz
       SRC/RawData/Testing/img/...                 (no labels: ignored)

   Folders named ``img``/``images``/``imagesTr`` and ``label``/``labels``/``labelsTr`` are found up to four
   levels deep; the case number is the digits of the file name (``img0001`` -> ``case0001``). Images are copied byte
   for byte (Hounsfield units, original geometry). The 13 BTCV labels are mapped to TransUNet's 8 organs (other
   structures become background)::

       BTCV  8 aorta -> 1   4 gallbladder -> 2   1 spleen -> 3   3 left kidney -> 4
             2 right kidney -> 5   6 liver -> 6   11 pancreas -> 7   7 stomach -> 8
       (5 esophagus, 9 IVC, 10 portal/splenic vein, 12/13 adrenal glands -> 0)

2. **TransUNet's preprocessed release** (``project_TransUNet/data/Synapse``)::

       SRC/train_npz/case0005_slice000.npz ...   keys image (512x512, float in [0, 1]), label (0..8)
       SRC/test_vol_h5/case0001.npy.h5 ...       datasets image, label (slices x 512 x 512)
       SRC/lists/lists_Synapse/*.txt             (optional; not needed)

   The training slices are regrouped into one volume per case (slices in index order; a gap in the indices is an
   error). ``.h5`` files are read with h5py (``pip install 'attnseg[convert]'``), imported only for this layout.
   Volumes are written as float32 NIfTI ``[H, W, slices]`` (the slice axis last, so slicing along it returns the
   released 2D arrays exactly) with a 1 mm identity affine, because the release keeps no spacing. Intensities stay
   as released (HU clipped to [-125, 275] and scaled to [0, 1] by TransUNet); labels are kept as released.

Label names (both layouts) follow TransUNet's order as used by this project (the bundled demo data's
``dataset.json``): 1 aorta, 2 gallbladder, 3 spleen, 4 kidney_left, 5 kidney_right, 6 liver, 7 pancreas, 8 stomach.
Caution: third-party accounts of the preprocessed release's label order disagree (e.g. SLDGroup/CASCADE#9), and
the TransUNet authors never published their preprocessing; per-organ numbers from the two layouts are comparable
only if the release really uses this order. The mean over organs is unaffected.

Named split ``transunet`` (also the top-level ``test``): TransUNet's 18 training cases (0005 0006 0007 0009 0010
0021 0023 0024 0026 0027 0028 0030 0031 0033 0034 0037 0039 0040) and 12 test cases (0001 0002 0003 0004 0008 0022
0025 0029 0032 0035 0036 0038), as in MSA2Net's ``lists_Synapse``. TransUNet has no validation set, so ``val`` is
empty: the protocol reports the final checkpoint (the official code evaluated, and thereby selected, on test).
Test cases go to ``imagesTs``/``labelsTs``; any other labelled case goes to ``imagesTr`` outside the split.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from attnseg.data.conversion._common import (
    SPLIT_SEED,
    ConversionReport,
    finish_dataset,
    run_parallel,
    staged_output,
)
from attnseg.data.io import ImageMeta, ImageReadError, read_image, read_label, write_image
from attnseg.data.layout import DatasetError

__all__ = ["convert_synapse", "TRANSUNET_TRAIN", "TRANSUNET_TEST", "SYNAPSE_LABELS", "BTCV_TO_SYNAPSE"]

TRANSUNET_TRAIN = tuple(f"case{n:04d}" for n in (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40))
TRANSUNET_TEST = tuple(f"case{n:04d}" for n in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38))
SYNAPSE_LABELS = {
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
# BTCV value -> TransUNet value (BTCV: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver,
# 7 stomach, 8 aorta, 9 IVC, 10 portal and splenic vein, 11 pancreas, 12 right adrenal, 13 left adrenal)
BTCV_TO_SYNAPSE = {8: 1, 4: 2, 1: 3, 3: 4, 2: 5, 6: 6, 11: 7, 7: 8}
_REFERENCE = (
    "Landman B. et al., MICCAI 2015 Multi-Atlas Labeling Beyond the Cranial Vault - Workshop and Challenge, "
    "https://www.synapse.org/#!Synapse:syn3193805; split and 8-organ protocol: Chen J. et al., TransUNet, "
    "arXiv:2102.04306."
)
_SLICE = re.compile(r"^(case\d+)_slice(\d+)\.npz$", re.IGNORECASE)
_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


def _lut() -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    for btcv, ours in BTCV_TO_SYNAPSE.items():
        lut[btcv] = ours
    return lut


def _find(src: Path, names: tuple[str, ...], max_depth: int = 4) -> Path | None:
    level = [src]
    for _ in range(max_depth + 1):
        hits = [d for d in level if d.name.lower() in names and d != src]
        # prefer training folders over testing ones
        hits.sort(key=lambda d: ("test" in str(d.relative_to(src)).lower(), str(d)))
        if hits:
            return hits[0]
        level = sorted(c for d in level for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    return None


def _case_id(path: Path) -> str:
    digits = re.findall(r"\d+", _NIFTI.sub("", path.name))
    if not digits:
        raise DatasetError(f"{path}: cannot read a case number from the file name")
    return f"case{int(digits[-1]):04d}"


def _nifti_files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or f.is_dir():
            continue
        if not _NIFTI.search(f.name):
            raise DatasetError(f"{f}: not a NIfTI file (expected .nii.gz in {folder})")
        cid = _case_id(f)
        if cid in out:
            raise DatasetError(f"{f}: case {cid} appears twice ({out[cid].name})")
        out[cid] = f
    return out


def _raw_items(src: Path) -> list[tuple[str, Any]]:
    img_dir = _find(src, ("img", "images", "imagestr", "image"))
    lbl_dir = _find(src, ("label", "labels", "labelstr"))
    if img_dir is None or lbl_dir is None:
        raise DatasetError(
            f"{src}: found neither TransUNet's train_npz/test_vol_h5 folders nor BTCV img/ and label/ folders"
        )
    images, labels = _nifti_files(img_dir), _nifti_files(lbl_dir)
    missing = sorted(set(images) - set(labels))
    if missing:
        raise DatasetError(f"{images[missing[0]]}: no label file for {missing[0]} in {lbl_dir}")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DatasetError(f"{labels[orphans[0]]}: label without an image ({orphans[0]}) in {img_dir}")
    return [(cid, ("raw", images[cid], labels[cid])) for cid in sorted(images)]


def _convert_raw(item: tuple[str, Path, Path], out_img: Path, out_lbl: Path) -> None:
    _, image, label = item
    try:
        img, meta = read_image(image)
        lbl, lmeta = read_label(label)
    except ImageReadError as exc:
        raise DatasetError(str(exc)) from None
    if lbl.shape != img.shape[1:]:
        raise DatasetError(f"{label}: label shape {lbl.shape} differs from image {image.name} shape {img.shape[1:]}")
    if lbl.min() < 0 or lbl.max() > 13:
        raise DatasetError(f"{label}: label values outside BTCV's 0..13")
    if image.name.lower().endswith(".nii.gz"):
        shutil.copyfile(image, out_img)
    else:
        write_image(img, meta, out_img)
    write_image(_lut()[lbl.astype(np.int64)], lmeta, out_lbl)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise DatasetError(
            "reading TransUNet's test_vol_h5/*.npy.h5 needs h5py: pip install 'attnseg[convert]' (or pip install h5py)"
        ) from None
    return h5py


def _preprocessed_items(src: Path, npz_dir: Path | None, h5_dir: Path | None) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    if npz_dir is not None:
        by_case: dict[str, dict[int, Path]] = {}
        for f in sorted(npz_dir.iterdir()):
            if f.name.startswith(".") or f.is_dir():
                continue
            m = _SLICE.match(f.name)
            if not m:
                raise DatasetError(f"{f}: not a TransUNet slice file (expected caseNNNN_sliceNNN.npz)")
            cid = f"case{int(m.group(1)[4:]):04d}"
            by_case.setdefault(cid, {})[int(m.group(2))] = f
        for cid, slices in sorted(by_case.items()):
            idx = sorted(slices)
            gaps = sorted(set(range(idx[0], idx[-1] + 1)) - set(idx))
            if gaps:
                raise DatasetError(
                    f"{npz_dir}: {cid} is missing slice(s) {gaps[:5]} (slices {idx[0]}..{idx[-1]} "
                    "expected without gaps)"
                )
            items.append((cid, ("npz", [slices[i] for i in idx])))
    if h5_dir is not None:
        files = [f for f in sorted(h5_dir.iterdir()) if not f.name.startswith(".") and f.is_file()]
        if files:
            _h5py()
        seen = {cid for cid, _ in items}
        for f in files:
            if not f.name.lower().endswith(".h5"):
                raise DatasetError(f"{f}: not an HDF5 volume (expected caseNNNN.npy.h5)")
            cid = _case_id(Path(f.name.split(".")[0]))
            if cid in seen:
                raise DatasetError(f"{f}: {cid} is both a training slice set and a test volume")
            seen.add(cid)
            items.append((cid, ("h5", f)))
    if not items:
        raise DatasetError(f"{src}: train_npz/test_vol_h5 folders hold no cases")
    return items


def _check_pair(image: np.ndarray, label: np.ndarray, where: Path) -> np.ndarray:
    for name, arr in (("image", image), ("label", label)):
        if arr.dtype.kind not in "biuf":
            raise DatasetError(f"{where}: {name!r} holds {arr.dtype} values, not numbers")
    if image.shape != label.shape:
        raise DatasetError(f"{where}: image shape {image.shape} differs from label shape {label.shape}")
    rounded = np.rint(label)
    if not np.array_equal(rounded, label) or rounded.min() < 0 or rounded.max() > 8:
        raise DatasetError(f"{where}: labels must be integers 0..8 (TransUNet's 8 organs)")
    return rounded.astype(np.uint8)


_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _read_npz_slice(f: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) of one TransUNet ``train_npz`` slice file."""
    try:
        z = np.load(f, allow_pickle=False)
    except _NPZ_ERRORS as exc:
        raise DatasetError(f"{f}: cannot read ({type(exc).__name__}: {exc})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DatasetError(f"{f}: holds a single array (np.save), not an .npz archive of 'image' and 'label'")
    with z:
        if "image" not in z.files or "label" not in z.files:
            raise DatasetError(f"{f}: expected arrays 'image' and 'label', found {sorted(z.files)}")
        try:
            return np.asarray(z["image"]), np.asarray(z["label"])
        except _NPZ_ERRORS as exc:
            raise DatasetError(f"{f}: cannot read ({type(exc).__name__}: {exc})") from None


def _load_preprocessed(kind: str, payload: Any) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) as ``[slices, H, W]``."""
    if kind == "npz":
        imgs, lbls = [], []
        for f in payload:
            img, lbl = _read_npz_slice(f)
            if img.ndim != 2:
                raise DatasetError(f"{f}: expected a 2D slice, found shape {img.shape}")
            if imgs and img.shape != imgs[0].shape:
                raise DatasetError(f"{f}: slice shape {img.shape} differs from {payload[0].name} {imgs[0].shape}")
            lbls.append(_check_pair(img, lbl, f))
            imgs.append(img)
        return np.stack(imgs).astype(np.float32), np.stack(lbls)
    h5py = _h5py()
    try:
        with h5py.File(payload, "r") as h:
            if "image" not in h or "label" not in h:
                raise DatasetError(f"{payload}: expected datasets 'image' and 'label', found {sorted(h.keys())}")
            if not all(isinstance(h[k], h5py.Dataset) for k in ("image", "label")):
                raise DatasetError(f"{payload}: 'image' and 'label' must be datasets (arrays), not groups")
            img, lbl = np.asarray(h["image"][()]), np.asarray(h["label"][()])
    except OSError as exc:
        raise DatasetError(f"{payload}: cannot read ({exc})") from None
    if img.ndim != 3:
        raise DatasetError(f"{payload}: expected a volume [slices, H, W], found shape {img.shape}")
    label = _check_pair(img, lbl, payload)
    return img.astype(np.float32), label


def _convert_preprocessed(item: tuple[str, Any], out_img: Path, out_lbl: Path) -> None:
    image, label = _load_preprocessed(*item)
    meta = ImageMeta(spacing=(1.0, 1.0, 1.0), affine=np.eye(4), source_format="nifti")
    write_image(np.ascontiguousarray(np.transpose(image, (1, 2, 0))), meta, out_img)  # [H, W, slices]
    write_image(np.ascontiguousarray(np.transpose(label, (1, 2, 0))), meta, out_lbl)


def convert_synapse(
    src: Path,
    dst: Path,
    *,
    seed: int = SPLIT_SEED,
    overwrite: bool = False,
    workers: int = 1,
    max_size: int | None = None,
) -> ConversionReport:
    """Convert Synapse / BTCV (raw NIfTI or TransUNet's preprocessed release; see the module docstring).

    Args:
        src: the source folder.
        dst: the dataset folder to create.
        seed: unused (the TransUNet split is fixed); recorded in ``dataset.json``.
        overwrite: replace an existing non-empty ``dst``.
        workers: threads for conversion.
        max_size: not supported for volumes (must be None).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DatasetError(f"{src}: source folder not found")
    if max_size:
        raise DatasetError("--max-size applies to 2D image datasets only; Synapse volumes are kept at full size")
    npz_dir, h5_dir = _find(src, ("train_npz",)), _find(src, ("test_vol_h5",))
    if npz_dir is not None or h5_dir is not None:
        layout = "transunet-preprocessed"
        items = _preprocessed_items(src, npz_dir, h5_dir)
    else:
        layout = "btcv-raw"
        items = _raw_items(src)
    test_set = set(TRANSUNET_TEST)
    ids = [cid for cid, _ in items]
    train_ids = [c for c in TRANSUNET_TRAIN if c in ids]
    test_ids = [c for c in TRANSUNET_TEST if c in ids]
    notes = []
    missing = sorted(set(TRANSUNET_TRAIN + TRANSUNET_TEST) - set(ids))
    if missing:
        notes.append(
            f"{len(missing)} of TransUNet's 30 cases are missing: {', '.join(missing[:6])}"
            + ("..." if len(missing) > 6 else "")
        )
    extra = sorted(set(ids) - set(TRANSUNET_TRAIN) - test_set)
    if extra:
        notes.append(
            f"{len(extra)} labelled cases outside TransUNet's lists were converted into imagesTr but are in "
            f"no split: {', '.join(extra[:6])}"
        )
    if not train_ids and not test_ids:
        raise DatasetError(f"{src}: none of TransUNet's 30 Synapse cases found (ids like case0001)")

    with staged_output(dst, overwrite=overwrite, src=src) as stage:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (stage / sub).mkdir()

        def convert_one(entry: tuple[str, Any]) -> None:
            cid, payload = entry
            part = "Ts" if cid in test_set else "Tr"
            out_img, out_lbl = stage / f"images{part}" / f"{cid}_0000.nii.gz", stage / f"labels{part}" / f"{cid}.nii.gz"
            if payload[0] == "raw":
                _convert_raw(payload, out_img, out_lbl)
            else:
                _convert_preprocessed(payload, out_img, out_lbl)

        run_parallel(convert_one, items, workers)
        splits: dict[str, Any] = {"transunet": {"train": sorted(train_ids), "val": [], "test": sorted(test_ids)}}
        if test_ids:
            splits["test"] = sorted(test_ids)
        intensity = (
            "HU as in the BTCV release"
            if layout == "btcv-raw"
            else "as released by TransUNet: HU clipped to [-125, 275] and scaled to [0, 1]; spacing unknown "
            "(1 mm identity affine)"
        )
        report = finish_dataset(
            stage,
            dataset="Synapse",
            channel_names={0: "CT"},
            labels=SYNAPSE_LABELS,
            file_ending=".nii.gz",
            training=[c for c in ids if c not in test_set],
            test=test_ids,
            splits=splits,
            split_notes={"transunet": "TransUNet's 18 training / 12 test cases; no validation set (final checkpoint)"},
            description=f"Synapse multi-organ abdominal CT, 8 organs in TransUNet's label order, from the {layout} "
            f"layout, converted by `attnseg convert-dataset synapse`. Intensities: {intensity}.",
            reference=_REFERENCE,
            licence="see synapse.org (BTCV data use terms)",
            conversion={
                "source": os.fspath(src),
                "layout": layout,
                "seed": seed,
                "btcv_to_synapse": {str(k): v for k, v in BTCV_TO_SYNAPSE.items()} if layout == "btcv-raw" else None,
            },
            notes=notes,
        )
    report.root = dst
    return report
