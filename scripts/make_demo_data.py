#!/usr/bin/env python
"""Build attnseg's bundled demo dataset from the TotalSegmentator 2.18.0 source distribution.

The PyPI sdist of ``TotalSegmentator==2.18.0`` (Apache-2.0) ships real CT volumes with organ label maps as
regression-test references (``tests/reference_files/``). This script turns two of them into a small dataset in the
nnU-Net v2 raw layout with the 8 Synapse organs remapped to labels 1-8 in the TransUNet Synapse order:

- ``example_ct.nii.gz`` + ``example_seg_fast_force_split.nii.gz`` (trunk CT, 3 mm isotropic) -> ``imagesTr``/
  ``labelsTr``, cut along z into two cases: the upper part (all 8 organs, full extent above the cut) is the training
  case, the lower part (pelvis and lower abdomen: aorta, kidneys, liver tip) is the validation case.
- ``example_ct_dicom/`` (20-slice DICOM series, a different scan) + ``example_seg_dicom.nii.gz`` -> ``imagesTs``/
  ``labelsTs``: the held-out test case. The label map is stored with its j axis flipped relative to the DICOM pixel
  grid (LAS vs LPS); it is re-indexed exactly (no interpolation) onto the DICOM grid via the two affines, checked
  numerically (organ HU, vertebrae HU, centroids inside the body), and cropped in-plane to the body bounding box.
- A tiny DICOM series fixture (4 slices, 64x64) for predict tests (``tests/fixtures/dicom_series``).

Usage:
    python scripts/make_demo_data.py [--sdist PATH_OR_DIR] [--out src/attnseg/demo_data/Dataset001_TotalSegDemo]

Without ``--sdist`` the sdist is fetched with
``pip download --no-deps --no-binary :all: TotalSegmentator==2.18.0``. The output is deterministic (gzip without
timestamps, fixed DICOM UIDs): re-running it reproduces the committed files byte for byte.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = ["SYNAPSE_LABELS", "build", "main"]

TS_VERSION = "2.18.0"
SDIST_NAME = f"totalsegmentator-{TS_VERSION}.tar.gz"
SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "attnseg" / "demo_data" / "Dataset001_TotalSegDemo"
DEFAULT_FIXTURE_OUT = REPO_ROOT / "tests" / "fixtures" / "dicom_series"

# TransUNet's Synapse label order (label value -> TotalSegmentator `total` class name).
SYNAPSE_LABELS: dict[int, str] = {
    1: "aorta",
    2: "gallbladder",
    3: "spleen",
    4: "kidney_left",
    5: "kidney_right",
    6: "liver",
    7: "pancreas",
    8: "stomach",
}

# Trunk CT slices k < Z_CUT form the validation case, k >= Z_CUT the training case. 81 is the first slice that shows
# the stomach/pancreas; spleen and gallbladder start at 82/84, so the training case keeps every slice of the upper
# abdomen (the region the DICOM test scan covers) and the validation case still shows aorta, both kidneys and liver.
Z_CUT = 81
TRAIN_CASES = {"ct_trunk_upper": slice(Z_CUT, None)}
VAL_CASES = {"ct_trunk_lower": slice(0, Z_CUT)}
TEST_CASE = "ct_dicom_abdomen"
CROP_MARGIN = 8  # voxels kept around the body bounding box of the test scan
FIXTURE_SLICES = slice(8, 12)  # 4 slices of the DICOM scan (liver, spleen, stomach in view)
FIXTURE_SIZE = 64
FIXTURE_UID_SEED = "attnseg-demo-dicom-fixture-v1"

CITATION = (
    "Wasserthal J., Breit H.-C., Meyer M.T., Pradella M., Hinck D., Sauter A.W., Heye T., Boll D.T., Cyriac J., "
    "Yang S., Bach M., Segeroth M. TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT Images. "
    "Radiology: Artificial Intelligence 2023;5(5):e230024. https://doi.org/10.1148/ryai.230024"
)


# ----------------------------------------------------------------------------------------------------------- source


def fetch_sdist(dest: Path) -> Path:
    """Download the TotalSegmentator sdist with pip into ``dest`` and return the tarball path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"TotalSegmentator=={TS_VERSION}",
        "-d",
        str(dest),
    ]
    print("+", " ".join(cmd))
    subprocess.run(cmd, check=True)
    found = sorted(dest.glob("[Tt]otal[Ss]egmentator-*.tar.gz"))
    if not found:
        raise SystemExit(f"pip download did not leave a TotalSegmentator sdist in {dest}")
    return found[0]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpack_sdist(tarball: Path, dest: Path) -> Path:
    """Unpack the sdist tarball into ``dest`` and return the unpacked source root."""
    digest = sha256(tarball)
    print(f"sdist {tarball.name}: sha256 {digest}")
    if digest != SDIST_SHA256:
        print(f"WARNING: sha256 differs from the one the committed data were built from ({SDIST_SHA256})")
    with tarfile.open(tarball) as tf:
        tf.extractall(dest, filter="data")
    return find_source_root(dest)


def find_source_root(path: Path) -> Path:
    """Return the unpacked sdist root under ``path`` (the folder holding ``totalsegmentator/map_to_binary.py``)."""
    for cand in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if (cand / "totalsegmentator" / "map_to_binary.py").is_file() and (cand / "tests" / "reference_files").is_dir():
            return cand
    raise SystemExit(f"{path}: no unpacked TotalSegmentator sdist (totalsegmentator/map_to_binary.py) found")


def resolve_source(arg: str | None, tmp: Path) -> Path:
    """Turn ``--sdist`` (tarball, folder holding the tarball, unpacked sdist, or nothing) into a source root."""
    if arg is None:
        return unpack_sdist(fetch_sdist(tmp / "download"), tmp / "src")
    p = Path(arg).expanduser().resolve()
    if p.is_file():
        return unpack_sdist(p, tmp / "src")
    if p.is_dir():
        tarballs = sorted(p.glob("[Tt]otal[Ss]egmentator-*.tar.gz"))
        if tarballs:
            return unpack_sdist(tarballs[0], tmp / "src")
        return find_source_root(p)
    raise SystemExit(f"--sdist {arg}: no such file or directory")


def check_version(root: Path) -> None:
    pkg_info = root / "PKG-INFO"
    version = None
    if pkg_info.is_file():
        for line in pkg_info.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Version:"):
                version = line.split(":", 1)[1].strip()
                break
    print(f"TotalSegmentator source version: {version}")
    if version != TS_VERSION:
        raise SystemExit(f"{root}: expected TotalSegmentator {TS_VERSION}, found {version}")


def read_total_class_map(root: Path) -> dict[int, str]:
    """Parse ``class_map['total']`` from ``map_to_binary.py`` with ``ast`` (never importing totalsegmentator)."""
    path = root / "totalsegmentator" / "map_to_binary.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "class_map" for t in node.targets):
            if not isinstance(node.value, ast.Dict):
                break
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and key.value == "total":
                    return {int(k): str(v) for k, v in ast.literal_eval(value).items()}
    raise SystemExit(f"{path}: no literal class_map['total'] found")


# --------------------------------------------------------------------------------------------------------- geometry


def sitk_to_ras(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK image -> (array indexed [i, j, k], 4x4 voxel->RAS affine)."""
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # numpy [k, j, i] -> [i, j, k]
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(img.GetSpacing())
    affine[:3, 3] = lps_to_ras @ np.asarray(img.GetOrigin(), dtype=float)
    return arr, affine


def reindex_exact(
    src: np.ndarray, src_affine: np.ndarray, dst_shape: tuple[int, ...], dst_affine: np.ndarray
) -> np.ndarray:
    """Move ``src`` onto the ``dst`` voxel grid when the grids coincide up to axis permutation/flip.

    Raises if the grids do not share voxel centres (that would need interpolation, which labels must not get).
    """
    m = np.linalg.inv(src_affine) @ dst_affine  # dst voxel -> src voxel
    rot, shift = m[:3, :3], m[:3, 3]
    if not (np.allclose(rot, np.round(rot), atol=1e-4) and np.allclose(shift, np.round(shift), atol=1e-3)):
        raise SystemExit(f"label grid is not a permutation/flip of the image grid:\n{np.round(m, 4)}")
    rot, shift = np.round(rot).astype(int), np.round(shift).astype(int)
    if sorted(np.abs(rot).sum(0).tolist()) != [1, 1, 1] or sorted(np.abs(rot).sum(1).tolist()) != [1, 1, 1]:
        raise SystemExit(f"label grid is not a signed permutation of the image grid:\n{m}")
    idx = np.indices(dst_shape).reshape(3, -1)
    src_idx = rot @ idx + shift[:, None]
    if (src_idx < 0).any() or (src_idx >= np.asarray(src.shape)[:, None]).any():
        raise SystemExit("label grid does not cover the image grid")
    return src[tuple(src_idx)].reshape(dst_shape)


def crop(arr: np.ndarray, affine: np.ndarray, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``arr`` to ``box`` (voxel slices) and shift the affine origin so world positions are unchanged."""
    start = np.array([s.indices(n)[0] for s, n in zip(box, arr.shape)], dtype=float)
    new_affine = affine.copy()
    new_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return arr[box], new_affine


def body_mask(ct: np.ndarray) -> np.ndarray:
    """Largest connected component above -500 HU, holes filled per axial slice (the patient incl. bowel gas)."""
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)  # open each axial slice, not across slices
    mask = ndimage.binary_opening(ct > -500, structure=in_plane, iterations=2)
    lab, n = ndimage.label(mask)
    if n == 0:
        raise SystemExit("no body found in the CT")
    sizes = ndimage.sum(mask, lab, index=range(1, n + 1))
    body = lab == (1 + int(np.argmax(sizes)))
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return body


def check_laterality(lab: np.ndarray, affine: np.ndarray, what: str) -> None:
    """Liver must lie on the patient's right of the spleen (larger RAS x): catches left-right flips."""
    centres = {}
    for value, name in SYNAPSE_LABELS.items():
        if (lab == value).any():
            centres[name] = (affine @ np.append(np.argwhere(lab == value).mean(0), 1.0))[:3]
    text = ", ".join(f"{n} ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f})" for n, c in centres.items())
    print(f"  organ centroids {what} (RAS mm): {text}")
    if "liver" in centres and "spleen" in centres and centres["liver"][0] <= centres["spleen"][0]:
        raise SystemExit(f"{what}: liver is not on the patient's right of the spleen: left-right flip")


def ornt_code(affine: np.ndarray) -> str:
    return "".join(nib.aff2axcodes(affine))


def to_int16(ct: np.ndarray, name: str) -> np.ndarray:
    lo, hi = int(ct.min()), int(ct.max())
    if lo < np.iinfo(np.int16).min or hi > np.iinfo(np.int16).max or not np.array_equal(ct, np.round(ct)):
        raise SystemExit(f"{name}: values {lo}..{hi} are not int16 HU")
    return ct.astype(np.int16)


# ---------------------------------------------------------------------------------------------------------- writing


def write_nifti(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a gzip-compressed NIfTI-1 deterministically (no gzip timestamp; sform/qform = scanner, mm)."""
    img = nib.Nifti1Image(arr, affine)
    img.header.set_data_dtype(arr.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=9, mtime=0))
    back = nib.load(path)
    if not (np.array_equal(np.asarray(back.dataobj), arr) and np.allclose(back.affine, affine, atol=1e-4)):
        raise SystemExit(f"{path}: round trip failed")


def remap(seg: np.ndarray, lut: np.ndarray) -> np.ndarray:
    if seg.min() < 0 or seg.max() >= lut.size:
        raise SystemExit(f"label ids {seg.min()}..{seg.max()} outside the class map")
    return lut[seg.astype(np.int64)]


def organ_stats(ct: np.ndarray, lab: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    for value, name in SYNAPSE_LABELS.items():
        m = lab == value
        n = int(m.sum())
        out[name] = {"voxels": n, "mean_hu": float(ct[m].mean()) if n else float("nan")}
    return out


# ------------------------------------------------------------------------------------------------------------ cases


def build_train(
    ref: Path, lut: np.ndarray, vertebrae_ids: list[int]
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Trunk CT + label -> {case: (int16 CT, uint8 label, affine)}, cut along z into the train and val cases."""
    ct_img = nib.load(ref / "example_ct.nii.gz")
    seg_img = nib.load(ref / "example_seg_fast_force_split.nii.gz")
    if ct_img.shape != seg_img.shape or not np.allclose(ct_img.affine, seg_img.affine, atol=1e-4):
        raise SystemExit("example_ct / example_seg_fast_force_split grids differ")
    ct = to_int16(np.asarray(ct_img.dataobj), "example_ct")
    seg = np.asarray(seg_img.dataobj)
    affine = ct_img.affine
    zooms = tuple(float(z) for z in ct_img.header.get_zooms())
    print(
        f"\ntrunk CT example_ct.nii.gz: shape {ct.shape}, spacing {zooms}, "
        f"orientation {ornt_code(affine)}, HU {ct.min()}..{ct.max()}"
    )
    check_bone(ct, seg, vertebrae_ids, "trunk CT")
    lab = remap(seg, lut)
    check_laterality(lab, affine, "trunk CT")
    cases = {}
    for case, zs in {**TRAIN_CASES, **VAL_CASES}.items():
        c, a = crop(ct, affine, (slice(None), slice(None), zs))
        lb, _ = crop(lab, affine, (slice(None), slice(None), zs))
        cases[case] = (c, lb, a)
    return cases


def check_bone(ct: np.ndarray, seg: np.ndarray, vertebrae_ids: list[int], what: str) -> None:
    """Vertebrae labels must sit on bone: an independent check that label and image are aligned."""
    m = np.isin(seg, vertebrae_ids)
    if m.sum() == 0:
        raise SystemExit(f"{what}: no vertebrae in the label map to check alignment with")
    mean = float(ct[m].mean())
    print(f"  alignment check {what}: vertebrae mean HU {mean:.1f} ({int(m.sum())} voxels)")
    if mean < 150:
        raise SystemExit(f"{what}: vertebrae mean HU {mean:.1f} < 150: label and image are misaligned")


def build_test(
    ref: Path, lut: np.ndarray, vertebrae_ids: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, sitk.Image]:
    """DICOM series + label -> (int16 CT, uint8 label, affine) on the series grid, checked and body-cropped."""
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(ref / "example_ct_dicom"))
    reader.SetFileNames(files)
    dcm = reader.Execute()
    print(
        f"\nDICOM series example_ct_dicom: {len(files)} files, size {dcm.GetSize()}, spacing {dcm.GetSpacing()}, "
        f"origin(LPS) {dcm.GetOrigin()}, direction {dcm.GetDirection()}, "
        f"orientation {sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(dcm.GetDirection())} (ITK/LPS "
        f"'from' convention), pixel type {dcm.GetPixelIDTypeAsString()}"
    )
    ct, affine = sitk_to_ras(dcm)
    ct = to_int16(ct, "example_ct_dicom")
    print(
        f"  as NIfTI: shape {ct.shape}, orientation {ornt_code(affine)} (nibabel 'to' convention), "
        f"HU {ct.min()}..{ct.max()}\n  affine\n{np.round(affine, 4)}"
    )

    seg_img = nib.load(ref / "example_seg_dicom.nii.gz")
    print(
        f"label example_seg_dicom.nii.gz: shape {seg_img.shape}, orientation {ornt_code(seg_img.affine)}, "
        f"spacing {tuple(round(float(z), 4) for z in seg_img.header.get_zooms())}\n"
        f"  affine\n{np.round(seg_img.affine, 4)}"
    )
    seg_raw = np.asarray(seg_img.dataobj)
    seg = reindex_exact(seg_raw, seg_img.affine, ct.shape, affine)
    print(f"  label voxel (i, j, k) -> image voxel map:\n{np.round(np.linalg.inv(affine) @ seg_img.affine, 4)}")

    check_bone(ct, seg, vertebrae_ids, "DICOM scan")
    lab = remap(seg, lut)
    # Soft-tissue check: the scan is contrast-enhanced (portal venous: aorta ~180 HU, liver ~90 HU), so liver voxels
    # must lie in 0..200 HU; pairing the raw arrays without reorientation puts a third of them on air or fat.
    for name, cand in (("aligned", lab), ("raw arrays paired without reorientation", remap(seg_raw, lut))):
        hu = ct[cand == 6]
        frac = float(((hu >= 0) & (hu <= 200)).mean())
        print(f"  liver ({name}): mean HU {hu.mean():.1f}, median {np.median(hu):.1f}, {100 * frac:.1f}% in 0..200 HU")
        if cand is lab:
            liver_frac = frac
    stats = organ_stats(ct, lab)
    for name in ("spleen", "aorta", "pancreas", "stomach"):
        print(f"  {name}: mean HU {stats[name]['mean_hu']:.1f}")
    if liver_frac < 0.9 or not 30 <= stats["liver"]["mean_hu"] <= 130:
        raise SystemExit(
            f"liver mean HU {stats['liver']['mean_hu']:.1f}, {100 * liver_frac:.1f}% in 0..200 HU: "
            "label and image are misaligned"
        )
    check_laterality(lab, affine, "DICOM scan")
    body = body_mask(ct)
    for value, name in SYNAPSE_LABELS.items():
        m = lab == value
        if m.any():
            inside = float(body[m].mean())
            cen = tuple(int(round(c)) for c in np.argwhere(m).mean(0))
            print(
                f"  {name}: centroid voxel {cen} inside body: {bool(body[cen])}, {100 * inside:.1f}% of voxels in body"
            )
            if inside < 0.98:
                raise SystemExit(f"{name}: only {100 * inside:.1f}% of the label inside the body: misaligned")

    # In-plane crop to the body bounding box (all slices), geometry kept by shifting the origin.
    ii, jj = np.where(body.any(2))
    box = (
        slice(max(int(ii.min()) - CROP_MARGIN, 0), min(int(ii.max()) + CROP_MARGIN + 1, ct.shape[0])),
        slice(max(int(jj.min()) - CROP_MARGIN, 0), min(int(jj.max()) + CROP_MARGIN + 1, ct.shape[1])),
        slice(None),
    )
    ct_c, aff_c = crop(ct, affine, box)
    lab_c, _ = crop(lab, affine, box)
    if not np.array_equal(np.bincount(lab_c.ravel(), minlength=9)[1:], np.bincount(lab.ravel(), minlength=9)[1:]):
        raise SystemExit("body crop cut off labelled voxels")
    print(
        f"  cropped to body box i {box[0].start}..{box[0].stop - 1}, j {box[1].start}..{box[1].stop - 1}: "
        f"shape {ct_c.shape}"
    )
    return ct_c, lab_c, aff_c, dcm


# ---------------------------------------------------------------------------------------------------------- fixture


def write_dicom_fixture(dcm: sitk.Image, out: Path) -> None:
    """Write a 4-slice 64x64 CT DICOM series (block-mean downsampled crop of the test scan) with fixed UIDs."""
    from pydicom.uid import generate_uid

    arr = sitk.GetArrayFromImage(dcm)[FIXTURE_SLICES]  # [k, j, i]
    # Square window centred on the body, side a multiple of FIXTURE_SIZE, then block-mean downsampling.
    body = body_mask(arr.transpose(2, 1, 0)).transpose(2, 1, 0).any(0)
    jj, ii = np.where(body)
    factor = int(np.ceil(max(np.ptp(jj), np.ptp(ii)) / FIXTURE_SIZE))
    side = factor * FIXTURE_SIZE
    j0 = int(np.clip((jj.min() + jj.max()) // 2 - side // 2, 0, arr.shape[1] - side))
    i0 = int(np.clip((ii.min() + ii.max()) // 2 - side // 2, 0, arr.shape[2] - side))
    win = arr[:, j0 : j0 + side, i0 : i0 + side].astype(np.float64)
    small = win.reshape(arr.shape[0], FIXTURE_SIZE, factor, FIXTURE_SIZE, factor).mean((2, 4))
    small = np.round(small).astype(np.int16)

    spacing = (dcm.GetSpacing()[0] * factor, dcm.GetSpacing()[1] * factor, dcm.GetSpacing()[2])
    k0 = FIXTURE_SLICES.start
    # Centre of the first output pixel = centre of its factor x factor block in the source grid.
    first = dcm.TransformContinuousIndexToPhysicalPoint((i0 + (factor - 1) / 2, j0 + (factor - 1) / 2, float(k0)))
    vol = sitk.GetImageFromArray(small)
    vol.SetSpacing(spacing)
    vol.SetOrigin(first)
    vol.SetDirection(dcm.GetDirection())

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    study_uid = generate_uid(entropy_srcs=[FIXTURE_UID_SEED, "study"])
    series_uid = generate_uid(entropy_srcs=[FIXTURE_UID_SEED, "series"])
    frame_uid = generate_uid(entropy_srcs=[FIXTURE_UID_SEED, "frame"])
    direction = dcm.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (*direction[0::3], *direction[1::3]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(vol.GetDepth()):
        sl = vol[:, :, k]
        pos = vol.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0008|0012": "20240101",
            "0008|0013": "000000",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": generate_uid(entropy_srcs=[FIXTURE_UID_SEED, "sop", str(k)]),
            "0008|0020": "20240101",
            "0008|0030": "000000",
            "0008|0060": "CT",
            "0008|103e": "attnseg test fixture (TotalSegmentator 2.18.0 example_ct_dicom, downsampled)",
            "0010|0010": "Anonymous",
            "0010|0020": "attnseg-fixture",
            "0018|0050": f"{spacing[2]:.6f}",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0052": frame_uid,
            "0020|0011": "1",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
            "0020|0037": orientation,
            "0020|1041": f"{pos[2]:.6f}",
            "0028|1050": "40",
            "0028|1051": "400",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(out / f"slice_{k:03d}.dcm"))
        writer.Execute(sl)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out)))
    back = reader.Execute()
    ok = (
        np.array_equal(sitk.GetArrayFromImage(back), small)
        and np.allclose(back.GetSpacing(), spacing, atol=1e-4)
        and np.allclose(back.GetOrigin(), first, atol=1e-3)
        and np.allclose(back.GetDirection(), direction, atol=1e-6)
    )
    size = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"\nDICOM fixture {out}: {small.shape[::-1]} (i, j, k), spacing {tuple(round(s, 4) for s in spacing)}, "
        f"origin(LPS) {tuple(round(o, 3) for o in first)}, HU {small.min()}..{small.max()}, {size} bytes, "
        f"read back consistent: {ok}"
    )
    if not ok:
        raise SystemExit("DICOM fixture does not read back with the geometry it was written with")


# ------------------------------------------------------------------------------------------------------------- docs


def dataset_json(numbers: dict[str, int]) -> dict:
    return {
        "name": "TotalSegDemo",
        "description": (
            "Demo abdominal CT with the 8 Synapse organs (TransUNet label order), built by scripts/make_demo_data.py "
            f"from the regression-test reference files of the TotalSegmentator {TS_VERSION} PyPI sdist. "
            "Labels are TotalSegmentator model outputs (pseudo-labels), not manual annotations. "
            f"Training: the trunk CT example_ct.nii.gz (3 mm isotropic, RAS) cut along z at slice {Z_CUT} into two "
            "cases of the same scan: ct_trunk_upper (upper abdomen, all 8 organs; fold0 train) and ct_trunk_lower "
            "(pelvis and lower abdomen: aorta, kidneys, liver tip; fold0 val). The cut keeps every slice of the upper "
            "abdomen, which the test scan covers, in training; validation is within-scan (optimistic) and only for "
            "monitoring and checkpoint selection. Test: ct_dicom_abdomen, a different scan (the 20-slice DICOM series "
            "example_ct_dicom, 0.977x0.977x2 mm, LPS voxel order, cropped in-plane to the body) with "
            "example_seg_dicom.nii.gz re-indexed onto its grid; it shows liver, spleen, stomach, pancreas and aorta "
            "(no kidneys or gallbladder). Unlike the unenhanced trunk CT it is contrast-enhanced (portal venous). "
            "The crop example_ct_sm of the trunk CT is deliberately not used."
        ),
        "reference": CITATION,
        "attribution": (
            f"Data from the TotalSegmentator {TS_VERSION} source distribution (tests/reference_files), "
            "https://github.com/wasserth/TotalSegmentator, Wasserthal et al., Radiology: AI 2023. "
            "Cropped, cast to int16 and relabelled by attnseg."
        ),
        "licence": "Apache-2.0",
        "release": f"TotalSegmentator=={TS_VERSION} sdist (sha256 {SDIST_SHA256})",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: value for value, name in SYNAPSE_LABELS.items()}},
        "file_ending": ".nii.gz",
        **numbers,
    }


LICENSE_TEXT = f"""The data in this folder (Dataset001_TotalSegDemo) are derived from files distributed in the
TotalSegmentator {TS_VERSION} source distribution on PyPI (tests/reference_files/example_ct.nii.gz,
example_seg_fast_force_split.nii.gz, example_ct_dicom/, example_seg_dicom.nii.gz),
https://github.com/wasserth/TotalSegmentator, Copyright the TotalSegmentator authors (Jakob Wasserthal et al.),
licensed under the Apache License, Version 2.0.

You may not use these files except in compliance with the License. You may obtain a copy of the License at

    https://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed under the License is distributed on
an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the License for the
specific language governing permissions and limitations under the License.

Modifications by attnseg (scripts/make_demo_data.py): CT intensities cast to int16 HU; the trunk CT cut along z into
two cases; the DICOM series converted to NIfTI and cropped in-plane to the body; label maps re-indexed onto the image
grid and reduced to 8 organs relabelled 1-8.

If you use these data, please cite:
{CITATION}
"""


def readme_text(report: dict) -> str:
    rows = "\n".join(
        f"| {v} | {n} | {report['counts']['ct_trunk_upper'][n]} | {report['counts']['ct_trunk_lower'][n]} | "
        f"{report['counts'][TEST_CASE][n]} |"
        for v, n in SYNAPSE_LABELS.items()
    )
    cases = "\n".join(
        f"| `{c}` | {d['split']} | {d['shape']} | {d['spacing']} | {d['orientation']} | {d['size_kb']} KB |"
        for c, d in report["cases"].items()
    )
    return f"""# attnseg demo data: Dataset001_TotalSegDemo

A few MB of real abdominal CT with the 8 Synapse organs, used by `attnseg demo` and the tests. It is in the
nnU-Net v2 raw layout (`dataset.json`, `imagesTr/`, `labelsTr/`, `imagesTs/`, `labelsTs/`, `splits.json`).

## Where it comes from

The PyPI source distribution of `TotalSegmentator=={TS_VERSION}` (Apache-2.0;
sha256 `{SDIST_SHA256}`) ships CT volumes with label maps as regression-test
references under `tests/reference_files/`. The wheel does not contain them. Two different scans are used:

- training/validation: `example_ct.nii.gz` (trunk CT, 3 mm isotropic) + `example_seg_fast_force_split.nii.gz`
  (`TotalSegmentator --fast --ml -fs` output, `total` task);
- test: the DICOM series `example_ct_dicom/` (20 slices, 0.977 x 0.977 mm in-plane, 2 mm slice spacing) +
  `example_seg_dicom.nii.gz` (`TotalSegmentator --fast --ml` output on the series).

`example_ct_sm.nii.gz` is a crop of the trunk CT and is deliberately not used (it would leak training data into
any evaluation).

## Cases and split

| case | split | shape (i, j, k) | spacing (mm) | orientation | size |
|---|---|---|---|---|---|
{cases}

- The trunk CT is cut along z at slice {Z_CUT}: `ct_trunk_upper` (upper abdomen, all 8 organs) is the fold0 training
  case; `ct_trunk_lower` (pelvis and lower abdomen) is the fold0 validation case. The cut keeps the whole upper
  abdomen (which the test scan shows) for training. Validation is from the same patient and scan, so it is
  optimistic: use it for monitoring and checkpoint selection only.
- `fold1` swaps the two (the pelvis trains, the upper abdomen validates) so that `attnseg study` has two folds to
  cross-validate. The pelvis shows only aorta, kidneys and the liver tip: fold1 models cannot learn gallbladder,
  spleen, pancreas or stomach, and their scores show it. `attnseg demo` uses fold0.
- `ct_dicom_abdomen` is a different scan (origin z -804.5 mm vs +94.3 mm, other spacing, other contrast phase)
  and is the held-out test case (`splits.json` `test`). It shows liver, spleen, stomach, pancreas and aorta, no
  kidneys or gallbladder.
- Contrast phase differs: the trunk CT is unenhanced (liver ~45 HU, aorta ~40 HU), the DICOM scan is
  contrast-enhanced, portal-venous (liver ~89 HU, spleen ~80 HU, aorta ~177 HU). The test is therefore also a
  small domain shift, as in real use.
- The images have different orientations (RAS for the trunk CT, LPS voxel order for the DICOM scan, as stored in the
  series) and very different in-plane spacing (3 mm vs 0.977 mm) and field of view: preprocessing must use the
  geometry (reorient, resample to a common spacing), naive per-slice resizing does not transfer.

## Labels (TransUNet Synapse order) and voxel counts

| value | organ | ct_trunk_upper | ct_trunk_lower | {TEST_CASE} |
|---|---|---|---|---|
{rows}

Value 0 is background (every other TotalSegmentator structure is mapped to 0). The TotalSegmentator `total` class
ids were read from `totalsegmentator/map_to_binary.py` of the same sdist:
{", ".join(f"{n} {i}" for n, i in report["source_ids"].items())}.

## Processing

- CT intensities are kept as HU, stored as int16; labels as uint8; gzip-compressed NIfTI-1 with sform = qform
  (scanner, mm).
- The DICOM series is read with SimpleITK's `ImageSeriesReader` and written in its own voxel order with the
  voxel-to-RAS affine (LPS direction cosines and origin converted to RAS). `example_seg_dicom.nii.gz` is stored
  with its j axis flipped relative to the series (LAS); it is re-indexed exactly onto the series grid through
  the two affines (no interpolation) and checked: vertebrae mean {report["checks"]["vertebrae_hu"]:.0f} HU; liver
  mean {report["checks"]["liver_hu"]:.1f} HU with {100 * report["checks"]["liver_frac"]:.1f}% of its voxels in
  0..200 HU (vs {100 * report["checks"]["liver_frac_naive"]:.1f}% if the raw arrays were paired without
  reorientation); liver on the patient's right of the spleen; every organ inside the body mask. The scan is then
  cropped in-plane to the body bounding box plus {CROP_MARGIN} voxels (origin shifted, no resampling).
- The trunk CT label map shares the CT's grid; it gets the same vertebrae-on-bone and laterality checks.

## Regenerate

```bash
python scripts/make_demo_data.py                       # downloads the sdist with pip
python scripts/make_demo_data.py --sdist totalsegmentator-{TS_VERSION}.tar.gz   # or a local tarball / unpacked folder
```

The output is deterministic: re-running reproduces these files byte for byte. The same script writes the small
DICOM series fixture in `tests/fixtures/dicom_series/`.

## Caveats

- The labels are predictions of TotalSegmentator's `total` models (fast 3 mm variant), not manual expert
  annotations: good pseudo-labels, with their errors (e.g. organ boundaries at 3 mm, thin structures).
- The provenance of the scans (patients, sites) is not stated by TotalSegmentator; the DICOM files are anonymised.
- Two scans (the sdist does not say whether they are from different patients): enough to show a model learning,
  not to benchmark one.
- The test scan's field of view cuts the patient's right arm at the image border (kept in the crop).

## Licence and attribution

Apache-2.0, see `LICENSE`. Data from TotalSegmentator (https://github.com/wasserth/TotalSegmentator); please cite:

> {CITATION}
"""


# ------------------------------------------------------------------------------------------------------------ build


def build(root: Path, out: Path, fixture_out: Path | None, docs_dir: Path) -> dict:
    """Build the dataset from an unpacked sdist ``root`` into ``out``; returns the printed report."""
    check_version(root)
    class_map = read_total_class_map(root)
    by_name = {name: cid for cid, name in class_map.items()}
    missing = [n for n in SYNAPSE_LABELS.values() if n not in by_name]
    if missing:
        raise SystemExit(f"class_map['total'] lacks {missing}")
    source_ids = {name: by_name[name] for name in SYNAPSE_LABELS.values()}
    print("TotalSegmentator total-task ids:", source_ids)
    vertebrae_ids = [cid for cid, name in class_map.items() if name.startswith("vertebrae_")]
    lut = np.zeros(max(class_map) + 1, dtype=np.uint8)
    for value, name in SYNAPSE_LABELS.items():
        lut[by_name[name]] = value

    ref = root / "tests" / "reference_files"
    train = build_train(ref, lut, vertebrae_ids)
    test_ct, test_lab, test_aff, dcm = build_test(ref, lut, vertebrae_ids)

    tmp_out = out.with_name(out.name + ".tmp")
    if tmp_out.exists():
        shutil.rmtree(tmp_out)
    report: dict = {"source_ids": source_ids, "cases": {}, "counts": {}, "checks": {}}
    splits = {
        "fold0": {"train": sorted(TRAIN_CASES), "val": sorted(VAL_CASES)},
        # the swap, so that a study (`attnseg study`) has two folds; the pelvis lacks four organs, see the README
        "fold1": {"train": sorted(VAL_CASES), "val": sorted(TRAIN_CASES)},
        "test": [TEST_CASE],
    }
    items = [(c, *train[c], "imagesTr", "labelsTr") for c in sorted(train)]
    items.append((TEST_CASE, test_ct, test_lab, test_aff, "imagesTs", "labelsTs"))
    for case, ct, lab, aff, img_dir, lab_dir in items:
        write_nifti(ct, aff, tmp_out / img_dir / f"{case}_0000.nii.gz")
        write_nifti(lab, aff, tmp_out / lab_dir / f"{case}.nii.gz")
        size = (tmp_out / img_dir / f"{case}_0000.nii.gz").stat().st_size + (
            tmp_out / lab_dir / f"{case}.nii.gz"
        ).stat().st_size
        split = "test" if case == TEST_CASE else ("train" if case in TRAIN_CASES else "val")
        stats = organ_stats(ct, lab)
        report["cases"][case] = {
            "split": split,
            "shape": tuple(int(s) for s in ct.shape),
            "spacing": tuple(round(float(s), 4) for s in np.linalg.norm(aff[:3, :3], axis=0)),
            "orientation": ornt_code(aff),
            "size_kb": round(size / 1024),
        }
        report["counts"][case] = {n: s["voxels"] for n, s in stats.items()}
        if case == TEST_CASE:
            report["checks"]["liver_hu"] = stats["liver"]["mean_hu"]
        print(
            f"\n{case} ({split}): shape {ct.shape}, spacing {report['cases'][case]['spacing']}, orientation "
            f"{ornt_code(aff)}, origin {tuple(round(float(o), 3) for o in aff[:3, 3])}, {size} bytes"
        )
        for name, s in stats.items():
            print(f"  {name:13s} {s['voxels']:7d} voxels  mean HU {s['mean_hu']:7.1f}")

    # Recompute the two alignment numbers the README quotes.
    seg_img = nib.load(ref / "example_seg_dicom.nii.gz")
    full_ct, full_aff = sitk_to_ras(dcm)
    full_lab = remap(reindex_exact(np.asarray(seg_img.dataobj), seg_img.affine, full_ct.shape, full_aff), lut)
    raw_lab = remap(np.asarray(seg_img.dataobj), lut)
    report["checks"]["liver_frac"] = float(((full_ct[full_lab == 6] >= 0) & (full_ct[full_lab == 6] <= 200)).mean())
    report["checks"]["liver_frac_naive"] = float(((full_ct[raw_lab == 6] >= 0) & (full_ct[raw_lab == 6] <= 200)).mean())
    vert = np.isin(reindex_exact(np.asarray(seg_img.dataobj), seg_img.affine, full_ct.shape, full_aff), vertebrae_ids)
    report["checks"]["vertebrae_hu"] = float(full_ct[vert].mean())
    organ_counts_full = np.bincount(full_lab.ravel(), minlength=9)[1:]
    if not np.array_equal(organ_counts_full, np.bincount(test_lab.ravel(), minlength=9)[1:]):
        raise SystemExit("test label counts changed between the check and the written file")

    numbers = {"numTraining": len(train), "numTest": 1}
    (tmp_out / "dataset.json").write_text(json.dumps(dataset_json(numbers), indent=2) + "\n", encoding="utf-8")
    (tmp_out / "splits.json").write_text(json.dumps(splits, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp_out.rename(out)

    docs_dir.mkdir(parents=True, exist_ok=True)
    (docs_dir / "README.md").write_text(readme_text(report), encoding="utf-8")
    (docs_dir / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")

    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"\ndataset {out}: {total} bytes ({total / 2**20:.2f} MiB)")
    for f in sorted(out.rglob("*")):
        if f.is_file():
            print(f"  {f.relative_to(out)}: {f.stat().st_size} bytes")
    if fixture_out is not None:
        write_dicom_fixture(dcm, fixture_out)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sdist",
        help="TotalSegmentator 2.18.0 sdist tarball, a folder holding it, or the unpacked "
        "sdist (default: pip download it)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="dataset folder to (re)write")
    parser.add_argument(
        "--docs-dir", type=Path, default=None, help="where README.md and LICENSE go (default: the parent of --out)"
    )
    parser.add_argument(
        "--fixture-out", type=Path, default=DEFAULT_FIXTURE_OUT, help="folder for the small DICOM series test fixture"
    )
    parser.add_argument("--no-fixture", action="store_true", help="do not write the DICOM fixture")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    with tempfile.TemporaryDirectory(prefix="attnseg-demo-") as tmp:
        root = resolve_source(args.sdist, Path(tmp))
        print(f"source: {root}")
        fixture_out = None if args.no_fixture else args.fixture_out.resolve()
        build(root, out, fixture_out, (args.docs_dir or out.parent).resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
