"""``attnseg predict --format dicom-seg | rtstruct``: DICOM outputs that reference the source series.

The SEG is decoded here with pydicom alone (frames, their referenced instances and plane positions) and with
highdicom, and compared voxel for voxel with the NIfTI mask of the same prediction; the NIfTI slice of each source
image is found from the NIfTI affine (SimpleITK's convention: i = column, j = row), not by the writer's own mapping.
RTSTRUCT contours are checked against the mask in world space (every vertex on a voxel of its label) and rasterised
back with rt-utils (differences only on the mask's one-voxel boundary band; Dice printed and bounded).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from synthetic import train_tiny, write_dicom_series
from typer.testing import CliRunner

from attnseg.cli.args import join_multi_value_options
from attnseg.cli.main import app

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
rt_utils = pytest.importorskip("rt_utils")

runner = CliRunner()
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"  # PS3.4 B.5: Segmentation Storage
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"  # PS3.4 B.5: RT Structure Set Storage
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SHAPE = (8, 36, 36)  # slices, rows, columns of the synthetic series
SPACING = (1.5, 1.5, 3.0)  # row spacing, column spacing, slice spacing (mm)


def _predict(run, inp, out, *extra):
    argv = ["predict", "--run", str(run), "--input", str(inp), "--output", str(out), "--device", "cpu", *extra]
    return runner.invoke(app, join_multi_value_options(argv))


def _world_hu(points: np.ndarray) -> np.ndarray:
    """A CT-like scene in LPS mm: soft tissue with a 60 HU and a 200 HU ellipsoid, air far out."""
    hu = np.full(points.shape[:-1], -100, np.int16)
    for centre, radii, value in (((6, 4, 10), (14, 10, 9), 60), ((-8, -6, 8), (6, 7, 6), 200)):
        inside = ((((points - centre) / radii) ** 2).sum(-1)) <= 1
        hu[inside] = value
    hu[np.linalg.norm(points[..., :2], axis=-1) > 26] = -1000
    return hu


def _sampled(origin, row, column, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    """``_world_hu`` on the grid of a series (``write_dicom_series``' geometry)."""
    row, column = np.asarray(row, float), np.asarray(column, float)
    s, r, c = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    normal = np.cross(row, column)
    points = (
        np.asarray(origin, float)
        + c[..., None] * spacing[1] * row
        + r[..., None] * spacing[0] * column
        + s[..., None] * spacing[2] * normal
    )
    return _world_hu(points)


def _oblique_directions() -> tuple[np.ndarray, np.ndarray]:
    a, b = np.deg2rad(20.0), np.deg2rad(15.0)
    row = np.array([np.cos(a), np.sin(a), 0.0])
    column = np.array([-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), np.sin(b)])
    return row, column


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict:
    """The bundled fixture, an oblique series, and one volume as a head-first / feet-first pair."""
    from conftest import FIXTURES

    root = tmp_path_factory.mktemp("series")
    found = {"fixture": FIXTURES / "dicom_series"}
    row, column = _oblique_directions()
    origin = -(SHAPE[2] - 1) / 2 * SPACING[1] * row - (SHAPE[1] - 1) / 2 * SPACING[0] * column
    origin = origin + np.array([0.0, 0.0, -10.0])
    found["oblique"] = write_dicom_series(
        root / "oblique", _sampled(origin, row, column), origin=origin, row_direction=row, column_direction=column
    )
    x, y, z = np.eye(3)
    head = np.array([-26.25, -26.25, -10.5])  # head first: rows along +x, slices along +z
    uids = {"study": pydicom.uid.generate_uid(), "frame_of_reference": pydicom.uid.generate_uid()}
    found["head_first"] = write_dicom_series(
        root / "head_first", _sampled(head, x, y), origin=head, row_direction=x, column_direction=y, uids=uids
    )
    # feet first: rows along -x, slices along -z, the same world points; files written in reverse order
    feet = head + (SHAPE[2] - 1) * SPACING[1] * x + (SHAPE[0] - 1) * SPACING[2] * z
    found["feet_first"] = write_dicom_series(
        root / "feet_first",
        _sampled(feet, -x, y),
        origin=feet,
        row_direction=-x,
        column_direction=y,
        reverse_files=True,
        uids=uids,
    )
    return found


@pytest.fixture(scope="module")
def ct_run(ct_dataset, tmp_path_factory):
    return train_tiny(ct_dataset, tmp_path_factory.mktemp("run") / "ct")


@pytest.fixture(scope="module")
def predicted(series, ct_run, tmp_path_factory) -> dict:
    """``{series name: output folder}``: each series predicted once, as NIfTI, SEG and RTSTRUCT together."""
    out = {}
    for name, folder in series.items():
        out[name] = tmp_path_factory.mktemp(f"pred_{name}")
        result = _predict(
            ct_run, folder, out[name], "--format", "nifti", "--format", "dicom-seg", "--format", "rtstruct"
        )
        assert result.exit_code == 0, result.output
    return out


def _sources(folder) -> dict:
    """``{SOP Instance UID: header}`` of the source series."""
    return {
        str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir())
    }


def _truth_frames(mask: np.ndarray, affine: np.ndarray, sources: dict) -> dict:
    """Each source image's slice of a NIfTI mask ``[i, j, k]``: slice k starts at the image's IPP, i = column."""
    corners = (
        LPS_TO_RAS
        @ affine
        @ np.stack([np.zeros(mask.shape[2]), np.zeros(mask.shape[2]), np.arange(mask.shape[2]), np.ones(mask.shape[2])])
    )[:3].T
    frames = {}
    for uid, ds in sources.items():
        distance = np.linalg.norm(corners - np.asarray(ds.ImagePositionPatient, float), axis=1)
        assert distance.min() < 1e-2, f"no NIfTI slice starts at {ds.ImagePositionPatient}"
        frames[uid] = mask[:, :, int(distance.argmin())].T  # [rows, columns]
    return frames


def _decode_seg(path, sources: dict) -> dict:
    """``{source UID: label frame}`` from the SEG's frames (pydicom only): each frame's segment number where set."""
    seg = pydicom.dcmread(path)
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    any_source = next(iter(sources.values()))
    frames = {uid: np.zeros((any_source.Rows, any_source.Columns), np.uint8) for uid in sources}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(position, np.asarray(sources[uid].ImagePositionPatient, float), atol=1e-3)
        on = pixels[index] > 0
        assert not frames[uid][on].any(), "two segments overlap"
        frames[uid][on] = number
    return frames


def _boundary_band(mask: np.ndarray) -> np.ndarray:
    """Voxels within one voxel (in-plane, 8-neighbourhood) of the mask's boundary, per slice ``[rows, cols]``."""
    square = np.ones((3, 3), bool)
    return ndimage.binary_dilation(mask, square) & ~ndimage.binary_erosion(mask, square, border_value=0)


def _rtstruct_figures(src, path, truth: dict, names: dict) -> dict:
    """Per ROI: voxels, Dice and differing voxels of rt-utils' rasterisation against the mask; every differing
    voxel must lie in the mask's one-voxel boundary band."""
    builder = rt_utils.RTStructBuilder.create_from(dicom_series_path=str(src), rt_struct_path=str(path))
    figures = {}
    for value, name in names.items():
        back = builder.get_roi_mask_by_name(name)
        want = np.stack([truth[str(ds.SOPInstanceUID)] == value for ds in builder.series_data], axis=-1)
        assert back.shape == want.shape
        differ = back != want
        band = np.stack([_boundary_band(want[..., s]) for s in range(want.shape[-1])], axis=-1)
        outside = int((differ & ~band).sum())
        dice = 2 * (back & want).sum() / max(back.sum() + want.sum(), 1)
        figures[name] = {"voxels": int(want.sum()), "dice": round(float(dice), 4), "differ": int(differ.sum())}
        assert outside == 0, f"{name}: {outside} voxel(s) differ off the boundary band"
    return figures


def _check_contour_vertices(rt, mask: np.ndarray, affine: np.ndarray, sources: dict, names: dict) -> int:
    """Every contour vertex (LPS mm) is the centre of a voxel of its label, on its referenced image's slice."""
    to_voxel = np.linalg.inv(LPS_TO_RAS @ affine)
    number_to_value = {
        int(r.ROINumber): v for r in rt.StructureSetROISequence for v, n in names.items() if n == r.ROIName
    }
    vertices = 0
    for roi in rt.ROIContourSequence:
        value = number_to_value[int(roi.ReferencedROINumber)]
        for contour in roi.ContourSequence:
            uid = str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            index = (to_voxel @ np.c_[points, np.ones(len(points))].T)[:3].T
            assert np.abs(index - np.rint(index)).max() < 0.05, "a vertex is off the voxel centres"
            index = np.rint(index).astype(int)
            ipp = np.asarray(sources[uid].ImagePositionPatient, float)
            k = int(np.rint((to_voxel @ [*ipp, 1.0])[2]))
            assert (index[:, 2] == k).all(), "a contour lies off its referenced image's plane"
            assert (mask[index[:, 0], index[:, 1], index[:, 2]] == value).all(), "a vertex lies outside its label"
            vertices += len(points)
    return vertices


@pytest.mark.parametrize("name", ["fixture", "oblique", "head_first", "feet_first"])
def test_seg_and_rtstruct_reference_the_series_and_match_the_nifti(name, series, predicted):
    import nibabel as nib

    src, out = series[name], predicted[name]
    case = src.name
    nifti = nib.load(out / f"{case}.nii.gz")
    mask = np.asarray(nifti.dataobj)
    sources = _sources(src)
    any_source = next(iter(sources.values()))
    truth = _truth_frames(mask, nifti.affine, sources)

    seg_path = out / f"{case}_seg.dcm"
    seg = pydicom.dcmread(seg_path)
    assert seg.SOPClassUID == SEG_STORAGE and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == any_source.FrameOfReferenceUID
    assert seg.StudyInstanceUID == any_source.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == any_source.SeriesInstanceUID
    referenced = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(sources)
    segments = [(int(s.SegmentNumber), s.SegmentLabel) for s in seg.SegmentSequence]
    assert segments == [(1, "organ_a"), (2, "organ_b")]  # every label of dataset.json, numbered by its value
    generic = seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert (generic.CodeValue, generic.CodingSchemeDesignator) == ("85756007", "SCT")  # Tissue
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "unet" and algorithm.AlgorithmParameters == "run=ct"

    decoded = _decode_seg(seg_path, sources)
    for uid, frame in truth.items():
        assert np.array_equal(decoded[uid], frame), f"{name}: SEG frame of {uid} differs from the NIfTI slice"
    uids = sorted(sources)
    read = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    assert np.array_equal(read, np.stack([truth[u] for u in uids]))
    present = sorted(int(v) for v in np.unique(mask) if v > 0)
    print(f"\n{name}: SEG equals the NIfTI voxel for voxel on {mask.size} voxels, labels present {present}")

    rt_path = out / f"{case}_rtstruct.dcm"
    rt = pydicom.dcmread(rt_path)
    assert rt.SOPClassUID == RTSTRUCT_STORAGE
    reference = rt.ReferencedFrameOfReferenceSequence[0]
    assert reference.FrameOfReferenceUID == any_source.FrameOfReferenceUID
    series_ref = reference.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == any_source.SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in series_ref.ContourImageSequence} == set(sources)
    names = {1: "organ_a", 2: "organ_b"}
    present_names = {v: names[v] for v in present}
    assert [r.ROIName for r in rt.StructureSetROISequence] == list(present_names.values())
    vertices = _check_contour_vertices(rt, mask, nifti.affine, sources, present_names)
    figures = _rtstruct_figures(src, rt_path, truth, present_names)
    print(f"{name}: RTSTRUCT {vertices} vertices on their labels' voxels; rasterised back: {figures}")


def test_the_predictions_carry_labels(predicted, series):
    """The comparisons above are not vacuous: the tiny run predicts foreground on the series."""
    import nibabel as nib

    counts = {
        n: int((np.asarray(nib.load(predicted[n] / f"{series[n].name}.nii.gz").dataobj) > 0).sum()) for n in series
    }
    print(f"\nforeground voxels per series: {counts}")
    assert sum(v > 0 for v in counts.values()) >= 3


def test_head_first_and_feet_first_segs_agree_in_world_space(series, predicted):
    """One volume stored head first and feet first: the two SEGs mark the same world positions."""
    world = {}
    for name in ("head_first", "feet_first"):
        sources = _sources(series[name])
        frames = _decode_seg(predicted[name] / f"{name}_seg.dcm", sources)
        marks = {}
        for uid, ds in sources.items():
            row, column = (
                np.asarray(ds.ImageOrientationPatient[:3], float),
                np.asarray(ds.ImageOrientationPatient[3:], float),
            )
            r, c = np.nonzero(np.ones_like(frames[uid]))
            points = (
                np.asarray(ds.ImagePositionPatient, float)
                + c[:, None] * SPACING[1] * row
                + r[:, None] * SPACING[0] * column
            )
            for point, value in zip(np.rint(points * 10).astype(int), frames[uid][r, c]):
                marks[tuple(point)] = int(value)
        world[name] = marks
    assert world["head_first"].keys() == world["feet_first"].keys()
    assert world["head_first"] == world["feet_first"]
    print(f"\nhead/feet first: {len(world['head_first'])} world positions, same label at each")


def _blobs(shape_ijk) -> np.ndarray:
    """A known label map ``[i, j, k]``: a large 'liver' ellipsoid (1), a small 'liver tumour' inside it (3);
    'kidney_left' (2) absent."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape_ijk], indexing="ij"), -1).astype(float)
    centre, radii = np.array(shape_ijk) / 2 - 0.5, np.array(shape_ijk) * [0.35, 0.3, 0.45]
    labels = np.zeros(shape_ijk, np.uint8)
    labels[(((grid - centre) / radii) ** 2).sum(-1) <= 1] = 1
    labels[(((grid - centre - [2, 1, 0]) / (radii * 0.35)) ** 2).sum(-1) <= 1] = 3
    return labels


@pytest.mark.parametrize("name", ["oblique", "feet_first"])
def test_writers_on_a_known_label_map(name, series, tmp_path):
    """The writers' API on a known mask: exact SEG, SNOMED CT codes, an empty segment for an absent label,
    RTSTRUCT within the boundary band with Dice >= 0.9."""
    from attnseg.data.dicom_out import Algorithm, write_dicom_seg, write_rtstruct
    from attnseg.data.io import read_image

    src = series[name]
    image, meta = read_image(src)
    labels = _blobs(image.shape[1:])
    names = {0: "background", 1: "liver", 2: "kidney_left", 3: "liver tumour"}
    sources = _sources(src)
    truth = _truth_frames(labels, meta.affine, sources)
    seg_path = write_dicom_seg(labels, meta.affine, src, tmp_path / "x_seg.dcm", names, Algorithm("unet", "r1", "9.9"))
    decoded = _decode_seg(seg_path, sources)
    assert all(np.array_equal(decoded[u], truth[u]) for u in sources)
    seg = pydicom.dcmread(seg_path)
    codes = {}
    for s in seg.SegmentSequence:
        kind = s.SegmentedPropertyTypeCodeSequence[0]
        modifiers = [m.CodeValue for m in kind.get("SegmentedPropertyTypeModifierCodeSequence", [])]
        category = s.SegmentedPropertyCategoryCodeSequence[0].CodeValue
        codes[s.SegmentLabel] = (category, kind.CodeValue, modifiers)
    assert codes == {
        "liver": ("91723000", "10200004", []),  # Anatomical Structure / Liver
        "kidney_left": ("91723000", "64033007", ["7771000"]),  # Kidney, Left
        "liver tumour": ("49755003", "108369006", []),  # Morphologically Altered Structure / Tumor
    }
    tumour = next(s for s in seg.SegmentSequence if s.SegmentNumber == 3)
    assert tumour.AnatomicRegionSequence[0].CodeValue == "10200004"
    numbers = {
        int(i.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for i in seg.PerFrameFunctionalGroupsSequence
    }
    assert numbers == {1, 3}  # the absent label's segment is described but has no frame

    rt_path = write_rtstruct(labels, meta.affine, src, tmp_path / "x_rtstruct.dcm", names)
    rt = pydicom.dcmread(rt_path)
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["liver", "liver tumour"]
    present = {1: "liver", 3: "liver tumour"}
    _check_contour_vertices(rt, labels, meta.affine, sources, present)
    figures = _rtstruct_figures(src, rt_path, truth, present)
    print(f"\n{name} known mask: RTSTRUCT rasterised back {figures}")
    assert figures["liver"]["dice"] >= 0.9


def test_rtstruct_refuses_non_square_pixels(tmp_path):
    from attnseg.data.dicom_out import DicomOutputError, write_rtstruct
    from attnseg.data.io import read_image

    x, y = np.eye(3)[:2]
    src = write_dicom_series(
        tmp_path / "aniso",
        np.zeros((3, 8, 8), np.int16),
        origin=(0, 0, 0),
        row_direction=x,
        column_direction=y,
        spacing=(1.0, 0.5, 2.0),
    )
    _, meta = read_image(src)
    with pytest.raises(DicomOutputError, match="not square"):
        write_rtstruct(np.ones((8, 8, 3), np.uint8), meta.affine, src, tmp_path / "o.dcm", {1: "a"})
    assert not (tmp_path / "o.dcm").exists()


def test_continue_knows_the_dicom_output_names(series, ct_run, tmp_path):
    args = ("--format", "dicom-seg", "--format", "rtstruct")
    assert _predict(ct_run, series["fixture"], tmp_path, *args).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dicom_series_rtstruct.dcm", "dicom_series_seg.dcm"]
    again = _predict(ct_run, series["fixture"], tmp_path, *args, "--continue")
    assert again.exit_code == 0 and "1 skipped: already complete" in " ".join(again.output.split())


def _bad_series(kind: str, root) -> object:
    x, y = np.eye(3)[:2]
    hu = np.zeros((6, 16, 16), np.int16)
    folder = write_dicom_series(root / kind, hu, origin=(0, 0, 0), row_direction=x, column_direction=y)
    if kind == "two_series":
        write_dicom_series(root / "other", hu, origin=(0, 0, 0), row_direction=x, column_direction=y)
        for p in (root / "other").iterdir():
            p.rename(folder / f"other_{p.name}")
    elif kind == "gap":
        (folder / "img003.dcm").unlink()
    elif kind == "truncated":  # a damaged slice file is left out of the series by GDCM: named in the gap error
        damaged = folder / "img002.dcm"
        damaged.write_bytes(damaged.read_bytes()[:400])
    elif kind == "orientation":
        ds = pydicom.dcmread(folder / "img002.dcm")
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9950042, 0.0998334]  # tilted 5.7 degrees about x
        ds.save_as(folder / "img002.dcm")
    return folder


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("two_series", "folder holds 2 DICOM series"),
        ("gap", "slice gap: 6.00 mm between the slices at 6.00 and 12.00 mm"),
        ("truncated", "not read as part of it: img002.dcm (damaged or truncated?)"),
        ("orientation", "inconsistent slice orientation: img002.dcm"),
    ],
)
def test_bad_dicom_series_are_named_and_write_nothing(kind, fragment, ct_run, tmp_path):
    folder = _bad_series(kind, tmp_path)
    out = tmp_path / "out"
    result = _predict(ct_run, folder, out, "--format", "dicom-seg")
    assert result.exit_code == 2, result.output
    failed = [line for line in result.output.splitlines() if "failed:" in line]
    assert len(failed) == 1 and str(folder) in failed[0] and fragment in failed[0], result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("fmt", ["dicom-seg", "rtstruct"])
def test_non_dicom_input_is_refused_before_anything_is_written(fmt, ct_run, ct_dataset, tmp_path):
    image = ct_dataset / "imagesTs" / "test000_0000.nii.gz"
    out = tmp_path / "out"
    result = _predict(ct_run, image, out, "--format", "nifti", "--format", fmt)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert f"--format {fmt}: needs a DICOM series input" in lines[0] and f"--input {image} is not a DICOM" in lines[0]
    assert not out.exists()


def test_an_unknown_format_is_named(ct_run, series, tmp_path):
    result = _predict(ct_run, series["fixture"], tmp_path / "out", "--format", "dicom")
    assert result.exit_code == 2 and "--format dicom: must be one of nifti, dicom-seg, rtstruct, png" in result.output


def test_a_case_failing_in_one_format_leaves_none_of_its_files(ct_run, tmp_path):
    """Non-square pixels: the RT Structure Set is refused; the NIfTI and SEG written before it used to stay while
    the case was reported as failed, "0 of 1 written" (found by QA)."""
    x, y = np.eye(3)[:2]
    src = write_dicom_series(
        tmp_path / "aniso", np.zeros((3, 8, 8), np.int16), origin=(0, 0, 0), row_direction=x, column_direction=y,
        spacing=(1.0, 0.5, 2.0),
    )  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's")
    result = _predict(ct_run, src, out, "--format", "nifti", "--format", "dicom-seg", "--format", "rtstruct")
    assert result.exit_code == 2 and "not square" in " ".join(result.output.split())
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
