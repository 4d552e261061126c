"""DICOM outputs of a prediction on a DICOM series: a Segmentation and an RT Structure Set referencing the source.

- :func:`write_dicom_seg`: a DICOM Segmentation (PS3.3 A.51, C.8.20) written with ``highdicom``: BINARY, one segment
  per foreground label of the run's ``dataset.json``, the segment number being the label value, so the SEG's label
  map is attnseg's mask value for value. A label the mask does not contain keeps its segment without frames (empty
  frames are omitted): a reader can tell "looked for, not found" from "not segmented". Segment labels are the
  ``dataset.json`` names; SNOMED CT property codes come from :func:`segment_codes`. Every frame references its
  source instance (SOP Instance UID); the SEG references the source series and shares its Frame of Reference.
- :func:`write_rtstruct`: an RT Structure Set (PS3.3 A.19, C.8.8.5/C.8.8.6) written with ``rt-utils``: one ROI per
  label present in the mask, named from ``dataset.json``; contours run through the centres of the boundary pixels,
  so the contoured region is up to half a pixel smaller than the mask around its edge.

Geometry: ``labels`` is a label map on the series' grid in attnseg's voxel order (``i, j, k``; see
:mod:`attnseg.data.io`) with its voxel -> RAS ``affine``. Each source file is matched to its plane by geometry, never
by file order: its Image Position (Patient) and row/column directions (Image Orientation (Patient), Pixel Spacing;
PS3.3 C.7.6.2) are mapped through the inverse affine to voxel indices, which must be whole numbers with unit steps
along array axes; the frame ``[rows, columns]`` is read out of ``labels`` there.

``highdicom``, ``rt-utils`` and ``pydicom`` load lazily (``pip install "attnseg[dicom]"``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnseg.errors import AttnsegError
from attnseg.io import atomic_write

__all__ = [
    "Algorithm",
    "DicomOutputError",
    "require_dicom_libraries",
    "series_headers",
    "frames_by_instance",
    "segment_codes",
    "write_dicom_seg",
    "write_rtstruct",
]

# DICOM world coordinates are LPS; attnseg's affines map voxels to RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_GRID_TOLERANCE = 0.1  # voxels: how far a source pixel may lie from the label map's grid
_INSTALL = 'pip install "attnseg[dicom]"'
_LIBRARIES = {"dicom-seg": ("pydicom", "highdicom"), "rtstruct": ("pydicom", "rt_utils")}


class DicomOutputError(AttnsegError, ValueError):
    """A DICOM output cannot be written: a missing library, or a source series it cannot reference."""


@dataclass(frozen=True)
class Algorithm:
    """Who made the segmentation (PS3.3 C.8.20.2 Algorithm Identification): attnseg's version, the model's registry
    name and the run directory's name."""

    model: str
    run: str
    version: str


def require_dicom_libraries(fmt: str) -> None:
    """Raise :class:`DicomOutputError` (one line naming the install command) when ``fmt``'s libraries are missing."""
    for module in _LIBRARIES[fmt]:
        try:
            __import__(module)
        except ImportError:
            package = module.replace("_", "-")
            raise DicomOutputError(f"{fmt} output needs {package}, which is not installed: {_INSTALL}") from None


def series_headers(source_dir: str | os.PathLike) -> list[Any]:
    """The headers (no pixel data) of the single-frame images of the one series in ``source_dir`` (top level),
    ordered along the slice normal.

    Raises:
        DicomOutputError: no DICOM image, two series, or an image without plane geometry (a multi-frame file).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(source_dir)
    headers = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            continue
        if "SeriesInstanceUID" in ds and "Rows" in ds:  # an image, not a SEG/RTSTRUCT/report beside it
            headers.append(ds)
    if not headers:
        raise DicomOutputError(f"{folder}: no DICOM image found")
    if len({ds.SeriesInstanceUID for ds in headers}) > 1:
        raise DicomOutputError(f"{folder}: holds several DICOM series; put each series in its own folder")
    for ds in headers:
        missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in ds]
        if missing or int(ds.get("NumberOfFrames", 1) or 1) > 1:
            what = f"lacks {', '.join(missing)}" if missing else "is a multi-frame image"
            raise DicomOutputError(f"{ds.filename}: {what}; DICOM outputs need a series of single-frame slices")
    normal = np.cross(*np.reshape(np.asarray(headers[0].ImageOrientationPatient, float), (2, 3)))
    return sorted(headers, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))


def frames_by_instance(labels: np.ndarray, affine: np.ndarray, headers: list[Any]) -> dict[str, np.ndarray]:
    """``{SOP Instance UID: frame [rows, columns]}``: each source image's plane of ``labels``, found by geometry.

    Raises:
        ValueError: ``labels`` / ``affine`` do not lie on the series' grid (a frame off the grid or outside the array,
            or slices of ``labels`` that no image covers): a caller's mistake, not the user's.
    """
    labels = np.asarray(labels)
    if labels.ndim == 4 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3D label map, got shape {labels.shape}")
    to_voxel = np.linalg.inv(_LPS_TO_RAS @ np.asarray(affine, dtype=float))
    frames: dict[str, np.ndarray] = {}
    slice_axis: set[int] = set()
    covered: set[int] = set()
    for ds in headers:
        position = np.asarray(ds.ImagePositionPatient, dtype=float)
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)  # PS3.3 C.7.6.2.1.1: row\column
        first = (to_voxel @ [*position, 1.0])[:3]
        next_column = (to_voxel @ [*(position + orientation[:3] * column_spacing), 1.0])[:3] - first
        next_row = (to_voxel @ [*(position + orientation[3:] * row_spacing), 1.0])[:3] - first
        steps = np.rint([first, next_row, next_column])
        if np.abs(np.array([first, next_row, next_column]) - steps).max() > _GRID_TOLERANCE:
            raise ValueError(f"{ds.filename}: its plane is not on the label map's grid")
        row_axis, column_axis = (int(np.flatnonzero(s)[0]) if np.abs(s).sum() == 1 else -1 for s in steps[1:])
        if row_axis < 0 or column_axis < 0 or row_axis == column_axis:
            raise ValueError(f"{ds.filename}: its rows and columns do not run along the label map's axes")
        (axis,) = {0, 1, 2} - {row_axis, column_axis}
        slice_axis.add(axis)
        rows, columns = np.arange(int(ds.Rows)), np.arange(int(ds.Columns))
        index = (
            steps[0].astype(int)[:, None, None]
            + steps[1].astype(int)[:, None, None] * rows[None, :, None]
            + steps[2].astype(int)[:, None, None] * columns[None, None, :]
        )
        if index.min() < 0 or (index.max(axis=(1, 2)) >= labels.shape).any():
            raise ValueError(f"{ds.filename}: its plane lies outside the label map {labels.shape}")
        frames[str(ds.SOPInstanceUID)] = labels[index[0], index[1], index[2]]
        covered.add(int(steps[0][axis]))
    if len(slice_axis) != 1 or covered != set(range(labels.shape[slice_axis.pop()])) or len(frames) != len(headers):
        raise ValueError("the source images do not cover the label map's slices one to one")
    return frames


# name (lower case, letters only) -> SNOMED CT keyword of pydicom's codes.SCT (CID 7166 Segmentation Property Types)
_ANATOMY = (
    ("gallbladder", "Gallbladder"),
    ("liver", "Liver"),
    ("spleen", "Spleen"),
    ("kidney", "Kidney"),
    ("aorta", "Aorta"),
    ("pancreas", "Pancreas"),
    ("stomach", "Stomach"),
)
_LESION = (("lesion", "Lesion"), ("tumour", "Tumor"), ("tumor", "Tumor"), ("neoplasm", "Neoplasm"))


def segment_codes(name: str) -> dict[str, Any]:
    """SNOMED CT codes for a label name: ``category``, ``type`` and, where they apply, ``modifier`` (laterality) and
    ``region`` (the organ of a lesion), per PS3.3 C.8.20.2 Segment Description and PS3.16 CID 7150/7151.

    A known organ (liver, spleen, kidney, aorta, pancreas, stomach, gallbladder) is an Anatomical Structure; a tumour,
    tumor, lesion or neoplasm is a Morphologically Altered Structure (in the organ its name also names); anything
    else is the generic Tissue / Tissue (3D Slicer's default for a new segment).
    """
    from pydicom.sr.codedict import codes

    flat = re.sub(r"[^a-z]", "", name.lower())
    words = set(re.split(r"[^a-z]+", name.lower()))
    organ = next((getattr(codes.SCT, key) for word, key in _ANATOMY if word in flat), None)
    lesion = next((getattr(codes.SCT, key) for word, key in _LESION if word in flat), None)
    side = codes.SCT.Left if "left" in words else codes.SCT.Right if "right" in words else None
    if lesion is not None:
        found = {"category": codes.SCT.MorphologicallyAbnormalStructure, "type": lesion}
        return {**found, "region": organ} if organ is not None else found
    if organ is not None:
        found = {"category": codes.SCT.AnatomicalStructure, "type": organ}
        return {**found, "modifier": side} if side is not None else found
    return {"category": codes.SCT.Tissue, "type": codes.SCT.Tissue}


def _segment_description(number: int, name: str, algorithm: Algorithm) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    found = segment_codes(name)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name[:64],
        segmented_property_category=found["category"],
        segmented_property_type=found["type"],
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.model[:64],
            family=codes.cid7162.ArtificialIntelligence,
            version=algorithm.version,
            source="attnseg",
            parameters={"run": algorithm.run[:64]},
        ),
        anatomic_regions=[found["region"]] if "region" in found else None,
    )
    if "modifier" in found:  # PS3.3 C.8.20.2: laterality as Segmented Property Type Modifier Code Sequence
        modifier = hd.sr.CodedConcept.from_code(found["modifier"])
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
    return description


def _foreground_names(labels: np.ndarray, label_names: Mapping[int, str]) -> dict[int, str]:
    """Every foreground label value up to the largest named or present one, with its name (``label N`` unnamed)."""
    top = max([int(v) for v in label_names if int(v) > 0] + [int(labels.max(initial=0))])
    return {v: str(label_names.get(v, f"label {v}")) for v in range(1, top + 1)}


_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def write_dicom_seg(
    labels: np.ndarray,
    affine: np.ndarray,
    source_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    label_names: Mapping[int, str],
    algorithm: Algorithm,
) -> Path:
    """Write ``labels`` (on the series' grid, with its voxel -> RAS ``affine``) as a DICOM Segmentation of the series
    in ``source_dir``, atomically; see the module docstring. Returns ``out_path``.

    Raises:
        DicomOutputError: highdicom/pydicom missing, or a source folder it cannot reference.
        ValueError: ``labels`` not on the series' grid.
    """
    require_dicom_libraries("dicom-seg")
    import highdicom as hd

    headers = series_headers(source_dir)
    for ds in headers:  # PS3.3 C.7.1.1 / C.7.2.1: Type 2 patient and study attributes may be empty, not absent
        for keyword in _TYPE2_PATIENT_STUDY:
            if keyword not in ds:
                setattr(ds, keyword, "")
    frames = frames_by_instance(labels, affine, headers)
    names = _foreground_names(np.asarray(labels), label_names)
    if not names:
        raise DicomOutputError(f"{out_path}: the run has no foreground label to write as a segment")
    dtype = np.uint8 if max(names) < 256 else np.uint16
    # label-map style: frame s of the array is source image s (PS3.3 C.8.20: BINARY, one segment per value)
    stack = np.stack([frames[str(ds.SOPInstanceUID)] for ds in headers]).astype(dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = hd.seg.Segmentation(
            source_images=headers,
            pixel_array=stack,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[_segment_description(v, n, algorithm) for v, n in names.items()],
            series_instance_uid=hd.UID(),
            series_number=1000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="attnseg",
            manufacturer_model_name=algorithm.model[:64],
            software_versions=algorithm.version,
            device_serial_number=algorithm.run[:64],
            content_label="ATTNSEG",
            content_description=f"attnseg {algorithm.model} ({algorithm.run})"[:64],
            series_description=f"attnseg {algorithm.model} segmentation"[:64],
            omit_empty_frames=True,
        )
    return atomic_write(out_path, lambda tmp: seg.save_as(tmp, enforce_file_format=True), suffix=".dcm")


def write_rtstruct(
    labels: np.ndarray,
    affine: np.ndarray,
    source_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    label_names: Mapping[int, str],
) -> Path:
    """Write ``labels`` (on the series' grid, with its voxel -> RAS ``affine``) as an RT Structure Set of the series
    in ``source_dir``, atomically: one ROI per label present, contours per slice. Returns ``out_path``.

    rt-utils takes masks ``[rows, columns, slices]`` in its own slice order (it sorts the series along the slice
    normal); the slices are given by SOP Instance UID, so no order is assumed.

    Raises:
        DicomOutputError: rt-utils/pydicom missing; a source folder rt-utils reads differently (other images in
            sub-folders); non-square pixels, which rt-utils 1.2.7 places wrongly (it scales columns by the row
            spacing).
        ValueError: ``labels`` not on the series' grid.
    """
    require_dicom_libraries("rtstruct")
    from rt_utils import RTStructBuilder

    headers = series_headers(source_dir)
    frames = frames_by_instance(labels, affine, headers)
    spacing = [float(v) for v in headers[0].PixelSpacing]
    if not np.isclose(spacing[0], spacing[1], rtol=1e-4):
        raise DicomOutputError(
            f"{source_dir}: Pixel Spacing {spacing[0]:g}\\{spacing[1]:g} mm is not square; rt-utils places the "
            "contours of non-square pixels wrongly, so no RT Structure Set is written (use --format dicom-seg)"
        )
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # rt-utils 1.2.7 sets is_little_endian (pydicom 3)
        # rt-utils copies the source's descriptions; a scanner's may exceed LO's 64 characters (PS3.5 6.2)
        warnings.filterwarnings(
            "ignore", message="The value length .* exceeds the maximum length", category=UserWarning
        )
        rt = RTStructBuilder.create_new(dicom_series_path=str(source_dir))
        order = [str(ds.SOPInstanceUID) for ds in rt.series_data]
        if sorted(order) != sorted(frames):
            raise DicomOutputError(
                f"{source_dir}: rt-utils reads {len(order)} image(s) here (sub-folders included), the series has "
                f"{len(frames)}; keep only the series' files in the folder"
            )
        volume = np.stack([frames[uid] for uid in order], axis=-1)  # [rows, columns, slices], rt-utils' order
        for value in (int(v) for v in np.unique(volume) if v > 0):
            rt.add_roi(mask=volume == value, name=str(label_names.get(value, f"label {value}"))[:64])
        rt.set_series_description("attnseg RT structure set")
        rt.ds.StructureSetLabel = "attnseg"
    return atomic_write(out_path, lambda tmp: rt.ds.save_as(tmp, enforce_file_format=True), suffix=".dcm")
